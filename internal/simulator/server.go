// Package simulator owns the Azure OpenAI stand-in: an HTTP server that behaves
// like an Azure OpenAI resource on the wire — its routes, authentication, error
// shapes, rate limits with their headers, streaming event sequence and usage —
// while generating deterministic filler text and embeddings instead of running a
// model.
//
// It backs the gateway's demo (in process), every end-to-end test (load
// balancing, limits and accounting are tested against it) and load tests, and
// the CLI's "tokengate simulate --config FILE". An [Instance] is one simulated
// resource with its deployments; it is an [http.Handler], so tests can wrap it
// in httptest.NewServer, or [Instance.Start] serves it on its own listener.
//
// Served routes (all POST; anything else is Azure's 404 "Resource not found"):
//
//	/openai/deployments/{deployment}/chat/completions?api-version=...
//	/openai/deployments/{deployment}/completions?api-version=...
//	/openai/deployments/{deployment}/embeddings?api-version=...
//	/openai/v1/{chat/completions,completions,embeddings}   deployment in body "model"
//	/v1/{chat/completions,completions,embeddings}          same
//
// A request goes through, in order: extra latency, authentication (401),
// routing (404; a missing api-version is a 404 too, as on Azure), deployment
// lookup (404 DeploymentNotFound), operation check (400 OperationNotSupported),
// body validation (400), injected throttling (429, faults.throttle_rate), rate
// limiting (429), injected server errors (500/503), then generation.
//
// Every response from a deployment with an RPM or TPM limit carries Azure's
// x-ratelimit-limit-*, x-ratelimit-remaining-* and OpenAI's
// x-ratelimit-reset-* headers (the last as a Go-style duration rounded up to
// the millisecond: "20ms", "1.5s", "1m0s"); a 429 adds retry-after and
// retry-after-ms.
//
// Faults and latency can be changed while serving ([Instance.SetFaults],
// [Instance.SetLatency]), so a test can make a backend fail, slow down and
// recover.
package simulator

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/tokens"
)

// maxBodyBytes bounds a request body; larger bodies get 413.
const maxBodyBytes = 32 << 20

// Observation is what the simulated backend saw of one request and how it
// answered, for tests to assert on.
type Observation struct {
	Instance  string
	RequestID string // the apim-request-id the response carried
	Method    string
	Path      string
	Query     url.Values
	Header    http.Header // a clone of the request headers
	// Body is a copy of the request body as read; empty when the request was
	// refused before its body was read (401, 404).
	Body []byte
	// Deployment and Model are empty when the request never resolved to a
	// deployment (401, 404, malformed v1 body).
	Deployment string
	Model      string
	Operation  string // "chat.completions", "completions", "embeddings", or "" when unrouted
	Stream     bool
	// Status is the response status, 0 when none was sent (the client went away
	// first).
	Status int
	// Cancelled is true when the request's context was cancelled (or a write to
	// the client failed) before the response completed: a client or gateway
	// hang-up.
	Cancelled bool
	// Reset is true when the simulator cut the connection on purpose: a
	// reset_rate fault, or the instance closing mid-response.
	Reset      bool
	Start, End time.Time
	// PromptTokens is counted with the deployment model's tokenizer.
	// CompletionTokens is what was generated and sent, summed over choices; for
	// a stream cut short it is the tokens sent before the cut.
	PromptTokens, CompletionTokens int
}

// Stats are an instance's running counters.
type Stats struct {
	Requests  int64 // requests received
	InFlight  int64 // requests being handled now
	Cancelled int64 // requests whose client went away before the response completed
	Resets    int64 // connections cut on purpose (reset faults, closing)
	// ByStatus counts responses by status code; requests that ended without a
	// response are not in it.
	ByStatus map[int]int64
}

// Option configures an [Instance].
type Option func(*options)

type options struct {
	observer func(Observation)
	now      func() time.Time
	seed     *uint64
}

// WithObserver registers fn to be called once per request, synchronously on the
// request's goroutine after the last byte was written (or the connection cut)
// and before ServeHTTP returns. It is called concurrently for concurrent
// requests, so it must be safe for that, and it should be quick. The
// observation is fn's to keep.
func WithObserver(fn func(Observation)) Option {
	return func(o *options) { o.observer = fn }
}

