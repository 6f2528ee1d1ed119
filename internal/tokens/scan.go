package tokens

import "encoding/binary"

// scan is the estimate's loop over a text: the block engine (block.go) for
// as much as it can decide, and piece by piece (here, with the splitter of
// split.go for anything that is not ASCII) for the rest: the text's tail in
// a chunk, the pieces around a non-ASCII character, pieces of 64 bytes or
// more. Both find the same pieces as the split regexps; the tests hold them
// to it.

// Byte classes of the piece-by-piece path, as bits so that a test is one AND.
const (
	fLower   = 1 << iota // a-z
	fUpper               // A-Z
	fDigit               // 0-9
	fSpace               // ' ', \t, \v, \f
	fNewline             // \r, \n
	fOther               // ASCII punctuation, symbols and controls
	fWide                // a byte of a multi-byte character: the splitter decides

	fLetter = fLower | fUpper
)

var fastClass = func() (t [256]uint8) {
	for c := range 256 {
		if c >= 0x80 {
			t[c] = fWide
			continue
		}
		t[c] = [...]uint8{
			cOther: fOther, cSpace: fSpace, cNewline: fNewline, cDigit: fDigit, cLower: fLower, cUpper: fUpper,
		}[asciiClass[c]]
	}
	return t
}()

// margin is how far past a piece the split rules may look: one character
// of up to four bytes, or the two after an apostrophe. In a chunk of a longer
// text, the pieces that end within it of the chunk's end wait for the next.
const margin = 4

// scan estimates the tokens of text. If final is false, text is a chunk of
// a longer text: scan stops at the first piece that ends within margin of
// the chunk's end, since what follows could change it, and returns where
// that piece starts; else it returns len(text).
func (e *estimator) scan(text []byte, final bool) (tokens, stop int) {
	t := &fastClass
	n := len(text)
	blockEnd := n - blockSpan // where whole blocks stop
	if !final {
		blockEnd -= margin
	}
	// The text's last block, shorter than a block, is worth the engine's
	// setup only if it has a few pieces in it.
	tailStart, tailEnd := n-64, n-16
	if !final {
		tailStart = n
	}
	retry := 0 // where the block engine may try again after trouble
	for i := 0; i < n; {
		if i >= retry && (i < blockEnd || i > tailStart && i <= tailEnd) {
			k, j, trouble := e.blocks(text, i, blockEnd, final)
			tokens += k
			if i = j; i >= n {
				break
			}
			switch {
			case trouble >= 0:
				retry = trouble + 1
			case i < blockEnd || i > tailStart && i <= tailEnd:
				retry = i + 1 // a piece too long for a block
			}
		}

		// One piece.
		c := t[text[i]]
		end, k := -1, kLetters
		switch {
		case c&fLetter != 0:
			end = e.letters(text, i)
		case c&fDigit != 0:
			end, k = i+1, kDigits
			for end < n && end < i+3 && t[text[end]]&fDigit != 0 {
				end++
			}
			if end < n && end < i+3 && t[text[end]]&fWide != 0 {
				end = -1 // maybe a digit of another script, in the same group
			}
		case c&(fOther|fSpace) != 0:
			var next uint8
			if i+1 < n {
				next = t[text[i+1]]
			}
			switch {
			case !e.o200k && text[i] == '\'' && contraction(text, i) > 0:
				// cl100k tries contractions first, even before letters.
				end = i + contraction(text, i)
			case next&fLetter != 0:
				end = e.letters(text, i+1) // after a prefix character
			case next&fWide != 0:
				// Maybe a letter, maybe not: the splitter decides.
			case c&fOther != 0 || text[i] == ' ' && next&fOther != 0:
				end, k = e.punct(text, i), kPunct
			default:
				end, k = space(text, i), kSpace
			}
		case c&fNewline != 0:
			end, k = space(text, i), kSpace
		}
		if end < 0 {
			s := splitter{b: text, i: i, o200k: e.o200k}
			p, _ := s.next()
			end, k = p.end, p.kind
		}
		if !final && end+margin > n {
			return tokens, i
		}
		tokens += e.piece(text, i, end, k)
		i = end
	}
	return tokens, n
}

// letters returns the end of the ASCII letters at text[j], or -1 if a
// non-ASCII character follows them, which may be a letter too.
func (e *estimator) letters(text []byte, j int) int {
	t := &fastClass
	n := len(text)
	if e.o200k {
		for j < n && t[text[j]]&fUpper != 0 {
			j++
		}
		for j < n && t[text[j]]&fLower != 0 {
			j++
		}
		if j < n && text[j] == '\'' {
			return j + contraction(text, j)
		}
	} else {
		for j < n && t[text[j]]&fLetter != 0 {
			j++
		}
	}
	if j < n && t[text[j]]&fWide != 0 {
		return -1
	}
	return j
}

// punct returns the end of the punctuation piece at text[i], or -1.
func (e *estimator) punct(text []byte, i int) int {
	t := &fastClass
	n := len(text)
	j := i
	if text[j] == ' ' {
		j++
	}
	for j < n && t[text[j]]&fOther != 0 {
		j++
	}
	if j < n && t[text[j]]&fWide != 0 {
		return -1
	}
	for j < n && (t[text[j]]&fNewline != 0 || e.o200k && text[j] == '/') {
		j++
	}
	return j
}

// space returns the end of the whitespace piece at text[i], or -1.
func space(text []byte, i int) int {
	t := &fastClass
	n := len(text)
	j, nl := i, -1
	for ; j < n; j++ {
		c := t[text[j]]
		if c&(fSpace|fNewline) == 0 {
			if c&fWide != 0 {
				return -1 // maybe more whitespace
			}
			break
		}
		if c&fNewline != 0 {
			nl = j + 1
		}
	}
	switch {
	case nl >= 0:
		return nl
	case j == n || j-i == 1:
		return j
	}
	return j - 1
}

// piece estimates the piece text[start:end] of kind k: one token if it is
// in the vocabulary, else the greedy estimate.
func (e *estimator) piece(text []byte, start, end int, k kind) int {
	m := end - start
	if m == 1 || k == kDigits && m <= 3 {
		// Every byte is a token, and so is every group of up to three digits.
		return 1
	}
	if m <= e.vocab.max && e.vocab.has(hashPiece(text, start, end)) {
		return 1
	}
	return e.oov(text[start:end], k)
}

// hashPiece is hashBytes(text[start:end]), reading whole words past the end
// of short pieces where text has the bytes, which saves the byte loop.
func hashPiece(text []byte, start, end int) uint64 {
	m := end - start
	switch {
	case m < 8 && start+8 <= len(text):
		w := binary.LittleEndian.Uint64(text[start:]) & (1<<(8*m) - 1)
		return hashTail(hashSeed, w, m)
	case m >= 8 && m < 16 && start+16 <= len(text):
		h := mix(hashSeed ^ binary.LittleEndian.Uint64(text[start:]))
		w := binary.LittleEndian.Uint64(text[start+8:]) & (1<<(8*(m-8)) - 1)
		return hashTail(h, w, m)
	}
	return hashBytes(text[start:end])
}
