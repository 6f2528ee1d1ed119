package usage

import (
	"fmt"
	"regexp"
)

// builtinRedactions always apply to captured text: credentials that end up
// in prompts by accident (bearer tokens, JWTs, OpenAI-style and Azure keys,
// connection strings' keys).
var builtinRedactions = []string{
	`(?i)bearer\s+[A-Za-z0-9._~+/=-]{16,}`,
	`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*`,
	`\bsk-[A-Za-z0-9_-]{20,}`,
	`\btgk_[A-Za-z0-9_-]{20,}`,
	`(?i)(SharedAccessKey|AccountKey|password|pwd)=[^;\s"]+`,
	`\b[0-9a-f]{32}\b`,
}

// Redactor replaces sensitive matches in captured text with "[REDACTED]".
// Safe for concurrent use.
type Redactor struct{ res []*regexp.Regexp }

// NewRedactor compiles the built-in patterns followed by patterns.
func NewRedactor(patterns []string) (*Redactor, error) {
	r := &Redactor{}
	for _, p := range append(append([]string(nil), builtinRedactions...), patterns...) {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("redaction pattern %q: %w", p, err)
		}
		r.res = append(r.res, re)
	}
	return r, nil
}

// Redact returns s with every match replaced.
func (r *Redactor) Redact(s string) string {
	for _, re := range r.res {
		s = re.ReplaceAllLiteralString(s, "[REDACTED]")
	}
	return s
}