// WithClock replaces time.Now for the rate-limit windows and the "created"
// timestamps, so window tests can move time by hand. It does not change how
// long latency sleeps take. The clock must not go backwards.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithSeed makes fault injection draw from a generator seeded with seed, so a
// sequential run of requests sees the same faults every time.
func WithSeed(seed uint64) Option {
	return func(o *options) { o.seed = &seed }
}

// Instance is one simulated Azure OpenAI resource. It is safe for concurrent
// use. An Instance that was started must be closed.
type Instance struct {
	cfg         InstanceConfig
	logger      *slog.Logger
	observe     func(Observation)
	now         func() time.Time
	dice        *dice
	deployments map[string]*deployment
	apiKey      []byte
	bearer      []byte
	maxBody     int64
	pool        sync.Pool // *exchange

	closing   chan struct{}
	closeOnce sync.Once

	faults  atomic.Pointer[Faults]  // never nil; replaced whole by SetFaults
	latency atomic.Pointer[Latency] // never nil; replaced whole by SetLatency

	requests, inFlight, cancelled, resets atomic.Int64
	byStatus                              [600]atomic.Int64

	mu     sync.Mutex
	srv    *http.Server
	url    string
	served chan struct{}
}

// deployment is a configured deployment with what serving it needs.
type deployment struct {
	name, model string
	modelJSON   string // model as a JSON string literal
	rpm, tpm    int
	counter     *tokens.Counter
	counts      *countCache
	embedding   bool // serves embeddings only; otherwise completions only
	dims        int  // default embedding dimensions
	dimsFixed   bool // the model does not accept "dimensions"
	fingerprint string
	limiter     *limiter
}

// New returns an Instance for cfg. Unset fields take their documented
// defaults; an invalid cfg is an error listing every problem. logger may be
// nil to discard logs. The Instance serves through ServeHTTP at once; call
// [Instance.Start] to give it its own listener.
func New(cfg InstanceConfig, logger *slog.Logger, opts ...Option) (*Instance, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("simulator: instance %q: %w", cfg.Name, err)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	in := &Instance{
		cfg:         cfg,
		logger:      logger.With(slog.String("component", "simulator"), slog.String("instance", cfg.Name)),
		observe:     o.observer,
		now:         o.now,
		dice:        newDice(o.seed),
		deployments: make(map[string]*deployment, len(cfg.Deployments)),
		closing:     make(chan struct{}),
		maxBody:     maxBodyBytes,
	}
	in.faults.Store(&cfg.Faults)
	in.latency.Store(&cfg.Latency)
	if cfg.APIKey != "" {
		in.apiKey = []byte(cfg.APIKey)
	}
	if cfg.BearerToken != "" {
		in.bearer = []byte(cfg.BearerToken)
	}
	for _, d := range cfg.Deployments {
		in.deployments[d.Name] = newDeployment(d, cfg.RateLimitWindow)
	}
	return in, nil
}

func newDeployment(d DeploymentConfig, window time.Duration) *deployment {
	model := strings.ToLower(d.Model)
	dep := &deployment{
		name:        d.Name,
		model:       d.Model,
		modelJSON:   string(appendString(nil, d.Model)),
		rpm:         d.RPM,
		tpm:         d.TPM,
		counter:     tokens.ForModel(d.Model),
		counts:      newCountCache(),
		embedding:   strings.Contains(model, "embedding"),
		dims:        1536,
		fingerprint: fmt.Sprintf("fp_%010x", fnvString(fnvOffset, d.Model)&0xffffffffff),
		limiter:     newLimiter(d.RPM, d.TPM, window),
	}
	switch {
	case strings.Contains(model, "text-embedding-3-large"):
		dep.dims = 3072
	case strings.Contains(model, "ada"):
		dep.dimsFixed = true
	}
	return dep
}

// Name returns the instance's configured name.
func (in *Instance) Name() string { return in.cfg.Name }

// Faults returns the fault injection in effect.
func (in *Instance) Faults() Faults { return *in.faults.Load() }

// SetFaults replaces the instance's fault injection; an invalid f is an error
// listing every problem, and changes nothing. Each request reads the faults
// once, on arrival, so f applies to requests that arrive after SetFaults
// returns; requests in progress keep what they started with. It is safe to
// call while the instance serves.
func (in *Instance) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("simulator: instance %q: faults: %w", in.cfg.Name, err)
	}
	in.faults.Store(&f)
	return nil
}

