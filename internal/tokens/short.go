package tokens

import "encoding/binary"

// Short pieces, under 16 bytes: nearly all of them. Held in two registers
// rather than a buffer, a piece is hashed for the vocabulary, and matched
// greedily if the vocabulary lacks it, without copying or looping over its
// bytes.

// piece16 is a piece of under 16 bytes in two little-endian words: lo its
// first eight bytes, hi the rest, zero past its n bytes.
type piece16 struct {
	lo, hi uint64
	n      int
}

// load16 returns the first n bytes of b, n < 16, as a piece16. b must have
// 16 bytes: the piece's and whatever follows, which is masked off.
func load16(b []byte, n int) piece16 {
	m := &pieceMasks[n]
	return piece16{binary.LittleEndian.Uint64(b[0:8]) & m[0], binary.LittleEndian.Uint64(b[8:16]) & m[1], n}
}

// lowBytes[k] masks the low k bytes of a word.
var lowBytes = [9]uint64{0, 0xff, 0xffff, 0xffffff, 0xffffffff, 0xffffffffff, 0xffffffffffff, 0xffffffffffffff, 0xffffffffffffffff}

// pieceMasks[n] masks the words of a piece16 of n bytes.
var pieceMasks = func() (t [16][2]uint64) {
	for n := range t {
		t[n] = [2]uint64{lowBytes[min(n, 8)], lowBytes[max(n, 8)-8]}
	}
	return t
}()

// hash is hashBytes of the piece.
func (p piece16) hash() uint64 {
	if p.n < 8 {
		return hashTail(hashSeed, p.lo, p.n)
	}
	return hashTail(mix(hashSeed^p.lo), p.hi, p.n)
}

// short is oov for a piece16: the greedy match of longest, which for a
// piece this short no maximum prefix length limits.
func (e *estimator) short(p piece16) int {
	var cut uint32 // bit l: no token of o200k ends before byte l
	if e.o200k {
		cut = continuations(p.lo) | continuations(p.hi)<<8
	}
	tokens := 0
	top := p.n - 1 // the whole piece is not a token
	for p.n > 0 {
		l := e.shortest(p, top, cut)
		tokens++
		// Drop the token's l bytes from the front; the shifts are of
		// whole bytes, and "&63" tells the compiler they are under 64.
		if l >= 8 {
			p.lo, p.hi = p.hi>>(8*uint(l-8)&63), 0
		} else {
			p.lo, p.hi = p.lo>>(8*uint(l)&63)|p.hi<<(64-8*uint(l)&63), p.hi>>(8*uint(l)&63)
		}
		p.n -= l
		cut >>= l
		top = p.n
	}
	return tokens
}

// shortest is longest for short: the length of the longest prefix of p of
// at most top bytes that is a token and does not end before a byte in cut;
// 1 if none is.
func (e *estimator) shortest(p piece16, top int, cut uint32) int {
	h1 := mix(hashSeed ^ p.lo) // the hash state after the first word
	for l := top; l >= 8; l-- {
		if cut&(1<<l) == 0 && e.vocab.has(hashTail(h1, p.hi&lowBytes[l-8], l)) {
			return l
		}
	}
	for l := min(top, 7); l > 1; l-- {
		if cut&(1<<l) == 0 && e.vocab.has(hashTail(hashSeed, p.lo&lowBytes[l], l)) {
			return l
		}
	}
	return 1
}

// continuations returns a mask of the bytes of w that continue a UTF-8
// sequence (10xxxxxx), bit k for byte k.
func continuations(w uint64) uint32 {
	m := w &^ (w << 1) & 0x8080808080808080 // bit 7 set, bit 6 clear
	return uint32((m >> 7) * 0x0102040810204080 >> 56)
}
