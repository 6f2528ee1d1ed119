package simulator

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// dice draws the random numbers of fault injection. Unseeded it uses the
// runtime's per-thread generator, which needs no lock; WithSeed makes the
// sequence reproducible (for a given order of requests) at the cost of a mutex.
type dice struct {
	mu  sync.Mutex
	rng *rand.Rand // nil: use the global generator
}

func newDice(seed *uint64) *dice {
	if seed == nil {
		return &dice{}
	}
	return &dice{rng: rand.New(rand.NewPCG(*seed, *seed^0x5eed))}
}

// float64 returns a number in [0, 1).
func (d *dice) float64() float64 {
	if d.rng == nil {
		return rand.Float64()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rng.Float64()
}

// chance reports true with probability p; p <= 0 never draws.
func (d *dice) chance(p float64) bool {
	return p > 0 && d.float64() < p
}

// injectedError picks the status of an injected server failure: 500 or 503,
// even odds.
func (d *dice) injectedError(requestID string) *apiError {
	if d.float64() < 0.5 {
		return errServer(requestID)
	}
	return errUnavailable
}

// errClosing stops a request's work because the instance is closing.
var errClosing = errors.New("simulator: instance closing")

// sleep waits for d, or until the request is cancelled (its context error is
// returned) or the instance closes (errClosing). The exchange's timer is
// reused across calls to avoid a timer per token.
func (x *exchange) sleep(d time.Duration) error {
	ctx := x.r.Context()
	if d <= 0 {
		return ctx.Err()
	}
	if x.timer == nil {
		x.timer = time.NewTimer(d)
	} else {
		x.timer.Reset(d)
	}
	select {
	case <-x.timer.C:
		return nil
	case <-ctx.Done():
		x.timer.Stop()
		return ctx.Err()
	case <-x.in.closing:
		x.timer.Stop()
		return errClosing
	}
}

// sleepUntil is sleep up to an absolute deadline, so that pacing does not drift.
func (x *exchange) sleepUntil(deadline time.Time) error {
	return x.sleep(time.Until(deadline))
}

// interrupted records why work stopped early and ends the exchange the way the
// cause calls for: a client hang-up needs no answer; a closing instance cuts
// the connection so the client does not mistake a partial answer for a whole.
func (x *exchange) interrupted(err error) {
	if errors.Is(err, errClosing) {
		x.obs.Reset = true
		panic(http.ErrAbortHandler)
	}
	x.obs.Cancelled = true
}
