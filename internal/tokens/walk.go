package tokens

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// walker reads just enough JSON to find the texts of a request body: object
// members by their raw key, array elements, and everything else skipped
// without decoding. It never builds strings or values. It is lenient rather
// than validating: on malformed input it keeps going while it can and ends
// the walk when it cannot, and every step advances, so any input terminates.
type walker struct {
	b []byte
	i int
}

// is reports whether the next byte is c; w is on a value, after whitespace.
func (w *walker) is(c byte) bool { return w.i < len(w.b) && w.b[w.i] == c }

func (w *walker) isNumber() bool {
	return w.i < len(w.b) && (w.b[w.i] == '-' || w.b[w.i] >= '0' && w.b[w.i] <= '9')
}

func (w *walker) space() {
	if w.i < len(w.b) && w.b[w.i] > ' ' {
		return // compact JSON: no call for nothing to skip
	}
	w.skipSpace()
}

func (w *walker) skipSpace() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

// member advances to the next member of the object w is in (after its '{'
// or after the previous member's value): it reports whether there is one,
// leaving w on its key, and otherwise leaves w after the object.
func (w *walker) member() bool {
	w.space()
	if w.is(',') {
		w.i++
		w.space()
	}
	if w.is('"') {
		return true
	}
	if w.is('}') {
		w.i++
	} else {
		// Malformed: stop here, and make the enclosing walks stop too.
		w.i = len(w.b)
	}
	return false
}

// key reads a member's key and the colon after it, leaving w on the value.
// The key is raw: a key spelled with escapes matches nothing, which costs
// only that member.
func (w *walker) key() []byte {
	k := w.rawString()
	w.space()
	if w.is(':') {
		w.i++
	}
	w.space()
	return k
}

// element advances to the next element of the array w is in, like member.
func (w *walker) element() bool {
	w.space()
	if w.is(',') {
		w.i++
		w.space()
	}
	if w.is(']') {
		w.i++
		return false
	}
	return w.i < len(w.b)
}

// rawString reads the string at w (on its quote) and returns its raw bytes,
// escapes undecoded.
func (w *walker) rawString() []byte {
	w.i++
	start := w.i
	for {
		w.i += special(w.b[w.i:])
		if w.i == len(w.b) {
			return w.b[start:] // truncated
		}
		if w.b[w.i] == '"' {
			s := w.b[start:w.i]
			w.i++
			return s
		}
		w.i = min(w.i+2, len(w.b)) // an escape: the backslash and what it escapes
	}
}

// special returns the index of the first quote or backslash in b, or
// len(b) if it has none. It looks at the first two words in registers,
// which is where keys and roles end, and searches the rest.
func special(b []byte) int {
	i := 0
	for ; i < 16 && i+8 <= len(b); i += 8 {
		if m := quoteOrBackslash(binary.LittleEndian.Uint64(b[i : i+8])); m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	q := len(b)
	if k := bytes.IndexByte(b[i:], '"'); k >= 0 {
		q = i + k
	}
	if k := bytes.IndexByte(b[i:q], '\\'); k >= 0 {
		return i + k
	}
	return q
}

// skip skips the value at w: a string, an object or array with everything
// in it, or a literal or number (anything up to the next delimiter).
func (w *walker) skip() {
	if w.i >= len(w.b) {
		return
	}
	switch w.b[w.i] {
	case '"':
		w.rawString()
	case '{', '[':
		depth := 0
		for w.i < len(w.b) {
			switch w.b[w.i] {
			case '"':
				w.rawString()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					w.i++
					return
				}
			}
			w.i++
		}
	default:
		start := w.i
		for w.i < len(w.b) {
			switch w.b[w.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if w.i == start {
					w.i++ // a stray delimiter: step over it
				}
				return
			}
			w.i++
		}
	}
}

// decoder decodes a JSON string's content, from src[i] to its closing quote.
type decoder struct {
	src  []byte
	i    int  // the next byte to decode
	q    int  // the next quote at or after i, escaped or not, if q >= i
	done bool // at the end: the closing quote is consumed, or src ended
}

// fill decodes into buf[have:] until the buffer is full or the string ends,
// and returns the new fill level.
func (d *decoder) fill(buf []byte, have int) int {
	room := len(buf) - utf8.UTFMax // an escape decodes to at most UTFMax bytes
	src, i := d.src, d.i
	for have < room {
		// Copy the run of bytes up to the next quote or backslash: eight
		// at a time while it lasts a few words, as most runs of code and
		// data do (an escape a line), and then with a search and a copy,
		// as the runs of prose do (an escape a paragraph).
		words := 0
		for ; words < 4 && i+8 <= len(src) && have+8 <= len(buf); words++ {
			w := binary.LittleEndian.Uint64(src[i : i+8])
			binary.LittleEndian.PutUint64(buf[have:have+8], w)
			if m := quoteOrBackslash(w); m != 0 {
				k := bits.TrailingZeros64(m) / 8
				i += k
				have += k
				break
			}
			i += 8
			have += 8
		}
		if words == 4 && have < room {
			n := copy(buf[have:room], src[i:i+d.run(i)])
			i += n
			have += n
			continue
		}
		// At a quote or a backslash, or near the end of the string or
		// the buffer: a byte at a time.
		if have >= room {
			break
		}
		if i == len(src) {
			d.done = true // truncated
			break
		}
		c := src[i]
		if c == '"' {
			i++
			d.done = true
			break
		}
		if c != '\\' {
			buf[have] = c
			have++
			i++
			continue
		}
		if i+1 < len(src) && escapes[src[i+1]] != 0 {
			buf[have] = escapes[src[i+1]]
			have++
			i += 2
			continue
		}
		r, w := unescape(src[i:])
		have += utf8.EncodeRune(buf[have:], r)
		i += w
	}
	d.i = i
	return have
}

// run returns the length of the run of bytes from src[i] up to the next
// quote or backslash. The quote is searched for once, not once a run.
func (d *decoder) run(i int) int {
	if d.q < i {
		d.q = len(d.src)
		if q := bytes.IndexByte(d.src[i:], '"'); q >= 0 {
			d.q = i + q
		}
	}
	if b := bytes.IndexByte(d.src[i:d.q], '\\'); b >= 0 {
		return b
	}
	return d.q - i
}

// escapes maps the character after a backslash to what the escape stands
// for, for the escapes of one character; others map to 0.
var escapes = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// quoteOrBackslash returns w with the high bit of each byte that is a quote
// or a backslash set, exactly for the first such byte: the usual test for a
// zero byte, which can also flag bytes after a zero, but never before.
func quoteOrBackslash(w uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	q, b := w^'"'*ones, w^'\\'*ones
	return ((q-ones)&^q | (b-ones)&^b) & highs
}

// unescape decodes the JSON escape at the start of b, which begins with a
// backslash. A malformed escape decodes as the backslash alone, so that
// decoding always advances; a lone surrogate decodes as U+FFFD.
func unescape(b []byte) (rune, int) {
	if len(b) < 2 {
		return '\\', 1
	}
	if c := escapes[b[1]]; c != 0 {
		return rune(c), 2
	}
	if b[1] != 'u' {
		return '\\', 1
	}
	r, ok := hex4(b[2:])
	if !ok {
		return '\\', 1
	}
	if utf16.IsSurrogate(r) {
		if r < 0xdc00 && len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
			if lo, ok := hex4(b[8:]); ok {
				if d := utf16.DecodeRune(r, lo); d != utf8.RuneError {
					return d, 12
				}
			}
		}
		return utf8.RuneError, 6
	}
	return r, 6
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
