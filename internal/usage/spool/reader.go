package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
)

// maxBatchBytes bounds the payload bytes of one batch (it always holds at
// least one record), so a large n cannot make Next allocate without bound.
const maxBatchBytes = 8 << 20

// tmpSuffix marks a cursor being written; '~' is not allowed in reader
// names, so it never collides with one.
const tmpSuffix = "~tmp"

// pos is a place in the spool.
type pos struct {
	seg  uint64 // base of the segment holding off
	off  int64  // where the next frame starts
	seq  uint64 // sequence number expected at off
	next uint64 // first sequence number not yet delivered; frames below it are skipped
}

// Reader is one sink's view of the spool. Next, Ack and Rewind are meant to
// be called from one goroutine, the sink's (they are serialized if not, and
// Next does not hold the reader while it waits); Lag is safe from any
// goroutine.
type Reader struct {
	s    *Spool
	name string
	path string // cursor file

	mu   sync.Mutex // serializes reads, Ack and Rewind; guards what follows
	read pos
	dec  decoder
	data []byte // payloads of the batch being read, copied out at the end
	ends []int

	// acked is written with both mu and s.mu held, so either suffices to
	// read it (retention reads it under s.mu).
	acked     pos
	ackedNext atomic.Uint64 // acked.next, for Lag
}

// Batch is a run of records in spool order, from Next, for Ack.
type Batch struct {
	// Records are copies the caller may keep.
	Records [][]byte

	r   *Reader
	end pos // where the batch ends: the read position after it
}

// Next blocks until at least one record past the reader's read position has
// been written (fsynced or not), then returns up to n of them in order
// (fewer when they add up to more than 8 MiB; n below 1 means 1). Calling
// Next again without Ack continues after the batch. It returns ctx's error
// when ctx ends first and ErrClosed once the spool is closed. Damaged
// records are skipped, counted in Stats.Corrupt and logged.
func (r *Reader) Next(ctx context.Context, n int) (Batch, error) {
	s := r.s
	n = max(n, 1)
	for {
		s.mu.Lock()
		closed, wrote := s.closed, s.wrote
		s.mu.Unlock()
		r.mu.Lock()
		if closed {
			r.dec.close()
			r.mu.Unlock()
			return Batch{}, ErrClosed
		}
		b, err := r.fill(n)
		r.mu.Unlock()
		if err != nil || len(b.Records) > 0 {
			return b, err
		}
		select {
		case <-wrote:
		case <-s.done:
		case <-ctx.Done():
			return Batch{}, ctx.Err()
		}
	}
}

// segView is what a reader may read of one segment.
type segView struct {
	base   uint64
	limit  int64  // bytes: all of a sealed segment, what is written of the active one
	end    uint64 // sequence number after the segment: the next one's base, or what is written
	sealed bool
}

// locate returns the segment p is in. When that segment is gone (deleted
// once every reader acked past it) or unknown, p moves to the start of the
// segment holding p.next.
func (s *Spool) locate(p *pos) segView {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, found := slices.BinarySearchFunc(s.segs, p.seg, func(g segment, base uint64) int {
		return cmpUint(g.base, base)
	})
	if !found {
		i = s.covering(p.next)
		base := s.segs[i].base
		*p = pos{seg: base, seq: base, next: max(p.next, base)}
	}
	v := segView{base: s.segs[i].base, limit: s.segs[i].size, end: s.flushed}
	if i+1 < len(s.segs) {
		v.sealed, v.end = true, s.segs[i+1].base
	}
	return v
}

