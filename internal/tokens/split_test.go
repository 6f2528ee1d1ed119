package tokens

import (
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// The estimate is only as good as its pieces. These tests hold the splitter
// to the tokenizer's split regexps, and the fast paths (the block engine,
// the piece-by-piece scan, chunked JSON decoding) to the splitter.

// splitEdgeCases exercise the corners of the split rules.
var splitEdgeCases = []string{
	"", "a", " ", "  ", "\n", "\r\n", " \n ", "\n\n  \n", "a  \n  b", "x\t\ty", "\t(", "  (", " (", "a (b", "a.b", "a..b", "\t.b",
	"don't", "DON'T", "it's.", "'sup", "x'sup", "rock'n'roll", "we'll've", "''s", " 's", "('s",
	"camelCase", "HTTPServer", "ABCdef", "aBC", "XMLHttpRequest", "iOS", "McDonald's",
	"1", "12", "123", "1234", "1234567890123456789", "3rd", "v1.2.3", "2024-01-03", "$1,234.56",
	"{\n\t\treturn err\n\t}\n\n// Foo does", "}\n//x", "a/\n/b", "/\n/\n", "x = y // comment\n", "path/to/file.go",
	"café", "naïve façade", "Straße", "日本語のテキスト", "中文，标点。", "Привет, мир", "😀 emoji", "a\u00a0b", "a\u2003\u2003b", "x\u0301y", "((\u0301x", " \u0301",
	"\x00\x01\x1f", "<|endoftext|>", "\\n", "a\"b",
	strings.Repeat("a", 200), strings.Repeat(" ", 200), strings.Repeat("-", 200), strings.Repeat("9", 40), strings.Repeat("ab ", 100),
	strings.Repeat("\n", 70) + "x", strings.Repeat("x", 63) + " y", strings.Repeat(".", 63) + "\n/\n",
}

// pieces returns the splitter's pieces of text.
func pieces(text string, o200k bool) []string {
	s := splitter{b: []byte(text), o200k: o200k}
	var out []string
	for {
		p, ok := s.next()
		if !ok {
			return out
		}
		out = append(out, text[p.start:p.end])
	}
}

// checkSplit fails if the splitter's pieces are not the tokenizer's. BPE
// works on each piece on its own, so the tokenizer counts the pieces, each
// on its own, the same as the whole text exactly when they are its pieces.
func checkSplit(t *testing.T, c *Counter, text string) {
	t.Helper()
	sum := 0
	ps := pieces(text, c.Encoding() == O200kBase)
	for _, p := range ps {
		sum += c.Count(p)
	}
	if want := c.Count(text); sum != want {
		t.Errorf("%s: %.60q: pieces count %d, text %d; pieces %q", c.Encoding(), text, sum, want, ps[:min(len(ps), 20)])
	}
}

// splitComparable reports whether the tokenizer's own count can judge the
// split of text: the dependency's generated regexp skips DEL (see
// [Counter.Count]) and reads invalid UTF-8 as U+FFFD.
func splitComparable(text string) bool {
	return utf8.ValidString(text) && !strings.Contains(text, "\x7f")
}

func TestSplitterMatchesTokenizer(t *testing.T) {
	texts := append([]string(nil), splitEdgeCases...)
	for _, name := range []string{"english.txt", "chat.txt", "french.txt", "german.txt", "spanish.txt", "chinese.txt", "japanese.txt", "markdown.md", "python.py"} {
		texts = append(texts, testdata(t, name))
	}
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		for _, text := range texts {
			checkSplit(t, c, text)
		}
	}
}

// reference is the estimate of text through the splitter alone: what scan
// must return, however it gets there.
func (e *estimator) reference(text []byte) int {
	s := splitter{b: text, o200k: e.o200k}
	n := 0
	for {
		p, ok := s.next()
		if !ok {
			return n
		}
		n += e.piece(text, p.start, p.end, p.kind)
	}
}

// randomText strings together fragments chosen to hit the split rules'
// corners and the block engine's: runs crossing block edges, trouble
// between pieces, contractions at the end of a block.
func randomText(r *rand.Rand, fragments int) string {
	alphabet := []string{
		"a", "b", "Z", "Q", "word", "Hello", "world", "ABC", "HTTPServer", "camelCase",
		" ", " ", "  ", "\n", "\n\n", "\t", "\t\t", "\r\n", " \n", "\n ",
		".", ",", ";", "(", ")", "{", "}", "/", "//", "-", "=", "_", "\"", "\\", "'", "'s", "'ll", "n't",
		"1", "23", "4567", "89012345",
		"é", "日本", "\u00a0", "—", "“", "\x7f", "\x00", "\xff",
	}
	var b strings.Builder
	for range fragments {
		b.WriteString(alphabet[r.IntN(len(alphabet))])
	}
	return b.String()
}

