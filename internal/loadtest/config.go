package loadtest

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"strings"
	"time"
)

// Config is one load test. The zero values of optional fields take the
// defaults named in their comments. Problems are reported with the name of
// the command-line flag that sets the field.
type Config struct {
	// URL is the base URL of the endpoint, e.g. "http://127.0.0.1:8080" or
	// "https://myresource.openai.azure.com". Required, http or https.
	URL string
	// API is "azure" (default): POST {URL}/openai/deployments/{alias}/chat/completions?api-version=...,
	// or "v1": POST {URL}/v1/chat/completions with the alias as "model" in the
	// body (for Azure's v1 API pass a URL ending in /openai).
	API string
	// APIVersion is the api-version of the azure API. Default DefaultAPIVersion.
	APIVersion string
	// Header is sent with every request; a name here replaces an app's header
	// of the same name. Values are never printed.
	Header []Header
	// Models are the aliases (deployments) requests go to, picked by weight.
	// Default one: DefaultModel.
	Models []ModelShare
	// PromptTokens is the distribution of prompt sizes, picked by weight.
	// Default one: DefaultPromptTokens.
	PromptTokens []PromptShare
	// MaxTokens is sent as max_tokens. Default DefaultMaxTokens.
	MaxTokens int
	// StreamShare is the fraction of requests sent with "stream": true, in
	// [0, 1]. Streams are spread evenly over the requests.
	StreamShare float64
	// Apps, when set, are the callers requests are spread over by weight,
	// each with its own headers.
	Apps []App
	// Rate > 0 makes an open loop of Rate arrivals per second.
	Rate float64
	// Concurrency is the number of closed-loop workers when Rate is 0, or the
	// most requests in flight of an open loop; 0 means no limit. One of Rate
	// and Concurrency is required.
	Concurrency int
	// Duration is the measured time. Default DefaultDuration.
	Duration time.Duration
	// Warmup precedes Duration; requests of the warmup are not reported.
	Warmup time.Duration
	// Ramp spreads the start of closed-loop workers over this time.
	Ramp time.Duration
	// Timeout bounds each request, from its send to the end of its body
	// (the end of a stream). Default DefaultTimeout.
	Timeout time.Duration
	// Grace is how long requests in flight may finish after the context is
	// cancelled, before they are cut. Default DefaultGrace.
	Grace time.Duration
	// Progress, when set, receives a live status line once a second, each
	// overwriting the last with '\r' (meant for a terminal).
	Progress io.Writer
}

// Defaults.
const (
	DefaultAPIVersion   = "2024-10-21"
	DefaultModel        = "gpt-4o"
	DefaultPromptTokens = 100
	DefaultMaxTokens    = 64
	DefaultDuration     = 10 * time.Second
	DefaultTimeout      = 60 * time.Second
	DefaultGrace        = 2 * time.Second
	// MaxPromptTokens bounds a prompt size: a prompt is built in memory once.
	MaxPromptTokens = 1_000_000
)

// Header is one request header, "Name: value".
type Header struct {
	Name, Value string
}

// ParseHeader parses "Name: value". Its errors never quote the value: header
// values carry secrets.
func ParseHeader(s string) (Header, error) {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return Header{}, errors.New(`want "Name: value", e.g. "Authorization: Bearer TOKEN"`)
	}
	h := Header{Name: name, Value: strings.TrimSpace(value)}
	if err := h.check(); err != nil {
		return Header{}, err
	}
	return h, nil
}

func (h Header) check() error {
	if !validHeaderName(h.Name) {
		return fmt.Errorf("header name %q is not a valid HTTP token", h.Name)
	}
	if strings.ContainsAny(h.Value, "\r\n\x00") {
		return fmt.Errorf("header %s: the value must not contain CR, LF or NUL", h.Name)
	}
	return nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// ModelShare is a model alias with its weight.
type ModelShare struct {
	Alias  string  `yaml:"alias"`
	Weight float64 `yaml:"weight"` // default 1
}

// PromptShare is a prompt size in tokens with its weight.
type PromptShare struct {
	Tokens int     `yaml:"tokens"`
	Weight float64 `yaml:"weight"` // default 1
}

// App is one caller of a mix: its name (reported) and its headers (never
// reported).
type App struct {
	Name    string            `yaml:"name"`
	Weight  float64           `yaml:"weight"` // default 1
	Headers map[string]string `yaml:"headers"`
}

// withDefaults returns c with unset fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.API == "" {
		c.API = "azure"
	}
	if c.APIVersion == "" {
		c.APIVersion = DefaultAPIVersion
	}
	if len(c.Models) == 0 {
		c.Models = []ModelShare{{Alias: DefaultModel}}
	}
	if len(c.PromptTokens) == 0 {
		c.PromptTokens = []PromptShare{{Tokens: DefaultPromptTokens}}
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = DefaultMaxTokens
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	c.Models = withWeights(c.Models, func(m *ModelShare) *float64 { return &m.Weight })
	c.PromptTokens = withWeights(c.PromptTokens, func(p *PromptShare) *float64 { return &p.Weight })
	c.Apps = withWeights(c.Apps, func(a *App) *float64 { return &a.Weight })
	return c
}

