// Package telemetry owns the gateway's OpenTelemetry tracing: the tracer
// provider and its OTLP/HTTP exporter, W3C trace-context propagation, and
// the server span of each client request named and attributed after the
// OpenTelemetry GenAI semantic conventions (gen_ai.*), with the gateway's
// own tokengate.* attributes beside them. Upstream attempt spans are made
// by internal/upstream with the provider and propagator this package
// builds.
//
// It never touches the otel globals (otel.SetTracerProvider,
// otel.SetTextMapPropagator, otel.SetErrorHandler): everything is injected,
// so two gateways in one process (tests, hot reload) never share state.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdk "go.opentelemetry.io/otel/sdk"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tokengate/tokengate/internal/config"
)

// ScopeName is the instrumentation scope of the gateway's spans.
const ScopeName = "github.com/tokengate/tokengate"

// Tracing is the gateway's tracing: a tracer provider exporting over
// OTLP/HTTP, or a no-op one when traces are off. Its methods are safe for
// concurrent use, and a nil *Tracing behaves as disabled tracing.
type Tracing struct {
	// tp is what TracerProvider returns: sdk, or a no-op provider.
	tp trace.TracerProvider
	// sdk is nil when tracing is off.
	sdk *sdktrace.TracerProvider
	// tracer is nil when tracing is off: the hot path tests it and skips
	// all work (no context, no attributes, no allocation).
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	exp    *loggingExporter
}

// New builds tracing for cfg (a validated config, defaults filled).
//
// When !cfg.Enabled() it returns a Tracing whose TracerProvider is a no-op
// (trace/noop): StartRequest and EndRequest then cost a nil check, and
// upstream.WithTracing recognises the provider and adds nothing either.
//
// Otherwise spans go through a batch span processor to an OTLP/HTTP
// exporter posting protobuf (gzip) to cfg.Endpoint + "/v1/traces" with
// cfg.Headers, each export bounded by cfg.Timeout; plain http is used for an
// http:// endpoint. The sampler is ParentBased(TraceIDRatioBased(ratio)):
// a client's sampled flag in traceparent is honoured, new traces are kept
// at cfg.SampleRatio (default 1). The resource carries service.name
// (cfg.ServiceName, default tokengate), service.version (version),
// service.instance.id (random per New) and host.name.
//
// Export failures never reach the otel global error handler: they are
// logged to log at most once a minute, and counted (ExportFailures). New
// makes no network call; Close must be called to flush and stop the
// exporter's goroutine.
func New(cfg config.Traces, version string, log *slog.Logger) (*Tracing, error) {
	prop := propagation.TraceContext{}
	if !cfg.Enabled() {
		return &Tracing{tp: noop.NewTracerProvider(), prop: prop}, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = min(max(*cfg.SampleRatio, 0), 1)
	}
	serviceName := cfg.ServiceName
	if serviceName == "" {
		serviceName = "tokengate"
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}

	opts := []otlptracehttp.Option{
		otlptracehttp.WithEndpointURL(strings.TrimSuffix(cfg.Endpoint, "/") + "/v1/traces"),
		otlptracehttp.WithTimeout(timeout),
		otlptracehttp.WithCompression(otlptracehttp.GzipCompression),
	}
	if len(cfg.Headers) > 0 {
		h := make(map[string]string, len(cfg.Headers))
		for k, v := range cfg.Headers {
			h[k] = v
		}
		opts = append(opts, otlptracehttp.WithHeaders(h))
	}
	// otlptracehttp.New only builds a client: no connection is made here.
	inner, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry.traces: OTLP exporter: %w", err)
	}
	return build(cfg.Endpoint, version, log, inner, ratio, serviceName), nil
}

