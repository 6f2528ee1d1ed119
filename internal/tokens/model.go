package tokens

import "encoding/binary"

// Pieces that are not one vocabulary entry (a few percent of the pieces of
// English, a tenth of those of code, a third of cl100k's French or German,
// nearly all of Chinese or Japanese, whose pieces are whole clauses) are
// estimated by greedy longest-prefix matching against the vocabulary: take
// the longest prefix that is a token, count one, repeat on the rest. BPE
// merges bottom-up by rank rather than left to right, but on real text the
// two rarely disagree by more than a token a word, and the errors go both
// ways: within 1-2% of the exact count of these pieces on the calibration
// corpus (see estimate_test.go), where length-based formulas were off by 5-7%
// on German and by more on CJK.

const (
	// greedyLetters is the longest prefix tried in a piece of letters, in
	// bytes. Longer tokens exist, but rarely as a prefix of a longer word;
	// trying them costs probes and buys nothing measurable.
	greedyLetters = 16
	// greedyOther is the longest prefix tried in punctuation and
	// whitespace, whose long tokens are runs: indentation, "-----",
	// "=====", "////".
	greedyOther = 32
	// chunk is how much of a piece is matched at a time.
	chunk = 256
)

// maxGreedy bounds the greedy work on one piece: of a longer piece, only
// the first maxGreedy bytes are matched, and the count is scaled to its
// length. Real text has no such pieces (words, numbers and punctuation are
// short, and even a CJK clause is rarely a kilobyte), but a body of random
// letters is one piece of any length, and matching it all would cost
// several times a normal body.
const maxGreedy = 1024

// oov estimates a piece that is not in the vocabulary. A piece of under
// 16 bytes, as nearly all are, is matched in registers (see short); a
// longer one is copied a chunk at a time into a buffer with zeros after it,
// so that probes can read whole eight-byte words past its end.
func (e *estimator) oov(p []byte, k kind) int {
	if len(p) < 16 {
		var buf [16]byte
		copy(buf[:], p)
		return e.short(load16(buf[:], len(p)))
	}
	if len(p) > maxGreedy {
		n := e.oov(p[:maxGreedy], k)
		return (n*len(p) + maxGreedy/2) / maxGreedy
	}
	return e.greedy(p, k)
}

// greedy is the greedy estimate of p, matched a chunk at a time with
// longest.
func (e *estimator) greedy(p []byte, k kind) int {
	maxLen := greedyLetters
	if k != kLetters {
		maxLen = greedyOther
	}
	var buf [chunk + greedyOther + 32]byte
	have, tokens := 0, 0
	for {
		n := copy(buf[have:chunk+greedyOther], p)
		p = p[n:]
		have += n
		clear(buf[have : have+32])
		// Match while a full-length prefix is available, or to the end.
		pos := 0
		for pos < have && (have-pos >= maxLen || len(p) == 0) {
			pos += e.longest(buf[pos:], have-pos, maxLen)
			tokens++
		}
		if len(p) == 0 {
			return tokens
		}
		have = copy(buf[:], buf[pos:have])
	}
}

// longest returns the length of the longest prefix of s[:avail] of at most
// maxLen bytes that is a token; 1 if none is, since every byte is. s must
// have 32 readable bytes, zero after avail. For o200k_base only prefixes that
// end on a character boundary are tried, a third of the probes for CJK text;
// a rare character that is not a token then counts as a lone byte plus the
// rest, two tokens, as in BPE. cl100k_base splits so many CJK characters
// across tokens that it needs every prefix.
func (e *estimator) longest(s []byte, avail, maxLen int) int {
	var (
		w [4]uint64
		h [4]uint64 // h[k]: the hash state after k whole words
	)
	h[0] = hashSeed
	for k := range w {
		w[k] = binary.LittleEndian.Uint64(s[8*k:])
		if k < 3 {
			h[k+1] = mix(h[k] ^ w[k])
		}
	}
	for l := min(avail, maxLen); l > 1; l-- {
		if e.o200k && l < avail && s[l]&0xc0 == 0x80 {
			continue // inside a UTF-8 sequence
		}
		k := l >> 3
		if k == 4 {
			// l == 32: four whole words and an empty tail.
			if e.vocab.has(hashTail(mix(h[3]^w[3]), 0, l)) {
				return l
			}
			continue
		}
		tail := w[k] & (1<<(8*(l&7)) - 1)
		if e.vocab.has(hashTail(h[k], tail, l)) {
			return l
		}
	}
	return 1
}