// covering returns the index of the segment that holds seq (the last one
// whose base is not above it), or 0. s.mu held.
func (s *Spool) covering(seq uint64) int {
	i, _ := slices.BinarySearchFunc(s.segs, seq+1, func(g segment, t uint64) int { return cmpUint(g.base, t) })
	return max(i-1, 0)
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// fill reads up to n records from the read position. r.mu held.
func (r *Reader) fill(n int) (Batch, error) {
	s := r.s
	caughtUp := r.read.next == r.acked.next
	skipped := false
	data, ends := r.data[:0], r.ends[:0]
	defer func() {
		if cap(data) > 2*maxBatchBytes {
			data = nil // grown by records larger than maxBatchBytes
		}
		r.data, r.ends = data[:0], ends[:0]
	}()
	for len(ends) < n && len(data) < maxBatchBytes {
		v := s.locate(&r.read)
		p := &r.read
		if p.off >= v.limit {
			if !v.sealed {
				break
			}
			skipped = r.lost(v, p.seq, v.end, "segment ends early") || skipped
			*p = pos{seg: v.end, seq: v.end, next: max(p.next, v.end)}
			continue
		}
		err := r.dec.use(s.opt.Dir, v.base)
		if errors.Is(err, fs.ErrNotExist) {
			// Removed behind the spool's back: count what it held.
			skipped = r.lost(v, p.seq, v.end, "segment file is missing") || skipped
			p.off, p.seq, p.next = v.limit, v.end, max(p.next, v.end)
			continue
		}
		var f frame
		st := frameBad
		if err == nil {
			f, st, err = r.dec.frameAt(p.off, p.seq, v.end, v.limit)
		}
		if err != nil {
			if len(ends) > 0 {
				break // deliver what was read; the error comes back next time
			}
			return Batch{}, fmt.Errorf("usage spool: read %s: %w", segName(v.base), err)
		}
		switch st {
		case frameOK:
			if f.seq > p.seq {
				skipped = r.lost(v, p.seq, f.seq, "records missing") || skipped
			}
			if f.seq >= p.next {
				data = append(data, f.payload...)
				ends = append(ends, len(data))
				p.next = f.seq + 1
			}
			p.off, p.seq = p.off+f.size, f.seq+1
		case frameBadPayload:
			skipped = r.lost(v, p.seq, f.seq+1, "payload checksum mismatch") || skipped
			p.off, p.seq, p.next = p.off+f.size, f.seq+1, max(p.next, f.seq+1)
		default:
			at, g, ok, err := r.dec.resync(p.off+1, p.seq, v.end, v.limit)
			if err != nil {
				return Batch{}, fmt.Errorf("usage spool: read %s: %w", segName(v.base), err)
			}
			to := v.end
			if ok {
				to = g.seq
			}
			s.log.Warn("usage spool: damaged bytes skipped", slog.String("reader", r.name),
				slog.String("segment", segName(v.base)), slog.Int64("offset", p.off), slog.Int64("bytes", at-p.off))
			skipped = r.lost(v, p.seq, to, "frame header damaged") || skipped
			p.off, p.seq, p.next = at, to, max(p.next, to)
		}
	}
	if len(ends) == 0 {
		if skipped && caughtUp {
			r.advance()
		}
		return Batch{}, nil
	}
	// One allocation of the exact size for all payloads of the batch.
	out := make([]byte, len(data))
	copy(out, data)
	recs := make([][]byte, len(ends))
	start := 0
	for i, e := range ends {
		recs[i] = out[start:e:e]
		start = e
	}
	return Batch{Records: recs, r: r, end: r.read}, nil
}

// lost counts records [from, to) that cannot be read, once per spool
// however many readers find them, and reports whether there were any.
func (r *Reader) lost(v segView, from, to uint64, why string) bool {
	from = max(from, r.read.next)
	if to <= from {
		return false
	}
	s := r.s
	s.mu.Lock()
	if first := max(from, s.corruptMark); to > first {
		s.corrupt += to - first
		s.corruptMark = to
	}
	s.mu.Unlock()
	s.log.Error("usage spool: damaged records skipped", slog.String("reader", r.name),
		slog.String("segment", segName(v.base)), slog.Int64("offset", r.read.off), slog.String("why", why),
		slog.Uint64("first_sequence", from), slog.Uint64("records", to-from))
	return true
}

// advance moves the cursor past damage found while nothing was outstanding,
// so that Lag reaches zero and a restart does not meet the damage again.
// Nothing was delivered, so a failure to save only costs a re-skip.
func (r *Reader) advance() {
	if err := r.save(r.read); err != nil {
		r.s.log.Warn("usage spool: cursor not saved", slog.String("reader", r.name), slog.Any("error", err))
	}
	r.s.mu.Lock()
	r.acked = r.read
	r.s.mu.Unlock()
	r.ackedNext.Store(r.read.next)
}

// Ack durably records that everything up to the end of b was delivered:
// after a restart the reader resumes after it. Segments every reader has
// acknowledged past are deleted. Acking a batch older than the last one
// acked does nothing. Allowed after Close.
func (r *Reader) Ack(b Batch) error {
	if b.r == nil {
		return nil
	}
	if b.r != r {
		return fmt.Errorf("usage spool: batch of reader %q acked on reader %q", b.r.name, r.name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if b.end.next <= r.acked.next {
		return nil
	}
	if err := r.save(b.end); err != nil {
		return err
	}
	r.s.mu.Lock()
	r.acked = b.end
	r.s.mu.Unlock()
	r.ackedNext.Store(b.end.next)
	if r.read.next < b.end.next {
		r.read = b.end // acked after a Rewind
	}
	r.s.collect()
	return nil
}

// Rewind makes the next Next start again from the last acknowledged
// position: a failed delivery is retried.
func (r *Reader) Rewind() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.read = r.acked
}

// Lag is the number of records appended but not yet acknowledged by this
// reader (damaged records count until the reader passes them).
func (r *Reader) Lag() int64 {
	n, a := r.s.next.Load(), r.ackedNext.Load()
	if a >= n {
		return 0
	}
	return int64(n - a)
}

// save writes the cursor for p: temporary file, fsync, rename, fsync of the
// directory, so that a crash leaves the old cursor or the new one.
func (r *Reader) save(p pos) error {
	tmp := r.path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("usage spool: save cursor: %w", err)
	}
	_, err = fmt.Fprintf(f, "v1 next=%d segment=%d offset=%d\n", p.next, p.seg, p.off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err == nil {
		err = syncDir(r.s.curDir)
	}
	if err != nil {
		return fmt.Errorf("usage spool: save cursor: %w", err)
	}
	return nil
}

// cursor is a saved acknowledged position.
type cursor struct {
	next, seg uint64
	off       int64
}

func parseCursor(b []byte) (cursor, error) {
	var c cursor
	if _, err := fmt.Sscanf(string(b), "v1 next=%d segment=%d offset=%d\n", &c.next, &c.seg, &c.off); err != nil {
		return cursor{}, err
	}
	if c.next >= maxSeq || c.seg >= maxSeq || c.off < 0 {
		return cursor{}, errors.New("out of range")
	}
	return c, nil
}

// collect deletes the sealed segments every reader has acknowledged past.
func (s *Spool) collect() {
	s.mu.Lock()
	if len(s.readers) == 0 {
		s.mu.Unlock()
		return
	}
	low := uint64(math.MaxUint64)
	for _, r := range s.readers {
		low = min(low, r.acked.next)
	}
	var dead []segment
	for len(s.segs) > 1 && s.segs[1].base <= low {
		dead = append(dead, s.segs[0])
		s.segs = slices.Delete(s.segs, 0, 1)
	}
	s.mu.Unlock()
	var freed int64
	for _, g := range dead {
		if err := os.Remove(filepath.Join(s.opt.Dir, segName(g.base))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// Open finds it again and deletes it then.
			s.log.Error("usage spool: cannot delete a delivered segment", slog.String("segment", segName(g.base)), slog.Any("error", err))
			continue
		}
		freed += g.size
	}
	if len(dead) == 0 {
		return
	}
	if err := syncDir(s.opt.Dir); err != nil {
		s.log.Warn("usage spool: fsync of the directory failed", slog.Any("error", err))
	}
	s.qmu.Lock()
	s.used -= freed
	s.qmu.Unlock()
	if freed > 0 && s.full.Load() != 0 {
		s.full.Store(0)
	}
}
