package tokens

import (
	"unicode"
	"unicode/utf8"
)

// This file emulates the tokenizers' pre-tokenization: the split regexp that
// cuts text into pieces before BPE runs on each piece independently. Getting
// the pieces right is what makes the estimate good, because most pieces are a
// single vocabulary entry and can be looked up instead of estimated.
//
// o200k_base:
//
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// cl100k_base:
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//	| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// The splitter here handles any text, rune by rune, and is the reference the
// faster paths for ASCII (scan.go, block.go) are tested against.

// class is a character's class as far as the split regexps are concerned.
type class uint8

const (
	cEnd     class = iota // end of text
	cOther                // [^\s\p{L}\p{N}]: punctuation, symbols, controls
	cSpace                // \s other than \r and \n
	cNewline              // \r, \n
	cDigit                // \p{N}
	cLower                // \p{Ll}
	cUpper                // \p{Lu}, \p{Lt}
	cBoth                 // \p{Lm}, \p{Lo}: in both of o200k's case sets
	cMark                 // \p{M} in o200k: in both case sets, and continues punctuation
)

// asciiClass classifies ASCII bytes.
var asciiClass = func() (t [utf8.RuneSelf]class) {
	for c := range utf8.RuneSelf {
		switch {
		case c == '\r' || c == '\n':
			t[c] = cNewline
		case c == ' ' || c == '\t' || c == '\v' || c == '\f':
			t[c] = cSpace
		case c >= '0' && c <= '9':
			t[c] = cDigit
		case c >= 'a' && c <= 'z':
			t[c] = cLower
		case c >= 'A' && c <= 'Z':
			t[c] = cUpper
		default:
			t[c] = cOther
		}
	}
	return t
}()

// piece is one pre-tokenization piece, b[start:end].
type piece struct {
	start, end int
	kind       kind
}

// kind is the regexp alternative that produced a piece.
type kind uint8

const (
	kLetters kind = iota // an optional prefix character and a run of letters
	kDigits              // one to three digits
	kPunct               // an optional space, punctuation, trailing newlines
	kSpace               // whitespace
)

// splitter cuts UTF-8 text into pieces.
type splitter struct {
	b     []byte
	i     int
	o200k bool // o200k rules: case-split words, contractions attached, marks are letters
}

// at classifies the character at b[i] and returns its width.
func (s *splitter) at(i int) (class, int) {
	if i >= len(s.b) {
		return cEnd, 0
	}
	if c := s.b[i]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, w := utf8.DecodeRune(s.b[i:])
	if r == utf8.RuneError && w == 1 {
		// Invalid UTF-8: a byte the tokenizer sees as punctuation.
		return cOther, 1
	}
	return s.classify(r), w
}

// classify classifies a non-ASCII rune.
func (s *splitter) classify(r rune) class {
	switch {
	case r >= 0x4e00 && r <= 0x9fff, r >= 0xac00 && r <= 0xd7a3,
		r >= 0x3041 && r <= 0x3096, r >= 0x30a1 && r <= 0x30fa:
		// The bulk of Chinese, Japanese and Korean text, tested first: Lo,
		// in both case sets.
		return cBoth
	case unicode.IsLower(r):
		return cLower
	case unicode.IsUpper(r) || unicode.IsTitle(r):
		return cUpper
	case unicode.IsLetter(r):
		return cBoth
	case unicode.IsMark(r):
		if s.o200k {
			return cMark
		}
		return cOther // cl100k's letters are \p{L} alone
	case unicode.IsNumber(r):
		return cDigit
	case unicode.IsSpace(r): // NEL (U+0085) included: \s, but not [\r\n]
		return cSpace
	}
	return cOther
}

func isLetter(c class) bool { return c == cLower || c == cUpper || c == cBoth || c == cMark }

// next returns the next piece, or false at the end of the text.
func (s *splitter) next() (p piece, ok bool) {
	i := s.i
	c, w := s.at(i)
	switch {
	case c == cEnd:
		return p, false
	case isLetter(c):
		p = s.letters(i, i)
	case c == cDigit:
		j := i + w
		for range 2 {
			c, w := s.at(j)
			if c != cDigit {
				break
			}
			j += w
		}
		p = piece{start: i, end: j, kind: kDigits}
	case c == cOther && !s.o200k && s.contraction(i) > 0:
		p = piece{start: i, end: i + s.contraction(i), kind: kLetters}
	case c == cNewline:
		p = s.space(i)
	default: // cOther or cSpace: maybe a prefix, else punctuation or space
		c2, _ := s.at(i + w)
		switch {
		case isLetter(c2):
			p = s.letters(i, i+w)
		case c == cOther || s.b[i] == ' ' && c2 == cOther:
			p = s.punct(i)
		default:
			p = s.space(i)
		}
	}
	s.i = p.end
	return p, true
}

// letters scans a letter piece whose letters start at j (i < j when there is
// a prefix character).
func (s *splitter) letters(i, j int) piece {
	if s.o200k {
		// [UB]*[LB]+ or [UB]+[LB]*: the longest run of upper case, then the
		// longest run of lower case. Letters in both sets (scripts without
		// case, marks) continue either run.
		for {
			c, w := s.at(j)
			if c != cUpper && c != cBoth && c != cMark {
				break
			}
			j += w
		}
		for {
			c, w := s.at(j)
			if c != cLower && c != cBoth && c != cMark {
				break
			}
			j += w
		}
		j += s.contraction(j)
	} else {
		for {
			c, w := s.at(j)
			if !isLetter(c) {
				break
			}
			j += w
		}
	}
	return piece{start: i, end: j, kind: kLetters}
}

// contraction returns the length of the English contraction ('s, 't, 're,
// 've, 'm, 'll, 'd, case-insensitive) at b[j], or 0.
func (s *splitter) contraction(j int) int { return contraction(s.b, j) }

func contraction(b []byte, j int) int {
	if j+1 >= len(b) || b[j] != '\'' {
		return 0
	}
	switch b[j+1] | 0x20 {
	case 's', 't', 'm', 'd':
		return 2
	case 'r', 'v':
		if j+2 < len(b) && b[j+2]|0x20 == 'e' {
			return 3
		}
	case 'l':
		if j+2 < len(b) && b[j+2]|0x20 == 'l' {
			return 3
		}
	}
	return 0
}

// punct scans ` ?[^\s\p{L}\p{N}]+[\r\n/]*` (o200k; cl100k without the slash).
func (s *splitter) punct(i int) piece {
	j := i
	if s.b[j] == ' ' {
		j++
	}
	for {
		c, w := s.at(j)
		if c != cOther && c != cMark {
			break
		}
		j += w
	}
	for j < len(s.b) && (s.b[j] == '\n' || s.b[j] == '\r' || s.o200k && s.b[j] == '/') {
		j++
	}
	return piece{start: i, end: j, kind: kPunct}
}

// space scans a whitespace run: through its last newline if it has one
// (\s*[\r\n]+); else all of it at the end of the text; else all but its last
// character, which belongs to the next piece (\s+(?!\S)), unless that is all
// there is (\s+).
func (s *splitter) space(i int) piece {
	j, last, nl := i, i, -1
	for {
		c, w := s.at(j)
		if c != cSpace && c != cNewline {
			if c == cEnd {
				last = j
			}
			break
		}
		last = j
		j += w
		if c == cNewline {
			nl = j
		}
	}
	switch {
	case nl >= 0:
		j = nl
	case last > i:
		j = last
	}
	return piece{start: i, end: j, kind: kSpace}
}
