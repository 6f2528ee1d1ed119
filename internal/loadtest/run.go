package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoResponses is returned, with the report, when not a single request
// got an HTTP response (the target is down, refuses connections, ...).
var ErrNoResponses = errors.New("no request got a response")

// errorPause is how long a closed-loop worker waits after a transport error,
// so an unreachable target is not hammered in a busy loop.
const errorPause = 10 * time.Millisecond

// Run runs the load test of cfg and returns its report. An invalid cfg is
// an error without a report. When not a single request got a response the
// report comes with an error wrapping [ErrNoResponses]. Cancelling ctx stops
// the run early (see the package comment); the report then says
// interrupted. Run leaves no goroutine or connection behind.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tg, err := buildTargets(cfg)
	if err != nil {
		return nil, err
	}
	tr := newTransport(cfg)
	defer tr.CloseIdleConnections()

	// hard bounds every request: it outlives ctx by the grace period.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()

	t0 := time.Now()
	r := &runner{
		cfg:  cfg,
		tg:   tg,
		rt:   tr,
		hard: hard,
		t0:   t0,
		end:  t0.Add(cfg.Warmup + cfg.Duration),
		rec:  newRecorder(cfg, t0.Add(cfg.Warmup)),
	}
	finished := make(chan struct{})
	var helpers sync.WaitGroup
	helpers.Go(func() {
		select {
		case <-finished:
		case <-ctx.Done():
			r.stop()
			t := time.NewTimer(cfg.Grace)
			defer t.Stop()
			select {
			case <-finished:
			case <-t.C:
				cancelHard()
			}
		}
	})
	if cfg.Progress != nil {
		helpers.Go(func() { r.progress(finished) })
	}

	if cfg.Rate > 0 {
		r.openLoop(ctx)
	} else {
		r.closedLoop(ctx)
	}
	close(finished)
	helpers.Wait()

	rep := r.report()
	if r.responded.Load() == 0 {
		return rep, fmt.Errorf("%w from %s%s", ErrNoResponses, rep.URL, describeErrors(rep.TransportErrors))
	}
	return rep, nil
}

// runner is the state of one run.
type runner struct {
	cfg  Config
	tg   *targets
	rt   http.RoundTripper
	hard context.Context
	t0   time.Time
	end  time.Time // no request starts (closed) or is due (open) from here on
	rec  *recorder
	seq  atomic.Uint64 // closed loop: the next request's number

	stopped   atomic.Int64 // unix nanos of the interruption (Ctrl-C); 0 if none
	responded atomic.Int64 // requests that got a response, warmup included
	scheduled int64        // open loop: reported arrivals
	unsent    int64        // open loop: reported arrivals dropped unsent
}

// pickTarget chooses the i'th request: streams are spread evenly by
// StreamShare, app, model and prompt size are drawn by weight.
func (r *runner) pickTarget(i uint64) *target {
	share := r.cfg.StreamShare
	stream := math.Floor(float64(i+1)*share) > math.Floor(float64(i)*share)
	tg := r.tg
	return tg.get(pick(tg.appW, rand.Float64()), pick(tg.modelW, rand.Float64()), pick(tg.promptW, rand.Float64()), stream)
}

// send runs one request and records it; base is where its latency starts.
func (r *runner) send(t *target, base time.Time, s *scratch, openLoop bool) *outcome {
	var o outcome
	sent := time.Now()
	if !openLoop {
		base = sent
	}
	r.rec.started()
	ctx, cancel := context.WithTimeout(r.hard, r.cfg.Timeout)
	do(ctx, r.rt, t, s, &o)
	cancel()
	if o.responded {
		r.responded.Add(1)
	}
	r.rec.finished(t, base, sent, &o, openLoop)
	return &o
}

func (r *runner) stop() {
	r.stopped.CompareAndSwap(0, time.Now().UnixNano())
}

// closedLoop runs Concurrency workers sending back to back until the end.
func (r *runner) closedLoop(ctx context.Context) {
	n := r.cfg.Concurrency
	var wg sync.WaitGroup
	for k := range n {
		start := r.t0.Add(time.Duration(float64(r.cfg.Ramp) * float64(k) / float64(n)))
		wg.Go(func() { r.worker(ctx, start) })
	}
	wg.Wait()
}

func (r *runner) worker(ctx context.Context, start time.Time) {
	if !sleepUntil(ctx, start) {
		return
	}
	var s scratch
	for ctx.Err() == nil && time.Now().Before(r.end) {
		t := r.pickTarget(r.seq.Add(1) - 1)
		if o := r.send(t, time.Time{}, &s, false); o.status == 0 && ctx.Err() == nil {
			sleepUntil(ctx, time.Now().Add(errorPause))
		}
	}
}

