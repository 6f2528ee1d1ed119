package otlptest

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func TestReceiverDecodesExports(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []otlptracehttp.Option
		ct   string
	}{
		{"protobuf", nil, "application/x-protobuf"},
		{"protobuf/gzip", []otlptracehttp.Option{otlptracehttp.WithCompression(otlptracehttp.GzipCompression)}, "application/x-protobuf"},
		{"json", []otlptracehttp.Option{otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON)}, "application/json"},
		{"json/gzip", []otlptracehttp.Option{otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON), otlptracehttp.WithCompression(otlptracehttp.GzipCompression)}, "application/json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			recv := NewReceiver(t)
			ctx := context.Background()
			exp, err := otlptracehttp.New(ctx, append([]otlptracehttp.Option{otlptracehttp.WithEndpointURL(recv.URL() + "/v1/traces")}, tt.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
				sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "svc"))))
			tracer := tp.Tracer("scope-x")
			pctx, parent := tracer.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer))
			_, child := tracer.Start(pctx, "child", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
				attribute.String("s", "v"), attribute.Int64("i", 42), attribute.Float64("f", 0.5),
				attribute.Bool("b", true), attribute.StringSlice("ss", []string{"a", "b"})))
			child.SetStatus(codes.Error, "boom")
			child.End()
			parent.End()
			if err := tp.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}

			spans := recv.WaitFor(t, func(s []Span) bool { return len(s) == 2 }, 5*time.Second)
			p, c := Named(spans, "parent"), Named(spans, "child")
			if len(p) != 1 || len(c) != 1 {
				t.Fatalf("spans = %+v", spans)
			}
			if p[0].TraceID != parent.SpanContext().TraceID().String() || p[0].SpanID != parent.SpanContext().SpanID().String() || p[0].ParentSpanID != "" {
				t.Errorf("parent ids = %+v", p[0])
			}
			if c[0].TraceID != p[0].TraceID || c[0].ParentSpanID != p[0].SpanID || c[0].SpanID != child.SpanContext().SpanID().String() {
				t.Errorf("child ids = %+v", c[0])
			}
			if p[0].Kind != trace.SpanKindServer || c[0].Kind != trace.SpanKindClient {
				t.Errorf("kinds = %v, %v", p[0].Kind, c[0].Kind)
			}
			if c[0].StatusCode != codes.Error || c[0].StatusMessage != "boom" || p[0].StatusCode != codes.Unset {
				t.Errorf("status = %v %q", c[0].StatusCode, c[0].StatusMessage)
			}
			if c[0].ServiceName != "svc" || c[0].Scope != "scope-x" {
				t.Errorf("service/scope = %q/%q", c[0].ServiceName, c[0].Scope)
			}
			for k, want := range map[string]any{"s": "v", "i": int64(42), "f": 0.5, "b": true} {
				if got := c[0].Attr(k); got != want {
					t.Errorf("%s = %#v, want %#v", k, got, want)
				}
			}
			if ss, _ := c[0].Attr("ss").([]any); len(ss) != 2 || ss[0] != "a" {
				t.Errorf("ss = %#v", c[0].Attr("ss"))
			}
			if c[0].End.Before(c[0].Start) || c[0].Start.IsZero() {
				t.Errorf("times = %v..%v", c[0].Start, c[0].End)
			}
			if reqs := recv.Requests(); len(reqs) == 0 || !strings.HasPrefix(reqs[0].Header.Get("Content-Type"), tt.ct) {
				t.Errorf("requests = %+v", reqs)
			}
		})
	}
}

func TestReceiverRefuses(t *testing.T) {
	recv := NewReceiver(t)
	for _, tt := range []struct {
		name, method, ct, body string
		want                   int
	}{
		{"GET", http.MethodGet, "", "", http.StatusMethodNotAllowed},
		{"content type", http.MethodPost, "text/plain", "x", http.StatusUnsupportedMediaType},
		{"bad protobuf", http.MethodPost, "application/x-protobuf", "\xff\xff\xff", http.StatusBadRequest},
		{"bad json id", http.MethodPost, "application/json", `{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}`, http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, recv.URL()+"/v1/traces", strings.NewReader(tt.body))
			req.Header.Set("Content-Type", tt.ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	recv.Fail(http.StatusServiceUnavailable)
	resp, err := http.Post(recv.URL()+"/v1/traces", "application/x-protobuf", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("failing receiver answered %d", resp.StatusCode)
	}
	if len(recv.Spans()) != 0 {
		t.Error("refused requests left spans")
	}
}
