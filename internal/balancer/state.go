package balancer

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// Breaker states as shown to operators.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half-open"
)

// steeringTTL is how long a remaining-tokens reading is trusted when the
// backend does not say when its window resets.
const steeringTTL = 10 * time.Second

// probeTimeout frees a half-open probe whose outcome never came back.
const probeTimeout = time.Minute

// rule is a compiled breaker rule.
type rule struct {
	tripOn           []config.StatusRange
	failures         int
	interval         time.Duration
	tripDuration     time.Duration
	acceptRetryAfter bool
}

func (r *rule) trips(status int) bool {
	for _, sr := range r.tripOn {
		if status >= sr.From && status <= sr.To {
			return true
		}
	}
	return false
}

// State is the shared health of one backend deployment (limits are per
// deployment): its circuit breaker, its last rate-limit readings and its
// in-flight count. The read side (admit) takes no lock.
type State struct {
	backend, deployment string

	openUntil    atomic.Int64 // unix ns; 0 = closed
	probeStarted atomic.Int64 // unix ns of the half-open probe in flight; 0 = none
	inFlight     atomic.Int64
	trips        atomic.Int64

	remTokens   atomic.Int64 // -1 = unknown
	remRequests atomic.Int64
	tokensUntil atomic.Int64 // unix ns until which remTokens holds
	reqUntil    atomic.Int64
	readAt      atomic.Int64

	mu        sync.Mutex // guards the failure window
	failStart time.Time
	failCount int
}

func newState(backend, deployment string) *State {
	s := &State{backend: backend, deployment: deployment}
	s.remTokens.Store(-1)
	s.remRequests.Store(-1)
	return s
}

// open reports whether the breaker is open at now, and until when.
func (s *State) open(now int64) (bool, int64) {
	until := s.openUntil.Load()
	return until != 0 && now < until, until
}

// available reports whether the deployment may take a request costing cost
// tokens at now: not tripped (or half-open with no probe in flight), and —
// when steering — not known to lack the tokens or requests.
func (s *State) available(now, cost int64, steering bool) bool {
	if until := s.openUntil.Load(); until != 0 {
		if now < until {
			return false
		}
		if p := s.probeStarted.Load(); p != 0 && now-p < int64(probeTimeout) {
			return false
		}
	}
	if steering {
		if now < s.reqUntil.Load() && s.remRequests.Load() == 0 {
			return false
		}
		if cost > 0 && now < s.tokensUntil.Load() {
			if rem := s.remTokens.Load(); rem >= 0 && rem < cost {
				return false
			}
		}
	}
	return true
}

// claim takes the deployment for one attempt; for a half-open breaker only
// one caller wins the probe. It returns whether the attempt is a probe.
func (s *State) claim(now int64) (ok, probe bool) {
	until := s.openUntil.Load()
	if until == 0 {
		return true, false
	}
	if now < until {
		return false, false
	}
	p := s.probeStarted.Load()
	if p != 0 && now-p < int64(probeTimeout) {
		return false, false
	}
	if !s.probeStarted.CompareAndSwap(p, now) {
		return false, false
	}
	return true, true
}

// observe records an attempt's outcome. failed is true for a status the
// rule trips on or a transport error; status and h are the response's (0
// and nil on transport errors).
func (s *State) observe(now time.Time, status int, h http.Header, failed, probe bool, r *rule) {
	if h != nil {
		s.readLimits(now, h)
	}
	if !failed {
		if probe || s.openUntil.Load() != 0 {
			s.openUntil.Store(0)
			s.probeStarted.Store(0)
		}
		return
	}
	s.mu.Lock()
	if now.Sub(s.failStart) > r.interval {
		s.failStart, s.failCount = now, 0
	}
	s.failCount++
	trip := probe || s.failCount >= r.failures
	if trip {
		s.failCount = 0
	}
	s.mu.Unlock()
	if !trip {
		return
	}
	d := r.tripDuration
	if r.acceptRetryAfter && h != nil {
		asked := ExplicitRetryAfter
		if status == http.StatusTooManyRequests {
			asked = RetryAfter
		}
		if ra, ok := asked(h, now); ok {
			d = ra
		}
	}
	s.openUntil.Store(now.Add(d).UnixNano())
	s.probeStarted.Store(0)
	s.trips.Add(1)
}

// abandon releases a probe whose attempt ended without an outcome (the
// client went away).
func (s *State) abandon(probe bool) {
	if probe {
		s.probeStarted.Store(0)
	}
}

func (s *State) readLimits(now time.Time, h http.Header) {
	t := readLimit(now, h, "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens", &s.remTokens, &s.tokensUntil)
	r := readLimit(now, h, "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests", &s.remRequests, &s.reqUntil)
	if t || r {
		s.readAt.Store(now.UnixNano())
	}
}

// readLimit stores a remaining-* reading and until when it holds: the
// matching reset-* header, else steeringTTL.
func readLimit(now time.Time, h http.Header, remainingKey, resetKey string, remaining, until *atomic.Int64) bool {
	v, err := strconv.ParseInt(h.Get(remainingKey), 10, 64)
	if err != nil || v < 0 {
		return false
	}
	remaining.Store(v)
	d, ok := resetDuration(h.Get(resetKey))
	if !ok {
		d = steeringTTL
	}
	until.Store(now.Add(d).UnixNano())
	return true
}

// Snapshot is what operators see of one backend deployment.
type Snapshot struct {
	Backend           string     `json:"backend"`
	Deployment        string     `json:"deployment"`
	State             string     `json:"state"`
	OpenUntil         *time.Time `json:"open_until,omitempty"`
	Trips             int64      `json:"trips"`
	InFlight          int64      `json:"in_flight"`
	RemainingTokens   *int64     `json:"remaining_tokens,omitempty"`
	RemainingRequests *int64     `json:"remaining_requests,omitempty"`
	ReadAt            *time.Time `json:"limits_read_at,omitempty"`
}

func (s *State) snapshot(now time.Time) Snapshot {
	snap := Snapshot{Backend: s.backend, Deployment: s.deployment, State: StateClosed,
		Trips: s.trips.Load(), InFlight: s.inFlight.Load()}
	if until := s.openUntil.Load(); until != 0 {
		t := time.Unix(0, until)
		snap.OpenUntil = &t
		snap.State = StateOpen
		if !now.Before(t) {
			snap.State = StateHalfOpen
		}
	}
	if v := s.remTokens.Load(); v >= 0 {
		snap.RemainingTokens = &v
	}
	if v := s.remRequests.Load(); v >= 0 {
		snap.RemainingRequests = &v
	}
	if r := s.readAt.Load(); r != 0 {
		t := time.Unix(0, r)
		snap.ReadAt = &t
	}
	return snap
}
