package tokens

import (
	"bytes"
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
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case '"':
			s := w.b[start:w.i]
			w.i++
			return s
		case '\\':
			w.i++
		}
		w.i++
	}
	w.i = len(w.b)
	return w.b[start:]
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
	q    int  // the next unescaped-looking quote at or after i, or -1 if not searched yet
	done bool // at the end: the closing quote is consumed, or src ended
}

// fill decodes into buf[have:] until the buffer is full or the string ends,
// and returns the new fill level.
func (d *decoder) fill(buf []byte, have int) int {
	room := len(buf) - utf8.UTFMax // an escape decodes to at most UTFMax bytes
	for have < room {
		if d.i >= len(d.src) {
			d.done = true
			return have
		}
		if d.q < d.i {
			d.q = bytes.IndexByte(d.src[d.i:], '"')
			if d.q < 0 {
				d.q = len(d.src)
			} else {
				d.q += d.i
			}
		}
		seg := d.src[d.i:d.q]
		if bs := bytes.IndexByte(seg, '\\'); bs >= 0 {
			seg = seg[:bs]
		}
		n := copy(buf[have:room], seg)
		have += n
		d.i += n
		switch {
		case n < len(seg):
			return have // full
		case d.i == d.q:
			d.i = min(d.i+1, len(d.src)) // the closing quote
			d.done = true
			return have
		case d.i < len(d.src):
			r, w := unescape(d.src[d.i:])
			have += utf8.EncodeRune(buf[have:], r)
			d.i += w
		}
	}
	return have
}

// unescape decodes the JSON escape at the start of b, which begins with a
// backslash. A malformed escape decodes as the backslash alone, so that
// decoding always advances; a lone surrogate decodes as U+FFFD.
func unescape(b []byte) (rune, int) {
	if len(b) < 2 {
		return '\\', 1
	}
	switch b[1] {
	case 'n':
		return '\n', 2
	case 't':
		return '\t', 2
	case 'r':
		return '\r', 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case '"', '\\', '/':
		return rune(b[1]), 2
	case 'u':
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
	return '\\', 1
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
