package tokens

import (
	"encoding/binary"
	"math/bits"
)

// The block engine: the split regexps for ASCII text as bit operations on
// 64-byte blocks. Finding pieces one at a time costs a chain of dependent
// operations and a mispredicted branch or two per piece, which on this
// estimate's budget is as much as the rest of the work together. Here a
// block's characters are classified into one 64-bit mask per class, the
// piece boundaries of the whole block are computed from the masks at once,
// and what is left per piece is its hash and a probe, which do not depend on
// each other from one piece to the next.
//
// A block starts at a piece boundary, and the rules need at most the
// character after a piece, so a block's boundaries are exact up to its
// 63rd byte; the piece running past that is the start of the next block.
// What the masks do not express (a non-ASCII character, a run of more than
// 15 digits, whitespace between two newlines of one run, a contraction
// across the block's end) is "trouble": the block's pieces before it are
// kept, and the per-piece path (scan.go) takes over until past it.

// Class flags, one per byte of a spread entry; see classify.
const (
	flagX  = iota // not ASCII, or an apostrophe: looked at one by one
	flagA         // a letter
	flagU         // an upper-case letter
	flagD         // a digit
	flagSP        // a space
	flagWS        // whitespace: \t \n \v \f \r and space
	flagN         // a newline: \n \r
	flagSL        // a slash, which o200k lets trail punctuation
)

// spread[c] has bit 8f set for each class flag f of byte c, so that ORing
// spread[c_j]<<j over the bytes c_0..c_7 of a word gives, in byte f, the
// word's mask of flag f.
var spread = func() (t [256]uint64) {
	for c := range 256 {
		set := func(f int) { t[c] |= 1 << (8 * f) }
		if c >= 0x80 || c == '\'' {
			set(flagX)
			continue
		}
		switch k := asciiClass[c]; k {
		case cLower, cUpper:
			set(flagA)
			if k == cUpper {
				set(flagU)
			}
		case cDigit:
			set(flagD)
		case cSpace, cNewline:
			set(flagWS)
			if c == ' ' {
				set(flagSP)
			}
			if k == cNewline {
				set(flagN)
			}
		}
		if c == '/' {
			set(flagSL)
		}
	}
	return t
}()

// classify returns the class masks of the 64 bytes of b: bit j of m[f] is
// set if byte j has flag f.
func classify(b []byte) (m [8]uint64) {
	b = b[:64]
	for k := range 8 {
		w := binary.LittleEndian.Uint64(b[8*k:])
		m[k] = spread[byte(w)] | spread[byte(w>>8)]<<1 | spread[byte(w>>16)]<<2 | spread[byte(w>>24)]<<3 |
			spread[byte(w>>32)]<<4 | spread[byte(w>>40)]<<5 | spread[byte(w>>48)]<<6 | spread[byte(w>>56)]<<7
	}
	// m[k] byte f is flag f's mask of word k; transpose the 8x8 matrix of
	// bytes so that m[f] byte k is.
	for k := range 4 {
		a, b := m[k], m[k+4]
		m[k], m[k+4] = a&0x00000000ffffffff|b<<32, a>>32|b&0xffffffff00000000
	}
	for _, k := range [4]int{0, 1, 4, 5} {
		a, b := m[k], m[k+2]
		m[k], m[k+2] = a&0x0000ffff0000ffff|(b&0x0000ffff0000ffff)<<16, a>>16&0x0000ffff0000ffff|b&0xffff0000ffff0000
	}
	for _, k := range [4]int{0, 2, 4, 6} {
		a, b := m[k], m[k+1]
		m[k], m[k+1] = a&0x00ff00ff00ff00ff|(b&0x00ff00ff00ff00ff)<<8, a>>8&0x00ff00ff00ff00ff|b&0xff00ff00ff00ff00
	}
	return m
}

// blockSpan is how many bytes from a block's start the engine reads: the
// block, the character after it, and the 16 bytes a piece's hash loads.
const blockSpan = 64 + 16

