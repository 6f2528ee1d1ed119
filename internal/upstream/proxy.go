package upstream

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/telemetry"
)

// Selector chooses the target of each attempt of one request and learns
// from each outcome (implemented by the balancer). Its methods are called
// sequentially for one request.
type Selector interface {
	// Next returns the target of the next attempt, never one already tried;
	// an error when none is available (an *openai.Error for the client when
	// it is the first attempt).
	Next() (Target, error)
	// Report records the outcome of the attempt Next last returned and
	// says whether to try another backend.
	Report(resp *http.Response, err error) bool
	// Final may replace the response the client is about to get with an
	// error (e.g. one 429 for "every backend is throttled").
	Final(resp *http.Response) error
}

// Call is one client request to forward.
type Call struct {
	// Selector picks the backend of each attempt.
	Selector Selector
	// Route is what the client's path said.
	Route openai.Route
	// Body is the request body when the gateway holds it, so it can be
	// re-sent on another backend; nil means the body streams through once
	// (and the Selector must allow one attempt only).
	Body []byte
	// RequestID is the gateway's id for the request, sent upstream as
	// x-ms-client-request-id unless the client sent its own.
	RequestID string
	// ClientRequestID is the client's own x-ms-client-request-id (already
	// checked to be a sane token), passed on so the client can correlate
	// with the backend's logs.
	ClientRequestID string
	// CallerToken is the caller's own Azure OpenAI token, forwarded only to
	// backends with PassCaller; empty when the caller has none.
	CallerToken string
	// UsageBody, when not nil, is Body with stream_options.include_usage
	// added; it goes to deployments whose api-version streams usage, and
	// Meter.StripUsage is set so the client never sees the difference.
	UsageBody []byte
	// Meter, when not nil, meters the final response on its way out.
	Meter *openai.Meter
	// OwnRateLimitHeaders says the gateway has set the client's
	// x-ratelimit-* headers (its app limits): the backend's are dropped.
	OwnRateLimitHeaders bool
	// Sent is when the first attempt was sent.
	Sent time.Time
}

// droppedHeaders are never forwarded: client credentials (the gateway
// authenticates to backends with its own) and method overrides (the method
// the gateway authorized is the one the backend runs).
var droppedHeaders = []string{"Api-Key", "Authorization", "Ocp-Apim-Subscription-Key",
	"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// clientCredentialParams are removed from the query for the same reason.
var clientCredentialParams = []string{"api-key", "subscription-key"}

// Proxy forwards calls to backends and streams responses back: JSON bodies
// are copied through, event streams are flushed once per event. Failed
// attempts (429, 5xx, connection failures before any response) are retried
// on another backend inside the transport, so nothing is ever retried once
// a byte has gone to the client. A client that hangs up cancels the
// upstream request. Safe for concurrent use.
type Proxy struct {
	rp  *httputil.ReverseProxy
	log *slog.Logger
}

type callKey struct{}

// ProxyOption configures a Proxy.
type ProxyOption func(*retrying)

// WithBackendHeader adds x-tokengate-backend (the backend's name) to
// responses.
func WithBackendHeader(on bool) ProxyOption { return func(t *retrying) { t.backendHeader = on } }

// WithTracing makes a client span (SpanKindClient) for every upstream
// attempt, a child of the span in the request's context, named
// "{gen_ai.operation.name} {deployment}" ("chat gpt-4o-eu", see
// telemetry.SpanName) with gen_ai.operation.name, gen_ai.provider.name,
// gen_ai.request.model (the deployment sent upstream), server.address,
// server.port, http.request.method, tokengate.backend, tokengate.attempt,
// and http.response.status_code or, for a transport error, error.type. An
// attempt's span ends when its outcome is known (response headers or
// error): it does not cover streaming the body. prop (nil: W3C trace
// context) writes the attempt span's context into the outgoing headers;
// the client's own traceparent and tracestate are never forwarded then.
//
// A nil or no-op tp (trace/noop, as telemetry.Tracing returns when traces
// are off) leaves tracing off: no spans, no allocations, and the client's
// trace headers pass through unchanged, as without this option.
func WithTracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) ProxyOption {
	return func(t *retrying) {
		t.tracer, t.prop = nil, nil
		if tp == nil {
			return
		}
		tracer := tp.Tracer(telemetry.ScopeName + "/internal/upstream")
		if _, off := tracer.(noop.Tracer); off {
			return
		}
		if prop == nil {
			prop = propagation.TraceContext{}
		}
		t.tracer, t.prop = tracer, prop
	}
}

// NewProxy builds a Proxy over transport. transport must not retry by
// itself: the gateway never sets GetBody on outgoing requests, so Go's
// transport cannot replay a POST.
func NewProxy(transport http.RoundTripper, logger *slog.Logger, opts ...ProxyOption) *Proxy {
	rt := &retrying{base: transport}
	for _, o := range opts {
		o(rt)
	}
	p := &Proxy{log: logger}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      rt,
		ModifyResponse: modifyResponse,
		ErrorHandler:   p.errorHandler,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BufferPool:     bufferPool{},
	}
	return p
}

