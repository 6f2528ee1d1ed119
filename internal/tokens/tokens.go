// Package tokens owns token counting: it turns text and chat messages into the
// token counts OpenAI models bill for, offline, with the BPE vocabularies compiled
// into the binary (github.com/tiktoken-go/tokenizer; nothing is ever downloaded).
//
// The simulator uses it to report usage.prompt_tokens, and the gateway uses it to
// estimate usage when a backend reports none. Counts for plain text are exact for
// the encoding; chat counts follow OpenAI's published formula (see [Counter.CountChat])
// and are an estimate of what the service reports, typically exact for text-only
// messages without tools.
package tokens

import (
	"fmt"
	"strings"
	"sync"

	"github.com/tiktoken-go/tokenizer"
)

// Encoding names.
const (
	// O200kBase is the encoding of gpt-4o, gpt-4.1, gpt-5 and the o-series models.
	O200kBase = "o200k_base"
	// Cl100kBase is the encoding of gpt-4, gpt-3.5-turbo and the text-embedding models.
	Cl100kBase = "cl100k_base"
)

// Counter counts tokens for one encoding. A Counter is immutable and safe for
// concurrent use; obtain one with [ForModel] or [ForEncoding] rather than
// constructing it.
type Counter struct {
	encoding string
	codec    tokenizer.Codec
}

// codecs caches one Counter per encoding: building a codec compiles its split
// regexp and materialises a vocabulary of up to 200k entries, so it is done once
// per process, on first use.
var codecs struct {
	o200k, cl100k       sync.Once
	o200kCtr, cl100kCtr *Counter
}

func o200k() *Counter {
	codecs.o200k.Do(func() {
		c, err := tokenizer.Get(tokenizer.O200kBase)
		if err != nil {
			// Unreachable: the encoding is compiled into the dependency.
			panic("tokens: o200k_base unavailable: " + err.Error())
		}
		codecs.o200kCtr = &Counter{encoding: O200kBase, codec: c}
	})
	return codecs.o200kCtr
}

func cl100k() *Counter {
	codecs.cl100k.Do(func() {
		c, err := tokenizer.Get(tokenizer.Cl100kBase)
		if err != nil {
			panic("tokens: cl100k_base unavailable: " + err.Error())
		}
		codecs.cl100kCtr = &Counter{encoding: Cl100kBase, codec: c}
	})
	return codecs.cl100kCtr
}

// EncodingForModel returns the encoding name for a model or Azure model name
// (case-insensitive): o200k_base for gpt-4o*, chatgpt-4o*, gpt-4.1*, gpt-4.5*,
// gpt-5*, o1*, o3*, o4*; cl100k_base for gpt-4*, gpt-35-turbo*, gpt-3.5*,
// text-embedding-*; o200k_base for anything else, since new models use it.
func EncodingForModel(model string) string {
	m := strings.ToLower(strings.TrimSpace(model))
	for _, p := range []string{"gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4"} {
		if strings.HasPrefix(m, p) {
			return O200kBase
		}
	}
	for _, p := range []string{"gpt-4", "gpt-35", "gpt-3.5", "text-embedding-"} {
		if strings.HasPrefix(m, p) {
			return Cl100kBase
		}
	}
	return O200kBase
}

// ForModel returns the Counter for model's encoding (see [EncodingForModel]).
// It never fails: unknown models get o200k_base.
func ForModel(model string) *Counter {
	if EncodingForModel(model) == Cl100kBase {
		return cl100k()
	}
	return o200k()
}

// ForEncoding returns the Counter for an encoding name, O200kBase or Cl100kBase.
func ForEncoding(name string) (*Counter, error) {
	switch name {
	case O200kBase:
		return o200k(), nil
	case Cl100kBase:
		return cl100k(), nil
	default:
		return nil, &UnknownEncodingError{Name: name}
	}
}

// UnknownEncodingError is returned by [ForEncoding] for an encoding this package
// does not offer.
type UnknownEncodingError struct{ Name string }

func (e *UnknownEncodingError) Error() string {
	return fmt.Sprintf("tokens: unknown encoding %q (want %s or %s)", e.Name, O200kBase, Cl100kBase)
}

// Encoding returns the encoding name, e.g. "o200k_base".
func (c *Counter) Encoding() string { return c.encoding }

// Count returns the number of tokens in text. Special-token text such as
// "<|endoftext|>" is counted as ordinary text, as the API does for user input.
func (c *Counter) Count(text string) int {
	if text == "" {
		return 0
	}
	n, err := c.codec.Count(text)
	if err != nil {
		// The codec only fails on a regexp timeout, and none is set; fall back to
		// the usual four-bytes-per-token estimate rather than report nothing.
		return (len(text) + 3) / 4
	}
	// The tokenizer's generated split regexp matches no piece for DEL (U+007F),
	// silently dropping it; count each as the one byte-token it would be.
	return n + strings.Count(text, "\x7f")
}

// Encode returns the token ids of text. It allocates; prefer [Counter.Count] when
// only the number is needed.
func (c *Counter) Encode(text string) []int {
	if text == "" {
		return nil
	}
	ids, _, err := c.codec.Encode(text)
	if err != nil {
		return nil
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}
