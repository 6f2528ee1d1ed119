package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/metrics"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/policy"
	"github.com/tokengate/tokengate/internal/telemetry"
	"github.com/tokengate/tokengate/internal/upstream"
	"github.com/tokengate/tokengate/internal/usage"
	"github.com/tokengate/tokengate/internal/usage/store"
)

// Gateway is the client-facing server: the request pipeline over the
// current runtime (built from the current Config, swapped on reload), and
// what outlives reloads: the usage recorder, metrics, tracing, readiness.
// Safe for concurrent use.
type Gateway struct {
	// boot is the config the gateway started with. Listeners, the usage
	// spool and sinks, telemetry and logging keep it until a restart.
	boot    *config.Config
	opts    gatewayOptions
	log     *slog.Logger
	usage   *usage.Recorder
	reports *store.Store // the first SQL sink, for /admin/usage/summary; nil if none
	metrics *metrics.Metrics
	tracing *telemetry.Tracing
	rt      atomic.Pointer[runtime]
	ready   atomic.Bool
	// inflight counts requests until their usage record is spooled, so
	// Close never closes the limiter or the spool under a request that a
	// timed-out shutdown left unwinding; active is the same count for
	// metrics.
	inflight sync.WaitGroup
	active   atomic.Int64
	// cutting is set when shutdown_timeout has passed and the requests
	// still running are being cut: their records say the gateway did it.
	cutting atomic.Bool

	reloadMu sync.Mutex   // serializes reloads
	reloads  reloadStatus // guarded by reloadMu
	closing  bool         // guarded by reloadMu: Close has begun
	retired  []*runtime   // guarded by reloadMu: replaced, maybe still closing
}

// GatewayOption configures NewGateway.
type GatewayOption func(*gatewayOptions)

type gatewayOptions struct {
	path           string               // the config file, for reloads; "" = none
	insecureIssuer bool                 // --insecure-dev-issuer
	override       func(*config.Config) // command-line overrides, applied to every load
	hash           [32]byte             // of the file as it was loaded at start
}

// WithConfigFile names the file cfg was loaded from, so Reload, SIGHUP and
// POST /admin/reload can read it again. allowInsecureIssuers repeats serve's
// --insecure-dev-issuer for the reloaded file; override, when not nil,
// applies the command line's overrides (e.g. --addr) to each reloaded
// config as it did to cfg.
//
// Call it right after loading the file: the file's content then is what
// the watcher compares later changes with.
func WithConfigFile(path string, allowInsecureIssuers bool, override func(*config.Config)) GatewayOption {
	var hash [32]byte
	if data, err := os.ReadFile(path); err == nil {
		hash = sha256.Sum256(data)
	}
	return func(o *gatewayOptions) {
		o.path, o.insecureIssuer, o.override, o.hash = path, allowInsecureIssuers, override, hash
	}
}

// NewGateway builds a Gateway from validated config.
func NewGateway(cfg *config.Config, log *slog.Logger, opts ...GatewayOption) (_ *Gateway, err error) {
	g := &Gateway{boot: cfg, log: log}
	for _, o := range opts {
		o(&g.opts)
	}
	if g.tracing, err = telemetry.New(cfg.Telemetry.Traces, version(), log); err != nil {
		return nil, err
	}
	if g.usage, g.reports, err = newRecorder(cfg.Usage, log); err != nil {
		_ = g.tracing.Close(context.Background())
		return nil, err
	}
	rt, err := g.newRuntime(cfg, nil)
	if err != nil {
		_ = g.usage.Close(context.Background())
		_ = g.tracing.Close(context.Background())
		return nil, err
	}
	g.rt.Store(rt)
	g.metrics = metrics.New(version(), gatewaySource{g})
	g.reloads = reloadStatus{OK: true, Trigger: "start", At: time.Now().UTC(), LoadedAt: time.Now().UTC(), hash: g.opts.hash}
	g.ready.Store(len(cfg.Backends) > 0)
	return g, nil
}

