package ratelimit

import (
	"context"
	"time"
)

// store holds the counters. Both stores implement the same decision, so a
// request is judged alike whether Redis or the local fallback answers.
type store interface {
	// admit evaluates every check against its counter and, when every
	// enforced (non-shadow) check fits, takes all that fit, atomically: a
	// refused request takes nothing, and no other admission interleaves.
	// It sets each check's results (limit, fits, took, used, retry, reset,
	// bucket).
	admit(ctx context.Context, now time.Time, cs []check) error
	// settle replaces the estimate of every check that took with the
	// actual tokens, and adds cost to budgets.
	settle(ctx context.Context, now time.Time, cs []check, tokens int64, cost float64) error
}

// check is one rule applied to one request.
type check struct {
	rule *rule
	user string // the caller, for per-user rules
	// n is what the request takes: 1 request, its estimated tokens, or 0
	// for a budget (its cost is known only afterwards).
	n int64
	// periodStart and periodEnd bound a quota's or budget's calendar
	// period, in Unix milliseconds.
	periodStart, periodEnd int64

	// Set by admit.
	limit  int64 // the limit enforced: the local fallback enforces a share
	fits   bool  // this limit alone admits the request
	took   bool  // the request was admitted and counted here
	used   int64 // counted before this request, in the window or period
	retry  int64 // rates that do not fit: ms until enough capacity frees
	reset  int64 // rates: ms until the window is whole again
	bucket int64 // rates: the bucket the request was counted in

	// The memory store's counters, so that settling needs no lookup.
	w *window
	q *quota
}

// remaining is the capacity left after this request, as x-ratelimit-*
// headers report it.
func (c *check) remaining() int64 {
	u := c.used
	if c.took {
		u += c.n
	}
	return max(c.limit-u, 0)
}

// adjustment is what settling changes in c's counter: the actual tokens
// minus the estimate reserved, or the cost for a budget.
func (c *check) adjustment(tokens int64, cost float64) (int64, float64) {
	switch {
	case !c.took || c.rule.kind == kindRPM:
		return 0, 0
	case c.rule.kind == kindBudget:
		return 0, cost
	default:
		return tokens - c.n, 0
	}
}

// geometry is the shape of the rolling window: buckets of bucket ms, of
// which n are counted. n is the window's full buckets plus the current,
// partly elapsed one: a bucket leaves the window only once all of it is
// older than the window, so no span of the window's length (however it
// straddles bucket edges) ever sees more than the limit admitted. The price
// is that capacity returns up to one bucket (1 s for the default minute)
// later than a perfectly continuous window would return it.
type geometry struct {
	bucket int64
	n      int64
}

// maxBuckets bounds n: at most 60 full buckets and the current one.
const maxBuckets = 61

// newGeometry splits window into at most 60 buckets of whole milliseconds:
// one second each for the default minute.
func newGeometry(window time.Duration) geometry {
	w := max(window.Milliseconds(), 1)
	b := (w + 59) / 60
	full := (w + b - 1) / b
	return geometry{bucket: b, n: full + 1}
}

// leaves is when bucket i stops counting, in Unix ms.
func (g geometry) leaves(i int64) int64 { return (i + g.n) * g.bucket }

// fits is the admission test. A request larger than the whole limit is
// refused before it reaches a store, except in the local fail-open
// fallback, whose limit is only a share of the real one: there such a
// request is admitted into an empty window rather than never.
func fits(used, n, limit int64) bool {
	return used+n <= limit || (used <= 0 && n > limit)
}