// Latency returns the latency shaping in effect.
func (in *Instance) Latency() Latency { return *in.latency.Load() }

// SetLatency replaces the instance's latency shaping, with the same rules as
// [Instance.SetFaults]: validated, applied to requests arriving afterwards (a
// stream in progress keeps its pace), safe to call while serving.
func (in *Instance) SetLatency(l Latency) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("simulator: instance %q: latency: %w", in.cfg.Name, err)
	}
	in.latency.Store(&l)
	return nil
}

// Stats returns a snapshot of the instance's counters.
func (in *Instance) Stats() Stats {
	s := Stats{
		Requests:  in.requests.Load(),
		InFlight:  in.inFlight.Load(),
		Cancelled: in.cancelled.Load(),
		Resets:    in.resets.Load(),
		ByStatus:  make(map[int]int64),
	}
	for code := range in.byStatus {
		if n := in.byStatus[code].Load(); n > 0 {
			s.ByStatus[code] = n
		}
	}
	return s
}

// Start listens on the configured address and serves in the background. It
// returns the base URL clients use, e.g. "http://127.0.0.1:54321" (https
// when the instance has TLS). It fails if the instance was already started
// or closed, or its certificate cannot be loaded.
func (in *Instance) Start() (baseURL string, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.srv != nil {
		return "", fmt.Errorf("simulator: instance %q already started at %s", in.cfg.Name, in.url)
	}
	select {
	case <-in.closing:
		return "", fmt.Errorf("simulator: instance %q is closed", in.cfg.Name)
	default:
	}
	scheme := "http"
	var tlsCfg *tls.Config
	if t := in.cfg.TLS; t != nil {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return "", fmt.Errorf("simulator: instance %q: tls: %w", in.cfg.Name, err)
		}
		scheme, tlsCfg = "https", &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", in.cfg.Listen)
	if err != nil {
		return "", fmt.Errorf("simulator: instance %q: listen: %w", in.cfg.Name, err)
	}
	in.url = scheme + "://" + ln.Addr().String()
	in.srv = &http.Server{
		Handler:           in,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(in.logger.Handler(), slog.LevelWarn),
		TLSConfig:         tlsCfg,
	}
	in.served = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		serve := srv.Serve
		if srv.TLSConfig != nil {
			serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
		}
		if err := serve(ln); !errors.Is(err, http.ErrServerClosed) {
			in.logger.Error("simulator: serve failed", slog.Any("error", err))
		}
	}(in.srv, in.served)
	in.logger.Info("simulator: listening", slog.String("url", in.url), slog.Int("deployments", len(in.deployments)))
	return in.url, nil
}

// URL returns the base URL of a started instance, "" before Start.
func (in *Instance) URL() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.url
}

// Close stops the instance: responses in progress are cut (clients see a
// broken connection, observers see Reset), then the listener, if any, shuts
// down, waiting at most until ctx is done before closing connections forcibly.
// Close is idempotent; requests arriving through ServeHTTP afterwards are still
// answered, but any waiting they do is cut short.
func (in *Instance) Close(ctx context.Context) error {
	in.closeOnce.Do(func() { close(in.closing) })
	in.mu.Lock()
	srv, served := in.srv, in.served
	in.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		_ = srv.Close()
		err = fmt.Errorf("simulator: instance %q: shutdown: %w", in.cfg.Name, err)
	}
	select {
	case <-served:
	case <-ctx.Done():
	}
	in.logger.Info("simulator: closed")
	return err
}

var _ http.Handler = (*Instance)(nil)

// exchange is the state of one request, pooled between requests.
type exchange struct {
	in          *Instance
	w           http.ResponseWriter
	r           *http.Request
	faults      *Faults  // as on arrival
	lat         *Latency // as on arrival
	obs         Observation
	status      int
	wroteHeader bool
	done        bool // the whole response was written
	query       url.Values
	body        bytes.Buffer
	out         []byte    // response or event under construction
	vec         []float32 // embedding scratch
	raw         []byte    // base64 embedding scratch
	timer       *time.Timer
}

