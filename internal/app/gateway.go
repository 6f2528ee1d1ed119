package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/balancer"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/policy"
	"github.com/tokengate/tokengate/internal/ratelimit"
	"github.com/tokengate/tokengate/internal/tokens"
	"github.com/tokengate/tokengate/internal/upstream"
	"github.com/tokengate/tokengate/internal/usage"
)

// Gateway is the client-facing server: the request pipeline over a runtime
// built from one Config. Safe for concurrent use.
type Gateway struct {
	cfg       *config.Config
	log       *slog.Logger
	transport *http.Transport
	auth      *auth.Authenticator
	policy    *policy.Policy
	balancer  *balancer.Balancer
	proxy     *upstream.Proxy
	limiter   *ratelimit.Limiter
	usage     *usage.Recorder
	prices    usage.Prices
	redactor  *usage.Redactor
	trusted   []netip.Prefix // usage.trusted_proxies
	handler   http.Handler
	ready     atomic.Bool
	// inflight counts requests until their usage record is spooled, so
	// Close never closes the limiter or the spool under a request that a
	// timed-out shutdown left unwinding.
	inflight sync.WaitGroup
}

// NewGateway builds a Gateway from validated config.
func NewGateway(cfg *config.Config, log *slog.Logger) (*Gateway, error) {
	backends := make(map[string]*upstream.Backend, len(cfg.Backends))
	for _, bc := range cfg.Backends {
		b, err := upstream.NewBackend(bc)
		if err != nil {
			return nil, err
		}
		backends[bc.Name] = b
	}
	bal, err := balancer.New(cfg, backends, log)
	if err != nil {
		return nil, err
	}
	pol, err := policy.New(cfg)
	if err != nil {
		return nil, err
	}
	redactor, err := usage.NewRedactor(cfg.Usage.Redact)
	if err != nil {
		return nil, err
	}
	var trusted []netip.Prefix
	for _, p := range cfg.Usage.TrustedProxies {
		pfx, err := config.ParsePrefix(p)
		if err != nil {
			return nil, err
		}
		trusted = append(trusted, pfx)
	}
	authn, err := auth.New(cfg.Identity, cfg.Apps, log)
	if err != nil {
		return nil, err
	}
	limiter, err := ratelimit.New(cfg, log)
	if err != nil {
		_ = authn.Close(context.Background())
		return nil, err
	}
	rec, err := newRecorder(cfg.Usage, log)
	if err != nil {
		_ = authn.Close(context.Background())
		_ = limiter.Close(context.Background())
		return nil, err
	}
	for _, m := range cfg.Models {
		tokens.ForModel(m.Name).Warm() // the prompt estimator's tables, built once per encoding
	}
	transport := upstream.NewTransport(cfg.Upstream)
	g := &Gateway{
		cfg:       cfg,
		log:       log,
		transport: transport,
		auth:      authn,
		policy:    pol,
		balancer:  bal,
		limiter:   limiter,
		usage:     rec,
		prices:    usage.NewPrices(cfg.Models),
		redactor:  redactor,
		trusted:   trusted,
		proxy: upstream.NewProxy(transport, log,
			upstream.WithBackendHeader(cfg.Upstream.BackendHeader == nil || *cfg.Upstream.BackendHeader)),
	}
	g.handler = g.pipeline()
	g.ready.Store(len(cfg.Backends) > 0)
	return g, nil
}

// pipeline assembles the request's journey, outermost step first. Later
// capabilities plug in where the comments say.
func (g *Gateway) pipeline() http.Handler {
	steps := []func(http.Handler) http.Handler{
		g.track,       // request id, per-write deadlines, access log, usage record
		g.recover,     // a bug answers 500 in the error shape
		g.accountable, // 503 while usage cannot be spooled (when_full: refuse)
		g.identify,    // Entra ID / OIDC token or gateway key -> Caller; api-key refused
		g.route,       // operation from the path, body peek, model alias
		g.authorize,   // operation, model, streaming, max_tokens caps
		g.limit,       // requests and tokens per minute, quotas, budgets (reserved; settled after the response)
	}
	h := http.Handler(http.HandlerFunc(g.forward)) // balancer -> upstream
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
		g.handler.ServeHTTP(w, r)
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

func (g *Gateway) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.inflight.Add(1)
		defer g.inflight.Done()
		x := &exchange{id: newRequestID(), start: time.Now(), clientID: clientRequestID(r.Header)}
		w.Header().Set("X-Request-Id", x.id)
		rec := &recorder{ResponseWriter: w, rc: http.NewResponseController(w), writeTimeout: g.cfg.Listen.WriteTimeout}
		defer func() {
			g.record(r, x, rec)
			accessLog(g.log, r, x, rec)
		}()
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
	})
}

func (g *Gateway) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel identity is the contract
				panic(v) // a deliberate abort: let net/http cut the connection
			}
			g.log.Error("panic serving request", slog.String("request_id", exchangeOf(r.Context()).id),
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
			openai.WriteError(w, openai.Errorf(http.StatusInternalServerError, "internal_error",
				"the gateway failed unexpectedly; report request id %s to its operator", exchangeOf(r.Context()).id))
		}()
		next.ServeHTTP(w, r)
	})
}

