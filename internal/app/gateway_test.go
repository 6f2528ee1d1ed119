package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// seen is what the fake backend received.
type seen struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   []byte
}

// fakeBackend is an httptest server running handle, recording requests.
type fakeBackend struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newFakeBackend(t *testing.T, handle http.HandlerFunc) *fakeBackend {
	t.Helper()
	fb := &fakeBackend{}
	fb.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fb.mu.Lock()
		fb.reqs = append(fb.reqs, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
		fb.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		handle(w, r)
	}))
	t.Cleanup(fb.Close)
	return fb
}

func (fb *fakeBackend) requests() []seen {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]seen(nil), fb.reqs...)
}

func okJSON(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Request-Id", "backend-own-id")
	_, _ = io.WriteString(w, `{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`)
}

const testConfig = `
listen: {addr: "127.0.0.1:0", admin_addr: "off"}
log: {level: error}
identity: {anonymous: true}
backends:
  - name: east
    endpoint: ${BACKEND}
    api_version: "2024-10-21"
    auth: {type: api-key, api_key: backend-secret}
models:
  - name: gpt-4o
    deployments: [{backend: east, name: gpt-4o-east, api_version: "2024-06-01"}]
  - name: emb
    deployments: [{backend: east}]
`

// startGateway serves a gateway built from doc (with ${BACKEND} = backend)
// on a loopback port and returns its base URL.
func startGateway(t *testing.T, doc, backend string, mutate func(*config.Config)) string {
	t.Helper()
	cfg, err := config.Parse([]byte(doc), func(k string) (string, bool) {
		if k == "BACKEND" {
			return backend, true
		}
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Usage.Spool.Dir = t.TempDir()
	if mutate != nil {
		mutate(cfg)
	}
	gw, err := NewGateway(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	if err != nil {
		t.Fatal(err)
	}
	return serveForTest(t, gw)
}

// serveForTest serves gw on a loopback port until the test ends, then
// requires a clean drain and close; it returns the base URL.
func serveForTest(t *testing.T, gw *Gateway) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := gw.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func post(t *testing.T, url, body string, header map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// errorOf decodes an error response, failing unless it has the Azure shape.
func errorOf(t *testing.T, resp *http.Response) (code, message string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("%d: not the Azure error shape: %q", resp.StatusCode, b)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("error response without x-request-id")
	}
	return e.Error.Code, e.Error.Message
}

func TestMappingAndCredentials(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	base := startGateway(t, testConfig, fb.URL, nil)
	hostile := map[string]string{
		"api-key":                   "client-key",
		"Authorization":             "Bearer client-token",
		"Ocp-Apim-Subscription-Key": "client-sub",
		"X-Ms-Client-Request-Id":    "req-123",
		"Accept-Encoding":           "gzip",
		"X-Http-Method-Override":    "DELETE",
	}
	for _, tc := range []struct {
		name, path, body, wantPath, wantQuery string
	}{
		{"azure", "/openai/deployments/gpt-4o/chat/completions?api-version=2023-05-15&api-key=leak&subscription-key=leak",
			`{"messages":[]}`, "/openai/deployments/gpt-4o-east/chat/completions", "api-version=2024-06-01"},
		{"openai v1", "/v1/chat/completions", `{"model":"gpt-4o","messages":[]}`,
			"/openai/deployments/gpt-4o-east/chat/completions", "api-version=2024-06-01"},
		{"azure v1", "/openai/v1/embeddings", `{"model":"emb","input":"x"}`,
			"/openai/deployments/emb/embeddings", "api-version=2024-10-21"},
		{"pass-through", "/v1/files?purpose=batch&api-key=leak", `{}`, "/openai/v1/files", "purpose=batch"},
		{"pass-through azure", "/openai/batches?api-version=2024-10-21", `{}`, "/openai/batches", "api-version=2024-10-21"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(fb.requests())
			resp := post(t, base+tc.path, tc.body, hostile)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] == "req-123" || len(got[0]) != 36 {
				t.Errorf("client sees x-request-id %q, want exactly one, the gateway's own", got)
			}
			got := fb.requests()[before]
			if got.Path != tc.wantPath || got.RawQuery != tc.wantQuery {
				t.Errorf("backend saw %s?%s, want %s?%s", got.Path, got.RawQuery, tc.wantPath, tc.wantQuery)
			}
			if got.Header.Get("api-key") != "backend-secret" {
				t.Errorf("backend api-key %q, want the gateway's own", got.Header.Get("api-key"))
			}
			for _, h := range []string{"Authorization", "Ocp-Apim-Subscription-Key", "Accept-Encoding", "X-Http-Method-Override"} {
				if v := got.Header.Get(h); v != "" {
					t.Errorf("client header %s reached the backend: %q", h, v)
				}
			}
			if got.Header.Get("X-Ms-Client-Request-Id") != "req-123" {
				t.Errorf("request id upstream: %q", got.Header.Get("X-Ms-Client-Request-Id"))
			}
			if string(got.Body) != tc.body {
				t.Errorf("body changed: %q", got.Body)
			}
		})
	}
}

func TestRequestIDMinted(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	base := startGateway(t, testConfig, fb.URL, nil)
	resp := post(t, base+"/v1/chat/completions", `{"model":"gpt-4o"}`, map[string]string{"X-Request-Id": "bad id with spaces"})
	id := resp.Header.Get("X-Request-Id")
	if len(id) != 36 || id == "bad id with spaces" {
		t.Fatalf("minted id %q", id)
	}
	if got := fb.requests()[0].Header.Get("X-Ms-Client-Request-Id"); got != id {
		t.Fatalf("upstream id %q, client id %q", got, id)
	}
}

func TestClientErrors(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	base := startGateway(t, testConfig, fb.URL, func(c *config.Config) { c.Listen.MaxBodyBytes = 1024 })
	big := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed json", "POST", "/v1/chat/completions", `{"model":`, 400, "invalid_json"},
		{"duplicate model", "POST", "/v1/chat/completions", `{"model":"gpt-4o","model":"emb"}`, 400, "duplicate_key"},
		{"missing model", "POST", "/v1/chat/completions", `{"messages":[]}`, 400, "missing_model"},
		{"unknown alias body", "POST", "/v1/chat/completions", `{"model":"gpt-9"}`, 404, "DeploymentNotFound"},
		{"unknown alias path", "POST", "/openai/deployments/gpt-9/chat/completions", `{}`, 404, "DeploymentNotFound"},
		{"unknown path", "POST", "/v2/whatever", `{}`, 404, "404"},
		{"root", "GET", "/", ``, 404, "404"},
		{"wrong method", "GET", "/v1/chat/completions", ``, 405, "method_not_allowed"},
		{"lower-case method", "delete", "/openai/files/f", ``, 405, "method_not_allowed"},
		{"too large", "POST", "/v1/chat/completions", big, 413, "request_too_large"},
		{"too large pass-through", "POST", "/openai/files", big, 413, "request_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if code, msg := errorOf(t, resp); code != tc.code {
				t.Fatalf("code %q (%s), want %q", code, msg, tc.code)
			}
		})
	}
	if n := len(fb.requests()); n != 0 {
		t.Fatalf("the backend was contacted %d times for client errors", n)
	}
}

