package tokens

import "math/bits"

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
	// Byte f of word k is flag f's mask of the eight bytes b[8k:8k+8].
	m0, m1, m2, m3 := flags8(b[0:8]), flags8(b[8:16]), flags8(b[16:24]), flags8(b[24:32])
	m4, m5, m6, m7 := flags8(b[32:40]), flags8(b[40:48]), flags8(b[48:56]), flags8(b[56:64])
	// Transpose the 8x8 matrix of bytes so that byte k of word f is: swap
	// the off-diagonal halves, then quarters, then single bytes.
	m0, m4 = swap(m0, m4, 32, 0x00000000ffffffff)
	m1, m5 = swap(m1, m5, 32, 0x00000000ffffffff)
	m2, m6 = swap(m2, m6, 32, 0x00000000ffffffff)
	m3, m7 = swap(m3, m7, 32, 0x00000000ffffffff)
	m0, m2 = swap(m0, m2, 16, 0x0000ffff0000ffff)
	m1, m3 = swap(m1, m3, 16, 0x0000ffff0000ffff)
	m4, m6 = swap(m4, m6, 16, 0x0000ffff0000ffff)
	m5, m7 = swap(m5, m7, 16, 0x0000ffff0000ffff)
	m0, m1 = swap(m0, m1, 8, 0x00ff00ff00ff00ff)
	m2, m3 = swap(m2, m3, 8, 0x00ff00ff00ff00ff)
	m4, m5 = swap(m4, m5, 8, 0x00ff00ff00ff00ff)
	m6, m7 = swap(m6, m7, 8, 0x00ff00ff00ff00ff)
	return [8]uint64{m0, m1, m2, m3, m4, m5, m6, m7}
}

// flags8 returns the class flags of the eight bytes of w: byte f of the
// result is flag f's mask of them.
func flags8(w []byte) uint64 {
	w = w[:8]
	return spread[w[0]] | spread[w[1]]<<1 | spread[w[2]]<<2 | spread[w[3]]<<3 |
		spread[w[4]]<<4 | spread[w[5]]<<5 | spread[w[6]]<<6 | spread[w[7]]<<7
}

// swap exchanges the high part of each field of a with the low part of
// the same field of b, the fields being 2s bits wide and lo masking their
// low halves.
func swap(a, b uint64, s uint, lo uint64) (uint64, uint64) {
	t := (a>>s ^ b) & lo
	return a ^ t<<s, b ^ t
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
	trouble = -1
	if t <= 64 {
		trouble = t
		valid &= 1<<max(t-1, 0) - 1
	} else if nb < 64 {
		valid |= 1 << nb // the end of the text
	}
	if valid == 0 {
		return 0, 0, trouble
	}

	// Each boundary in valid ends a piece that starts at the boundary
	// before it, or at 0. A piece of one byte, or of digits (at most
	// three), is one token: a fifth of the pieces of code and up to half
	// of those of data, counted together here, without a branch each.
	last := 63 - bits.LeadingZeros64(valid)
	starts := (valid | 1) &^ (1 << last)
	one := starts & (valid>>1 | d)
	tokens = bits.OnesCount64(one)

	// The others are one token if the vocabulary has them, as most are:
	// they are looked up in a loop of their own, which has no calls, so
	// that the compiler keeps its state in registers. Those it lacks are
	// estimated after.
	var missing uint64 // the starts of the pieces the vocabulary lacks
	for rest := starts &^ one; rest != 0; rest &= rest - 1 {
		first := rest & -rest
		start := bits.TrailingZeros64(first)
		end := bits.TrailingZeros64(valid &^ (first<<1 - 1)) // the next boundary
		// The piece's words, read straight from the block: it has 16
		// bytes after any piece's start.
		if n := end - start; n < 16 && e.vocab.has(load16(blk[start:start+16], n).hash()) {
			tokens++
		} else {
			missing |= first
		}
	}
	for ; missing != 0; missing &= missing - 1 {
		first := missing & -missing
		start := bits.TrailingZeros64(first)
		end := bits.TrailingZeros64(valid &^ (first<<1 - 1))
		if n := end - start; n < 16 {
			tokens += e.short(load16(blk[start:start+16], n))
		} else {
			tokens += e.piece(blk, start, end, pieceKind(blk[start:end]))
		}
	}
	return tokens, last, trouble
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
