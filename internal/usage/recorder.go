package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage/spool"
)

// Recorder takes records from the request path into the spool and runs one
// delivery loop per sink. Record never waits for disk or sinks: the spool's
// background writer does the I/O. Safe for concurrent use.
type Recorder struct {
	cfg   config.Usage
	log   *slog.Logger
	spool *spool.Spool
	sinks []*delivery

	unspooled atomic.Uint64 // records that could not be spooled
	lastWarn  atomic.Int64  // unix nanos of the last "could not spool" log
	nearFull  atomic.Bool

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	draining chan struct{} // closed when Close begins: no more lingering
	drain    sync.Once
}

// linger is how long a sink's loop waits after a batch smaller than its
// batch size before reading the next: the first record after a quiet spell
// is delivered at once, and under load records are delivered in batches
// (one transaction, one fsync, one cursor save each) instead of one or two
// at a time.
const linger = 100 * time.Millisecond

// delivery is one sink's loop state.
type delivery struct {
	sink      Sink
	reader    *spool.Reader
	batchSize int
	timeout   time.Duration

	delivered atomic.Uint64
	errors    atomic.Uint64
	lastErr   atomic.Pointer[string]
}

// NewRecorder opens the spool in cfg.Spool.Dir and starts delivering to
// sinks (which it owns from now on: Close closes them).
func NewRecorder(cfg config.Usage, sinks []Sink, log *slog.Logger) (*Recorder, error) {
	names := make([]string, len(sinks))
	for i, s := range sinks {
		names[i] = s.Name()
	}
	sp, err := spool.Open(spool.Options{
		Dir:          cfg.Spool.Dir,
		SegmentBytes: cfg.Spool.SegmentBytes,
		MaxBytes:     cfg.Spool.MaxBytes,
		SyncInterval: cfg.Spool.SyncInterval,
		SyncEvery:    cfg.Spool.SyncEvery,
		Readers:      names,
		Log:          log,
	})
	if err != nil {
		return nil, fmt.Errorf("usage spool %s: %w", cfg.Spool.Dir, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Recorder{cfg: cfg, log: log, spool: sp, cancel: cancel, draining: make(chan struct{})}
	for i, s := range sinks {
		d := &delivery{sink: s, reader: sp.Reader(s.Name()), batchSize: 500, timeout: 10 * time.Second}
		if i < len(cfg.Sinks) {
			d.batchSize, d.timeout = cfg.Sinks[i].BatchSize, cfg.Sinks[i].Timeout
		}
		r.sinks = append(r.sinks, d)
		r.wg.Add(1)
		go r.deliver(ctx, d)
	}
	if len(sinks) == 0 {
		log.Warn("no usage sinks configured: records stay in the spool until one is (usage.sinks)",
			slog.String("spool", cfg.Spool.Dir))
	}
	r.wg.Add(1)
	go r.watch(ctx)
	return r, nil
}

// Record spools rec. When the spool is full the record is counted and
// logged (at most once a second), never dropped silently; Full tells the
// gateway to refuse new requests when so configured.
func (r *Recorder) Record(rec *Record) {
	rec.Schema = SchemaVersion
	data, err := json.Marshal(rec)
	if err == nil {
		err = r.spool.Append(data)
	}
	if err == nil {
		return
	}
	n := r.unspooled.Add(1)
	now := time.Now().UnixNano()
	if last := r.lastWarn.Load(); now-last > int64(time.Second) && r.lastWarn.CompareAndSwap(last, now) {
		r.log.Error("usage record could not be spooled", slog.String("request_id", rec.RequestID),
			slog.Uint64("unspooled_total", n), slog.Any("error", err))
	}
}

// Full reports that the spool cannot take more records and the config says
// to refuse requests until it can.
func (r *Recorder) Full() bool {
	return r.cfg.Spool.WhenFull == "refuse" && r.spool.Full()
}

// Unspooled is the number of records that could not be spooled.
func (r *Recorder) Unspooled() uint64 { return r.unspooled.Load() }

// SinkStatus is one sink's delivery state.
type SinkStatus struct {
	Name      string `json:"name"`
	Lag       int64  `json:"lag"`
	Delivered uint64 `json:"delivered"`
	Errors    uint64 `json:"errors"`
	LastError string `json:"last_error,omitempty"`
}

// Status is the spool's and every sink's state.
type Status struct {
	Spool     spool.Stats  `json:"spool"`
	Unspooled uint64       `json:"unspooled"`
	Sinks     []SinkStatus `json:"sinks"`
}

// Status reports the spool and sinks.
func (r *Recorder) Status() Status {
	st := Status{Spool: r.spool.Stats(), Unspooled: r.unspooled.Load()}
	for _, d := range r.sinks {
		s := SinkStatus{Name: d.sink.Name(), Lag: d.reader.Lag(), Delivered: d.delivered.Load(), Errors: d.errors.Load()}
		if e := d.lastErr.Load(); e != nil {
			s.LastError = *e
		}
		st.Sinks = append(st.Sinks, s)
	}
	return st
}

// deliver moves records from the spool to one sink: batches in order, each
// retried with backoff until the sink takes it, then acknowledged. A sink
// that is down falls behind and catches up; nothing is skipped.
func (r *Recorder) deliver(ctx context.Context, d *delivery) {
	defer r.wg.Done()
	name := d.sink.Name()
	short := false
	for {
		if short {
			select {
			case <-ctx.Done():
				return
			case <-r.draining:
			case <-time.After(linger):
			}
		}
		b, err := d.reader.Next(ctx, d.batchSize)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, spool.ErrClosed) {
				return
			}
			// A segment could not be read (disk trouble): try again later
			// rather than stop delivering to this sink until a restart.
			r.log.Error("usage spool read failed; retrying", slog.String("sink", name), slog.Any("error", err))
			d.reader.Rewind()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		recs := make([]Record, 0, len(b.Records))
		for _, raw := range b.Records {
			var rec Record
			if err := json.Unmarshal(raw, &rec); err != nil {
				// The spool's checksums make this a bug, not bit rot; keep
				// the evidence in the log rather than wedging the sink.
				r.log.Error("usage record in the spool is not valid JSON; skipped",
					slog.String("sink", name), slog.Any("error", err))
				continue
			}
			recs = append(recs, rec)
		}
		backoff := 100 * time.Millisecond
		for len(recs) > 0 {
			wctx, cancel := context.WithTimeout(ctx, d.timeout)
			err := d.sink.Write(wctx, recs)
			cancel()
			if err == nil {
				d.delivered.Add(uint64(len(recs)))
				break
			}
			if ctx.Err() != nil {
				return
			}
			d.errors.Add(1)
			msg := err.Error()
			d.lastErr.Store(&msg)
			r.log.Warn("usage sink write failed; retrying", slog.String("sink", name),
				slog.Int("records", len(recs)), slog.Duration("backoff", backoff), slog.Any("error", err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
		short = len(b.Records) < d.batchSize
		if err := d.reader.Ack(b); err != nil {
			r.log.Error("usage spool cursor not saved; records may be delivered again after a restart",
				slog.String("sink", name), slog.Any("error", err))
		}
	}
}

// watch logs when the spool nears its bound and when it recovers.
func (r *Recorder) watch(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := r.spool.Stats()
		near := float64(st.Bytes) >= r.cfg.Spool.WarnRatio*float64(r.cfg.Spool.MaxBytes)
		if near != r.nearFull.Swap(near) {
			if near {
				r.log.Warn("usage spool is nearly full: sinks are behind", slog.Int64("bytes", st.Bytes),
					slog.Int64("max_bytes", r.cfg.Spool.MaxBytes), slog.String("when_full", r.cfg.Spool.WhenFull))
			} else {
				r.log.Info("usage spool is below its warning level again", slog.Int64("bytes", st.Bytes))
			}
		}
	}
}

// NearFull reports that the spool passed its warning ratio.
func (r *Recorder) NearFull() bool { return r.nearFull.Load() }

// Close flushes the spool to disk, gives the sinks until ctx is done (or
// the configured drain time, whichever is sooner) to deliver what it holds,
// then stops them and closes the spool. What was not delivered stays
// spooled for the next start. It returns an error naming the sinks that did
// not catch up.
func (r *Recorder) Close(ctx context.Context) error {
	r.drain.Do(func() { close(r.draining) })
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DrainTimeout)
	defer cancel()
	errs := []error{}
	if err := r.spool.Sync(ctx); err != nil {
		errs = append(errs, fmt.Errorf("usage spool sync: %w", err))
	}
	for !r.drained() && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.cancel()
	r.wg.Wait()
	for _, d := range r.sinks {
		if lag := d.reader.Lag(); lag > 0 {
			errs = append(errs, fmt.Errorf("usage sink %s: %d records not delivered (kept in the spool)", d.sink.Name(), lag))
		}
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := d.sink.Close(cctx); err != nil {
			errs = append(errs, fmt.Errorf("usage sink %s close: %w", d.sink.Name(), err))
		}
		ccancel()
	}
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer ccancel()
	if err := r.spool.Close(cctx); err != nil {
		errs = append(errs, fmt.Errorf("usage spool close: %w", err))
	}
	if n := r.unspooled.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%d usage records could not be spooled", n))
	}
	return errors.Join(errs...)
}

func (r *Recorder) drained() bool {
	for _, d := range r.sinks {
		if d.reader.Lag() > 0 {
			return false
		}
	}
	return true
}
