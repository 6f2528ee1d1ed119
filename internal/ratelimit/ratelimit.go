package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

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
// concurrent use; Close releases the Redis connections. A hot reload builds
// the next configuration's Limiter with WithPrevious, which carries the
// counters over.
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

	// errs counts failed Redis calls (StoreErrors), shared along reloads.
	errs *atomic.Uint64
	// prev is WithPrevious's Limiter, during New only: keeping it would
	// chain every Limiter since the start.
	prev *Limiter
	// next is the Limiter built WithPrevious(l), where Reservations taken
	// here settle once l is closed.
	next atomic.Pointer[Limiter]

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

// WithPrevious makes the new Limiter, built for a reloaded configuration,
// carry on from prev, the one it replaces, so a reload resets no one's
// windows, quotas or budgets. Counters are named by what they count
// (scope, app or team, model, per-user, kind, shadow), not by the limit's
// number or position, so a limit whose number changes keeps its count: 5
// requests counted under rpm: 5 leave 5 more under rpm: 10, none under
// rpm: 3. A limit whose scope or model changes, or that turns from shadow
// to enforced, is another counter and starts empty.
//
// With store: memory the new Limiter shares prev's counters, and with
// store: redis the local fallback's (on_store_error: open): the same ones
// when limits.window is unchanged; when it changed, the rates start over
// (buckets of another length do not line up) while quotas and budgets are
// kept. With store: redis the counters are Redis keys already; the new
// Limiter has its own connections and carries the outage state when the
// server is the same. Changing the store itself (memory to redis or back)
// starts every counter over. StoreErrors continues prev's count either way.
//
// Reservations taken on prev settle into the same counters, also after
// prev.Close: with Redis, through the connections of an open Limiter that
// replaced it.
// prev keeps working until it is closed, so requests still holding it are
// judged against the same counters. If several Limiters are built
// WithPrevious(prev) (one discarded by a reload that failed later on, then
// another), the last one built is where prev's reservations settle.
func WithPrevious(prev *Limiter) Option {
	return func(l *Limiter) { l.prev = prev }
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
	prev := l.prev
	l.prev = nil
	l.errs = new(atomic.Uint64)
	if prev != nil {
		l.errs = prev.errs
	}
	l.teams = compileTeams(cfg.Teams, l.window)
	l.apps = make(map[string][]rule, len(cfg.Apps))
	for i := range cfg.Apps {
		l.apps[cfg.Apps[i].Name] = compileRules(&cfg.Apps[i], l.teams, l.window)
	}
	switch lc.Store {
	case "memory":
		if prev != nil && prev.mem != nil {
			l.mem = prev.mem.successor(l.geo, 1)
		} else {
			l.mem = newMemory(l.geo, 1)
		}
	case "redis":
		if lc.Redis.Addr == "" {
			return nil, fmt.Errorf("ratelimit: limits.redis.addr is required with store: redis")
		}
		l.redis = newRedisStore(lc, l.geo, l.fixedClock, l.errs)
		l.fallback = "refusing requests with 503 (on_store_error: closed)"
		if lc.OnStoreError != "closed" {
			if prev != nil && prev.local != nil {
				l.local = prev.local.successor(l.geo, int64(lc.Replicas))
			} else {
				l.local = newMemory(l.geo, int64(lc.Replicas))
			}
			l.fallback = fmt.Sprintf("enforcing each limit / %d replicas locally (on_store_error: open)", lc.Replicas)
		}
		if prev != nil && prev.redis != nil && prev.redis.server == l.redis.server && prev.redis.circuit.down.Load() {
			// Still in prev's outage: warm's outcome ends it (logged
			// once) or continues it (not logged again).
			l.redis.circuit.next.Store(time.Now().Add(l.redis.circuit.every).UnixNano())
			l.redis.circuit.down.Store(true)
		}
		if err := l.redis.warm(); err != nil {
			// Not answering at start counts as down, timeout or not:
			// there is no success yet to tell a blip from an outage.
			l.errs.Add(1)
			l.redis.circuit.trip(l.log, err, l.fallback)
		} else {
			l.redis.circuit.ok(l.log)
		}
	default:
		return nil, fmt.Errorf("ratelimit: unknown limits.store %q", lc.Store)
	}
	if prev != nil {
		prev.next.Store(l)
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

// Close releases the Redis connections; calling it again does nothing.
// Reservations settled afterwards settle through the Limiter that
// replaced l (WithPrevious), if it is open; otherwise those taken on Redis
// are dropped. The memory store has nothing to release: a successor
// sharing it is unaffected.
func (l *Limiter) Close(context.Context) error {
	if l.closed.Swap(true) || l.redis == nil {
		return nil
	}
	return l.redis.client.Close()
}

// StoreErrors is how many Redis calls have failed (timed out or could not
// connect) since New, counting those of the Limiters it replaced
// (WithPrevious): it never decreases, as a metrics counter must not.
func (l *Limiter) StoreErrors() uint64 { return l.errs.Load() }

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
// RefusedBy names the limit that refused. Shadow limits never refuse: their
// would-be refusals are logged and listed in the Reservation's
// ShadowRefused (EachDecision reports every limit's outcome).
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
	res.never = int32(len(never))
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
			Header:  http.Header{"Retry-After": {"1"}}, Err: ErrStoreUnavailable}
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
	never   int32 // ShadowRefused[:never] could never fit: not in checks
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

// EachDecision calls fn once for every limit r's request was judged by,
// with the limit's id ("app/batch-app/limits[0].rpm"): for enforced
// limits, which all admitted it, and shadow limits that would have too,
// shadowRefused is false; for shadow limits that would have refused it
// (ShadowRefused), true. Limits that do not apply to the request (another
// model, no caller id for a per-user limit) are not reported. For a
// refusal, Admit returns no Reservation: RefusedBy names the limit. It
// does nothing on a nil Reservation or one no limit applied to.
func (r *Reservation) EachDecision(fn func(limit string, shadowRefused bool)) {
	if r == nil {
		return
	}
	for _, id := range r.ShadowRefused[:min(int(r.never), len(r.ShadowRefused))] {
		fn(id, true)
	}
	for i := range r.checks {
		c := &r.checks[i]
		fn(c.rule.id, !c.fits)
	}
}

// Settle replaces the reservation's token estimate with the actual tokens
// (refunding the difference, or charging the excess, which may push a
// counter over its limit: later requests then wait until it has left the
// window) and adds cost to monthly budgets. Only the first call counts.
// It returns within limits.redis.timeout. A settlement Redis cannot take is
// dropped: while Redis is down it is not even tried, and a failed attempt
// counts in StoreErrors. After a reload closed the Limiter that took it,
// it settles into the same counters (see WithPrevious).
func (r *Reservation) Settle(ctx context.Context, tokens int64, cost float64) {
	if r == nil || len(r.checks) == 0 || r.settled.Swap(true) {
		return
	}
	tokens = max(tokens, 0)
	l := r.l
	if r.store != l.redis {
		// Memory: the counters outlive Close, and a successor shares them.
		_ = r.store.settle(ctx, l.now(), r.checks, tokens, cost)
		return
	}
	via := l
	if l.closed.Load() {
		// The keys are the same from any Limiter: settle through a
		// successor's connections.
		if via = l.successor(); via == nil {
			return
		}
	}
	if via.redis.circuit.down.Load() {
		return // the settlement would only wait to fail
	}
	err := l.redis.settleVia(ctx, via.redis.client, l.now(), r.checks, tokens, cost)
	if err != nil && ctx.Err() == nil && !errors.Is(err, redis.ErrClosed) {
		via.redis.circuit.failed(via.log, err, via.fallback)
	}
}

// successor is the first open Limiter of those that replaced l in reloads,
// one after the other, if it keeps its counters in Redis; nil otherwise.
func (l *Limiter) successor() *Limiter {
	for n := l.next.Load(); n != nil; n = n.next.Load() {
		if !n.closed.Load() {
			if n.redis == nil {
				return nil
			}
			return n
		}
	}
	return nil
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