// build assembles enabled tracing around exporter inner (tests pass their
// own), which sends to endpoint.
func build(endpoint, version string, log *slog.Logger, inner sdktrace.SpanExporter, ratio float64, serviceName string) *Tracing {
	exp := &loggingExporter{SpanExporter: inner, log: log, endpoint: endpoint}
	resAttrs := []attribute.KeyValue{
		semconv.ServiceName(serviceName),
		semconv.ServiceVersion(version),
		semconv.ServiceInstanceID(uuid.NewString()),
		semconv.TelemetrySDKName("opentelemetry"),
		semconv.TelemetrySDKLanguageGo,
		semconv.TelemetrySDKVersion(sdk.Version()),
	}
	if host, err := os.Hostname(); err == nil && host != "" {
		resAttrs = append(resAttrs, semconv.HostName(host))
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, resAttrs...)),
	)
	return &Tracing{
		tp:     tp,
		sdk:    tp,
		tracer: tp.Tracer(ScopeName, trace.WithInstrumentationVersion(version)),
		prop:   propagation.TraceContext{},
		exp:    exp,
	}
}

// Enabled reports whether spans are recorded and exported.
func (t *Tracing) Enabled() bool { return t != nil && t.sdk != nil }

// TracerProvider returns the provider for other instrumentation (the
// upstream proxy's attempt spans): the SDK provider, or a no-op provider
// when tracing is off. Never nil.
func (t *Tracing) TracerProvider() trace.TracerProvider {
	if t == nil || t.tp == nil {
		return noop.NewTracerProvider()
	}
	return t.tp
}

// Propagator returns the W3C trace-context propagator (traceparent,
// tracestate) used to read clients' context and write backends'. Never nil.
func (t *Tracing) Propagator() propagation.TextMapPropagator {
	if t == nil || t.prop == nil {
		return propagation.TraceContext{}
	}
	return t.prop
}

// ExportFailures returns how many finished spans could not be exported
// (collector down or refusing) since New. Zero when tracing is off.
func (t *Tracing) ExportFailures() uint64 {
	if t == nil || t.exp == nil {
		return 0
	}
	return t.exp.failed.Load()
}

// Close flushes the spans still queued and shuts the provider down within
// ctx. Spans that cannot be exported by then are reported in the error.
// Further spans are dropped. Close on disabled tracing returns nil; calling
// it twice is harmless.
func (t *Tracing) Close(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	before := t.exp.failed.Load()
	err := t.sdk.Shutdown(ctx)
	if lost := t.exp.failed.Load() - before; lost > 0 {
		err = errors.Join(err, fmt.Errorf("telemetry: %d spans not exported to %s at shutdown: %w", lost, t.exp.endpoint, t.exp.lastError()))
	}
	return err
}

// loggingExporter keeps export errors away from the otel global error
// handler (which would print them through the standard log package): it
// logs them with the gateway's logger, throttled, and counts the spans
// lost. The batch span processor never retries a batch, so returning nil
// loses nothing; otlptracehttp has already retried within its timeout.
type loggingExporter struct {
	sdktrace.SpanExporter
	log      *slog.Logger
	endpoint string
	failed   atomic.Uint64
	lastLog  atomic.Int64 // unix nanoseconds of the last warning
	lastErr  atomic.Pointer[error]
}

// logEvery bounds the export-failure warnings to one per interval.
const logEvery = time.Minute

func (e *loggingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err == nil {
		return nil
	}
	total := e.failed.Add(uint64(len(spans)))
	e.lastErr.Store(&err)
	now := time.Now().UnixNano()
	last := e.lastLog.Load()
	if (last == 0 || now-last >= int64(logEvery)) && e.lastLog.CompareAndSwap(last, now) {
		e.log.Warn("trace export failed: spans dropped; check telemetry.traces.endpoint and the collector",
			slog.String("endpoint", e.endpoint), slog.Int("spans", len(spans)),
			slog.Uint64("dropped_total", total), slog.Any("error", err))
	}
	return nil
}

func (e *loggingExporter) lastError() error {
	if p := e.lastErr.Load(); p != nil {
		return *p
	}
	return errors.New("unknown export error")
}
