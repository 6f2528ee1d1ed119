package simulator

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is a ResponseWriter that keeps nothing, so benchmarks measure
// the handler and not a recorder.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }
func (w *discardWriter) Flush()                      {}

// benchServe sends body to path through ServeHTTP b.N times.
func benchServe(b *testing.B, cfg InstanceConfig, path, body string) {
	in, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close(context.Background())
	rd := bytes.NewReader([]byte(body))
	req := httptest.NewRequest(http.MethodPost, path, nil)
	req.Body = io.NopCloser(rd)
	w := &discardWriter{h: make(http.Header, 16)}

	b.ReportAllocs()
	for b.Loop() {
		rd.Reset([]byte(body))
		clear(w.h)
		w.status, w.n = 0, 0
		in.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
	b.SetBytes(int64(w.n))
}

const benchChat = `{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about rate limits."}],"max_tokens":64,"temperature":0.7}`

func BenchmarkChatCompletion(b *testing.B) {
	benchServe(b, testConfig(), "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", benchChat)
}

func BenchmarkChatCompletionRateLimited(b *testing.B) {
	cfg := testConfig()
	cfg.Deployments[0].RPM = 1 << 30
	cfg.Deployments[0].TPM = 1 << 40
	benchServe(b, cfg, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", benchChat)
}

func BenchmarkChatCompletionStream(b *testing.B) {
	body := benchChat[:len(benchChat)-1] + `,"stream":true,"stream_options":{"include_usage":true}}`
	benchServe(b, testConfig(), "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", body)
}

func BenchmarkEmbeddings(b *testing.B) {
	benchServe(b, testConfig(), "/openai/deployments/emb/embeddings?api-version=2024-10-21", `{"input":["The quick brown fox jumps over the lazy dog."]}`)
}

func BenchmarkEmbeddingsBase64(b *testing.B) {
	benchServe(b, testConfig(), "/openai/deployments/emb/embeddings?api-version=2024-10-21", `{"input":["The quick brown fox jumps over the lazy dog."],"encoding_format":"base64"}`)
}

func BenchmarkParseRequest(b *testing.B) {
	body := []byte(benchChat)
	b.ReportAllocs()
	for b.Loop() {
		if _, e := parseRequest(opChat, body); e != nil {
			b.Fatal(e)
		}
	}
}