func TestScanMatchesSplitter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	texts := append([]string(nil), splitEdgeCases...)
	for range 2000 {
		texts = append(texts, randomText(r, 1+r.IntN(200)))
	}
	for _, name := range []string{"english.txt", "german.txt", "chinese.txt", "markdown.md", "python.py"} {
		texts = append(texts, testdata(t, name))
	}
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		e := c.estimator()
		for _, text := range texts {
			got, stop := e.scan([]byte(text), true)
			if want := e.reference([]byte(text)); got != want || stop != len(text) {
				t.Errorf("%s: %.80q: scan = %d (stop %d), splitter = %d", enc, text, got, stop, want)
			}
		}
	}
}

// FuzzScan holds the fast paths to the splitter, and the splitter to the
// tokenizer, on any text.
func FuzzScan(f *testing.F) {
	for _, s := range splitEdgeCases {
		f.Add(s)
	}
	f.Add(strings.Repeat("The quick brown fox's tail, 123 times.\n", 5))
	o, c := ForModel("gpt-4o"), ForModel("gpt-4")
	f.Fuzz(func(t *testing.T, text string) {
		for _, ctr := range []*Counter{o, c} {
			e := ctr.estimator()
			got, _ := e.scan([]byte(text), true)
			if want := e.reference([]byte(text)); got != want {
				t.Fatalf("%s: scan = %d, splitter = %d", ctr.Encoding(), got, want)
			}
			if got < 0 || got > len(text) || text != "" && got == 0 {
				t.Fatalf("%s: %d tokens for %d bytes", ctr.Encoding(), got, len(text))
			}
			if len(text) < 512 && splitComparable(text) {
				checkSplit(t, ctr, text)
			}
		}
	})
}

// TestChunkedStrings holds the JSON path, which decodes strings with
// escapes in chunks and leaves each chunk's last pieces for the next, to the
// estimate of the decoded text.
func TestChunkedStrings(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	texts := []string{}
	for range 20 {
		text := randomText(r, 2000+r.IntN(6000)) // kilobytes, with newlines and quotes to escape
		texts = append(texts, strings.ToValidUTF8(text, "?"))
	}
	for _, name := range []string{"english.txt", "chinese.txt", "python.py"} {
		texts = append(texts, testdata(t, name)) // long runs between escapes
	}
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		for _, text := range texts {
			for _, ascii := range []bool{false, true} {
				raw, _ := json.Marshal(text)
				if ascii {
					raw = []byte(strings.Trim(asciiJSON(text), "\n")) // \uXXXX for all non-ASCII, as Python sends it
				}
				body := []byte(`[{"role":"user","content":` + string(raw) + `}]`)
				want := ReplyPriming + TokensPerMessage + c.EstimateText("user") + c.EstimateText(text)
				if got := c.EstimateChatJSON(body); got != want {
					t.Errorf("%s (ascii %v): %d bytes: EstimateChatJSON = %d, EstimateText = %d", enc, ascii, len(text), got, want)
				}
			}
		}
	}
}

// asciiJSON encodes s as a JSON string with every non-ASCII character
// escaped, surrogate pairs included.
func asciiJSON(s string) string {
	raw, _ := json.Marshal(s)
	var b strings.Builder
	for _, r := range string(raw) {
		switch {
		case r < 0x80:
			b.WriteRune(r)
		case r >= 0x10000:
			r -= 0x10000
			b.WriteString(`\u` + hex16(0xd800+r>>10) + `\u` + hex16(0xdc00+r&0x3ff))
		default:
			b.WriteString(`\u` + hex16(r))
		}
	}
	return b.String()
}

func hex16(r rune) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[r>>12&15], digits[r>>8&15], digits[r>>4&15], digits[r&15]})
}

func TestClassify(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var blk [64]byte
	for range 200 {
		for i := range blk {
			blk[i] = byte(r.IntN(256))
			if r.IntN(2) == 0 {
				blk[i] = " \n\taZ9'/.é"[r.IntN(11)]
			}
		}
		m := classify(blk[:])
		for f := range 8 {
			for j := range 64 {
				if want, got := spread[blk[j]]>>(8*f)&1, m[f]>>j&1; got != want {
					t.Fatalf("flag %d, byte %d (%q): got %d, want %d", f, j, blk[j], got, want)
				}
			}
		}
	}
}

func TestFill(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 1000 {
		mask := r.Uint64() | r.Uint64() // runs of various lengths
		seeds := r.Uint64() & r.Uint64() & r.Uint64() & mask
		var want uint64
		for j := range 64 {
			if seeds>>j&1 == 0 {
				continue
			}
			for k := j; k < 64 && mask>>k&1 == 1; k++ {
				want |= 1 << k
			}
		}
		if got := fill(seeds, mask); got != want {
			t.Fatalf("fill(%064b, %064b) = %064b, want %064b", seeds, mask, got, want)
		}
	}
}

