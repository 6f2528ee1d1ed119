package upstream

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tokengate/tokengate/internal/openai"
)

const (
	clientTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	clientTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID      = "00f067aa0ba902b7"
)

// listSelector is a hand-written Selector walking a fixed list of
// targets; another backend is tried after a 429, a 5xx or an error.
type listSelector struct {
	targets []Target
	next    int
}

func (s *listSelector) Next() (Target, error) {
	if s.next >= len(s.targets) {
		return Target{}, openai.Errorf(http.StatusServiceUnavailable, "no_backend", "no backend left")
	}
	s.next++
	return s.targets[s.next-1], nil
}

func (s *listSelector) Report(resp *http.Response, err error) bool {
	return err != nil || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500
}

func (s *listSelector) Final(*http.Response) error { return nil }

// backend is an httptest backend answering status and remembering the
// trace headers of each request.
type backend struct {
	*httptest.Server
	mu          sync.Mutex
	traceparent []string
	tracestate  []string
}

func newBackend(t *testing.T, status int) *backend {
	t.Helper()
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		b.mu.Lock()
		b.traceparent = append(b.traceparent, r.Header.Get("Traceparent"))
		b.tracestate = append(b.tracestate, r.Header.Get("Tracestate"))
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[]}`)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) seen() ([]string, []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.traceparent...), append([]string(nil), b.tracestate...)
}

func (b *backend) target(t *testing.T, name, deployment string) Target {
	t.Helper()
	u, err := url.Parse(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	return Target{Backend: &Backend{Name: name, URL: u, Credential: APIKey("k")}, Deployment: deployment, APIVersion: "2024-10-21"}
}

// gateway serves client requests through a Proxy built with opts over
// targets, the way the gateway does: the request span (when tp is not nil)
// continues the client's trace, and every call walks targets in order.
func gateway(t *testing.T, tp trace.TracerProvider, targets func() []Target, opts ...ProxyOption) (*httptest.Server, chan trace.SpanContext) {
	t.Helper()
	p := NewProxy(http.DefaultTransport, slog.New(slog.DiscardHandler), opts...)
	spans := make(chan trace.SpanContext, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if tp != nil {
			ctx = propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(r.Header))
			var span trace.Span
			ctx, span = tp.Tracer("test").Start(ctx, "request", trace.WithSpanKind(trace.SpanKindServer))
			defer span.End()
			spans <- span.SpanContext()
		}
		body, _ := io.ReadAll(r.Body)
		p.Forward(w, r.WithContext(ctx), &Call{
			Selector:  &listSelector{targets: targets()},
			Route:     openai.Route{Op: openai.OpChatCompletions, Alias: "gpt-4o", Suffix: "chat/completions"},
			Body:      body,
			RequestID: "req-1",
		})
	}))
	t.Cleanup(srv.Close)
	return srv, spans
}

func post(t *testing.T, url string, header http.Header) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`))
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestAttemptSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	throttled, ok := newBackend(t, http.StatusTooManyRequests), newBackend(t, http.StatusOK)
	gw, reqSpans := gateway(t, tp, func() []Target {
		return []Target{throttled.target(t, "aoai-fr", "gpt-4o-fr"), ok.target(t, "aoai-swe", "gpt-4o-swe")}
	}, WithTracing(tp, propagation.TraceContext{}))

	h := http.Header{"Traceparent": {clientTraceparent}, "Tracestate": {"client=1"}}
	if status := post(t, gw.URL, h); status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	reqSpan := <-reqSpans
	if reqSpan.TraceID().String() != clientTraceID {
		t.Fatalf("request span trace %s, want the client's", reqSpan.TraceID())
	}

	var attempts []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			attempts = append(attempts, s)
		}
	}
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	for i, tt := range []struct {
		b          *backend
		name       string
		backend    string
		deployment string
		status     int64
		code       codes.Code
	}{
		{throttled, "chat gpt-4o-fr", "aoai-fr", "gpt-4o-fr", 429, codes.Error},
		{ok, "chat gpt-4o-swe", "aoai-swe", "gpt-4o-swe", 200, codes.Unset},
	} {
		s := attempts[i]
		if s.Name() != tt.name {
			t.Errorf("attempt %d name = %q, want %q", i+1, s.Name(), tt.name)
		}
		if s.Parent().SpanID() != reqSpan.SpanID() || s.SpanContext().TraceID() != reqSpan.TraceID() {
			t.Errorf("attempt %d parent = %s/%s, want the request span %s/%s", i+1,
				s.Parent().TraceID(), s.Parent().SpanID(), reqSpan.TraceID(), reqSpan.SpanID())
		}
		a := attrs(s)
		u, _ := url.Parse(tt.b.URL)
		for k, want := range map[attribute.Key]attribute.Value{
			"gen_ai.operation.name":     attribute.StringValue("chat"),
			"gen_ai.provider.name":      attribute.StringValue("azure.ai.openai"),
			"gen_ai.request.model":      attribute.StringValue(tt.deployment),
			"server.address":            attribute.StringValue(u.Hostname()),
			"server.port":               attribute.IntValue(mustPort(t, u)),
			"http.request.method":       attribute.StringValue("POST"),
			"http.response.status_code": attribute.Int64Value(tt.status),
			"tokengate.backend":         attribute.StringValue(tt.backend),
			"tokengate.attempt":         attribute.IntValue(i + 1),
		} {
			if got := a[k]; got != want {
				t.Errorf("attempt %d %s = %v, want %v", i+1, k, got.Emit(), want.Emit())
			}
		}
		if s.Status().Code != tt.code {
			t.Errorf("attempt %d status = %v, want %v", i+1, s.Status().Code, tt.code)
		}
		if tt.code == codes.Error && a["error.type"] != attribute.StringValue("429") {
			t.Errorf("attempt %d error.type = %v, want 429", i+1, a["error.type"].Emit())
		}

		// The backend saw the attempt span as parent, in the client's trace,
		// and the client's tracestate carried on.
		tps, tss := tt.b.seen()
		want := "00-" + clientTraceID + "-" + s.SpanContext().SpanID().String() + "-01"
		if len(tps) != 1 || tps[0] != want {
			t.Errorf("backend %d traceparent = %q, want %q", i+1, tps, want)
		}
		if len(tss) != 1 || tss[0] != "client=1" {
			t.Errorf("backend %d tracestate = %q, want client=1", i+1, tss)
		}
	}
}

