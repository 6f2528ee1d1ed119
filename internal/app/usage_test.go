package app

import (
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/usage"
)

func TestSettleCapture(t *testing.T) {
	red, err := usage.NewRedactor([]string{`\b\d{3}-\d{2}-\d{4}\b`})
	if err != nil {
		t.Fatal(err)
	}
	g := &runtime{redactor: red}
	body := []byte(`{"model":"gpt-4o","messages":[{"role":"system","content":"key sk-abcdefghijklmnopqrstuvwxyz"},{"role":"user","content":"my ssn is 123-45-6789"}]}`)
	for _, mode := range []string{"off", "metadata", "full"} {
		x := &exchange{alias: "gpt-4o", caller: &auth.Caller{App: &config.App{Name: "a", Capture: mode}}}
		x.metered = openai.Meter{HasUsage: true, Usage: openai.Usage{Prompt: 30, Completion: 4, Total: 34}}
		// The meter's text is filled by reading a response; feed it one.
		m := &x.metered
		r := m.Wrap(nopCloser{strings.NewReader(`{"choices":[{"message":{"content":"Noted: 123-45-6789"}}],"usage":{"prompt_tokens":30,"completion_tokens":4,"total_tokens":34}}`)}, "application/json")
		buf := make([]byte, 1024)
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
		g.settle(x, body)
		if x.tokens.Source != usage.SourceBackend || x.tokens.Total != 34 {
			t.Fatalf("%s: tokens %+v", mode, x.tokens)
		}
		switch mode {
		case "off":
			if x.capture != nil {
				t.Errorf("off: captured %+v", x.capture)
			}
		case "metadata":
			if c := x.capture; c == nil || c.Prompt != "" || c.Completion != "" || c.Messages != 2 || c.PromptBytes == 0 || c.CompletionBytes != len("Noted: 123-45-6789") {
				t.Errorf("metadata: %+v", c)
			}
		case "full":
			c := x.capture
			if c == nil || strings.Contains(c.Prompt, "123-45-6789") || strings.Contains(c.Prompt, "sk-abc") ||
				!strings.Contains(c.Prompt, "my ssn is [REDACTED]") || c.Completion != "Noted: [REDACTED]" {
				t.Errorf("full: %+v", c)
			}
		}
	}
}

// A request that reached a backend but got no usage is estimated from the
// request and what reached the client.
func TestSettleEstimate(t *testing.T) {
	g := &runtime{}
	x := &exchange{alias: "gpt-4o", caller: &auth.Caller{}}
	m := &x.metered
	m.Status = 200
	r := m.Wrap(nopCloser{strings.NewReader("data: {\"choices\":[{\"delta\":{\"content\":\"Hello there, friend\"},\"index\":0}]}\n\n")}, "text/event-stream")
	buf := make([]byte, 1024)
	_, _ = r.Read(buf) // the client hangs up: no EOF, no [DONE]
	g.settle(x, []byte(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`))
	if x.tokens.Source != usage.SourceEstimated || x.tokens.Prompt != 9 || x.tokens.Completion != 4+1 {
		t.Fatalf("tokens %+v", x.tokens)
	}
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }
