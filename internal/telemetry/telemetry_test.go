package telemetry

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/telemetry/otlptest"
	"github.com/tokengate/tokengate/internal/testenv"
	"github.com/tokengate/tokengate/internal/usage"
)

const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func ratio(r float64) *float64 { return &r }

// newTracing returns tracing exporting to a fresh receiver.
func newTracing(t *testing.T, mod func(*config.Traces)) (*Tracing, *otlptest.Receiver) {
	t.Helper()
	recv := otlptest.NewReceiver(t)
	cfg := config.Traces{Endpoint: recv.URL(), SampleRatio: ratio(1), ServiceName: "tokengate-test", Timeout: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(cfg, "1.2.3", quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close(context.Background()) })
	return tr, recv
}

func closeTracing(t *testing.T, tr *Tracing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func chatRecord() *usage.Record {
	start := time.Now().Add(-time.Second)
	return &usage.Record{
		RequestID:  "req-1",
		Start:      start,
		End:        start.Add(800 * time.Millisecond),
		Caller:     usage.Caller{App: "billing"},
		ClientIP:   "10.0.0.7",
		Operation:  string(openai.OpChatCompletions),
		Model:      "gpt-4o",
		Pool:       "eu",
		Backend:    "aoai-swe",
		Deployment: "gpt-4o-2024-08-06",
		Attempts: []usage.Attempt{
			{Backend: "aoai-fr", Deployment: "gpt-4o", Status: 429},
			{Backend: "aoai-swe", Deployment: "gpt-4o-2024-08-06", Status: 200},
		},
		Status:  200,
		Stream:  true,
		Tokens:  usage.Tokens{Prompt: 120, Completion: 30, Total: 150, CachedPrompt: 64, Reasoning: 10, Source: usage.SourceBackend},
		Latency: usage.Latency{TotalMS: 800, FirstTokenMS: 250},
	}
}

func TestStartRequestContinuesClientTrace(t *testing.T) {
	tr, recv := newTracing(t, nil)
	r := httptest.NewRequest(http.MethodPost, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", nil)
	r.Header.Set("Traceparent", "00-"+clientTraceID+"-"+clientSpanID+"-01")
	r.Header.Set("Tracestate", "vendor=abc")
	r.Header.Set("User-Agent", "openai-go/3")

	ctx, span := tr.StartRequest(r)
	if trace.SpanFromContext(ctx) != span {
		t.Fatal("the returned context does not carry the span")
	}
	sc := span.SpanContext()
	if got := sc.TraceID().String(); got != clientTraceID {
		t.Errorf("trace id = %s, want the client's %s", got, clientTraceID)
	}
	if sc.SpanID().String() == clientSpanID {
		t.Error("the server span reuses the client's span id")
	}
	if !sc.IsSampled() {
		t.Error("a sampled client trace was not sampled")
	}
	if got := sc.TraceState().Get("vendor"); got != "abc" {
		t.Errorf("tracestate vendor = %q, want abc", got)
	}
	rec := chatRecord()
	tr.EndRequest(span, rec, 256)
	closeTracing(t, tr)

	spans := recv.WaitFor(t, func(s []otlptest.Span) bool { return len(s) == 1 }, 5*time.Second)
	s := spans[0]
	if s.TraceID != clientTraceID || s.ParentSpanID != clientSpanID {
		t.Errorf("span trace/parent = %s/%s, want %s/%s", s.TraceID, s.ParentSpanID, clientTraceID, clientSpanID)
	}
	if s.SpanID != sc.SpanID().String() {
		t.Errorf("exported span id %s, started %s", s.SpanID, sc.SpanID())
	}
	if s.Kind != trace.SpanKindServer {
		t.Errorf("kind = %v, want server", s.Kind)
	}
	if s.Name != "chat gpt-4o" {
		t.Errorf("name = %q, want %q", s.Name, "chat gpt-4o")
	}
	if s.ServiceName != "tokengate-test" || s.Resource["service.version"] != "1.2.3" {
		t.Errorf("resource = %v", s.Resource)
	}
	if s.Scope != ScopeName {
		t.Errorf("scope = %q", s.Scope)
	}
	for k, want := range map[string]any{
		"http.request.method": "POST",
		"url.path":            "/openai/deployments/gpt-4o/chat/completions",
		"url.scheme":          "http",
		"server.address":      "example.com",
		"server.port":         int64(80),
		"user_agent.original": "openai-go/3",
	} {
		if got := s.Attr(k); got != want {
			t.Errorf("%s = %#v, want %#v", k, got, want)
		}
	}
	// The span ends at the record's end, not when EndRequest ran.
	if !s.End.Equal(rec.End) {
		t.Errorf("end = %v, want the record's %v", s.End, rec.End)
	}
	// The exporter sent gzip protobuf.
	reqs := recv.Requests()
	if len(reqs) == 0 || reqs[0].Header.Get("Content-Encoding") != "gzip" || reqs[0].Header.Get("Content-Type") != "application/x-protobuf" {
		t.Errorf("export requests = %+v", reqs)
	}
}

func TestStartRequestWithoutClientTrace(t *testing.T) {
	tr, recv := newTracing(t, nil)
	r := httptest.NewRequest(http.MethodPost, "/v1/embeddings", nil)
	_, span := tr.StartRequest(r)
	if !span.SpanContext().IsValid() || !span.IsRecording() {
		t.Fatal("a request without traceparent got no new trace")
	}
	tr.EndRequest(span, &usage.Record{Operation: "embeddings", Model: "ada", Status: 200}, 0)
	closeTracing(t, tr)
	s := recv.WaitFor(t, func(s []otlptest.Span) bool { return len(s) == 1 }, 5*time.Second)[0]
	if s.ParentSpanID != "" || s.TraceID != span.SpanContext().TraceID().String() {
		t.Errorf("span = %+v, want a root of its own trace", s)
	}
}

// TestClientNotSampled: a client's sampled=0 flag is honoured: nothing is
// exported, but the context (for backends) is still valid.
func TestClientNotSampled(t *testing.T) {
	tr, recv := newTracing(t, nil)
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	r.Header.Set("Traceparent", "00-"+clientTraceID+"-"+clientSpanID+"-00")
	_, span := tr.StartRequest(r)
	if span.IsRecording() || span.SpanContext().IsSampled() {
		t.Error("an unsampled client trace was recorded")
	}
	if span.SpanContext().TraceID().String() != clientTraceID {
		t.Error("an unsampled client trace was not continued")
	}
	tr.EndRequest(span, chatRecord(), 0)
	closeTracing(t, tr)
	if got := recv.Spans(); len(got) != 0 {
		t.Errorf("exported %d spans, want none", len(got))
	}
}

func TestSampleRatioZero(t *testing.T) {
	tr, recv := newTracing(t, func(c *config.Traces) { c.SampleRatio = ratio(0) })
	for range 20 {
		_, span := tr.StartRequest(httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil))
		tr.EndRequest(span, chatRecord(), 0)
	}
	closeTracing(t, tr)
	if got := recv.Spans(); len(got) != 0 {
		t.Errorf("sample_ratio 0 exported %d spans", len(got))
	}
}

func TestEndRequestAttributes(t *testing.T) {
	embeddings := &usage.Record{
		RequestID: "req-2", Operation: "embeddings", Model: "text-embedding-3-small",
		Backend: "aoai-swe", Deployment: "emb", Status: 200, Caller: usage.Caller{App: "search"},
		Attempts: []usage.Attempt{{Backend: "aoai-swe", Status: 200}},
		Tokens:   usage.Tokens{Prompt: 42, Total: 42, Source: usage.SourceEstimated},
	}
	throttled := &usage.Record{
		RequestID: "req-3", Operation: "chat/completions", Model: "gpt-4o", Status: 429,
		ErrorClass: usage.ErrorThrottled, ErrorCode: "429",
		Tokens: usage.Tokens{Source: usage.SourceNone},
	}
	upstream := &usage.Record{RequestID: "req-4", Operation: "completions", Model: "gpt-35", Status: 502, Tokens: usage.Tokens{Source: usage.SourceNone}}
	files := &usage.Record{RequestID: "req-5", Operation: "files", Status: 200, Tokens: usage.Tokens{Source: usage.SourceNone}}
	audio := &usage.Record{RequestID: "req-6", Operation: "audio/transcriptions", Model: "whisper", Status: 200}

	tests := []struct {
		name      string
		method    string
		rec       *usage.Record
		maxTokens int64
		span      string
		want      map[string]any
		absent    []string
		status    codes.Code
	}{
		{
			name: "chat", method: http.MethodPost, rec: chatRecord(), maxTokens: 256, span: "chat gpt-4o",
			want: map[string]any{
				"gen_ai.operation.name":                "chat",
				"gen_ai.provider.name":                 "azure.ai.openai",
				"gen_ai.request.model":                 "gpt-4o",
				"gen_ai.request.max_tokens":            int64(256),
				"gen_ai.request.stream":                true,
				"gen_ai.usage.input_tokens":            int64(120),
				"gen_ai.usage.output_tokens":           int64(30),
				"gen_ai.usage.cache_read.input_tokens": int64(64),
				"gen_ai.usage.reasoning.output_tokens": int64(10),
				"gen_ai.response.time_to_first_chunk":  0.25,
				"http.response.status_code":            int64(200),
				"client.address":                       "10.0.0.7",
				"tokengate.request_id":                 "req-1",
				"tokengate.app":                        "billing",
				"tokengate.backend":                    "aoai-swe",
				"tokengate.deployment":                 "gpt-4o-2024-08-06",
				"tokengate.pool":                       "eu",
				"tokengate.attempts":                   int64(2),
				"tokengate.token_source":               "backend",
				"tokengate.operation":                  "chat/completions",
			},
			absent: []string{"error.type", "gen_ai.system"},
		},
		{
			name: "embeddings", method: http.MethodPost, rec: embeddings, span: "embeddings text-embedding-3-small",
			want: map[string]any{
				"gen_ai.operation.name":     "embeddings",
				"gen_ai.provider.name":      "azure.ai.openai",
				"gen_ai.request.model":      "text-embedding-3-small",
				"gen_ai.request.stream":     false,
				"gen_ai.usage.input_tokens": int64(42),
				"http.response.status_code": int64(200),
				"tokengate.request_id":      "req-2",
				"tokengate.app":             "search",
				"tokengate.backend":         "aoai-swe",
				"tokengate.token_source":    "estimated",
			},
			absent: []string{"gen_ai.usage.output_tokens", "gen_ai.request.max_tokens", "error.type", "gen_ai.response.time_to_first_chunk"},
		},
		{
			name: "throttled", method: http.MethodPost, rec: throttled, span: "chat gpt-4o", status: codes.Error,
			want: map[string]any{
				"error.type":                "throttled",
				"tokengate.error_code":      "429",
				"http.response.status_code": int64(429),
				"tokengate.token_source":    "none",
			},
			absent: []string{"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"},
		},
		{
			name: "5xx without class", method: http.MethodPost, rec: upstream, span: "text_completion gpt-35", status: codes.Error,
			want: map[string]any{"error.type": "502", "gen_ai.operation.name": "text_completion"},
		},
		{
			name: "not a GenAI operation", method: http.MethodGet, rec: files, span: "GET files",
			want:   map[string]any{"tokengate.operation": "files", "http.response.status_code": int64(200)},
			absent: []string{"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model"},
		},
		{
			name: "model without GenAI name", method: http.MethodPost, rec: audio, span: "POST audio/transcriptions",
			want:   map[string]any{"tokengate.model": "whisper"},
			absent: []string{"gen_ai.request.model"},
		},
	}
	tr, recv := newTracing(t, nil)
	ids := map[string]string{}
	for _, tt := range tests {
		_, span := tr.StartRequest(httptest.NewRequest(tt.method, "/openai/x", nil))
		ids[tt.name] = span.SpanContext().SpanID().String()
		tr.EndRequest(span, tt.rec, tt.maxTokens)
	}
	closeTracing(t, tr)
	spans := recv.WaitFor(t, func(s []otlptest.Span) bool { return len(s) == len(tests) }, 5*time.Second)
	byID := map[string]otlptest.Span{}
	for _, s := range spans {
		byID[s.SpanID] = s
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ok := byID[ids[tt.name]]
			if !ok {
				t.Fatal("span not exported")
			}
			if s.Name != tt.span {
				t.Errorf("name = %q, want %q", s.Name, tt.span)
			}
			for k, want := range tt.want {
				if got := s.Attr(k); got != want {
					t.Errorf("%s = %#v, want %#v", k, got, want)
				}
			}
			for _, k := range tt.absent {
				if got, ok := s.Attributes[k]; ok {
					t.Errorf("%s = %#v, want absent", k, got)
				}
			}
			if s.StatusCode != tt.status {
				t.Errorf("status = %v (%q), want %v", s.StatusCode, s.StatusMessage, tt.status)
			}
		})
	}
}

func TestOperationName(t *testing.T) {
	for op, want := range map[openai.Operation]string{
		openai.OpChatCompletions:     "chat",
		openai.OpResponses:           "chat",
		openai.OpCompletions:         "text_completion",
		openai.OpEmbeddings:          "embeddings",
		openai.OpImagesGenerations:   "generate_content",
		openai.OpAudioTranscriptions: "",
		openai.OpFiles:               "",
		openai.OpOther:               "",
	} {
		if got := OperationName(op); got != want {
			t.Errorf("OperationName(%q) = %q, want %q", op, got, want)
		}
	}
}

func TestHostPort(t *testing.T) {
	for _, tt := range []struct {
		host, scheme, want string
		port               int
	}{
		{"aoai.openai.azure.com", "https", "aoai.openai.azure.com", 443},
		{"127.0.0.1:8080", "http", "127.0.0.1", 8080},
		{"[::1]:9000", "http", "::1", 9000},
		{"[::1]", "https", "::1", 443},
		{"example.com", "http", "example.com", 80},
	} {
		host, port := splitHostPort(tt.host, tt.scheme)
		if host != tt.want || port != tt.port {
			t.Errorf("splitHostPort(%q, %q) = %q, %d; want %q, %d", tt.host, tt.scheme, host, port, tt.want, tt.port)
		}
	}
}

func TestHeadersSent(t *testing.T) {
	tr, recv := newTracing(t, func(c *config.Traces) { c.Headers = map[string]string{"X-Api-Key": "secret-1"} })
	_, span := tr.StartRequest(httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil))
	tr.EndRequest(span, chatRecord(), 0)
	closeTracing(t, tr)
	reqs := recv.Requests()
	if len(reqs) == 0 || reqs[0].Header.Get("X-Api-Key") != "secret-1" {
		t.Fatalf("export requests = %+v, want the configured header", reqs)
	}
}

// TestExportFailure: a collector that refuses exports costs the request
// path nothing; the loss is logged, counted and reported by Close.
func TestExportFailure(t *testing.T) {
	recv := otlptest.NewReceiver(t)
	recv.Fail(http.StatusBadRequest) // not retryable: fails at once
	var logs testenv.Buffer
	tr, err := New(config.Traces{Endpoint: recv.URL(), SampleRatio: ratio(1), Timeout: 5 * time.Second},
		"dev", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, span := tr.StartRequest(httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil))
		tr.EndRequest(span, chatRecord(), 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = tr.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "3 spans not exported") {
		t.Errorf("Close = %v, want the lost spans reported", err)
	}
	if got := tr.ExportFailures(); got != 3 {
		t.Errorf("ExportFailures = %d, want 3", got)
	}
	if !strings.Contains(logs.String(), "trace export failed") {
		t.Errorf("log = %q, want the failure logged", logs.String())
	}
}

func TestDisabled(t *testing.T) {
	tr, err := New(config.Traces{}, "dev", quiet())
	if err != nil {
		t.Fatal(err)
	}
	if tr.Enabled() {
		t.Fatal("tracing without an endpoint is enabled")
	}
	if _, ok := tr.TracerProvider().Tracer("x").Start(context.Background(), "x"); ok.IsRecording() {
		t.Error("the disabled provider records")
	}
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	r.Header.Set("Traceparent", "00-"+clientTraceID+"-"+clientSpanID+"-01")
	ctx, span := tr.StartRequest(r)
	if ctx != r.Context() {
		t.Error("disabled StartRequest derived a new context")
	}
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Error("disabled StartRequest returned a live span")
	}
	tr.EndRequest(span, chatRecord(), 10)
	if err := tr.Close(context.Background()); err != nil {
		t.Error(err)
	}
	if tr.Propagator() == nil {
		t.Error("no propagator")
	}

	// A nil *Tracing is disabled tracing too.
	var none *Tracing
	ctx, span = none.StartRequest(r)
	none.EndRequest(span, chatRecord(), 0)
	if ctx != r.Context() || none.Enabled() || none.Close(context.Background()) != nil || none.TracerProvider() == nil {
		t.Error("nil *Tracing is not disabled tracing")
	}
}