// sleepUntil waits for t and reports false when ctx ends first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// arrival is an open-loop request: its number and intended send time.
type arrival struct {
	i   uint64
	due time.Time
}

// openLoop is the scheduler: it hands arrivals at their intended times to a
// pool that never makes it wait for a response.
func (r *runner) openLoop(ctx context.Context) {
	limit := r.cfg.Concurrency
	if limit == 0 {
		limit = math.MaxInt
	}
	p := newPool(limit, func(a arrival, s *scratch) {
		r.send(r.pickTarget(a.i), a.due, s, true)
	})
	period := float64(time.Second) / r.cfg.Rate
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i := uint64(0); ; i++ {
		due := r.t0.Add(time.Duration(float64(i) * period))
		if !due.Before(r.end) {
			break
		}
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		if !due.Before(r.rec.from) {
			r.scheduled++
		}
		p.submit(arrival{i: i, due: due})
	}
	if ctx.Err() == nil {
		// Arrivals queued when the time was up are still sent, unless the
		// run is interrupted meanwhile.
		p.close()
		waited := make(chan struct{})
		go func() { p.wait(); close(waited) }()
		select {
		case <-waited:
			return
		case <-ctx.Done():
		}
		defer func() { <-waited }()
	}
	for _, a := range p.drop() {
		if !a.due.Before(r.rec.from) {
			r.unsent++
		}
	}
	p.close()
	p.wait()
}

// pool runs submitted arrivals first in, first out on at most limit
// workers, starting a worker whenever none is idle. Workers stay until the
// pool is closed.
type pool struct {
	mu      sync.Mutex
	cond    sync.Cond
	queue   []arrival
	head    int
	idle    int // workers waiting that no submit has woken yet
	running int
	limit   int
	closed  bool
	work    func(arrival, *scratch)
	wg      sync.WaitGroup
}

func newPool(limit int, work func(arrival, *scratch)) *pool {
	p := &pool{limit: limit, work: work}
	p.cond.L = &p.mu
	return p
}

func (p *pool) submit(a arrival) {
	p.mu.Lock()
	p.queue = append(p.queue, a)
	switch {
	case p.idle > 0:
		p.idle--
		p.cond.Signal()
	case p.running < p.limit:
		p.running++
		p.wg.Go(p.worker)
	}
	p.mu.Unlock()
}

func (p *pool) worker() {
	var s scratch
	for {
		p.mu.Lock()
		for p.head == len(p.queue) && !p.closed {
			p.idle++
			p.cond.Wait()
		}
		if p.head == len(p.queue) {
			p.mu.Unlock()
			return
		}
		a := p.queue[p.head]
		p.head++
		switch {
		case p.head == len(p.queue):
			p.queue, p.head = p.queue[:0], 0
		case p.head > 4096 && p.head > len(p.queue)/2:
			n := copy(p.queue, p.queue[p.head:])
			p.queue, p.head = p.queue[:n], 0
		}
		p.mu.Unlock()
		p.work(a, &s)
	}
}

// drop empties the queue and returns what was in it.
func (p *pool) drop() []arrival {
	p.mu.Lock()
	defer p.mu.Unlock()
	left := append([]arrival(nil), p.queue[p.head:]...)
	p.queue, p.head = p.queue[:0], 0
	return left
}

// close lets workers exit once the queue is empty.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.idle = 0
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *pool) wait() { p.wg.Wait() }

// progress writes the live line once a second until stop is closed.
func (r *runner) progress(stop <-chan struct{}) {
	w := r.cfg.Progress
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			fmt.Fprint(w, "\n")
			return
		case now := <-tick.C:
			done, errs, p50, p99 := r.rec.live()
			phase := ""
			if now.Before(r.rec.from) {
				phase = " (warmup)"
			} else if !now.Before(r.end) {
				phase = " (draining)"
			}
			fmt.Fprintf(w, "\r%5.0fs%s  sent %d  done %.0f/s  errors %d  in flight %d  p50 %s  p99 %s\x1b[K",
				now.Sub(r.t0).Seconds(), phase, r.rec.liveSent.Load(), float64(done)/now.Sub(last).Seconds(),
				errs, r.rec.inFlight.Load(), fmtMs(p50), fmtMs(p99))
			last = now
		}
	}
}

func fmtMs(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// describeErrors is ": kind n, kind n" of the transport errors, most
// frequent first, or "".
func describeErrors(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		return m[kinds[i]] > m[kinds[j]] || m[kinds[i]] == m[kinds[j]] && kinds[i] < kinds[j]
	})
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return ": " + strings.Join(parts, ", ")
}