// withWeights returns a copy of s with zero weights set to 1.
func withWeights[T any](s []T, weight func(*T) *float64) []T {
	s = append([]T(nil), s...)
	for i := range s {
		if w := weight(&s[i]); *w == 0 {
			*w = 1
		}
	}
	return s
}

// Validate reports every problem of c (with defaults applied) at once,
// joined with errors.Join, each named by its flag.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.URL == "" {
		add("--url: required, e.g. --url http://127.0.0.1:8080")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("--url: want an http:// or https:// base URL with a host")
	} else if u.RawQuery != "" || u.Fragment != "" {
		add("--url: a base URL has no query or fragment")
	}
	switch c.API {
	case "azure", "v1":
	default:
		add("--api: must be azure or v1, not %q", c.API)
	}
	if !(c.Rate >= 0) || math.IsInf(c.Rate, 0) {
		add("--rate: must be a number of requests per second >= 0, got %g", c.Rate)
	}
	if c.Concurrency < 0 {
		add("--concurrency: must be >= 0, got %d", c.Concurrency)
	}
	if c.Rate == 0 && c.Concurrency == 0 {
		add("set --rate R (open loop, R requests/s) or --concurrency N (closed loop, N workers), or both")
	}
	if c.Duration < 0 {
		add("--duration: must be positive, got %s", c.Duration)
	}
	if c.Warmup < 0 {
		add("--warmup: must not be negative, got %s", c.Warmup)
	}
	if c.Ramp < 0 {
		add("--ramp: must not be negative, got %s", c.Ramp)
	} else if c.Ramp > 0 && c.Ramp >= c.Warmup+c.Duration {
		add("--ramp: %s must be shorter than --warmup + --duration (%s)", c.Ramp, c.Warmup+c.Duration)
	}
	if c.Timeout < 0 {
		add("--timeout: must be positive, got %s", c.Timeout)
	}
	if c.Grace < 0 {
		add("grace: must not be negative, got %s", c.Grace)
	}
	if !(c.StreamShare >= 0 && c.StreamShare <= 1) {
		add("--stream-share: must be a fraction between 0 and 1, got %g", c.StreamShare)
	}
	if c.MaxTokens < 0 {
		add("--max-tokens: must be positive, got %d", c.MaxTokens)
	}
	for i, p := range c.PromptTokens {
		if p.Tokens < 1 || p.Tokens > MaxPromptTokens {
			add("--prompt-tokens: prompt_tokens[%d]: tokens must be between 1 and %d, got %d", i, MaxPromptTokens, p.Tokens)
		}
		if !(p.Weight > 0) || math.IsInf(p.Weight, 0) {
			add("prompt_tokens[%d].weight: must be positive, got %g", i, p.Weight)
		}
	}
	for i, m := range c.Models {
		if strings.TrimSpace(m.Alias) == "" {
			add("--model: models[%d].alias: required", i)
		}
		if !(m.Weight > 0) || math.IsInf(m.Weight, 0) {
			add("models[%d].weight: must be positive, got %g", i, m.Weight)
		}
	}
	for i, h := range c.Header {
		if err := h.check(); err != nil {
			add("--header #%d: %v", i+1, err)
		}
	}
	seen := map[string]bool{}
	for i, a := range c.Apps {
		if strings.TrimSpace(a.Name) == "" {
			add("apps[%d].name: required", i)
		} else if seen[a.Name] {
			add("apps[%d].name: %q is used twice", i, a.Name)
		}
		seen[a.Name] = true
		if !(a.Weight > 0) || math.IsInf(a.Weight, 0) {
			add("apps[%d].weight: must be positive, got %g", i, a.Weight)
		}
		for name, value := range a.Headers {
			if err := (Header{Name: name, Value: value}).check(); err != nil {
				add("apps[%d].headers: %v", i, err)
			}
		}
	}
	return errors.Join(errs...)
}

// mode is "open" or "closed".
func (c Config) mode() string {
	if c.Rate > 0 {
		return "open"
	}
	return "closed"
}

// redactedURL is c.URL without user information, fit to print.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = nil
	return u.String()
}
