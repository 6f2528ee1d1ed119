package balancer

import (
	"context"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/upstream"
)

// Attempt is one try of a request at one backend, for logs and records.
type Attempt struct {
	Backend    string `json:"backend"`
	Deployment string `json:"deployment,omitempty"`
	Status     int    `json:"status,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Selection chooses the target of each attempt of one request and learns
// from each outcome; it implements upstream.Selector. Not safe for
// concurrent use: one request's attempts are sequential.
type Selection struct {
	b           *Balancer
	pool        *pool
	alias       string
	groups      []group
	fixed       *upstream.Target // pass-through: the one target
	cost        int64
	maxAttempts int
	deadline    time.Time

	tried    []*member
	current  *member
	probe    bool
	attempts []Attempt
	spilled  bool // an attempt went to a priority below the best
}

var _ upstream.Selector = (*Selection)(nil)

// errNoMore means every untried candidate is unavailable; the caller keeps
// the previous attempt's answer.
var errNoMore = errors.New("no other backend available")

// Next returns the target for the next attempt, never one tried before in
// this request. Before the first attempt, when every backend is tripped (or
// steered away and tripped), it returns a 429 *openai.Error whose
// retry-after is the soonest moment one becomes available.
func (s *Selection) Next() (upstream.Target, error) {
	if s.fixed != nil {
		if len(s.attempts) > 0 {
			return upstream.Target{}, errNoMore
		}
		s.attempts = append(s.attempts, Attempt{Backend: s.fixed.Backend.Name, Deployment: s.fixed.Deployment})
		return *s.fixed, nil
	}
	now := s.b.now()
	if len(s.attempts) >= s.maxAttempts || (len(s.attempts) > 0 && now.After(s.deadline)) {
		return upstream.Target{}, errNoMore
	}
	ns := now.UnixNano()
	// First honour steering; if it leaves nothing, ignore it: a stale
	// reading is no reason to refuse a request a backend may still take.
	for _, steer := range [...]bool{s.pool.steering, false} {
		for gi := range s.groups {
			if m := s.pick(&s.groups[gi], ns, steer); m != nil {
				s.current = m
				m.state.inFlight.Add(1)
				if gi > 0 {
					s.spilled = true
				}
				s.attempts = append(s.attempts, Attempt{Backend: m.target.Backend.Name, Deployment: m.target.Deployment})
				return m.target, nil
			}
		}
		if !s.pool.steering {
			break
		}
	}
	if len(s.attempts) > 0 {
		return upstream.Target{}, errNoMore
	}
	return upstream.Target{}, s.throttled(ns)
}

// fastDraws is how many draws over a whole group pick makes before it
// scans the group. In a healthy group the first draw lands on an available
// member, so a pick costs a binary search whatever the group's size; when
// most members are unavailable the draws miss and the scan decides.
const fastDraws = 4

// pick chooses among the available, untried members of g by the pool's
// strategy and claims it (winning the probe of a half-open breaker).
//
// It first draws over every member, available or not, and keeps a draw
// whose member is available: conditioned on landing on an available
// member, a weighted draw picks each by its share of the available
// weight, exactly as the scan does. Round-robin draws once, so a member
// that is unavailable passes its turn to the scan (with the same position
// among the available members) instead of to its neighbour.
func (s *Selection) pick(g *group, now int64, steer bool) *member {
	draws := fastDraws
	if s.pool.roundRobin {
		draws = 1
	}
	if g.total == 0 {
		draws = 0 // weights of 0 (a config built in code): nothing to draw
	}
	var v uint64
	for range draws {
		if s.pool.roundRobin {
			v = g.rr.Add(1)
		} else {
			v = uint64(rand.IntN(g.total))
		}
		m := g.at(int(v % uint64(g.total)))
		if !s.eligible(m, now, steer) {
			continue
		}
		if ok, probe := m.state.claim(now); ok {
			s.probe = probe
			return m
		}
	}
	for i := range len(g.members) {
		total := 0
		for _, m := range g.members {
			if s.eligible(m, now, steer) {
				total += m.weight
			}
		}
		if total == 0 {
			return nil
		}
		var n int
		if s.pool.roundRobin {
			if i > 0 {
				v = g.rr.Add(1)
			}
			n = int(v % uint64(total))
		} else {
			n = rand.IntN(total)
		}
		for _, m := range g.members {
			if !s.eligible(m, now, steer) {
				continue
			}
			if n -= m.weight; n < 0 {
				if ok, probe := m.state.claim(now); ok {
					s.probe = probe
					return m
				}
				break // lost a probe race: look again
			}
		}
	}
	return nil
}

func (s *Selection) eligible(m *member, now int64, steer bool) bool {
	for _, t := range s.tried {
		if t == m {
			return false
		}
	}
	return m.state.available(now, s.cost, steer)
}

// throttled is the 429 for "every backend for this model is tripped", with
// retry-after set to the soonest reopening.
func (s *Selection) throttled(now int64) error {
	soonest := int64(math.MaxInt64)
	for _, g := range s.groups {
		for _, m := range g.members {
			if open, until := m.state.open(now); open && until < soonest {
				soonest = until
			}
		}
	}
	wait := time.Second
	if soonest != math.MaxInt64 {
		wait = time.Duration(soonest - now)
	}
	secs := int64(math.Ceil(wait.Seconds()))
	if secs < 1 {
		secs = 1
	}
	e := openai.Errorf(http.StatusTooManyRequests, "429",
		"all backends for model %q are throttled; retry after %d seconds", s.alias, secs)
	e.Header = http.Header{
		"Retry-After":    []string{strconv.FormatInt(secs, 10)},
		"Retry-After-Ms": []string{strconv.FormatInt(max(wait.Milliseconds(), 1), 10)},
	}
	return e
}

// Report records the outcome of the attempt Next last returned: the
// response (its body not yet read) or the transport error. It returns
// whether the request should be tried again on another backend: after a
// 429, a 5xx, or a connection failure or timeout before any response, while
// attempts and time budget remain.
func (s *Selection) Report(resp *http.Response, err error) bool {
	a := &s.attempts[len(s.attempts)-1]
	if resp != nil {
		a.Status = resp.StatusCode
	} else if err != nil {
		a.Error = err.Error()
	}
	m := s.current
	if m == nil {
		return false
	}
	s.current = nil
	s.tried = append(s.tried, m)
	var gatewayErr *openai.Error
	if err != nil && (errors.Is(err, context.Canceled) || errors.As(err, &gatewayErr)) {
		m.state.inFlight.Add(-1)
		m.state.abandon(s.probe)
		return false // the client went away, or the gateway refused: not the backend's fault
	}
	now := s.b.now()
	var h http.Header
	status, failed := 0, err != nil
	if resp != nil {
		h, status = resp.Header, resp.StatusCode
		failed = s.pool.rule.trips(resp.StatusCode)
		if resp.StatusCode == http.StatusSwitchingProtocols {
			m.state.inFlight.Add(-1) // an upgraded connection must keep its writable body
		} else {
			resp.Body = &inFlightBody{ReadCloser: resp.Body, state: m.state}
		}
	} else {
		m.state.inFlight.Add(-1)
	}
	m.state.observe(now, status, h, failed, s.probe, &s.pool.rule)
	retriable := err != nil || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500
	return retriable && len(s.attempts) < s.maxAttempts && now.Before(s.deadline)
}

// Final checks the response the client is about to get: a 429 while every
// backend of the model is tripped becomes the gateway's own 429 with the
// soonest retry-after across them.
func (s *Selection) Final(resp *http.Response) error {
	if resp.StatusCode != http.StatusTooManyRequests || s.fixed != nil {
		return nil
	}
	now := s.b.now().UnixNano()
	for _, g := range s.groups {
		for _, m := range g.members {
			if open, _ := m.state.open(now); !open {
				return nil
			}
		}
	}
	return s.throttled(now)
}

// Attempts lists the attempts made so far.
func (s *Selection) Attempts() []Attempt { return s.attempts }

// Spilled reports whether an attempt went below the best priority.
func (s *Selection) Spilled() bool { return s.spilled }

// inFlightBody counts the response as in flight until its body is closed.
type inFlightBody struct {
	io.ReadCloser
	state *State
	done  bool
}

func (b *inFlightBody) Close() error {
	if !b.done {
		b.done = true
		b.state.inFlight.Add(-1)
	}
	return b.ReadCloser.Close()
}

// Pool names the pool the selection draws from ("" for pass-through).
func (s *Selection) Pool() string {
	if s.pool == nil {
		return ""
	}
	return s.pool.name
}
