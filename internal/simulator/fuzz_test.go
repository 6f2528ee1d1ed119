package simulator

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/tokens"
)

var fuzzSeeds = []string{
	`{"messages":[{"role":"user","content":"hi"}]}`,
	`{"messages":[{"role":"system","content":"x"},{"role":"user","name":"n","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}}]}],"n":3,"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`,
	`{"messages":[{"role":"assistant","content":null,"tool_calls":[]}],"max_completion_tokens":2}`,
	`{"prompt":"once"}`,
	`{"prompt":["a","b"],"n":2}`,
	`{"prompt":[1,2,3]}`,
	`{"prompt":[[1],[2,3]]}`,
	`{"input":"x","dimensions":8,"encoding_format":"base64"}`,
	`{"input":[[1,2],[3]],"encoding_format":"float"}`,
	`{"model":"gpt-4o","messages":[]}`,
	`{"messages":[{"role":"user","content":"\ud800 \u0000 \\"}],"n":-1}`,
	`{"n":1e400}`,
	`{"max_tokens":9223372036854775808}`,
	`[]`, `null`, `"x"`, `{`, ``, `{"input":[]}`, `{"prompt":[-1]}`, `{"input":[[]]}`,
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range fuzzSeeds {
		for op := range uint8(3) {
			f.Add(op, []byte(s))
		}
	}
	counter := tokens.ForModel("gpt-4o")
	f.Fuzz(func(t *testing.T, opByte uint8, body []byte) {
		op := operation(opByte%3 + 1)
		req, e := parseRequest(op, body)
		if e != nil {
			if req != nil || e.status != http.StatusBadRequest || e.message == "" {
				t.Fatalf("error %+v with request %v", e, req)
			}
			if !json.Valid(e.appendJSON(nil)) {
				t.Fatalf("error renders invalid JSON: %s", e.appendJSON(nil))
			}
			return
		}
		if req.n < 1 || req.n > maxChoices || req.maxTokens < 0 || req.dimensions < 0 {
			t.Fatalf("out-of-range request: %+v", req)
		}
		switch op {
		case opChat:
			if len(req.messages) == 0 {
				t.Fatal("chat request without messages")
			}
		case opCompletions:
			if len(req.prompts) == 0 || req.choices() > maxChoices {
				t.Fatalf("completions request with %d prompts, %d choices", len(req.prompts), req.choices())
			}
		case opEmbeddings:
			if len(req.prompts) == 0 || len(req.prompts) > maxInputItems {
				t.Fatalf("embeddings request with %d inputs", len(req.prompts))
			}
		}
		if n := req.promptTokens(counter, nil); n < 0 {
			t.Fatalf("negative prompt tokens %d", n)
		}
	})
}

// FuzzServeHTTP drives whole requests through the handler: whatever the body,
// the answer is a known status with a well-formed body, and nothing panics.
func FuzzServeHTTP(f *testing.F) {
	paths := []string{
		"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
		"/openai/deployments/gpt-4o/completions?api-version=2024-10-21",
		"/openai/deployments/emb/embeddings?api-version=2024-10-21",
		"/openai/v1/chat/completions",
		"/v1/embeddings",
	}
	for _, s := range fuzzSeeds {
		for p := range uint8(len(paths)) {
			f.Add(p, []byte(s))
		}
	}
	cfg := testConfig()
	cfg.CompletionTokens = 4
	in, err := New(cfg, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p uint8, body []byte) {
		path := paths[int(p)%len(paths)]
		rec := httptest.NewRecorder()
		in.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		switch rec.Code {
		case 200:
			if strings.HasPrefix(rec.Header().Get("Content-Type"), "text/event-stream") {
				if !strings.HasSuffix(rec.Body.String(), "data: [DONE]\n\n") {
					t.Fatalf("stream without [DONE]: %q", rec.Body.String())
				}
				return
			}
		case 400, 404:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("status %d with invalid JSON: %s", rec.Code, rec.Body.String())
		}
	})
}
