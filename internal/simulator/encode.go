package simulator

import (
	"math/rand/v2"
	"strconv"
	"unicode/utf8"
)

// The simulator writes its JSON by hand: keys come out in the order Azure sends
// them (alphabetical), the constant parts are shared byte strings, and a
// response costs a handful of appends into a pooled buffer instead of
// reflection over throwaway structs.

// appendString appends s as a JSON string literal. Invalid UTF-8 is replaced by
// U+FFFD, as encoding/json does.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript parsers.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func appendInt(b []byte, v int) []byte { return strconv.AppendInt(b, int64(v), 10) }

// appendKey appends `"key":` — key must not need escaping.
func appendKey(b []byte, key string) []byte {
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newCompletionID returns prefix followed by 29 random alphanumerics, the shape
// of Azure's ids ("chatcmpl-B1eFf135hgAWyKJT6ry5iFMcwAf4D").
func newCompletionID(prefix string) string {
	b := make([]byte, len(prefix)+29)
	copy(b, prefix)
	for i := len(prefix); i < len(b); {
		v := rand.Uint64()
		for j := 0; j < 10 && i < len(b); j++ {
			b[i] = idAlphabet[v%uint64(len(idAlphabet))]
			v /= uint64(len(idAlphabet))
			i++
		}
	}
	return string(b)
}

// newUUID returns a random (version 4) UUID string, the format of
// apim-request-id and x-request-id.
func newUUID() string {
	const hex = "0123456789abcdef"
	hi, lo := rand.Uint64(), rand.Uint64()
	hi = hi&^(0xf<<12) | 0x4<<12 // version 4
	lo = lo&^(0x3<<62) | 0x2<<62 // RFC 4122 variant
	var u [36]byte
	pos := 0
	put := func(v uint64, nibbles int) {
		for k := nibbles - 1; k >= 0; k-- {
			u[pos] = hex[(v>>(4*uint(k)))&0xf]
			pos++
		}
	}
	put(hi>>32, 8)
	u[pos] = '-'
	pos++
	put(hi>>16, 4)
	u[pos] = '-'
	pos++
	put(hi, 4)
	u[pos] = '-'
	pos++
	put(lo>>48, 4)
	u[pos] = '-'
	pos++
	put(lo, 12)
	return string(u[:])
}

// FNV-1a, used to seed deterministic outputs from request content.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	// A separator, so ("ab","c") and ("a","bc") differ.
	h ^= 0xff
	h *= fnvPrime
	return h
}

func fnvUint(h, v uint64) uint64 {
	for k := 0; k < 8; k++ {
		h ^= v & 0xff
		h *= fnvPrime
		v >>= 8
	}
	return h
}

// splitmix64 is a tiny, well-mixed hash of a 64-bit value; stepping its input
// by one gives an independent-looking sequence.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
