package simulator

import (
	"sync"
	"time"
)

// rateWindow is the span of the requests- and tokens-per-minute limits.
const rateWindow = time.Minute

// limiter enforces one deployment's RPM and TPM over a rolling 60-second
// window: a request is admitted when, counting every admission of the last 60
// seconds plus this one, neither limit is exceeded. (Azure itself enforces
// RPM/6 per 10 seconds and TPM over about a minute; a rolling minute keeps the
// configured numbers literal and window tests simple.) A request's token cost
// is fixed at admission — prompt tokens plus the maximum completion tokens it
// may generate, as Azure estimates it — and is never refunded.
//
// The limiter is safe for concurrent use. It trusts its clock not to go
// backwards.
type limiter struct {
	rpm, tpm int

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
	// remainingRequests and remainingTokens are what is left in the window after
	// this decision; -1 when that limit is not configured.
	remainingRequests, remainingTokens int
}

func newLimiter(rpm, tpm int) *limiter {
	if rpm <= 0 && tpm <= 0 {
		return nil
	}
	return &limiter{rpm: rpm, tpm: tpm}
}

// admit decides whether a request costing cost tokens may run at now, and if
// so records it. A nil limiter admits everything.
func (l *limiter) admit(now time.Time, cost int) decision {
	if l == nil {
		return decision{allowed: true, remainingRequests: -1, remainingTokens: -1}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)

	d := decision{allowed: true}
	if l.rpm > 0 && l.current+1 > l.rpm {
		d.allowed, d.kind = false, "call"
		// The oldest current-rpm+1 admissions must leave the window.
		d.retryAfter = l.log[l.head+l.current-l.rpm].at.Add(rateWindow).Sub(now)
	}
	if l.tpm > 0 && l.tokens+cost > l.tpm {
		var wait time.Duration
		if cost > l.tpm {
			wait = rateWindow // never fits; Azure keeps answering 429 too
		} else {
			freed := 0
			for i := l.head; i < len(l.log); i++ {
				freed += l.log[i].cost
				if l.tokens-freed+cost <= l.tpm {
					wait = l.log[i].at.Add(rateWindow).Sub(now)
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
	d.remainingRequests, d.remainingTokens = l.remaining()
	return d
}

// peek returns the remaining requests and tokens without admitting anything;
// -1 for an unconfigured limit.
func (l *limiter) peek(now time.Time) (requests, tokens int) {
	if l == nil {
		return -1, -1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	return l.remaining()
}

func (l *limiter) remaining() (requests, tokens int) {
	requests, tokens = -1, -1
	if l.rpm > 0 {
		requests = max(l.rpm-l.current, 0)
	}
	if l.tpm > 0 {
		tokens = max(l.tpm-l.tokens, 0)
	}
	return requests, tokens
}

// expire drops admissions older than the window. Called with mu held.
func (l *limiter) expire(now time.Time) {
	cutoff := now.Add(-rateWindow)
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
