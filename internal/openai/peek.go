package openai

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Body holds the few request-body fields the gateway acts on. Everything else
// is forwarded untouched.
type Body struct {
	// Model is the body's "model" (the alias on v1-style paths); "" if absent.
	Model string
	// Stream is the body's "stream".
	Stream bool
	// IncludeUsage is stream_options.include_usage.
	IncludeUsage bool
	// MaxTokens is "max_tokens", or 0 if absent.
	MaxTokens int64
	// MaxCompletionTokens is "max_completion_tokens", or 0 if absent.
	MaxCompletionTokens int64
	// N is "n" (number of choices), or 0 if absent.
	N int64
}

// Peek validates that body is one JSON object and extracts the fields in
// Body without decoding the rest.
//
// Backends decode bodies with parsers that keep the last of duplicate keys
// and (in .NET and Go) match names case-insensitively, so a body such as
// {"model":"a",...,"MODEL":"b"} could be routed or billed as one model while
// the backend runs another. Peek therefore matches the fields it acts on by
// their unescaped, case-folded name and rejects any duplicate of them.
func Peek(body []byte) (Body, error) {
	var b Body
	if !gjson.ValidBytes(body) {
		return b, Errorf(http.StatusBadRequest, "invalid_json",
			"the request body is not valid JSON; send a JSON object with Content-Type: application/json")
	}
	data := skipSpace(body, 0)
	if data >= len(body) || body[data] != '{' {
		return b, Errorf(http.StatusBadRequest, "invalid_json", "the request body must be a JSON object")
	}
	var seen uint8
	obj := body[data:]
	err := eachMember(obj, func(key []byte, start, end int) error {
		value := obj[start:end]
		f, ok := matchField(key, topFields)
		if !ok {
			return nil
		}
		if seen&(1<<f) != 0 {
			return duplicate(topFields[f])
		}
		seen |= 1 << f
		var err error
		switch topFields[f] {
		case "model":
			b.Model, err = stringValue("model", value)
		case "stream":
			b.Stream, err = boolValue("stream", value)
		case "max_tokens":
			b.MaxTokens, err = intValue("max_tokens", value)
		case "max_completion_tokens":
			b.MaxCompletionTokens, err = intValue("max_completion_tokens", value)
		case "n":
			b.N, err = intValue("n", value)
		case "stream_options":
			b.IncludeUsage, err = streamOptions(value)
		}
		return err
	})
	return b, err
}

var (
	topFields          = []string{"model", "stream", "max_tokens", "max_completion_tokens", "n", "stream_options"}
	streamOptionFields = []string{"include_usage"}
)

func streamOptions(value []byte) (bool, error) {
	if string(value) == "null" {
		return false, nil
	}
	if value[0] != '{' {
		return false, Errorf(http.StatusBadRequest, "invalid_request", "stream_options must be an object")
	}
	var include, seen bool
	err := eachMember(value, func(key []byte, start, end int) error {
		v := value[start:end]
		if _, ok := matchField(key, streamOptionFields); !ok {
			return nil
		}
		if seen {
			return duplicate("stream_options.include_usage")
		}
		seen = true
		var err error
		include, err = boolValue("stream_options.include_usage", v)
		return err
	})
	return include, err
}

// matchField returns the index of the name key matches after unescaping and
// Unicode case folding (as lenient backend parsers match).
func matchField(key []byte, names []string) (int, bool) {
	k := string(key)
	if bytes.IndexByte(key, '\\') >= 0 {
		if err := json.Unmarshal(append(append([]byte{'"'}, key...), '"'), &k); err != nil {
			return 0, false
		}
	}
	for i, n := range names {
		if strings.EqualFold(k, n) {
			return i, true
		}
	}
	return 0, false
}

func duplicate(name string) *Error {
	return Errorf(http.StatusBadRequest, "duplicate_key",
		"the request body names %q more than once (in any letter case); send it once", name)
}

func stringValue(name string, v []byte) (string, error) {
	switch {
	case string(v) == "null":
		return "", nil
	case v[0] != '"':
		return "", Errorf(http.StatusBadRequest, "invalid_request", "%s must be a string", name)
	case !utf8.Valid(v):
		return "", Errorf(http.StatusBadRequest, "invalid_request", "%s must be valid UTF-8", name)
	case bytes.IndexByte(v, '\\') < 0:
		return string(v[1 : len(v)-1]), nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", Errorf(http.StatusBadRequest, "invalid_request", "%s must be a string", name)
	}
	return s, nil
}

func boolValue(name string, v []byte) (bool, error) {
	switch string(v) {
	case "true":
		return true, nil
	case "false", "null":
		return false, nil
	}
	return false, Errorf(http.StatusBadRequest, "invalid_request", "%s must be true or false", name)
}

func intValue(name string, v []byte) (int64, error) {
	if string(v) == "null" {
		return 0, nil
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n < 0 {
		return 0, Errorf(http.StatusBadRequest, "invalid_request", "%s must be a non-negative integer", name)
	}
	return n, nil
}

// eachMember calls fn with the raw key (without quotes, still escaped) and
// the bounds obj[start:end] of the raw value of each member of the JSON
// object that starts at obj[0]. obj must be valid JSON (checked by the
// caller): the scanner only finds boundaries.
func eachMember(obj []byte, fn func(key []byte, start, end int) error) error {
	i := skipSpace(obj, 1)
	for i < len(obj) && obj[i] != '}' {
		if obj[i] == ',' {
			i = skipSpace(obj, i+1)
			continue
		}
		keyEnd := stringEnd(obj, i)
		key := obj[i+1 : keyEnd-1]
		i = skipSpace(obj, keyEnd)
		i = skipSpace(obj, i+1) // past ':'
		valEnd := valueEnd(obj, i)
		if err := fn(key, i, valEnd); err != nil {
			return err
		}
		i = skipSpace(obj, valEnd)
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the string starting at b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default:
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
		}
		return len(b)
	}
}

// SetInt returns body with the top-level member name set to n: its value is
// replaced where the member exists (matched like Peek matches, so after a
// successful Peek there is at most one), otherwise the member is added
// first in the object. body must be a JSON object that Peek accepted.
func SetInt(body []byte, name string, n int64) []byte {
	open := skipSpace(body, 0)
	obj := body[open:]
	names := []string{name}
	start, end := -1, -1
	_ = eachMember(obj, func(key []byte, s, e int) error {
		if _, ok := matchField(key, names); ok {
			start, end = open+s, open+e
		}
		return nil
	})
	num := strconv.AppendInt(nil, n, 10)
	out := make([]byte, 0, len(body)+len(name)+24)
	if start >= 0 {
		out = append(out, body[:start]...)
		out = append(out, num...)
		return append(out, body[end:]...)
	}
	out = append(out, body[:open+1]...)
	out = append(out, '"')
	out = append(out, name...)
	out = append(out, `":`...)
	out = append(out, num...)
	if rest := skipSpace(body, open+1); rest < len(body) && body[rest] != '}' {
		out = append(out, ',')
	}
	return append(out, body[open+1:]...)
}
