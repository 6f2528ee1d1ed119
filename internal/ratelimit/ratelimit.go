package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

// Codes of the errors Admit returns, as clients see them.
const (
	CodeRateLimited   = "rate_limit_exceeded" // 429: rpm or tpm
	CodeQuotaExceeded = "quota_exceeded"      // limits.quota_status: a quota or budget
	CodeUnavailable   = "limits_unavailable"  // 503: Redis down, on_store_error: closed
)

// Limiter enforces the limits of one configuration. It is safe for
// concurrent use; Close releases the Redis connections.
type Limiter struct {
	log         *slog.Logger
	now         func() time.Time
	fixedClock  bool // WithClock: the Redis scripts use it too
	loc         *time.Location
	quotaStatus int
	window      time.Duration
	geo         geometry

	// apps holds each configured app's rules (its own, then its team's),
	// nil for an app without any. teams is for apps this config does not
	// register.
	apps  map[string][]rule
	teams map[string][]rule

	mem      *memory     // store: memory
	redis    *redisStore // store: redis
	local    *memory     // store: redis, on_store_error: open
	fallback string      // what happens while Redis is down, for the log

	periods atomic.Pointer[periods]
	closed  atomic.Bool
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithClock makes the Limiter read time from now instead of time.Now, for
// tests. With store: redis the scripts then use it too instead of the
// server's clock.
func WithClock(now func() time.Time) Option {
	return func(l *Limiter) { l.now, l.fixedClock = now, true }
}

// New builds the limiter for cfg: the rules of every app (cfg.Apps[].Limits
// plus those of its team in cfg.Teams) and the store cfg.Limits names. With
// store: redis it loads the scripts, waiting at most limits.redis.timeout;
// an unreachable Redis does not fail New: it is handled as on_store_error
// says, as it would be later.
func New(cfg *config.Config, log *slog.Logger, opts ...Option) (*Limiter, error) {
	lc := withDefaults(cfg.Limits)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{
		log:         log,
		now:         time.Now,
		loc:         lc.Location(),
		quotaStatus: lc.QuotaStatus,
		window:      lc.Window,
		geo:         newGeometry(lc.Window),
	}
	for _, o := range opts {
		o(l)
	}
	l.teams = compileTeams(cfg.Teams, l.window)
	l.apps = make(map[string][]rule, len(cfg.Apps))
	for i := range cfg.Apps {
		l.apps[cfg.Apps[i].Name] = compileRules(&cfg.Apps[i], l.teams, l.window)
	}
	switch lc.Store {
	case "memory":
		l.mem = newMemory(l.geo, 1)
	case "redis":
		if lc.Redis.Addr == "" {
			return nil, fmt.Errorf("ratelimit: limits.redis.addr is required with store: redis")
		}
		l.redis = newRedisStore(lc, l.geo, l.fixedClock)
		l.fallback = "refusing requests with 503 (on_store_error: closed)"
		if lc.OnStoreError != "closed" {
			l.local = newMemory(l.geo, int64(lc.Replicas))
			l.fallback = fmt.Sprintf("enforcing each limit / %d replicas locally (on_store_error: open)", lc.Replicas)
		}
		if err := l.redis.warm(); err != nil {
			// Not answering at start counts as down, timeout or not:
			// there is no success yet to tell a blip from an outage.
			l.redis.circuit.errs.Add(1)
			l.redis.circuit.trip(l.log, err, l.fallback)
		}
	default:
		return nil, fmt.Errorf("ratelimit: unknown limits.store %q", lc.Store)
	}
	return l, nil
}

// withDefaults fills what a Config built in code (not loaded) may leave
// zero, as config's own defaults do.
func withDefaults(l config.Limits) config.Limits {
	if l.Store == "" {
		l.Store = "memory"
	}
	if l.Replicas < 1 {
		l.Replicas = 1
	}
	if l.QuotaStatus == 0 {
		l.QuotaStatus = http.StatusTooManyRequests
	}
	if l.Window <= 0 {
		l.Window = time.Minute
	}
	if l.Redis.KeyPrefix == "" {
		l.Redis.KeyPrefix = "tokengate:"
	}
	if l.Redis.Timeout <= 0 {
		l.Redis.Timeout = 250 * time.Millisecond
	}
	return l
}

// Close releases the Redis connections. Reservations settled afterwards
// are dropped; calling it again does nothing.
func (l *Limiter) Close(context.Context) error {
	if l.closed.Swap(true) || l.redis == nil {
		return nil
	}
	return l.redis.client.Close()
}

// StoreErrors is how many Redis calls have failed (timed out or could not
// connect) since New.
func (l *Limiter) StoreErrors() uint64 {
	if l.redis == nil {
		return 0
	}
	return l.redis.circuit.errs.Load()
}

// Subject is who a request counts against.
type Subject struct {
	// App is the caller's registered app; nil, or an app without limits
	// whose team has none, means nothing is enforced.
	App *config.App
	// User is the caller's object id; "" means per-user limits do not apply.
	User string
	// Model is the model alias; "" for operations without one, which count
	// against request limits only.
	Model string
}

// unlimited is the Reservation of every request no limit applies to.
var unlimited = &Reservation{}

// Admit reserves one request and tokens (the caller's estimate: prompt plus
// the completion maximum) against every limit that applies to s, all or
// nothing. Refusals are *openai.Error with code CodeRateLimited (429),
// CodeQuotaExceeded (limits.quota_status) or CodeUnavailable (503), with
// Retry-After and x-ratelimit-* headers; a request larger than a limit's
// whole capacity is refused without Retry-After, since waiting cannot help.
// Shadow limits never refuse: their would-be refusals are logged and listed
// in the Reservation's ShadowRefused.
//
// The Reservation may be shared (when nothing applies): treat it as
// read-only, apart from Settle.
func (l *Limiter) Admit(ctx context.Context, s Subject, tokens int64) (*Reservation, error) {
	rules := l.rulesFor(s.App)
	if len(rules) == 0 {
		return unlimited, nil
	}
	tokens = max(tokens, 0)
	now := l.now()
	res := &Reservation{l: l}
	res.checks = res.buf[:0]
	var per *periods
	var never []*rule // shadow limits this request can never fit
	for i := range rules {
		r := &rules[i]
		if !r.applies(&s) {
			continue
		}
		c := check{rule: r, n: tokens}
		switch {
		case r.kind == kindRPM:
			c.n = 1
		case r.kind == kindBudget:
			c.n = 0
		case tokens > r.limit:
			if !r.shadow {
				return nil, l.neverFits(r, &s, tokens)
			}
			never = append(never, r)
			continue
		}
		if r.perUser {
			c.user = s.User
		}
		if !r.kind.rate() {
			if per == nil {
				per = l.periodsAt(now)
			}
			c.periodStart, c.periodEnd = per.bounds(r.kind)
		}
		res.checks = append(res.checks, c)
	}
	if len(res.checks) > 0 {
		st, err := l.admit(ctx, now, res.checks)
		if err != nil {
			return nil, err
		}
		res.store = st
	}

	var worst *check
	var wait int64
	for i := range res.checks {
		c := &res.checks[i]
		if c.fits || c.rule.shadow {
			continue
		}
		if w := c.wait(now); worst == nil || w > wait {
			worst, wait = c, w
		}
	}
	if worst != nil {
		return nil, l.refusal(res.checks, worst, &s, wait)
	}
	for _, r := range never {
		l.shadowRefused(ctx, res, r, &s, -1)
	}
	for i := range res.checks {
		if c := &res.checks[i]; !c.fits {
			l.shadowRefused(ctx, res, c.rule, &s, c.wait(now))
		}
	}
	return res, nil
}

// admit runs the checks on Redis, or on the fallback while Redis is down,
// and returns the store that took them.
func (l *Limiter) admit(ctx context.Context, now time.Time, cs []check) (store, error) {
	if l.redis == nil {
		return l.mem, l.mem.admit(ctx, now, cs)
	}
	if l.redis.circuit.allow() {
		err := l.redis.admit(ctx, now, cs)
		if err == nil {
			l.redis.circuit.ok(l.log)
			return l.redis, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err() // the client left: not the store's fault
		}
		l.redis.circuit.failed(l.log, err, l.fallback)
	}
	if l.local == nil {
		return nil, &openai.Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "the gateway cannot check this app's limits right now (its limit store is unreachable); retry shortly",
			Header:  http.Header{"Retry-After": {"1"}}, Err: errStore}
	}
	return l.local, l.local.admit(ctx, now, cs)
}

