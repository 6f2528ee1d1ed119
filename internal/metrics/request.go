package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokengate/tokengate/internal/usage"
)

// Labels are a request's metric labels. The caller bounds every value
// before it gets here: App and Team come from the config's app registry
// ("unknown" for callers not in it), Model is a configured alias ("other"
// for any other name a client sent), Operation is one of the gateway's
// known operations, Backend and Pool are configured names ("" when no
// backend was reached). Labels is comparable and used as a map key.
type Labels struct{ App, Team, Model, Operation, Backend, Pool string }

// Status classes, indexed by statusClass.
const (
	class2xx = iota
	class3xx
	class4xx
	class5xx
	classError // an attempt with no response; never a request's class
	numClasses
)

// Token types, indexed in series.tokens.
const (
	tokPrompt = iota
	tokCompletion
	tokCachedPrompt
	tokReasoning
	numTokenTypes
)

// Request observes one finished request from its usage record: requests,
// errors, tokens, cost, latency histograms, backend attempts, retries, and
// — when spilled, i.e. an attempt went to a lower-priority backend group —
// a spill-over. l supplies every request-level label (the record's own
// Model, Pool and Backend are not read); attempt backends come from
// rec.Attempts, which only holds configured backend names. A nil rec is
// ignored.
//
// Request is on the hot path, called once per request: once a Labels value
// has been seen it does a lock-free map lookup, a few atomic adds and no
// allocation. Safe for concurrent use; rec is only read.
func (m *Metrics) Request(l Labels, rec *usage.Record, spilled bool) {
	if rec == nil {
		return
	}
	s := m.series.get(l, m.newSeries)

	class := statusClass(rec.Status)
	s.requests[class].get(func() prometheus.Counter {
		return m.requests.WithLabelValues(l.App, l.Model, l.Operation, l.Backend, className(class))
	}).Inc()
	if rec.ErrorClass != "" {
		m.errorsByKey.get(errorKey{l.App, rec.ErrorClass}, m.newErrorCounter).Inc()
	}

	// Counter.Add panics on a negative value: a bad count is skipped, not
	// allowed to take the request path down.
	s.addTokens(m, tokPrompt, rec.Tokens.Prompt)
	s.addTokens(m, tokCompletion, rec.Tokens.Completion)
	s.addTokens(m, tokCachedPrompt, rec.Tokens.CachedPrompt)
	s.addTokens(m, tokReasoning, rec.Tokens.Reasoning)
	if rec.Cost.Amount > 0 {
		s.costCounter(m, rec.Cost.Currency).Add(rec.Cost.Amount)
	}

	st := 0
	if rec.Stream {
		st = 1
	}
	lat := rec.Latency
	s.duration[st].get(func() prometheus.Observer {
		return m.duration.WithLabelValues(l.Model, streamName(st))
	}).Observe(seconds(lat.TotalMS))
	if lat.FirstTokenMS > 0 {
		s.ttft[st].get(func() prometheus.Observer {
			return m.ttft.WithLabelValues(l.Model, streamName(st))
		}).Observe(seconds(lat.FirstTokenMS))
	}
	if lat.UpstreamMS > 0 {
		s.upstream[st].get(func() prometheus.Observer {
			return m.upstream.WithLabelValues(l.Model, streamName(st))
		}).Observe(seconds(lat.UpstreamMS))
		s.overhead[st].get(func() prometheus.Observer {
			return m.overhead.WithLabelValues(l.Model, streamName(st))
		}).Observe(seconds(lat.TotalMS - lat.UpstreamMS))
	}

	for i := range rec.Attempts {
		a := &rec.Attempts[i]
		ac := classError
		if a.Status != 0 {
			ac = statusClass(a.Status)
		}
		m.attemptsBy.get(attemptKey{a.Backend, ac}, m.newAttemptCounter).Inc()
		if a.Status == 429 {
			m.throttledBy.get(a.Backend, m.newThrottledCounter).Inc()
		}
	}
	if n := len(rec.Attempts); n > 1 {
		s.retries.get(func() prometheus.Counter {
			return m.retries.WithLabelValues(l.Pool, l.Model)
		}).Add(float64(n - 1))
	}
	if spilled {
		s.spillovers.get(func() prometheus.Counter {
			return m.spillovers.WithLabelValues(l.Pool, l.Model)
		}).Inc()
	}
}

