package loadtest

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// dist is a latency distribution: an HDR histogram in microseconds (three
// significant digits) plus the exact count, sum, min and max.
type dist struct {
	h        *hdrhistogram.Histogram
	n        int64
	sum      time.Duration
	min, max time.Duration
}

func newDist(highest time.Duration, digits int) *dist {
	return &dist{h: hdrhistogram.New(1, max(highest.Microseconds(), 1000), digits)}
}

func (d *dist) record(v time.Duration) {
	v = max(v, 0)
	us := min(v.Microseconds(), d.h.HighestTrackableValue())
	_ = d.h.RecordValue(us) // in range by construction
	if d.n == 0 || v < d.min {
		d.min = v
	}
	d.max = max(d.max, v)
	d.n++
	d.sum += v
}

// tally counts the requests of one app or model.
type tally struct {
	sent, succeeded, errors, throttled int64
	status                             map[int]int64
	transport                          map[string]int64
}

func (t *tally) add(o *outcome) {
	t.sent++
	switch {
	case o.status == 0:
		t.transport[o.errKind]++
		t.errors++
		return
	case o.ok():
		t.succeeded++
	default:
		t.errors++
	}
	t.status[o.status]++
	if o.status == 429 {
		t.throttled++
	}
}

func newTally() tally { return tally{status: map[int]int64{}, transport: map[string]int64{}} }

// recorder collects what a run measured. Completions are recorded under one
// mutex, once per request; the counters of requests starting are atomic.
type recorder struct {
	from time.Time // requests based before it (warmup) are not reported

	inFlight, peak atomic.Int64
	liveSent       atomic.Int64 // warmup included, for the progress line

	mu                 sync.Mutex
	all                tally
	lat                [2]*dist // by boolIndex(stream)
	latAll             *dist    // both: recorded twice, cheaper than merging
	ttft, lag          *dist
	incompleteStreams  int64
	incompleteBodies   int64
	missingUsage       int64
	prompt, completion int64
	sent               int64
	last               time.Time // the last completion of a reported request
	apps, models       []tally
	// The progress line's view of the last second, warmup included.
	liveDone, liveErrors int64
	window               *hdrhistogram.Histogram
}

func newRecorder(c Config, from time.Time) *recorder {
	highest := max(time.Hour, c.Timeout+c.Warmup+c.Duration+time.Minute)
	r := &recorder{
		from:   from,
		all:    newTally(),
		lat:    [2]*dist{newDist(highest, 3), newDist(highest, 3)},
		latAll: newDist(highest, 3),
		ttft:   newDist(highest, 3),
		lag:    newDist(highest, 3),
		window: hdrhistogram.New(1, highest.Microseconds(), 2),
	}
	for range max(len(c.Apps), 1) {
		r.apps = append(r.apps, newTally())
	}
	for range c.Models {
		r.models = append(r.models, newTally())
	}
	return r
}

// started counts a request being sent; the caller must call finished.
func (r *recorder) started() {
	r.liveSent.Add(1)
	n := r.inFlight.Add(1)
	for p := r.peak.Load(); n > p && !r.peak.CompareAndSwap(p, n); p = r.peak.Load() {
	}
}

// finished records one request: base is when its latency starts (the
// intended send time in an open loop, the actual one in a closed loop),
// sent when it was actually sent. lag says whether to record the
// schedule lag (open loop).
func (r *recorder) finished(t *target, base, sent time.Time, o *outcome, lag bool) {
	r.inFlight.Add(-1)
	latency := o.end.Sub(base)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.liveDone++
	if o.ok() {
		_ = r.window.RecordValue(min(max(latency.Microseconds(), 0), r.window.HighestTrackableValue()))
	} else {
		r.liveErrors++
	}
	if base.Before(r.from) {
		return // warmup
	}
	r.sent++
	r.last = maxTime(r.last, o.end)
	if lag {
		r.lag.record(sent.Sub(base))
	}
	r.all.add(o)
	r.apps[t.app].add(o)
	r.models[t.model].add(o)
	if o.incomplete {
		if t.stream {
			r.incompleteStreams++
		} else {
			r.incompleteBodies++
		}
	}
	if !o.ok() {
		return
	}
	r.lat[boolIndex(t.stream)].record(latency)
	r.latAll.record(latency)
	if t.stream && !o.content.IsZero() {
		r.ttft.record(o.content.Sub(base))
	}
	if o.usage {
		r.prompt += o.prompt
		r.completion += o.completion
	} else {
		r.missingUsage++
	}
}

// live returns the progress line's counters and resets the window.
func (r *recorder) live() (done, errors int64, p50, p99 time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	done, errors = r.liveDone, r.liveErrors
	r.liveDone, r.liveErrors = 0, 0
	if r.window.TotalCount() > 0 {
		p50 = time.Duration(r.window.ValueAtQuantile(50)) * time.Microsecond
		p99 = time.Duration(r.window.ValueAtQuantile(99)) * time.Microsecond
	}
	r.window.Reset()
	return done, errors, p50, p99
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