func (in *Instance) acquire(w http.ResponseWriter, r *http.Request) *exchange {
	x, _ := in.pool.Get().(*exchange)
	if x == nil {
		x = &exchange{in: in}
	}
	x.w, x.r = w, r
	x.faults, x.lat = in.faults.Load(), in.latency.Load()
	x.obs = Observation{Instance: in.cfg.Name, Method: r.Method, Path: r.URL.Path, Start: time.Now()}
	return x
}

func (in *Instance) release(x *exchange) {
	if x.body.Cap() > 1<<20 || cap(x.out) > 1<<20 || cap(x.raw) > 1<<20 {
		return // let outsized buffers go rather than pin them
	}
	x.w, x.r, x.query = nil, nil, nil
	x.faults, x.lat = nil, nil
	x.obs = Observation{}
	x.status, x.wroteHeader, x.done = 0, false, false
	x.body.Reset()
	x.out = x.out[:0]
	in.pool.Put(x)
}

// ServeHTTP answers one request as Azure OpenAI would.
func (in *Instance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := in.acquire(w, r)
	in.requests.Add(1)
	in.inFlight.Add(1)
	defer func() { in.finish(x, recover()) }()
	in.serve(x)
}

func (in *Instance) serve(x *exchange) {
	r := x.r
	x.obs.RequestID = newUUID()
	h := x.w.Header()
	h.Set("apim-request-id", x.obs.RequestID)
	h.Set("x-request-id", newUUID())
	h.Set("x-content-type-options", "nosniff")
	if id := r.Header.Get("x-ms-client-request-id"); id != "" {
		h.Set("x-ms-client-request-id", id)
	}

	delay := x.lat.Extra
	if in.dice.chance(x.faults.ExtraLatencyRate) {
		delay += x.faults.ExtraLatency
	}
	if err := x.sleep(delay); err != nil {
		x.interrupted(err)
		return
	}

	op, depName, v1 := route(r.URL.Path)
	if !in.authorized(r.Header, v1) {
		x.fail(errUnauthorized)
		return
	}
	if op == opNone || r.Method != http.MethodPost {
		x.fail(errNotFound)
		return
	}
	x.obs.Operation = op.String()
	x.query = r.URL.Query()
	apiVersion := x.query.Get("api-version")

	var dep *deployment
	if !v1 {
		if apiVersion == "" {
			x.fail(errNotFound)
			return
		}
		if dep = in.deployments[depName]; dep == nil {
			x.fail(errDeploymentNotFound)
			return
		}
		x.useDeployment(dep)
	} else if apiVersion == "" {
		apiVersion = "v1"
	}

	if gone, e := x.readBody(); gone {
		x.obs.Cancelled = true
		return
	} else if e != nil {
		x.fail(e)
		return
	}
	req, bad := parseRequest(op, x.body.Bytes())
	if v1 {
		switch {
		case bad != nil:
			x.fail(bad)
			return
		case req.model == "":
			x.fail(errInvalidRequest("model", "missing_required_parameter", "you must provide a model parameter"))
			return
		}
		if dep = in.deployments[req.model]; dep == nil {
			x.fail(errDeploymentNotFound)
			return
		}
		x.useDeployment(dep)
	}
	if dep.embedding != (op == opEmbeddings) {
		x.failPeek(dep, errOperationNotSupported(op, dep.model))
		return
	}
	if bad == nil && op == opEmbeddings {
		bad = dep.checkDimensions(req)
	}
	if bad != nil {
		x.failPeek(dep, bad)
		return
	}
	if op != opEmbeddings {
		x.obs.Stream = req.stream
	}

	prompt := req.promptTokens(dep.counter, dep.counts)
	x.obs.PromptTokens = prompt
	length, cost := prompt, prompt
	if op != opEmbeddings {
		length = in.cfg.CompletionTokens
		reserve := length
		if req.maxTokens > 0 {
			length = min(length, req.maxTokens)
			reserve = min(req.maxTokens, 1<<30) // no overflow below, whatever the client asks
		}
		cost = prompt + reserve*req.choices()
	}

	if in.dice.chance(x.faults.ThrottleRate) {
		wait := x.faults.ThrottleRetryAfter
		if wait <= 0 {
			wait = time.Second
		}
		setRateHeaders(h, dep, dep.limiter.peek(in.now()))
		x.fail(errRateLimited(op, apiVersion, "call", setRetryAfter(h, wait)))
		return
	}
	d := dep.limiter.admit(in.now(), cost)
	setRateHeaders(h, dep, d.budget)
	if !d.allowed {
		x.fail(errRateLimited(op, apiVersion, d.kind, setRetryAfter(h, d.retryAfter)))
		return
	}
	if in.dice.chance(x.faults.ErrorRate) {
		x.fail(in.dice.injectedError(x.obs.RequestID))
		return
	}

	switch op {
	case opEmbeddings:
		x.embed(dep, req, prompt)
	default:
		x.complete(dep, req, prompt, length)
	}
}

