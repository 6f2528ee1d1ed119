package app

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/balancer"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/policy"
	"github.com/tokengate/tokengate/internal/ratelimit"
	"github.com/tokengate/tokengate/internal/tokens"
	"github.com/tokengate/tokengate/internal/upstream"
	"github.com/tokengate/tokengate/internal/usage"
)

// runtime is everything the request pipeline builds from one Config: the
// authenticator, policy, balancer, limiter and proxy, and the pipeline
// itself. A reload builds a new runtime completely and swaps it in; each
// request runs start to end on the runtime it started on, and the old one
// is closed when its last request is done.
//
// It embeds the Gateway for what outlives reloads (the log, the usage
// recorder, metrics and tracing).
type runtime struct {
	*Gateway
	cfg       *config.Config
	transport *http.Transport
	backends  map[string]*upstream.Backend
	auth      *auth.Authenticator
	policy    *policy.Policy
	balancer  *balancer.Balancer
	proxy     *upstream.Proxy
	limiter   *ratelimit.Limiter
	prices    usage.Prices
	redactor  *usage.Redactor
	trusted   []netip.Prefix // usage.trusted_proxies
	models    map[string]bool
	handler   http.Handler

	// ownsAuth is false once a successor has taken the authenticator over.
	ownsAuth bool

	active    atomic.Int64 // requests running on this runtime
	retired   atomic.Bool  // a newer runtime has replaced it
	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error
}

// newRuntime builds the runtime for cfg. prev, when not nil, is the
// runtime being replaced: breaker state and limit counters carry over, and
// so do the parts whose config did not change (backend credentials with
// their cached tokens, the upstream connection pool, the authenticator
// with its signing keys).
func (g *Gateway) newRuntime(cfg *config.Config, prev *runtime) (_ *runtime, err error) {
	rt := &runtime{Gateway: g, cfg: cfg, closed: make(chan struct{}), models: make(map[string]bool, len(cfg.Models))}
	defer func() {
		if err != nil {
			_ = rt.release(context.Background())
		}
	}()
	rt.backends = make(map[string]*upstream.Backend, len(cfg.Backends))
	var before map[string]*config.Backend // the previous runtime's backends by name
	if prev != nil {
		before = make(map[string]*config.Backend, len(prev.cfg.Backends))
		for i := range prev.cfg.Backends {
			before[prev.cfg.Backends[i].Name] = &prev.cfg.Backends[i]
		}
	}
	for _, bc := range cfg.Backends {
		if old := before[bc.Name]; old != nil && reflect.DeepEqual(*old, bc) {
			rt.backends[bc.Name] = prev.backends[bc.Name]
			continue
		}
		b, err := upstream.NewBackend(bc)
		if err != nil {
			return nil, err
		}
		rt.backends[bc.Name] = b
	}
	var balOpts []balancer.Option
	if prev != nil {
		balOpts = append(balOpts, balancer.WithPrevious(prev.balancer))
	}
	if rt.balancer, err = balancer.New(cfg, rt.backends, g.log, balOpts...); err != nil {
		return nil, err
	}
	if rt.policy, err = policy.New(cfg); err != nil {
		return nil, err
	}
	if rt.redactor, err = usage.NewRedactor(cfg.Usage.Redact); err != nil {
		return nil, err
	}
	for _, p := range cfg.Usage.TrustedProxies {
		pfx, err := config.ParsePrefix(p)
		if err != nil {
			return nil, err
		}
		rt.trusted = append(rt.trusted, pfx)
	}

	if prev != nil && reflect.DeepEqual(prev.cfg.Identity, cfg.Identity) && reflect.DeepEqual(prev.cfg.Apps, cfg.Apps) {
		rt.auth = prev.auth // same issuers and apps: keep the fetched keys
	} else {
		if rt.auth, err = auth.New(cfg.Identity, cfg.Apps, g.log); err != nil {
			return nil, err
		}
		rt.ownsAuth = true
	}
	var limOpts []ratelimit.Option
	if prev != nil {
		limOpts = append(limOpts, ratelimit.WithPrevious(prev.limiter))
	}
	if rt.limiter, err = ratelimit.New(cfg, g.log, limOpts...); err != nil {
		return nil, err
	}

	if prev != nil && reflect.DeepEqual(prev.cfg.Upstream, cfg.Upstream) {
		rt.transport = prev.transport
	} else {
		rt.transport = upstream.NewTransport(cfg.Upstream)
	}
	rt.proxy = upstream.NewProxy(rt.transport, g.log,
		upstream.WithBackendHeader(cfg.Upstream.BackendHeader == nil || *cfg.Upstream.BackendHeader),
		upstream.WithTracing(g.tracing.TracerProvider(), g.tracing.Propagator()))
	rt.prices = usage.NewPrices(cfg.Models)
	for _, m := range cfg.Models {
		rt.models[m.Name] = true
		tokens.ForModel(m.Name).Warm() // the prompt estimator's tables, built once per encoding
	}
	rt.handler = rt.pipeline()

	return rt, nil
}

// takeOver is called once rt is swapped in for prev: what rt shares with
// prev must outlive prev.
func (rt *runtime) takeOver(prev *runtime) {
	if prev.auth == rt.auth {
		prev.ownsAuth, rt.ownsAuth = false, prev.ownsAuth
	}
}

// acquire returns the current runtime with one more request counted on
// it; the caller must call done. A runtime retired between the load and
// the count is never returned.
func (g *Gateway) acquire() *runtime {
	for {
		rt := g.rt.Load()
		rt.active.Add(1)
		if g.rt.Load() == rt {
			return rt
		}
		rt.done()
	}
}

// done ends one request on rt; the last request on a retired runtime
// closes it.
func (rt *runtime) done() {
	if rt.active.Add(-1) == 0 && rt.retired.Load() {
		rt.closeAsync()
	}
}

// retire marks rt replaced (after the swap): it closes once no request is
// running on it.
func (rt *runtime) retire() {
	rt.retired.Store(true)
	if rt.active.Load() == 0 {
		rt.closeAsync()
	}
}

func (rt *runtime) closeAsync() {
	rt.closeOnce.Do(func() {
		go func() {
			rt.closeErr = rt.release(context.Background())
			close(rt.closed)
		}()
	})
}

// release closes what rt owns. A transport still used by the current
// runtime is left alone.
func (rt *runtime) release(ctx context.Context) error {
	var errs []error
	if rt.ownsAuth && rt.auth != nil {
		errs = append(errs, rt.auth.Close(ctx))
	}
	if rt.limiter != nil {
		errs = append(errs, rt.limiter.Close(ctx))
	}
	if rt.transport != nil {
		if cur := rt.Gateway.rt.Load(); cur == nil || cur == rt || cur.transport != rt.transport {
			rt.transport.CloseIdleConnections()
		}
	}
	if err := errors.Join(errs...); err != nil {
		rt.log.Warn("closing the previous runtime", slog.Any("error", err))
		return err
	}
	return nil
}