// pipeline assembles the request's journey, outermost step first. Later
// capabilities plug in where the comments say.
//
// Before these steps, Gateway.track has given the request its id, its
// runtime, its span, per-write deadlines, and (when it ends) its usage
// record, metrics and access log line.
func (rt *runtime) pipeline() http.Handler {
	steps := []func(http.Handler) http.Handler{
		rt.recover,     // a bug answers 500 in the error shape
		rt.accountable, // 503 while usage cannot be spooled (when_full: refuse)
		rt.identify,    // Entra ID / OIDC token or gateway key -> Caller; api-key refused
		rt.route,       // operation from the path, body peek, model alias
		rt.authorize,   // operation, model, streaming, max_tokens caps
		rt.limit,       // requests and tokens per minute, quotas, budgets (reserved; settled after the response)
	}
	h := http.Handler(http.HandlerFunc(rt.forward)) // balancer -> upstream
	for i := len(steps) - 1; i >= 0; i-- {
		h = steps[i](h)
	}
	return h
}

// ServeHTTP serves health checks and passes everything else to the pipeline.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		g.healthz(w, r)
	case "/readyz":
		g.readyz(w, r)
	default:
		g.track(w, r)
	}
}

func (g *Gateway) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
}

func (g *Gateway) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if !g.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"status":"not ready"}`+"\n")
		return
	}
	_, _ = io.WriteString(w, `{"status":"ready"}`+"\n")
}

// track runs one request on the current runtime's pipeline: it mints the
// request id, starts the request's span, gives each write its own deadline,
// and when the request ends sends what is left of the response, then
// writes its usage record, metrics and access log line, in that order.
func (g *Gateway) track(w http.ResponseWriter, r *http.Request) {
	g.inflight.Add(1)
	defer g.inflight.Done()
	g.active.Add(1)
	defer g.active.Add(-1)
	rt := g.acquire()
	defer rt.done()
	ctx, span := g.tracing.StartRequest(r)
	x := &exchange{id: newRequestID(), start: time.Now(), clientID: clientRequestID(r.Header)}
	w.Header().Set("X-Request-Id", x.id)
	rec := &recorder{ResponseWriter: w, rc: http.NewResponseController(w), writeTimeout: g.boot.Listen.WriteTimeout}
	defer func() {
		// The client has its whole answer before the bookkeeping below,
		// not after it: a body of known length still in the writer's
		// buffer goes out now (streams are already flushed; a body of
		// unknown length is left to net/http, so it keeps its computed
		// Content-Length).
		if rec.status != 0 && rec.Header().Get("Content-Length") != "" {
			_ = rec.rc.Flush()
		}
		ur := rt.record(r, x, rec)
		spilled := x.selection != nil && x.selection.Spilled()
		g.metrics.Request(rt.labels(ur), ur, spilled)
		g.tracing.EndRequest(span, ur, x.maxTokens())
		accessLog(g.log, r, x, rec)
	}()
	rt.handler.ServeHTTP(rec, r.WithContext(context.WithValue(ctx, exchangeKey{}, x)))
}

func (rt *runtime) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel identity is the contract
				panic(v) // a deliberate abort: let net/http cut the connection
			}
			rt.log.Error("panic serving request", slog.String("request_id", exchangeOf(r.Context()).id),
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
			openai.WriteError(w, openai.Errorf(http.StatusInternalServerError, "internal_error",
				"the gateway failed unexpectedly; report request id %s to its operator", exchangeOf(r.Context()).id))
		}()
		next.ServeHTTP(w, r)
	})
}

// identify authenticates the caller before anything else is looked at.
func (rt *runtime) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := rt.auth.Authenticate(r)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		exchangeOf(r.Context()).caller = c
		next.ServeHTTP(w, r)
	})
}

// authorize applies the caller's permissions and per-app rules; a clamped
// max_tokens is written into the forwarded body.
func (rt *runtime) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := exchangeOf(r.Context())
		d, err := rt.policy.Authorize(x.caller, policy.Request{Method: r.Method, Route: x.route, Alias: x.alias, Body: x.body})
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		if b, ok := r.Body.(*body); ok && d.SetMaxTokens > 0 {
			b.replace(openai.SetInt(b.buf.Bytes(), d.MaxTokensField, d.SetMaxTokens))
			r.ContentLength = int64(b.buf.Len())
			if d.MaxTokensField == "max_completion_tokens" {
				x.body.MaxCompletionTokens = d.SetMaxTokens
			} else {
				x.body.MaxTokens = d.SetMaxTokens
			}
		}
		next.ServeHTTP(w, r)
	})
}

// route classifies the request and, for model-routed JSON operations, reads
// the body (within the cap, with a deadline) and peeks at the fields the
// gateway acts on. Pass-through bodies stream through unread.
func (rt *runtime) route(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := exchangeOf(r.Context())
		route, err := openai.ParseRoute(r.Method, r.URL.Path)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		x.route = route
		limit := rt.cfg.Listen.MaxBodyBytes
		if r.ContentLength > limit {
			openai.WriteError(w, &http.MaxBytesError{Limit: limit})
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(rt.cfg.Listen.ReadTimeout))
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		if !route.Op.JSONBody() || !route.Routed() {
			x.alias = route.Alias
			r.Body = &deadlineClearer{ReadCloser: r.Body, rc: rc}
			next.ServeHTTP(w, r)
			return
		}
		b, err := readBody(r)
		_ = rc.SetReadDeadline(time.Time{})
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		defer b.release()
		if x.body, err = openai.Peek(b.buf.Bytes()); err != nil {
			openai.WriteError(w, err)
			return
		}
		x.alias = route.Alias
		if route.ModelInBody {
			if x.body.Model == "" {
				openai.WriteError(w, openai.Errorf(http.StatusBadRequest, "missing_model",
					"the request body must name a model, e.g. \"model\": \"gpt-4o\""))
				return
			}
			x.alias = x.body.Model
		}
		r.Body, r.ContentLength = b, int64(b.buf.Len())
		next.ServeHTTP(w, r)
	})
}

// forward starts the balancer's selection for the request's pool and model
// and proxies it: each attempt goes to the selection's next backend.
func (rt *runtime) forward(w http.ResponseWriter, r *http.Request) {
	x := exchangeOf(r.Context())
	call := &upstream.Call{Route: x.route, RequestID: x.id, ClientRequestID: x.clientID}
	if x.caller.PassThrough {
		call.CallerToken = x.caller.Token
	}
	if b, ok := r.Body.(*body); ok {
		call.Body = b.buf.Bytes()
	}
	if !x.route.Routed() {
		x.selection = rt.balancer.PassThrough()
	} else {
		appPool := ""
		if x.caller.App != nil {
			appPool = x.caller.App.Pool
		}
		sel, err := rt.balancer.Select(rt.balancer.PoolFor(x.alias, appPool), x.alias, x.cost(len(call.Body)), call.Body != nil)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		x.selection = sel
	}
	call.Selector = x.selection
	x.call = call
	x.meter(call)
	// Deferred: the proxy aborts the handler with a panic when the client
	// hangs up mid-copy, and that request's tokens count too.
	defer rt.settle(x, call.Body)
	if w.Header().Get("X-Ratelimit-Limit-Requests") != "" || w.Header().Get("X-Ratelimit-Limit-Tokens") != "" {
		call.OwnRateLimitHeaders = true // the app's limits, not the backend's
	}
	rt.proxy.Forward(w, r, call)
}

// body is a request body held in a pooled buffer. It is released to the pool
// only after both the handler and the transport (which may close the body
// from another goroutine after RoundTrip returns) are done with it.
type body struct {
	bytes.Reader
	buf    *bytes.Buffer
	refs   atomic.Int32
	closed atomic.Bool
}

var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody keeps one huge request from pinning its buffer forever.
const maxPooledBody = 1 << 20

func readBody(r *http.Request) (*body, error) {
	buf := bodyBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(r.Body); err != nil {
		bodyBuffers.Put(buf)
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) || r.Context().Err() != nil {
			return nil, err
		}
		return nil, &openai.Error{Status: http.StatusBadRequest, Code: "invalid_body",
			Message: "the request body could not be read completely", Err: err}
	}
	b := &body{buf: buf}
	b.Reset(buf.Bytes())
	b.refs.Store(2) // the handler and the transport
	return b, nil
}

// replace swaps the body's content for p (a rewritten body).
func (b *body) replace(p []byte) {
	b.buf.Reset()
	b.buf.Write(p)
	b.Reset(b.buf.Bytes())
}

// Close implements io.Closer for the transport.
func (b *body) Close() error {
	if b.closed.CompareAndSwap(false, true) {
		b.release()
	}
	return nil
}

func (b *body) release() {
	if b.refs.Add(-1) == 0 && b.buf.Cap() <= maxPooledBody {
		bodyBuffers.Put(b.buf)
	}
}

// deadlineClearer lifts the body read deadline once a streamed body is
// fully read, so it cannot cut the response that follows.
type deadlineClearer struct {
	io.ReadCloser
	rc *http.ResponseController
}

func (d *deadlineClearer) Read(p []byte) (int, error) {
	n, err := d.ReadCloser.Read(p)
	if err == io.EOF {
		_ = d.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