func mustPort(t *testing.T, u *url.URL) int {
	t.Helper()
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("no port in %s", u)
	}
	return p
}

// TestAttemptSpanTransportError: an attempt that gets no response records
// error.type, not a status code.
func TestAttemptSpanTransportError(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	dead := newBackend(t, http.StatusOK)
	deadTarget := dead.target(t, "dead", "d1")
	dead.Close()
	ok := newBackend(t, http.StatusOK)
	gw, _ := gateway(t, tp, func() []Target { return []Target{deadTarget, ok.target(t, "ok", "d2")} },
		WithTracing(tp, nil))
	if status := post(t, gw.URL, nil); status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	var failed sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindClient && attrs(s)["tokengate.backend"].AsString() == "dead" {
			failed = s
		}
	}
	if failed == nil {
		t.Fatal("no span for the failed attempt")
	}
	a := attrs(failed)
	if got := a["error.type"].AsString(); got != "upstream_unreachable" {
		t.Errorf("error.type = %q, want upstream_unreachable", got)
	}
	if _, ok := a["http.response.status_code"]; ok {
		t.Error("a failed attempt has a status code")
	}
	if failed.Status().Code != codes.Error {
		t.Errorf("status = %v, want Error", failed.Status().Code)
	}
}

// TestTracingOff: without WithTracing, or with a no-op provider (tracing
// disabled), the client's trace headers reach the backend untouched.
func TestTracingOff(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []ProxyOption
	}{
		{"no option", nil},
		{"noop provider", []ProxyOption{WithTracing(noop.NewTracerProvider(), propagation.TraceContext{})}},
		{"nil provider", []ProxyOption{WithTracing(nil, nil)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, http.StatusOK)
			gw, _ := gateway(t, nil, func() []Target { return []Target{b.target(t, "b", "d")} }, tt.opts...)
			post(t, gw.URL, http.Header{"Traceparent": {clientTraceparent}, "Tracestate": {"client=1"}})
			tps, tss := b.seen()
			if len(tps) != 1 || tps[0] != clientTraceparent || tss[0] != "client=1" {
				t.Errorf("backend saw traceparent %q tracestate %q, want the client's", tps, tss)
			}
		})
	}
}

