package ratelimit

import (
	"context"
	"sync"
	"time"
)

// memory keeps counters in this process: the store for a single gateway,
// and the local fallback while Redis is unreachable.
//
// One mutex guards everything: a request's checks span several counters
// (app, team, user) that must be judged and taken together, and the work
// under the lock is a few array updates, far cheaper than anything sharding
// would need to keep that atomic.
type memory struct {
	geo geometry
	// share divides every limit: 1, or the replica count for the fail-open
	// fallback, where each replica enforces its part of the limit.
	share int64

	// mu guards the maps, which a reload may share with the store of the
	// Limiter it replaces (successor): whoever holds them holds this lock.
	mu      *sync.Mutex
	windows map[counterKey]*window
	quotas  map[counterKey]*quota
	sweepAt int64 // Unix ms of this store's next sweep, under mu
}

var _ store = (*memory)(nil)

// counterKey names a counter without building a string per request.
type counterKey struct{ key, user string }

// window is a ring of the rolling window's buckets.
type window struct {
	last int64 // the newest bucket the ring has advanced to
	sum  int64 // of every bucket in the ring
	b    [maxBuckets]int64
}

// quota counts one calendar period; a new period starts it over.
type quota struct {
	start, end int64 // Unix ms
	used       int64
	spent      float64
}

// sweepEvery is how often idle counters are dropped, which bounds memory
// to the callers seen within about one window (one period for quotas).
const sweepEvery = time.Minute

func newMemory(geo geometry, share int64) *memory {
	return &memory{geo: geo, share: max(share, 1), mu: new(sync.Mutex),
		windows: make(map[counterKey]*window), quotas: make(map[counterKey]*quota)}
}

// successor is the store of a reloaded Limiter with geo and share, keeping
// m's counters: m itself when neither changed. Otherwise it shares m's lock
// and quotas (calendar periods do not depend on the window), and m's
// windows unless the window changed: buckets of another length do not line
// up, so the rates start over, empty. A different share keeps the counts,
// which are what this process admitted, and judges them against the new
// share of the limit.
//
// Reservations taken on m keep pointers to m's counters, so they settle
// into the shared ones.
func (m *memory) successor(geo geometry, share int64) *memory {
	share = max(share, 1)
	if geo == m.geo && share == m.share {
		return m
	}
	n := &memory{geo: geo, share: share, mu: m.mu, windows: m.windows, quotas: m.quotas}
	if geo != m.geo {
		n.windows = make(map[counterKey]*window)
	}
	return n
}

func (m *memory) admit(_ context.Context, now time.Time, cs []check) error {
	ms := now.UnixMilli()
	cur := ms / m.geo.bucket
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(ms, cur)

	refused := false
	for i := range cs {
		c := &cs[i]
		c.took, c.retry, c.reset, c.used = false, 0, 0, 0
		switch k := c.rule.kind; {
		case k.rate():
			c.limit = max(c.rule.limit/m.share, 1)
			w := m.window(c)
			c.bucket = w.advance(m.geo, cur)
			c.used = w.sum
			c.fits = fits(w.sum, c.n, c.limit)
			if !c.fits || c.n == 0 {
				// Otherwise the take below sets reset; the walk over
				// the ring is for refusals.
				c.retry, c.reset = w.wait(m.geo, c.bucket, ms, c.n, c.limit, c.fits)
			}
		case k == kindBudget:
			q := m.quota(c)
			c.fits = q.spent < c.rule.budget/float64(m.share)
		default:
			c.limit = max(c.rule.limit/m.share, 1)
			q := m.quota(c)
			c.used = q.used
			c.fits = fits(q.used, c.n, c.limit)
		}
		if !c.fits && !c.rule.shadow {
			refused = true
		}
	}
	if refused {
		for i := range cs {
			if c := &cs[i]; c.w != nil && c.fits && c.n > 0 {
				_, c.reset = c.w.wait(m.geo, c.bucket, ms, c.n, c.limit, true)
			}
		}
		return nil
	}
	for i := range cs {
		c := &cs[i]
		if !c.fits {
			continue // a shadow limit counts only what it would admit
		}
		c.took = true
		switch {
		case c.rule.kind.rate():
			c.w.b[c.bucket%m.geo.n] += c.n
			c.w.sum += c.n
			if c.n > 0 {
				c.reset = m.geo.leaves(c.bucket) - ms
			}
		case c.rule.kind != kindBudget:
			c.q.used += c.n
		}
	}
	return nil
}