// Forward sends r through c's attempts and copies the response to w. Errors
// before the response starts are written to w in the Azure error shape.
func (p *Proxy) Forward(w http.ResponseWriter, r *http.Request, c *Call) {
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
}

// rewrite cleans the headers every attempt shares: client credentials
// removed, identity encoding, the request id.
func rewrite(pr *httputil.ProxyRequest) {
	c := pr.In.Context().Value(callKey{}).(*Call)
	h := pr.Out.Header
	for _, k := range droppedHeaders {
		h.Del(k)
	}
	// Bodies pass through as the backend sends them; asking for identity
	// keeps streams flushable and usage readable.
	h.Del("Accept-Encoding")
	if c.ClientRequestID != "" {
		h.Set("X-Ms-Client-Request-Id", c.ClientRequestID)
	} else {
		h.Set("X-Ms-Client-Request-Id", c.RequestID)
	}
}

// retrying is the proxy's transport: it runs the attempts of one call.
type retrying struct {
	base          http.RoundTripper
	backendHeader bool
	// tracer is nil when tracing is off.
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

func (t *retrying) RoundTrip(req *http.Request) (*http.Response, error) {
	c := req.Context().Value(callKey{}).(*Call)
	var prev *http.Response
	var prevErr error
	var prevTarget Target
	for n := 1; ; n++ {
		target, err := c.Selector.Next()
		if err != nil {
			switch {
			case prev != nil:
				return t.final(c, prev, prevTarget)
			case prevErr != nil:
				return nil, prevErr
			default:
				return nil, err
			}
		}
		if prev != nil {
			discard(prev)
		}
		resp, err := t.attempt(req, c, target, n)
		if c.Selector.Report(resp, err) {
			prev, prevErr, prevTarget = resp, err, target
			continue
		}
		if err != nil {
			if resp != nil {
				discard(resp)
			}
			return nil, err
		}
		return t.final(c, resp, target)
	}
}

func (t *retrying) final(c *Call, resp *http.Response, target Target) (*http.Response, error) {
	if err := c.Selector.Final(resp); err != nil {
		discard(resp)
		return nil, err
	}
	if t.backendHeader {
		resp.Header.Set("X-Tokengate-Backend", target.Backend.Name)
	}
	return resp, nil
}

// attempt sends try n (from 1) of req to target, in a span of its own when
// tracing is on.
func (t *retrying) attempt(req *http.Request, c *Call, target Target, n int) (*http.Response, error) {
	if t.tracer == nil {
		return t.send(req.Context(), req, c, target)
	}
	ctx, span := t.startAttempt(req, c, target, n)
	resp, err := t.send(ctx, req, c, target)
	endAttempt(span, resp, err)
	return resp, err
}

// startAttempt starts the client span of one attempt.
func (t *retrying) startAttempt(req *http.Request, c *Call, target Target, n int) (context.Context, trace.Span) {
	b := target.Backend
	host, port := telemetry.HostPort(b.URL)
	attrs := make([]attribute.KeyValue, 0, 9)
	op := telemetry.OperationName(c.Route.Op)
	if op != "" {
		attrs = append(attrs,
			telemetry.GenAIOperationName.String(op),
			telemetry.GenAIProviderName.String(telemetry.ProviderAzureOpenAI))
		if target.Deployment != "" {
			attrs = append(attrs, telemetry.GenAIRequestModel.String(target.Deployment))
		}
	} else if target.Deployment != "" {
		attrs = append(attrs, telemetry.AttrDeployment.String(target.Deployment))
	}
	method := req.Method
	if !isKnownMethod(method) {
		method = "_OTHER"
	}
	attrs = append(attrs,
		semconv.ServerAddress(host),
		semconv.ServerPort(port),
		semconv.HTTPRequestMethodKey.String(method),
		telemetry.AttrBackend.String(b.Name),
		telemetry.AttrAttempt.Int(n),
	)
	return t.tracer.Start(req.Context(), telemetry.SpanName(c.Route.Op, method, target.Deployment),
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// endAttempt records an attempt's outcome on its span and ends it: a
// status >= 400 or an error marks it failed (a client span's 4xx is an
// error), error.type being the status or the gateway's error code.
func endAttempt(span trace.Span, resp *http.Response, err error) {
	switch {
	case err != nil:
		span.SetAttributes(semconv.ErrorTypeKey.String(openai.AsError(err).Code))
		span.SetStatus(codes.Error, err.Error())
	case resp != nil:
		span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
		if resp.StatusCode >= 400 {
			status := strconv.Itoa(resp.StatusCode)
			span.SetAttributes(semconv.ErrorTypeKey.String(status))
			span.SetStatus(codes.Error, status+" "+http.StatusText(resp.StatusCode))
		}
	}
	span.End()
}

func isKnownMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return true
	}
	return false
}

// send makes one try of req to target with ctx (the request's context, or
// the attempt span's when tracing is on).
func (t *retrying) send(ctx context.Context, req *http.Request, c *Call, target Target) (*http.Response, error) {
	out := req.Clone(ctx)
	b := target.Backend
	out.URL.Scheme, out.URL.Host, out.Host = b.URL.Scheme, b.URL.Host, b.URL.Host
	if out.URL.RawQuery != "" || target.Deployment != "" {
		q := out.URL.Query()
		for _, k := range clientCredentialParams {
			q.Del(k)
		}
		if target.Deployment != "" {
			q.Set("api-version", target.APIVersion)
		}
		out.URL.RawQuery = q.Encode()
	}
	switch {
	case target.Deployment != "":
		out.URL.Path = "/openai/deployments/" + target.Deployment + "/" + c.Route.Suffix
		out.URL.RawPath = ""
	case strings.HasPrefix(out.URL.Path, "/v1/"):
		// OpenAI-style pass-through: Azure serves it under /openai/v1/.
		out.URL.Path = "/openai" + out.URL.Path
		if out.URL.RawPath != "" {
			out.URL.RawPath = "/openai" + out.URL.RawPath
		}
	}
	if b.PassCaller {
		if c.CallerToken == "" {
			return nil, openai.Errorf(http.StatusForbidden, "PermissionDenied",
				"backend %s accepts only the caller's own Azure OpenAI token: authenticate with a token for https://cognitiveservices.azure.com (az account get-access-token --resource https://cognitiveservices.azure.com)",
				b.Name)
		}
		out.Header.Set("Authorization", "Bearer "+c.CallerToken)
	} else if err := b.Credential.Authorize(ctx, out.Header); err != nil {
		return nil, &openai.Error{Status: http.StatusBadGateway, Code: "upstream_credential",
			Message: "the gateway could not obtain its credential for backend " + b.Name + "; its operator should check the gateway log",
			Err:     err}
	}
	if body := c.Body; body != nil {
		if c.UsageBody != nil && c.Meter != nil {
			c.Meter.StripUsage = StreamsUsage(target.APIVersion)
			if c.Meter.StripUsage {
				body = c.UsageBody
			}
		}
		out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	if c.Sent.IsZero() {
		c.Sent = time.Now()
	}
	if t.tracer != nil {
		// The backend sees the attempt span as its parent, never the
		// client's span: the client's headers are replaced, not merged.
		out.Header.Del("Traceparent")
		out.Header.Del("Tracestate")
		t.prop.Inject(ctx, propagation.HeaderCarrier(out.Header))
	}
	out.GetBody = nil // Go's transport must never replay a request by itself
	return t.base.RoundTrip(out)
}

// discard drains a little of an abandoned response (so its connection can
// be reused) and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

func modifyResponse(resp *http.Response) error {
	// The client sees the gateway's request id; Azure's own stays in
	// apim-request-id.
	resp.Header.Del("X-Request-Id")
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil // a websocket: its body is the connection, not a response to meter
	}
	ct := resp.Header.Get("Content-Type")
	c, _ := resp.Request.Context().Value(callKey{}).(*Call)
	if c != nil && c.OwnRateLimitHeaders {
		for _, k := range rateLimitHeaders {
			resp.Header.Del(k)
		}
	}
	switch {
	case c != nil && c.Meter != nil:
		c.Meter.Status = resp.StatusCode
		resp.Body = c.Meter.Wrap(resp.Body, ct)
	case strings.HasPrefix(ct, "text/event-stream"):
		resp.Body = openai.NewEventReader(resp.Body, nil)
	}
	return nil
}

// rateLimitHeaders are a backend's own limit readings.
var rateLimitHeaders = []string{"X-Ratelimit-Limit-Requests", "X-Ratelimit-Limit-Tokens",
	"X-Ratelimit-Remaining-Requests", "X-Ratelimit-Remaining-Tokens",
	"X-Ratelimit-Reset-Requests", "X-Ratelimit-Reset-Tokens"}

// StreamsUsage reports whether an Azure OpenAI api-version accepts
// stream_options.include_usage: 2024-09-01-preview and later previews, and
// GA versions from 2024-10-21. Versions are dates, so they compare as
// strings; an unknown form (e.g. "latest", "v1") is assumed recent.
func StreamsUsage(apiVersion string) bool {
	if len(apiVersion) < 10 || apiVersion[4] != '-' || apiVersion[7] != '-' {
		return true
	}
	date := apiVersion[:10]
	if strings.HasSuffix(apiVersion, "-preview") {
		return date >= "2024-09-01"
	}
	return date >= "2024-10-21"
}

func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	c := r.Context().Value(callKey{}).(*Call)
	e := openai.AsError(err)
	if e.Status != openai.StatusClientClosed && e.Status >= 500 {
		p.log.Warn("upstream request failed", slog.String("request_id", c.RequestID),
			slog.Int("status", e.Status), slog.Any("error", err))
	}
	openai.WriteError(w, e)
}

// bufferPool recycles ReverseProxy's copy buffers. A stream holds its
// buffer for as long as it runs, so the buffer is small: 4 KiB takes a
// chat completion or a burst of a stream's events in one read (10,000
// open streams hold 40 MiB of them, not 320 MiB at net/http's default
// 32 KiB). Larger bodies (embeddings) take more, smaller reads: a 100 KB
// body is read 4 KiB at a time instead of 32.
type bufferPool struct{}

const copyBufferSize = 4 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
