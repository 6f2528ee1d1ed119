package telemetry

import (
	"context"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/usage"
)

// StartRequest starts the server span of one client request, continuing
// the client's W3C trace (traceparent, tracestate) when it sent one: the
// span then shares the client's trace id and has the client's span as
// parent, and the client's sampled flag decides whether it is recorded.
//
// The returned context carries the span; the caller serves the request
// with it (so upstream attempt spans become children) and must hand the
// span to EndRequest exactly once. The span's name is provisional (the
// request method) until EndRequest renames it. Start-time attributes:
// http.request.method, url.path, url.scheme, server.address, server.port
// (from the Host header) and user_agent.original.
//
// With tracing off it returns r.Context() unchanged and a no-op span,
// without allocating.
func (t *Tracing) StartRequest(r *http.Request) (context.Context, trace.Span) {
	if t == nil || t.tracer == nil {
		return r.Context(), trace.SpanFromContext(context.Background()) // the no-op span; no allocation
	}
	ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	method, known := httpMethod(r.Method)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	host, port := splitHostPort(r.Host, scheme)
	attrs := make([]attribute.KeyValue, 0, 8)
	attrs = append(attrs,
		semconv.HTTPRequestMethodKey.String(method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme(scheme),
	)
	if !known {
		attrs = append(attrs, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	if host != "" {
		attrs = append(attrs, semconv.ServerAddress(host), semconv.ServerPort(port))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(ua))
	}
	name := method
	if !known {
		name = "HTTP"
	}
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

// EndRequest completes span (from StartRequest) from the request's usage
// record and ends it at rec.End. maxTokens is the request's max_tokens or
// max_completion_tokens, 0 when it set neither.
//
// The span is renamed "{gen_ai.operation.name} {model}" ("chat gpt-4o",
// see SpanName) and gets, for GenAI operations, gen_ai.operation.name,
// gen_ai.provider.name ("azure.ai.openai"), gen_ai.request.model (the
// client's alias), gen_ai.request.max_tokens, gen_ai.request.stream,
// gen_ai.usage.input_tokens / output_tokens (cache_read and reasoning
// counts when non-zero; none when no tokens were counted) and, for
// streams, gen_ai.response.time_to_first_chunk; always
// http.response.status_code (except 499: the client had gone), client.address,
// tokengate.operation, .request_id, .app, .backend, .deployment, .pool,
// .attempts, .token_source and, on failure, error.type (rec.ErrorClass, or
// the status for a 5xx without one) and tokengate.error_code. The span
// status is Error for a 5xx or any ErrorClass, with rec.ErrorCode as the
// description. An operation without a GenAI name (files, audio, ...) is
// named "{method} {operation}" ("GET files") and carries its alias as
// tokengate.model, with no gen_ai.* attributes.
//
// A non-recording span (tracing off, or not sampled) is only ended: no
// attributes are built. rec may be nil (the span is just ended).
func (t *Tracing) EndRequest(span trace.Span, rec *usage.Record, maxTokens int64) {
	if span == nil {
		return
	}
	if !span.IsRecording() || rec == nil {
		span.End()
		return
	}
	op := openai.Operation(rec.Operation)
	genAI := OperationName(op)
	attrs := make([]attribute.KeyValue, 0, 24)
	if genAI != "" {
		attrs = append(attrs,
			GenAIOperationName.String(genAI),
			GenAIProviderName.String(ProviderAzureOpenAI),
			GenAIRequestStream.Bool(rec.Stream),
		)
		if rec.Model != "" {
			attrs = append(attrs, GenAIRequestModel.String(rec.Model))
		}
		if maxTokens > 0 {
			attrs = append(attrs, GenAIRequestMaxTokens.Int64(maxTokens))
		}
		if tk := rec.Tokens; tk.Source != "" && tk.Source != usage.SourceNone {
			attrs = append(attrs, GenAIUsageInputTokens.Int64(tk.Prompt))
			if op != openai.OpEmbeddings {
				attrs = append(attrs, GenAIUsageOutputTokens.Int64(tk.Completion))
			}
			if tk.CachedPrompt > 0 {
				attrs = append(attrs, GenAIUsageCacheReadInputTokens.Int64(tk.CachedPrompt))
			}
			if tk.Reasoning > 0 {
				attrs = append(attrs, GenAIUsageReasoningOutputTokens.Int64(tk.Reasoning))
			}
		}
		if rec.Stream && rec.Latency.FirstTokenMS > 0 {
			attrs = append(attrs, GenAIResponseTimeToFirstChunk.Float64(rec.Latency.FirstTokenMS/1000))
		}
	} else if rec.Model != "" {
		attrs = append(attrs, AttrModel.String(rec.Model))
	}
	if rec.Status > 0 && rec.Status != openai.StatusClientClosed {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(rec.Status))
	}
	if rec.ClientIP != "" {
		attrs = append(attrs, semconv.ClientAddress(rec.ClientIP))
	}
	attrs = append(attrs, AttrOperation.String(rec.Operation), AttrRequestID.String(rec.RequestID))
	if rec.Caller.App != "" {
		attrs = append(attrs, AttrApp.String(rec.Caller.App))
	}
	if rec.Backend != "" {
		attrs = append(attrs, AttrBackend.String(rec.Backend))
	}
	if rec.Deployment != "" {
		attrs = append(attrs, AttrDeployment.String(rec.Deployment))
	}
	if rec.Pool != "" {
		attrs = append(attrs, AttrPool.String(rec.Pool))
	}
	if len(rec.Attempts) > 0 {
		attrs = append(attrs, AttrAttempts.Int(len(rec.Attempts)))
	}
	if rec.Tokens.Source != "" {
		attrs = append(attrs, AttrTokenSource.String(rec.Tokens.Source))
	}
	failed := rec.ErrorClass != "" || rec.Status >= 500
	if failed {
		errType := rec.ErrorClass
		if errType == "" {
			errType = strconv.Itoa(rec.Status)
		}
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		if rec.ErrorCode != "" {
			attrs = append(attrs, AttrErrorCode.String(rec.ErrorCode))
		}
	}
	span.SetName(SpanName(op, provisionalName(span), rec.Model))
	span.SetAttributes(attrs...)
	if failed {
		desc := rec.ErrorCode
		if desc == "" {
			desc = rec.ErrorClass
		}
		span.SetStatus(codes.Error, desc)
	}
	if rec.End.IsZero() {
		span.End()
		return
	}
	span.End(trace.WithTimestamp(rec.End))
}

// provisionalName returns the name StartRequest gave span (its method):
// the record does not carry the method, and SDK spans expose their name.
func provisionalName(span trace.Span) string {
	if n, ok := span.(interface{ Name() string }); ok {
		return n.Name()
	}
	return "HTTP"
}

// httpMethod returns the method as http.request.method records it: one of
// the known methods, or "_OTHER" (known false).
func httpMethod(m string) (string, bool) {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m, true
	}
	return "_OTHER", false
}