// blocks estimates the pieces of text from i, a piece boundary, a block at a
// time: whole blocks while they start before limit (at most
// len(text)-blockSpan) and, if final, the text's last block too when it is
// shorter than a block but at least 16 bytes long. It returns the estimate,
// the piece boundary it stopped at, and the position of the trouble that
// stopped it, or -1.
func (e *estimator) blocks(text []byte, i, limit int, final bool) (tokens, end, trouble int) {
	for i < limit {
		k, adv, t := e.block(text[i:i+blockSpan], blockSpan)
		tokens += k
		i += adv
		if t >= 0 {
			return tokens, i, i - adv + t
		}
		if adv == 0 {
			return tokens, i, -1 // a piece of 64 bytes or more
		}
	}
	if final && len(text)-i < 64 && len(text)-i >= 16 {
		// The last block, copied to where the engine may read past it.
		var buf [blockSpan]byte
		nb := copy(buf[:], text[i:])
		k, adv, t := e.block(buf[:], nb)
		tokens += k
		i += adv
		if t >= 0 {
			return tokens, i, i - adv + t
		}
	}
	return tokens, i, -1
}

// block estimates the pieces of blk that end in it: blk[:nb] is text, and
// if nb < 64 the text ends there; blk is blockSpan long. It returns the
// estimate, how far the pieces it estimated go (the start of the piece that
// runs past the block, or nb at the end of the text), and the lane of the
// trouble that stopped it, or -1.
func (e *estimator) block(blk []byte, nb int) (tokens, adv, trouble int) {
	blk = blk[:blockSpan]
	o200k := e.o200k
	m := classify(blk)
	x, a, u, d, sp, ws, n, sl := m[flagX], m[flagA], m[flagU], m[flagD], m[flagSP], m[flagWS], m[flagN], m[flagSL]
	next := spread[blk[64]] // the character after the block
	var past uint64         // lanes past the end of the text
	if nb < 64 {
		past = ^uint64(0) << nb
		x, a, u, d, sp, ws, n, sl = x&^past, a&^past, u&^past, d&^past, sp&^past, ws&^past, n&^past, sl&^past
		next = 0
	}

	// Apostrophes are ordinary punctuation unless they make a
	// contraction, fixed up below; anything else flagged X is trouble:
	// the first one ends what the block can decide.
	var apos uint64
	t := 65 // the first trouble lane; 64 is the character after the block
	for xs := x; xs != 0; xs &= xs - 1 {
		j := bits.TrailingZeros64(xs)
		if blk[j] != '\'' {
			t = j
			break
		}
		apos |= 1 << j
	}
	if t == 65 && next&(1<<(8*flagX)) != 0 && blk[64] != '\'' {
		t = 64
	}
	p := (^(a | d | ws | x) | apos) &^ past // punctuation, symbols, controls

	// Trailing newlines (and, in o200k, slashes) after punctuation belong
	// to its piece: ` ?[^\s\p{L}\p{N}]+[\r\n/]*`. They are the runs of such
	// characters from a newline right after punctuation.
	trail := n
	if o200k {
		trail |= sl
	}
	absorbed := fill(n&(p<<1), trail)
	p &^= absorbed
	ws &^= absorbed
	n &^= absorbed

	// Letters: a piece starts where a run of letters does and, in o200k,
	// at an upper-case letter after a lower-case one; but one character
	// earlier if that is a prefix: whitespace other than a newline, or
	// punctuation that does not continue punctuation or follow a space.
	// (The prefix is a boundary by the whitespace and punctuation rules.)
	ls := a &^ (a << 1)
	if o200k {
		ls |= u & ((a &^ u) << 1)
	}
	prefix := ws&^n | p&^((p|sp)<<1)
	b := ls &^ (prefix << 1)

	// Punctuation: a piece starts where a run does, unless a space before
	// it joins it (the space is a boundary as whitespace).
	ps := p &^ (p << 1)
	b |= ps &^ (sp << 1)

	// Digits: groups of up to three from the start of a run.
	ds := d&^(d<<1) | d&1
	b |= ds
	in3 := d & (d << 1) & (d << 2) // a digit after two digits
	for g, k := ds, 0; ; k++ {
		g = g << 3 & in3
		if k == 4 {
			if g != 0 {
				t = min(t, bits.TrailingZeros64(g)) // more than 15 digits
			}
			break
		}
		b |= g
	}

	// Whitespace: a piece starts where a run does; after the run's last
	// newline, if more whitespace follows; and at the run's last character
	// if the run is longer than one and something other than whitespace
	// follows: that character goes with what follows, or stands alone. At
	// the end of the text the run is one piece.
	q := ws &^ n // whitespace other than newlines
	wsNext := ws>>1 | past>>1 | next>>(8*flagWS)&1<<63
	if nb < 64 {
		wsNext |= 1 << 63
	}
	afterN := q & (n << 1)
	b |= ws&^(ws<<1) | afterN | q&(q<<1)&^wsNext
	if afterN != 0 {
		// "After the last newline" holds if no newline follows in the
		// same run, which the block must be able to see.
		rest := fill(afterN, q) // one seed per run, at its start
		after := rest << 1 &^ rest
		if after&(n|x&^apos) != 0 || rest>>63 != 0 && next&(1<<(8*flagWS)|1<<(8*flagX)) != 0 {
			t = min(t, bits.TrailingZeros64(afterN))
		}
	}

	// Contractions, one apostrophe at a time.
	for as := apos; as != 0; as &= as - 1 {
		j := bits.TrailingZeros64(as)
		k := contraction(blk[:max(nb, j)], j)
		if k == 0 {
			continue
		}
		if j+k > 64 {
			t = min(t, j) // the next block decides
			continue
		}
		if o200k {
			// A suffix of the letters before it, if there are any.
			if j == 0 || a>>(j-1)&1 == 0 {
				continue
			}
			b &^= 1<<j | 1<<(j+1) | 1<<(j+2)
		} else {
			// A piece of its own, if the apostrophe starts one: not after
			// punctuation or a space, which it would continue.
			if j > 0 && (p|sp)>>(j-1)&1 != 0 {
				continue
			}
			b &^= 1<<(j+1) | 1<<(j+2)
		}
		b |= 1 << (j + k)
	}

	// The pieces that end at boundaries before the trouble (a boundary
	// depends on the character after it too) and, at the end of the
	// text, the last one.
	valid := b &^ 1 &^ past
	if t <= 64 {
		if t < 2 {
			return 0, 0, t
		}
		valid &= 1<<(t-1) - 1
	} else if nb < 64 {
		valid |= 1 << nb // the end of the text
	}
	start := 0
	vocab := e.vocab
	for ; valid != 0; valid &= valid - 1 {
		end := bits.TrailingZeros64(valid)
		// lookup, by hand: a call per piece costs more than the lookup.
		n := end - start
		var h uint64
		switch w1 := binary.LittleEndian.Uint64(blk[start:]); {
		case n < 8:
			h = hashTail(hashSeed, w1&(1<<(8*n)-1), n)
		case n < 16:
			w2 := binary.LittleEndian.Uint64(blk[start+8:])
			h = hashTail(mix(hashSeed^w1), w2&(1<<(8*(n-8))-1), n)
		default:
			h = hashBytes(blk[start:end])
		}
		if vocab.has(h) {
			tokens++
		} else {
			tokens += e.oov(blk[start:end], pieceKind(blk[start:end]))
		}
		start = end
	}
	if t <= 64 {
		return tokens, start, t
	}
	return tokens, start, -1
}

// fill returns the lanes of mask reachable from a seed lane by moving up
// through lanes of mask: the seeds' runs from each seed on. seeds must be in
// mask. It is a Kogge-Stone fill, exact however many seeds a run has.
func fill(seeds, mask uint64) uint64 {
	g, m := seeds, mask
	g |= m & (g << 1)
	m &= m << 1
	g |= m & (g << 2)
	m &= m << 2
	g |= m & (g << 4)
	m &= m << 4
	g |= m & (g << 8)
	m &= m << 8
	g |= m & (g << 16)
	m &= m << 16
	g |= m & (g << 32)
	return g
}

// pieceKind tells the greedy estimate what an ASCII piece is made of.
func pieceKind(p []byte) kind {
	if fastClass[p[0]]&fLetter != 0 || len(p) > 1 && fastClass[p[1]]&fLetter != 0 {
		return kLetters
	}
	return kPunct
}
