package tokens

import (
	"encoding/binary"
	"math/bits"

	"github.com/tiktoken-go/tokenizer"
)

// vocabSet answers "is this byte string one token?" for an encoding's whole
// vocabulary, fast enough to ask for every piece of a request on the request
// path. It keeps a 16-bit fingerprint per entry in buckets of four, one
// uint64 each, at a load under one half: 1 MiB for o200k_base, 512 KiB for
// cl100k_base, small enough that the buckets of common words stay in the
// CPU's caches. A lookup is one load and a word-wide compare; a bucket
// overflows into the next only when full, which at this load is rare.
//
// A string that is not in the vocabulary is taken for one when a fingerprint
// in its bucket happens to match, about once in 20,000 lookups; it then
// counts one token instead of two or three, which an estimate can afford.
type vocabSet struct {
	buckets []uint64
	shift   uint // 64 - log2(len(buckets)): the bucket is the hash's top bits
	max     int  // the longest entry, in bytes
}

// maxVocabID bounds the token ids of the encodings here (o200k_base's
// highest is 200018); ids are dense, and a gap just fails to decode.
const maxVocabID = 1 << 18

const (
	lanes16 = 0x0001000100010001 // one in each 16-bit lane of a bucket
	high16  = 0x8000800080008000 // each lane's high bit
)

// newVocabSet reads the vocabulary out of codec, one id at a time through
// Decode, its only exported view. It runs once per encoding and takes a few
// tens of milliseconds.
func newVocabSet(codec tokenizer.Codec) *vocabSet {
	entries := make([]string, 0, maxVocabID)
	id := []uint{0}
	for i := range maxVocabID {
		id[0] = uint(i)
		s, err := codec.Decode(id)
		if err != nil || s == "" {
			continue
		}
		entries = append(entries, s)
	}
	n := 1 << bits.Len(uint(len(entries)/2)) // buckets: 4n slots, over twice the entries
	v := &vocabSet{buckets: make([]uint64, n), shift: uint(64 - bits.TrailingZeros(uint(n)))}
	for _, e := range entries {
		v.max = max(v.max, len(e))
		h := hashBytes([]byte(e))
		fp := h&0xffff | 1
		for i := int(h >> v.shift); ; i = (i + 1) & (n - 1) {
			w := v.buckets[i]
			if hasZero16(w ^ fp*lanes16) {
				break // the same fingerprint: the lookup finds it already
			}
			if k := freeLane(w); k >= 0 {
				v.buckets[i] = w | fp<<(16*k)
				break
			}
		}
	}
	return v
}

// has reports whether the byte string with hash h is in the vocabulary:
// whether its fingerprint is in its bucket or, if that is full, in the
// buckets after it up to one that is not.
func (v *vocabSet) has(h uint64) bool {
	fp := (h&0xffff | 1) * lanes16
	for i := int(h >> (v.shift & 63)); ; i = (i + 1) & (len(v.buckets) - 1) { // shift < 64: no check
		w := v.buckets[i]
		if hasZero16(w ^ fp) {
			return true
		}
		if hasZero16(w) {
			return false
		}
	}
}

// hasZero16 reports whether any 16-bit lane of x is zero.
func hasZero16(x uint64) bool { return (x-lanes16)&^x&high16 != 0 }

// freeLane returns the first empty lane of a bucket, or -1.
func freeLane(w uint64) int {
	for k := range 4 {
		if w>>(16*k)&0xffff == 0 {
			return k
		}
	}
	return -1
}

// hashBytes hashes a short byte string: its whole eight-byte words, then its
// tail (up to seven bytes) together with its length. Pieces average five
// bytes, so this is usually one mix. Because the length goes in last, the
// hashes of all the prefixes of a string cost one mix each given the state
// after its whole words, which is what greedy matching needs (see model.go).
func hashBytes(p []byte) uint64 {
	h := uint64(hashSeed)
	n := len(p)
	for len(p) >= 8 {
		h = mix(h ^ binary.LittleEndian.Uint64(p))
		p = p[8:]
	}
	var w uint64
	for i, c := range p {
		w |= uint64(c) << (8 * i)
	}
	return hashTail(h, w, n)
}

const hashSeed = 0x9e3779b97f4a7c15

// hashTail finishes a hash: h is the state after the whole words, w the
// tail bytes (zero above them), n the string's length. The tail fills at
// most seven bytes, so the length in the eighth cannot collide with it (for
// lengths under 256: nothing longer is ever looked up).
func hashTail(h, w uint64, n int) uint64 {
	return mix(h ^ w ^ uint64(n)<<56)
}

// mix is one multiply and one xor-shift: the index takes the product's top
// bits, which depend on every input bit, and the xor-shift brings them down
// into the fingerprint's low bits too.
func mix(h uint64) uint64 {
	h *= 0x9e3779b97f4a7c15
	return h ^ h>>32
}