// identify authenticates the caller before anything else is looked at.
func (g *Gateway) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.auth.Authenticate(r)
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
func (g *Gateway) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := exchangeOf(r.Context())
		d, err := g.policy.Authorize(x.caller, policy.Request{Method: r.Method, Route: x.route, Alias: x.alias, Body: x.body})
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
func (g *Gateway) route(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := exchangeOf(r.Context())
		rt, err := openai.ParseRoute(r.Method, r.URL.Path)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		x.route = rt
		limit := g.cfg.Listen.MaxBodyBytes
		if r.ContentLength > limit {
			openai.WriteError(w, &http.MaxBytesError{Limit: limit})
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(g.cfg.Listen.ReadTimeout))
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		if !rt.Op.JSONBody() || !rt.Routed() {
			x.alias = rt.Alias
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
		x.alias = rt.Alias
		if rt.ModelInBody {
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
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request) {
	x := exchangeOf(r.Context())
	call := &upstream.Call{Route: x.route, RequestID: x.id, ClientRequestID: x.clientID}
	if x.caller.PassThrough {
		call.CallerToken = x.caller.Token
	}
	if b, ok := r.Body.(*body); ok {
		call.Body = b.buf.Bytes()
	}
	if !x.route.Routed() {
		x.selection = g.balancer.PassThrough()
	} else {
		appPool := ""
		if x.caller.App != nil {
			appPool = x.caller.App.Pool
		}
		sel, err := g.balancer.Select(g.balancer.PoolFor(x.alias, appPool), x.alias, x.cost(len(call.Body)), call.Body != nil)
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
	defer g.settle(x, call.Body)
	if w.Header().Get("X-Ratelimit-Limit-Requests") != "" || w.Header().Get("X-Ratelimit-Limit-Tokens") != "" {
		call.OwnRateLimitHeaders = true // the app's limits, not the backend's
	}
	g.proxy.Forward(w, r, call)
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

// Serve serves the gateway on ln until ctx is done, then drains in-flight
// requests for up to the configured shutdown timeout.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: g.cfg.Listen.ReadHeaderTimeout,
		IdleTimeout:       g.cfg.Listen.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
		// No ReadTimeout or WriteTimeout: they would cut long streams. The
		// body read and each write get their own deadlines instead.
	}
	return serve(ctx, srv, ln, g.cfg.Listen.ShutdownTimeout, func() { g.ready.Store(false) })
}

// AdminHandler serves the admin listener: health, /admin/backends and
// /admin/usage/spool now; /metrics and the rest of /admin later.
func (g *Gateway) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", g.healthz)
	mux.HandleFunc("GET /readyz", g.readyz)
	mux.HandleFunc("GET /admin/backends", g.adminBackends)
	mux.HandleFunc("GET /admin/usage/spool", g.adminSpool)
	return mux
}

// adminSpool shows the usage spool (records and bytes held, whether it is
// full) and every sink's lag, deliveries and last error.
func (g *Gateway) adminSpool(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	st := g.usage.Status()
	_ = enc.Encode(map[string]any{"spool": st.Spool, "near_full": g.usage.NearFull(), "unspooled": st.Unspooled, "sinks": st.Sinks})
}

// adminBackends lists every backend deployment's breaker state, last
// rate-limit readings and in-flight count.
func (g *Gateway) adminBackends(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(map[string]any{"backends": g.balancer.Snapshot()})
}

// ServeAdmin serves the admin handler on ln until ctx is done.
func (g *Gateway) ServeAdmin(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g.AdminHandler(),
		ReadHeaderTimeout: g.cfg.Listen.ReadHeaderTimeout,
		ReadTimeout:       g.cfg.Listen.ReadTimeout,
		WriteTimeout:      g.cfg.Listen.WriteTimeout,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	return serve(ctx, srv, ln, g.cfg.Listen.ShutdownTimeout, nil)
}

// Close stops key refreshes, releases idle upstream connections, and
// flushes the usage spool and drains its sinks (within
// usage.drain_timeout). Call it after Serve has returned, so every
// request's record is in.
func (g *Gateway) Close(ctx context.Context) error {
	// Requests cut by a shutdown timeout are still unwinding (their
	// connections are closed, so it is quick): let them record first.
	done := make(chan struct{})
	go func() { g.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		g.log.Error("requests still running at shutdown; their usage records may be lost")
	}
	g.transport.CloseIdleConnections()
	return errors.Join(g.auth.Close(ctx), g.limiter.Close(ctx), g.usage.Close(ctx))
}

// serve runs srv on ln until ctx is done; then it calls beforeShutdown (to
// turn unready) and shuts down gracefully within grace.
func serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration, beforeShutdown func()) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	if beforeShutdown != nil {
		beforeShutdown()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
