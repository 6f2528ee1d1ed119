package simulator

import (
	"sync"
	"time"
)

// limiter enforces one deployment's RPM and TPM over a rolling window
// (InstanceConfig.RateLimitWindow, a minute by default): a request is admitted
// when, counting every admission of the last window plus this one, neither
// limit is exceeded. (Azure itself enforces RPM/6 per 10 seconds and TPM over
// about a minute; a rolling window keeps the configured numbers literal and
// window tests simple.) A request's token cost
// is fixed at admission — prompt tokens plus the maximum completion tokens it
// may generate, as Azure estimates it — and is never refunded.
//
// The limiter is safe for concurrent use. It trusts its clock not to go
// backwards.
type limiter struct {
	rpm, tpm int
	window   time.Duration

	mu      sync.Mutex
	log     []admission // admissions in time order, from head on
	head    int
	tokens  int // sum of log[head:].cost
	current int // len(log) - head
}

type admission struct {
	at   time.Time
	cost int
}

// decision is the outcome of one admission attempt.
type decision struct {
	allowed bool
	// kind is the exceeded limit when !allowed: "call" (RPM) or "token" (TPM),
	// Azure's words.
	kind       string
	retryAfter time.Duration
	budget     // after this decision
}

// budget is what a deployment's limits have left at one moment.
type budget struct {
	// remainingRequests and remainingTokens are what is left in the window; -1
	// when that limit is not configured.
	remainingRequests, remainingTokens int
	// resetRequests and resetTokens are how long until that budget is whole
	// again, which in a rolling window is when the newest admission that
	// charged it leaves the window (OpenAI's "time until the rate limit resets
	// to its initial state"); 0 when nothing is charged. They are not the
	// wait before the next request fits: that is the 429's retry-after.
	resetRequests, resetTokens time.Duration
}

// unlimited is the budget of a deployment without limits.
var unlimited = budget{remainingRequests: -1, remainingTokens: -1}

// newLimiter returns a limiter of rpm requests and tpm tokens per window, or
// nil when neither is limited.
func newLimiter(rpm, tpm int, window time.Duration) *limiter {
	if rpm <= 0 && tpm <= 0 {
		return nil
	}
	return &limiter{rpm: rpm, tpm: tpm, window: window}
}

// admit decides whether a request costing cost tokens may run at now, and if
// so records it. A nil limiter admits everything.
func (l *limiter) admit(now time.Time, cost int) decision {
	if l == nil {
		return decision{allowed: true, budget: unlimited}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)

	d := decision{allowed: true}
	if l.rpm > 0 && l.current+1 > l.rpm {
		d.allowed, d.kind = false, "call"
		// The oldest current-rpm+1 admissions must leave the window.
		d.retryAfter = l.log[l.head+l.current-l.rpm].at.Add(l.window).Sub(now)
	}
	if l.tpm > 0 && l.tokens+cost > l.tpm {
		var wait time.Duration
		if cost > l.tpm {
			wait = l.window // never fits; Azure keeps answering 429 too
		} else {
			freed := 0
			for i := l.head; i < len(l.log); i++ {
				freed += l.log[i].cost
				if l.tokens-freed+cost <= l.tpm {
					wait = l.log[i].at.Add(l.window).Sub(now)
					break
				}
			}
		}
		if d.allowed || wait > d.retryAfter {
			d.kind, d.retryAfter = "token", wait
		}
		d.allowed = false
	}
	if d.allowed {
		l.log = append(l.log, admission{at: now, cost: cost})
		l.current++
		l.tokens += cost
	}
	if d.retryAfter < 0 {
		d.retryAfter = 0
	}
	d.budget = l.remaining(now)
	return d
}

// peek returns the budget left at now without admitting anything.
func (l *limiter) peek(now time.Time) budget {
	if l == nil {
		return unlimited
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	return l.remaining(now)
}

// remaining is the budget at now. Called with mu held, after expire(now).
func (l *limiter) remaining(now time.Time) budget {
	b := unlimited
	if l.rpm > 0 {
		b.remainingRequests = max(l.rpm-l.current, 0)
		if l.current > 0 {
			b.resetRequests = l.log[len(l.log)-1].at.Add(l.window).Sub(now)
		}
	}
	if l.tpm > 0 {
		b.remainingTokens = max(l.tpm-l.tokens, 0)
		for i := len(l.log) - 1; i >= l.head; i-- {
			if l.log[i].cost > 0 {
				b.resetTokens = l.log[i].at.Add(l.window).Sub(now)
				break
			}
		}
	}
	return b
}

// expire drops admissions older than the window. Called with mu held.
func (l *limiter) expire(now time.Time) {
	cutoff := now.Add(-l.window)
	for l.head < len(l.log) && !l.log[l.head].at.After(cutoff) {
		l.tokens -= l.log[l.head].cost
		l.head++
		l.current--
	}
	// Reclaim the dead prefix once it dominates, so the log stays O(window).
	if l.head > 64 && l.head*2 > len(l.log) {
		n := copy(l.log, l.log[l.head:])
		clear(l.log[n:])
		l.log = l.log[:n]
		l.head = 0
	}
}