func TestDisabledAllocations(t *testing.T) {
	tr, _ := New(config.Traces{}, "dev", quiet())
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	rec := chatRecord()
	allocs := testing.AllocsPerRun(100, func() {
		_, span := tr.StartRequest(r)
		tr.EndRequest(span, rec, 16)
	})
	if allocs != 0 {
		t.Errorf("disabled StartRequest+EndRequest allocate %v times, want 0", allocs)
	}
}

// benchTracing is enabled tracing whose exporter drops everything, so the
// benchmark measures the request path, not the network.
func benchTracing(b *testing.B) *Tracing {
	tr := build("bench", "dev", quiet(), tracetest.NewNoopExporter(), 1, "tokengate")
	b.Cleanup(func() { _ = tr.Close(context.Background()) })
	return tr
}

// BenchmarkRequestSpan measures StartRequest + EndRequest, the per-request
// cost of tracing in the gateway's outermost middleware.
//
//	go test -run '^$' -bench RequestSpan -benchmem ./internal/telemetry
func BenchmarkRequestSpan(b *testing.B) {
	rec := chatRecord()
	newReq := func(traceparent string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", nil)
		r.Header.Set("User-Agent", "openai-go/3")
		if traceparent != "" {
			r.Header.Set("Traceparent", traceparent)
		}
		return r
	}
	disabled, _ := New(config.Traces{}, "dev", quiet())
	for _, bc := range []struct {
		name string
		tr   func(b *testing.B) *Tracing
		r    *http.Request
	}{
		{"disabled", func(*testing.B) *Tracing { return disabled }, newReq("")},
		{"enabled", benchTracing, newReq("")},
		{"enabled/client-trace", benchTracing, newReq("00-" + clientTraceID + "-" + clientSpanID + "-01")},
		{"enabled/client-unsampled", benchTracing, newReq("00-" + clientTraceID + "-" + clientSpanID + "-00")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := bc.tr(b)
			b.ReportAllocs()
			for b.Loop() {
				_, span := tr.StartRequest(bc.r)
				tr.EndRequest(span, rec, 256)
			}
		})
	}
}

var _ sdktrace.SpanExporter = (*loggingExporter)(nil)