// route maps a path to its operation and, on the deployments routes, the
// deployment name. op is opNone for a path Azure would not serve.
func route(path string) (op operation, dep string, v1 bool) {
	var rest string
	if r, ok := strings.CutPrefix(path, "/openai/deployments/"); ok {
		i := strings.IndexByte(r, '/')
		if i <= 0 {
			return opNone, "", false
		}
		dep, rest = r[:i], r[i:]
	} else if r, ok := strings.CutPrefix(path, "/openai/v1/"); ok {
		rest, v1 = "/"+r, true
	} else if r, ok := strings.CutPrefix(path, "/v1/"); ok {
		rest, v1 = "/"+r, true
	} else {
		return opNone, "", false
	}
	switch rest {
	case "/chat/completions":
		op = opChat
	case "/completions":
		op = opCompletions
	case "/embeddings":
		op = opEmbeddings
	}
	return op, dep, v1
}

// authorized reports whether the request carries an accepted credential. With
// neither an API key nor a bearer token configured, everything is.
func (in *Instance) authorized(h http.Header, v1 bool) bool {
	if in.apiKey == nil && in.bearer == nil {
		return true
	}
	if in.apiKey != nil {
		if k := h.Get("api-key"); k != "" && subtle.ConstantTimeCompare([]byte(k), in.apiKey) == 1 {
			return true
		}
	}
	scheme, token, ok := strings.Cut(h.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return false
	}
	if in.bearer != nil && subtle.ConstantTimeCompare([]byte(token), in.bearer) == 1 {
		return true
	}
	return v1 && in.apiKey != nil && subtle.ConstantTimeCompare([]byte(token), in.apiKey) == 1
}

// readBody reads the request body into x.body. gone reports a read that
// failed because the client went away; e is a 413 for an oversized body.
func (x *exchange) readBody() (gone bool, e *apiError) {
	if x.r.Body == nil {
		return false, nil
	}
	_, err := x.body.ReadFrom(http.MaxBytesReader(x.w, x.r.Body, x.in.maxBody))
	if err == nil {
		return false, nil
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return false, errBodyTooLarge(x.in.maxBody)
	}
	return true, nil
}

func (x *exchange) useDeployment(dep *deployment) {
	x.obs.Deployment, x.obs.Model = dep.name, dep.model
	x.w.Header().Set("x-ms-deployment-name", dep.name)
}

func (dep *deployment) checkDimensions(req *request) *apiError {
	if req.dimensions == 0 {
		return nil
	}
	if dep.dimsFixed {
		return errInvalidRequest("dimensions", "", "This model does not support specifying dimensions.")
	}
	if req.dimensions > dep.dims {
		return errInvalidRequest("dimensions", "integer_above_max_value", fmt.Sprintf("Invalid 'dimensions': integer above maximum value. Expected a value <= %d, but got %d instead.", dep.dims, req.dimensions))
	}
	return nil
}

// setRateHeaders sets the rate-limit headers for the limits the deployment
// has; an unlimited dimension gets no headers.
func setRateHeaders(h http.Header, dep *deployment, b budget) {
	if dep.rpm > 0 {
		h.Set("x-ratelimit-limit-requests", strconv.Itoa(dep.rpm))
		h.Set("x-ratelimit-remaining-requests", strconv.Itoa(b.remainingRequests))
		h.Set("x-ratelimit-reset-requests", formatReset(b.resetRequests))
	}
	if dep.tpm > 0 {
		h.Set("x-ratelimit-limit-tokens", strconv.Itoa(dep.tpm))
		h.Set("x-ratelimit-remaining-tokens", strconv.Itoa(b.remainingTokens))
		h.Set("x-ratelimit-reset-tokens", formatReset(b.resetTokens))
	}
}

