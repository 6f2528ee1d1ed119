package simulator

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestGolden pins the exact bytes of representative responses, so a change to
// the wire format shows up as a diff of testdata/*.golden (regenerate with
// go test -run TestGolden -update). They double as fixtures of what Azure
// sends, for the gateway's own SSE and usage parsers. The random ids are
// normalised; the clock is fixed.
func TestGolden(t *testing.T) {
	clock := newFakeClock()
	cfg := testConfig()
	cfg.CompletionTokens = 3
	_, srv := newServer(t, cfg, WithClock(clock.Now))
	ids := regexp.MustCompile(`(chatcmpl|cmpl)-[A-Za-z0-9]{29}`)
	tests := []struct {
		file, op, body string
	}{
		{"chat_stream_usage.golden", "chat/completions", `{"messages":[{"role":"user","content":"Hello"}],"stream":true,"stream_options":{"include_usage":true}}`},
		{"chat_stream.golden", "chat/completions", `{"messages":[{"role":"user","content":"Hello"}],"stream":true,"max_tokens":2}`},
		{"chat.golden", "chat/completions", `{"messages":[{"role":"user","content":"Hello"}]}`},
		{"completions_stream_usage.golden", "completions", `{"prompt":"Hello","stream":true,"stream_options":{"include_usage":true}}`},
		{"completions.golden", "completions", `{"prompt":"Hello"}`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			_, body := post(t, deploymentURL(srv.URL, "gpt-4o", tt.op), tt.body, nil)
			got := ids.ReplaceAll(body, []byte("${1}-ID"))
			path := filepath.Join("testdata", tt.file)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("%s differs from the golden file:\ngot:\n%s\nwant:\n%s", tt.file, got, want)
			}
		})
	}
}