func (m *memory) settle(_ context.Context, now time.Time, cs []check, tokens int64, cost float64) error {
	cur := now.UnixMilli() / m.geo.bucket
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range cs {
		c := &cs[i]
		d, f := c.adjustment(tokens, cost)
		switch {
		case d == 0 && f == 0:
		case c.w != nil:
			// Only while the bucket is in the window: once it has left,
			// its tokens no longer count either way.
			if c.w.advance(m.geo, cur) < c.bucket+m.geo.n {
				c.w.b[c.bucket%m.geo.n] += d
				c.w.sum += d
			}
		case c.q != nil && c.q.start == c.periodStart:
			c.q.used += d
			c.q.spent += f
		}
	}
	return nil
}

// peek reads the counters of rules (per-user ones excepted: see Peek)
// without taking or changing anything.
func (m *memory) peek(now time.Time, rules []rule, per *periods, out []reading) {
	cur := now.UnixMilli() / m.geo.bucket
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range rules {
		r := &rules[i]
		if r.perUser {
			continue
		}
		k := counterKey{key: r.key}
		if r.kind.rate() {
			if w := m.windows[k]; w != nil {
				out[i].used, out[i].whole = w.usage(m.geo, cur)
			}
			continue
		}
		start, _ := per.bounds(r.kind)
		if q := m.quotas[k]; q != nil && q.start == start {
			out[i].used, out[i].spent = q.used, q.spent
		}
	}
}

func (m *memory) window(c *check) *window {
	k := counterKey{c.rule.key, c.user}
	w := m.windows[k]
	if w == nil {
		w = new(window)
		m.windows[k] = w
	}
	c.w = w
	return w
}

func (m *memory) quota(c *check) *quota {
	k := counterKey{c.rule.key, c.user}
	q := m.quotas[k]
	if q == nil {
		q = new(quota)
		m.quotas[k] = q
	}
	if q.start != c.periodStart {
		*q = quota{start: c.periodStart, end: c.periodEnd}
	}
	c.q = q
	return q
}

// advance moves the ring to bucket cur, emptying the buckets that left the
// window, and returns the bucket to count in: cur, or the ring's newest
// when the clock went backwards.
func (w *window) advance(g geometry, cur int64) int64 {
	switch {
	case cur <= w.last:
		return w.last
	case cur-w.last >= g.n:
		w.b, w.sum = [maxBuckets]int64{}, 0
	default:
		for i := w.last + 1; i <= cur; i++ {
			w.sum -= w.b[i%g.n]
			w.b[i%g.n] = 0
		}
	}
	w.last = cur
	return cur
}

// usage is what the window counts at bucket cur and the Unix ms its newest
// counted bucket leaves (0 if it counts nothing), as advance and wait would
// find, without changing the ring.
func (w *window) usage(g geometry, cur int64) (sum, whole int64) {
	for i := max(w.last, cur) - g.n + 1; i <= w.last; i++ {
		if v := w.b[i%g.n]; v != 0 {
			sum += v
			whole = g.leaves(i)
		}
	}
	return sum, whole
}

// wait returns, in ms from now, when enough of the oldest buckets will have
// left the window for n more to fit (when it does not fit now), and when
// the newest counted bucket leaves, making the window whole again.
func (w *window) wait(g geometry, cur, now, n, limit int64, fit bool) (retry, reset int64) {
	freed := int64(0)
	for i := cur - g.n + 1; i <= cur; i++ {
		v := w.b[i%g.n]
		if v != 0 {
			reset = g.leaves(i) - now
		}
		if !fit && retry == 0 {
			freed += v
			if fits(w.sum-freed, n, limit) {
				retry = g.leaves(i) - now
			}
		}
	}
	if !fit && retry == 0 {
		retry = g.leaves(cur) - now
	}
	return retry, reset
}

// sweep drops counters that hold nothing any more: windows whose every
// bucket has left, quotas whose period is over. It runs under the lock at
// most once per sweepEvery, on the request that finds it due.
func (m *memory) sweep(now, cur int64) {
	if now < m.sweepAt {
		return
	}
	m.sweepAt = now + sweepEvery.Milliseconds()
	for k, w := range m.windows {
		if w.last+m.geo.n <= cur {
			delete(m.windows, k)
		}
	}
	for k, q := range m.quotas {
		if q.end <= now {
			delete(m.quotas, k)
		}
	}
}