// TestTracingWithoutRequestSpan: with tracing on but no span in the
// request's context, the attempt starts a trace of its own and the
// client's traceparent is still not forwarded.
func TestTracingWithoutRequestSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	b := newBackend(t, http.StatusOK)
	gw, _ := gateway(t, nil, func() []Target { return []Target{b.target(t, "b", "d")} }, WithTracing(tp, nil))
	post(t, gw.URL, http.Header{"Traceparent": {clientTraceparent}})
	tps, _ := b.seen()
	ended := rec.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans, want 1", len(ended))
	}
	want := "00-" + ended[0].SpanContext().TraceID().String() + "-" + ended[0].SpanContext().SpanID().String() + "-01"
	if len(tps) != 1 || tps[0] != want {
		t.Errorf("backend traceparent = %q, want %q", tps, want)
	}
}

// cannedTransport answers every request at once from memory, so the
// benchmark measures the proxy, not the network.
type cannedTransport struct{}

func (cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": {"application/json"}},
		Body:    io.NopCloser(strings.NewReader(`{"id":"x"}`)),
		Request: r,
	}, nil
}

// BenchmarkForwardTracing measures Proxy.Forward with tracing off (no
// option, or the no-op provider disabled telemetry hands over: both must
// cost nothing extra) and on.
//
//	go test -run '^$' -bench ForwardTracing -benchmem ./internal/upstream
func BenchmarkForwardTracing(b *testing.B) {
	u, _ := url.Parse("http://backend.invalid:8080")
	target := Target{Backend: &Backend{Name: "b", URL: u, Credential: APIKey("k")}, Deployment: "gpt-4o", APIVersion: "2024-10-21"}
	body := []byte(`{"messages":[{"role":"user","content":"hi"}]}`)
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
	for _, bc := range []struct {
		name string
		opts []ProxyOption
		span bool
	}{
		{"off", nil, false},
		{"off/noop-provider", []ProxyOption{WithTracing(noop.NewTracerProvider(), propagation.TraceContext{})}, false},
		{"on", []ProxyOption{WithTracing(sdk, propagation.TraceContext{})}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := NewProxy(cannedTransport{}, slog.New(slog.DiscardHandler), bc.opts...)
			r := httptest.NewRequest(http.MethodPost, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", nil)
			r.Header.Set("Traceparent", clientTraceparent)
			if bc.span {
				ctx, span := sdk.Tracer("bench").Start(r.Context(), "request")
				defer span.End()
				r = r.WithContext(ctx)
			}
			route := openai.Route{Op: openai.OpChatCompletions, Alias: "gpt-4o", Suffix: "chat/completions"}
			sel := &listSelector{targets: []Target{target}}
			c := &Call{Route: route, Body: body, RequestID: "req"}
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				sel.next = 0
				*c = Call{Selector: sel, Route: route, Body: body, RequestID: "req"}
				w.Body.Reset()
				clear(w.Header())
				p.Forward(w, r, c)
			}
		})
	}
}