func TestTooLargeChunkedBody(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	base := startGateway(t, testConfig, fb.URL, func(c *config.Config) { c.Listen.MaxBodyBytes = 1024 })
	// io.MultiReader hides the length, so the body is sent chunked.
	body := io.MultiReader(strings.NewReader(`{"model":"gpt-4o","x":"`), strings.NewReader(strings.Repeat("y", 4096)+`"}`))
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if len(fb.requests()) != 0 {
		t.Fatal("backend contacted")
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := "http://" + ln.Addr().String()
		ln.Close()
		base := startGateway(t, testConfig, dead, nil)
		resp := post(t, base+"/v1/chat/completions", `{"model":"gpt-4o"}`, nil)
		if resp.StatusCode != 502 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if code, _ := errorOf(t, resp); code != "upstream_unreachable" {
			t.Fatalf("code %q", code)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		fb := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		})
		base := startGateway(t, testConfig, fb.URL, func(c *config.Config) { c.Upstream.ResponseHeaderTimeout = 200 * time.Millisecond })
		resp := post(t, base+"/v1/chat/completions", `{"model":"gpt-4o"}`, nil)
		if resp.StatusCode != 504 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if code, _ := errorOf(t, resp); code != "upstream_timeout" {
			t.Fatalf("code %q", code)
		}
	})
	t.Run("backend errors pass through", func(t *testing.T) {
		fb := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(429)
			_, _ = io.WriteString(w, `{"error":{"code":"429","message":"Requests ... exceeded token rate limit"}}`)
		})
		base := startGateway(t, testConfig, fb.URL, nil)
		resp := post(t, base+"/v1/chat/completions", `{"model":"gpt-4o"}`, nil)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" {
			t.Fatalf("status %d retry-after %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		if code, _ := errorOf(t, resp); code != "429" {
			t.Fatalf("code %q", code)
		}
	})
}

func TestHealth(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	base := startGateway(t, testConfig, fb.URL, nil)
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
}

// streamFixture serves a golden SSE file one event at a time, waiting for
// the test's go-ahead before each next event, so a gateway that buffered
// would deadlock instead of pass.
func streamFixture(t *testing.T, events [][]byte, next <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		for i, ev := range events {
			if i > 0 {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				case <-time.After(5 * time.Second):
					t.Error("the client never received the previous event: the gateway buffers")
					return
				}
			}
			_, _ = w.Write(ev)
			w.(http.Flusher).Flush()
		}
	}
}