// formatReset formats d as OpenAI's x-ratelimit-reset-* values are: a Go
// duration string rounded up to the millisecond, so it never claims a reset
// sooner than the truth ("0s", "20ms", "1.5s", "6m0s").
func formatReset(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	return (time.Duration(ceilDiv(d, time.Millisecond)) * time.Millisecond).String()
}

// setRetryAfter sets retry-after (whole seconds) and retry-after-ms to d,
// each rounded up and at least 1, and returns the seconds.
func setRetryAfter(h http.Header, d time.Duration) (seconds int) {
	seconds = int(max(ceilDiv(d, time.Second), 1))
	h.Set("retry-after", strconv.Itoa(seconds))
	h.Set("retry-after-ms", strconv.FormatInt(max(ceilDiv(d, time.Millisecond), 1), 10))
	return seconds
}

// ceilDiv is d/unit rounded up, for d >= 0, without overflow.
func ceilDiv(d, unit time.Duration) int64 {
	n := int64(d / unit)
	if d%unit != 0 {
		n++
	}
	return n
}

// writeHeader sends the status line and headers once.
func (x *exchange) writeHeader(status int) {
	if x.wroteHeader {
		return
	}
	x.wroteHeader, x.status = true, status
	x.w.WriteHeader(status)
}

// fail answers with an error.
func (x *exchange) fail(e *apiError) {
	x.out = e.appendJSON(x.out[:0])
	h := x.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(x.out)))
	x.writeHeader(e.status)
	x.write()
}

// write sends x.out as the rest of the response.
func (x *exchange) write() {
	if _, err := x.w.Write(x.out); err != nil {
		x.obs.Cancelled = true
		return
	}
	x.done = true
}

// failPeek answers with an error from a resolved deployment, which carries the
// deployment's current rate-limit headers.
func (x *exchange) failPeek(dep *deployment, e *apiError) {
	setRateHeaders(x.w.Header(), dep, dep.limiter.peek(x.in.now()))
	x.fail(e)
}

// writeJSON answers 200 with the JSON in x.out.
func (x *exchange) writeJSON() {
	h := x.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(x.out)))
	x.writeHeader(http.StatusOK)
	x.write()
}

// finish records the outcome of a request, and re-raises a deliberate abort.
func (in *Instance) finish(x *exchange, p any) {
	if p != nil && p != http.ErrAbortHandler {
		in.logger.Error("simulator: handler panic",
			slog.String("request_id", x.obs.RequestID), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		if !x.wroteHeader {
			x.fail(errServer(x.obs.RequestID))
			p = nil
		} else {
			p = http.ErrAbortHandler
		}
	}
	if p == http.ErrAbortHandler {
		x.obs.Reset = true
	}
	if !x.obs.Reset && !x.done && x.r.Context().Err() != nil {
		x.obs.Cancelled = true
	}
	x.obs.Status = x.status
	x.obs.End = time.Now()

	in.inFlight.Add(-1)
	if x.status > 0 && x.status < len(in.byStatus) {
		in.byStatus[x.status].Add(1)
	}
	if x.obs.Cancelled {
		in.cancelled.Add(1)
	}
	if x.obs.Reset {
		in.resets.Add(1)
	}
	if in.logger.Enabled(x.r.Context(), slog.LevelDebug) {
		in.logger.LogAttrs(x.r.Context(), slog.LevelDebug, "simulator: request",
			slog.String("request_id", x.obs.RequestID),
			slog.String("path", x.obs.Path),
			slog.String("deployment", x.obs.Deployment),
			slog.Int("status", x.obs.Status),
			slog.Bool("stream", x.obs.Stream),
			slog.Int("prompt_tokens", x.obs.PromptTokens),
			slog.Int("completion_tokens", x.obs.CompletionTokens),
			slog.Bool("cancelled", x.obs.Cancelled),
			slog.Bool("reset", x.obs.Reset),
			slog.Duration("duration", x.obs.End.Sub(x.obs.Start)))
	}
	if in.observe != nil {
		obs := x.obs
		obs.Header = x.r.Header.Clone()
		obs.Body = bytes.Clone(x.body.Bytes())
		if obs.Body == nil {
			obs.Body = []byte{}
		}
		if x.query == nil {
			x.query = x.r.URL.Query()
		}
		obs.Query = x.query
		in.observe(obs)
	}
	in.release(x)
	if p != nil {
		panic(p)
	}
}