// Limited reports whether any limit applies to a's requests, so callers
// can skip estimating tokens for apps without limits.
func (l *Limiter) Limited(a *config.App) bool { return len(l.rulesFor(a)) > 0 }

// rulesFor returns a's rules, compiled in New for the apps of the config.
func (l *Limiter) rulesFor(a *config.App) []rule {
	if a == nil {
		return nil
	}
	if rs, ok := l.apps[a.Name]; ok {
		return rs
	}
	// An app this config does not know (a caller still holding the
	// previous config's app): compile its limits now. The keys depend on
	// what is counted, not on the config, so its counters are the same.
	if len(a.Limits) == 0 && len(l.teams[a.Team]) == 0 {
		return nil
	}
	return compileRules(a, l.teams, l.window)
}

// wait is how long until c could admit the request, in ms.
func (c *check) wait(now time.Time) int64 {
	if c.rule.kind.rate() {
		return c.retry
	}
	return c.periodEnd - now.UnixMilli()
}

// shadowRefused records and logs what a shadow limit would have refused;
// wait < 0 means the request could never fit.
func (l *Limiter) shadowRefused(ctx context.Context, res *Reservation, r *rule, s *Subject, wait int64) {
	res.ShadowRefused = append(res.ShadowRefused, r.id)
	attrs := []slog.Attr{slog.String("app", s.App.Name), slog.String("limit", r.id)}
	if r.perUser {
		attrs = append(attrs, slog.String("user", s.User))
	}
	if wait < 0 {
		attrs = append(attrs, slog.Bool("never_fits", true))
	} else {
		attrs = append(attrs, slog.Duration("retry_after", time.Duration(wait)*time.Millisecond))
	}
	l.log.LogAttrs(ctx, slog.LevelWarn, "ratelimit: shadow limit would refuse", attrs...)
}