func TestHashPiece(t *testing.T) {
	text := []byte(strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz", 4))
	for start := range 40 {
		for end := start; end <= len(text); end++ {
			if got, want := hashPiece(text, start, end), hashBytes(text[start:end]); got != want {
				t.Fatalf("hashPiece(%d, %d) = %x, hashBytes = %x", start, end, got, want)
			}
		}
	}
}

// TestVocabSet checks that every token is in the set and that strings that
// are not are rarely taken for tokens.
func TestVocabSet(t *testing.T) {
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		v := c.estimator().vocab
		tokens := 0
		for id := range maxVocabID {
			s, err := c.codec.Decode([]uint{uint(id)})
			if err != nil || s == "" {
				continue
			}
			tokens++
			if !v.has(hashBytes([]byte(s))) {
				t.Fatalf("%s: token %d (%q) not in the set", enc, id, s)
			}
		}
		if tokens < 100000 {
			t.Fatalf("%s: %d tokens", enc, tokens)
		}
		r := rand.New(rand.NewPCG(9, 10))
		wrong, tried := 0, 0
		for range 20000 {
			b := make([]byte, 6+r.IntN(10))
			for i := range b {
				b[i] = 'a' + byte(r.IntN(26))
			}
			if c.Count(string(b)) > 1 {
				tried++
				if v.has(hashBytes(b)) {
					wrong++
				}
			}
		}
		if wrong*1000 > tried {
			t.Errorf("%s: %d of %d non-tokens taken for tokens", enc, wrong, tried)
		}
	}
}

// TestSpecial holds the search for the end of a plain run to a byte loop.
func TestSpecial(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for range 5000 {
		b := make([]byte, r.IntN(100))
		for i := range b {
			b[i] = "ab \"\\\xe9\x80\x00"[r.IntN(8)]
			if r.IntN(4) > 0 {
				b[i] = 'a' + byte(r.IntN(26))
			}
		}
		want := len(b)
		for i, c := range b {
			if c == '"' || c == '\\' {
				want = i
				break
			}
		}
		if got := special(b); got != want {
			t.Fatalf("special(%q) = %d, want %d", b, got, want)
		}
	}
}

func TestRawString(t *testing.T) {
	for _, tt := range []struct{ in, want, rest string }{
		{`"role":`, `role`, `:`},
		{`""x`, ``, `x`},
		{`"a\"b"c`, `a\"b`, `c`},
		{`"a\\"b`, `a\\`, `b`},
		{`"a\\\"b"`, `a\\\"b`, ``},
		{`"` + strings.Repeat("long key ", 10) + `"}`, strings.Repeat("long key ", 10), `}`},
		{`"truncated`, `truncated`, ``},
		{`"truncated\`, `truncated\`, ``},
	} {
		w := walker{b: []byte(tt.in)}
		if got := string(w.rawString()); got != tt.want || string(w.b[w.i:]) != tt.rest {
			t.Errorf("rawString(%q) = %q, rest %q; want %q, rest %q", tt.in, got, w.b[w.i:], tt.want, tt.rest)
		}
	}
}

// TestShortMatchesGreedy holds the greedy match of short pieces, in
// registers, to the general one.
func TestShortMatchesGreedy(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	alphabet := []string{"a", "e", "s", "t", "ing", "tion", "Z", " ", ".", "-", "_", "é", "ß", "日本", "語", "😀", "\xff", "1"}
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		e := c.estimator()
		tried := 0
		for range 20000 {
			var b strings.Builder
			for range 1 + r.IntN(8) {
				b.WriteString(alphabet[r.IntN(len(alphabet))])
			}
			p := []byte(b.String())
			if len(p) >= 16 || e.vocab.has(hashBytes(p)) {
				continue // short takes pieces of under 16 bytes that are not tokens
			}
			tried++
			var buf [16]byte
			copy(buf[:], p)
			got := e.short(load16(buf[:], len(p)))
			for _, k := range []kind{kLetters, kPunct} {
				if want := e.greedy(p, k); got != want {
					t.Fatalf("%s: %q: short %d, greedy %d", enc, p, got, want)
				}
			}
		}
		if tried < 5000 {
			t.Fatalf("%s: only %d pieces tried", enc, tried)
		}
	}
}

func TestPiece16(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	var b [16]byte
	for range 1000 {
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		for n := range 16 {
			if got, want := load16(b[:], n).hash(), hashBytes(b[:n]); got != want {
				t.Fatalf("load16(%x, %d).hash() = %x, hashBytes = %x", b, n, got, want)
			}
		}
		var want uint32
		for k, c := range b {
			if c&0xc0 == 0x80 {
				want |= 1 << k
			}
		}
		p := load16(b[:], 15)
		p.hi = binary.LittleEndian.Uint64(b[8:]) // all 16 bytes
		if got := continuations(p.lo) | continuations(p.hi)<<8; got != want {
			t.Fatalf("continuations(%x) = %016b, want %016b", b, got, want)
		}
	}
}