// series holds the children of every vector Request touches for one Labels
// value, each resolved on first use so that a series is only exported once
// it has something to say (no empty time-to-first-token histograms for
// embeddings, no reasoning-token series for models without reasoning).
type series struct {
	l        Labels
	requests [numClasses]lazy[prometheus.Counter] // by status class
	tokens   [numTokenTypes]lazy[prometheus.Counter]
	// Histograms by stream (0: false, 1: true).
	duration, ttft, upstream, overhead [2]lazy[prometheus.Observer]
	retries, spillovers                lazy[prometheus.Counter]
	// cost is the last currency's counter; a second currency for the
	// same labels (a price table change) just re-resolves.
	cost atomic.Pointer[costChild]
}

type costChild struct {
	currency string
	counter  prometheus.Counter
}

func (m *Metrics) newSeries(l Labels) *series { return &series{l: l} }

func (s *series) addTokens(m *Metrics, typ int, n int64) {
	if n <= 0 {
		return
	}
	s.tokens[typ].get(func() prometheus.Counter {
		return m.tokens.WithLabelValues(s.l.App, s.l.Team, s.l.Model, s.l.Backend, tokenTypeName(typ))
	}).Add(float64(n))
}

func (s *series) costCounter(m *Metrics, currency string) prometheus.Counter {
	if c := s.cost.Load(); c != nil && c.currency == currency {
		return c.counter
	}
	c := &costChild{currency: currency, counter: m.cost.WithLabelValues(s.l.App, s.l.Team, currency)}
	s.cost.Store(c)
	return c.counter
}

type errorKey struct{ app, class string }

func (m *Metrics) newErrorCounter(k errorKey) prometheus.Counter {
	return m.requestErrors.WithLabelValues(k.app, k.class)
}

type attemptKey struct {
	backend string
	class   int
}

func (m *Metrics) newAttemptCounter(k attemptKey) prometheus.Counter {
	return m.attempts.WithLabelValues(k.backend, className(k.class))
}

func (m *Metrics) newThrottledCounter(backend string) prometheus.Counter {
	return m.throttled.WithLabelValues(backend)
}

// statusClass maps an HTTP status to its class. Anything that is not a
// 2xx, 3xx or 4xx (0: no response was written, 1xx, garbage) is a 5xx: the
// gateway failed to answer properly. 499 (client hung up) is a 4xx.
func statusClass(status int) int {
	switch {
	case status >= 200 && status < 300:
		return class2xx
	case status >= 300 && status < 400:
		return class3xx
	case status >= 400 && status < 500:
		return class4xx
	default:
		return class5xx
	}
}

func className(class int) string {
	switch class {
	case class2xx:
		return "2xx"
	case class3xx:
		return "3xx"
	case class4xx:
		return "4xx"
	case class5xx:
		return "5xx"
	default:
		return "error"
	}
}

func tokenTypeName(typ int) string {
	switch typ {
	case tokPrompt:
		return "prompt"
	case tokCompletion:
		return "completion"
	case tokCachedPrompt:
		return "cached_prompt"
	default:
		return "reasoning"
	}
}

func streamName(st int) string {
	if st == 1 {
		return "true"
	}
	return "false"
}

// seconds converts milliseconds to seconds, clamping negatives and NaN to 0
// (a clock step must not put a request in a negative bucket).
func seconds(ms float64) float64 {
	if !(ms > 0) {
		return 0
	}
	return ms / 1000
}