// Reservation is what Admit took for one request. Its methods are safe on
// a nil Reservation.
type Reservation struct {
	// ShadowRefused lists the ids of the shadow limits that would have
	// refused the request, e.g. "app/batch-app/limits[2].rpm"; nil if none.
	ShadowRefused []string

	l       *Limiter
	store   store // where it was taken: Redis or the local fallback
	settled atomic.Bool
	checks  []check
	buf     [6]check // checks' storage: most apps have few limits
}

// Headers sets x-ratelimit-limit-requests, x-ratelimit-remaining-requests
// and x-ratelimit-reset-requests from the tightest applying rpm limit (the
// least remaining after this request), and the -tokens trio from the
// tightest tpm limit. Reset is when the window is whole again (OpenAI's
// meaning, as Go durations: "59.5s"). Shadow limits are left out: they
// never refuse, so clients must not slow down for them. No-op when no rpm
// or tpm limit applies.
func (r *Reservation) Headers(h http.Header) {
	if r != nil {
		setRateHeaders(h, r.checks)
	}
}

// Settle replaces the reservation's token estimate with the actual tokens
// (refunding the difference, or charging the excess, which may push a
// counter over its limit: later requests then wait until it has left the
// window) and adds cost to monthly budgets. Only the first call counts.
// It returns within limits.redis.timeout. A settlement Redis cannot take is
// dropped: while Redis is down it is not even tried, and a failed attempt
// counts in StoreErrors.
func (r *Reservation) Settle(ctx context.Context, tokens int64, cost float64) {
	if r == nil || len(r.checks) == 0 || r.settled.Swap(true) {
		return
	}
	tokens = max(tokens, 0)
	l := r.l
	if r.store == l.redis && (l.redis.circuit.down.Load() || l.closed.Load()) {
		return // the settlement would only wait to fail
	}
	if err := r.store.settle(ctx, l.now(), r.checks, tokens, cost); err != nil && r.store == l.redis && ctx.Err() == nil {
		l.redis.circuit.failed(l.log, err, l.fallback)
	}
}

// setRateHeaders sets the x-ratelimit-* headers from the tightest rpm and
// tpm checks.
func setRateHeaders(h http.Header, cs []check) {
	var req, tok *check
	for i := range cs {
		c := &cs[i]
		if c.rule.shadow || !c.rule.kind.rate() {
			continue
		}
		p := &req
		if c.rule.kind == kindTPM {
			p = &tok
		}
		if *p == nil || tighter(c, *p) {
			*p = c
		}
	}
	if req != nil {
		h.Set("X-Ratelimit-Limit-Requests", strconv.FormatInt(req.limit, 10))
		h.Set("X-Ratelimit-Remaining-Requests", strconv.FormatInt(req.remaining(), 10))
		h.Set("X-Ratelimit-Reset-Requests", formatReset(req.reset))
	}
	if tok != nil {
		h.Set("X-Ratelimit-Limit-Tokens", strconv.FormatInt(tok.limit, 10))
		h.Set("X-Ratelimit-Remaining-Tokens", strconv.FormatInt(tok.remaining(), 10))
		h.Set("X-Ratelimit-Reset-Tokens", formatReset(tok.reset))
	}
}

// tighter reports whether a leaves less than b (the smaller limit on a tie).
func tighter(a, b *check) bool {
	ra, rb := a.remaining(), b.remaining()
	return ra < rb || ra == rb && a.limit < b.limit
}

// formatReset formats ms as OpenAI and Azure do: a Go duration ("6s",
// "1m0s", "250ms").
func formatReset(ms int64) string {
	return (time.Duration(max(ms, 0)) * time.Millisecond).String()
}