func splitEvents(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		i := bytes.Index(data, []byte("\n\n"))
		j := bytes.Index(data, []byte("\r\n\r\n"))
		end := len(data)
		switch {
		case i >= 0 && (j < 0 || i < j):
			end = i + 2
		case j >= 0:
			end = j + 4
		}
		out = append(out, data[:end])
		data = data[end:]
	}
	return out
}

func TestGoldenStreamsPassThroughByteIdentical(t *testing.T) {
	for _, name := range []string{"azure-stream.sse", "crlf-stream.sse"} {
		t.Run(name, func(t *testing.T) {
			golden, err := os.ReadFile("testdata/" + name)
			if err != nil {
				t.Fatal(err)
			}
			events := splitEvents(golden)
			next := make(chan struct{})
			fb := newFakeBackend(t, streamFixture(t, events, next))
			base := startGateway(t, testConfig, fb.URL, nil)
			resp := post(t, base+"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", `{"stream":true,"messages":[]}`, nil)
			if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
				t.Fatalf("content-type %q", ct)
			}
			if resp.Header.Get("Content-Encoding") != "" {
				t.Fatal("streams are never compressed")
			}
			var got []byte
			buf := make([]byte, 64<<10)
			for i, ev := range events {
				// Each event must arrive on its own before the backend sends the next.
				for len(got) < sumLen(events[:i+1]) {
					n, err := resp.Body.Read(buf)
					got = append(got, buf[:n]...)
					if err != nil && (err != io.EOF || len(got) < sumLen(events[:i+1])) {
						t.Fatalf("after %d events: %v", i, err)
					}
				}
				if !bytes.HasSuffix(got, ev) {
					t.Fatalf("event %d: got %q", i, got)
				}
				if i < len(events)-1 {
					next <- struct{}{}
				}
			}
			rest, _ := io.ReadAll(resp.Body)
			got = append(got, rest...)
			if !bytes.Equal(got, golden) {
				t.Fatalf("client bytes differ from backend bytes:\n%q\n%q", got, golden)
			}
		})
	}
}

func sumLen(evs [][]byte) int {
	n := 0
	for _, e := range evs {
		n += len(e)
	}
	return n
}

func TestClientHangUpCancelsUpstream(t *testing.T) {
	cancelled := make(chan time.Duration, 1)
	fb := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			if _, err := io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Millisecond):
				continue
			}
			break
		}
		cancelled <- 0
	})
	base := startGateway(t, testConfig, fb.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o","stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	hungUp := time.Now()
	cancel()
	select {
	case <-cancelled:
		if d := time.Since(hungUp); d > time.Second {
			t.Fatalf("upstream cancelled %v after the client hung up, want < 1s", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the backend request was never cancelled")
	}
}

func TestLongStreamOutlivesTimeouts(t *testing.T) {
	fb := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for range 15 {
			_, _ = io.WriteString(w, "data: {}\n\n")
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	})
	base := startGateway(t, testConfig, fb.URL, func(c *config.Config) {
		c.Listen.WriteTimeout = 300 * time.Millisecond
		c.Listen.ReadTimeout = 300 * time.Millisecond
	})
	resp := post(t, base+"/v1/chat/completions", `{"model":"gpt-4o","stream":true}`, nil)
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("stream cut after %d bytes: %v", len(body), err)
	}
	if !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) || bytes.Count(body, []byte("data: {}")) != 15 {
		t.Fatalf("stream incomplete: %q", body)
	}
}

func TestClientIP(t *testing.T) {
	g := &runtime{}
	for _, p := range []string{"10.0.0.0/8", "192.168.1.1"} {
		pfx, err := config.ParsePrefix(p)
		if err != nil {
			t.Fatal(err)
		}
		g.trusted = append(g.trusted, pfx)
	}
	for _, tc := range []struct{ remote, xff, want string }{
		{"203.0.113.7:4000", "", "203.0.113.7"},
		{"203.0.113.7:4000", "1.2.3.4", "203.0.113.7"}, // an untrusted peer's header is ignored
		{"10.1.1.1:4000", "1.2.3.4", "1.2.3.4"},
		{"10.1.1.1:4000", "6.6.6.6, 1.2.3.4, 10.2.2.2", "1.2.3.4"}, // the client can prepend lies, not append them
		{"192.168.1.1:4000", "1.2.3.4, 192.168.1.1", "1.2.3.4"},
		{"10.1.1.1:4000", "garbage, 10.3.3.3", "10.3.3.3"},
		{"[::ffff:10.1.1.1]:4000", "2001:db8::1", "2001:db8::1"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := g.clientIP(r); got != tc.want {
			t.Errorf("peer %s, X-Forwarded-For %q: client %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}
