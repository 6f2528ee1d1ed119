package spool

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// writer is the state only the writer goroutine touches (and Open before
// it starts).
type writer struct {
	f        *os.File
	seg      uint64    // the active segment's base
	size     int64     // bytes written to it
	next     uint64    // sequence number after the last written record
	unsynced int       // records written since the last fsync
	since    time.Time // when the oldest unsynced record was written
	hand     []byte    // frames taken from the queue
	off      int       // hand[:off] is written
	broken   bool      // the active segment may hold a partial frame: start a new one
}

// A queue buffer past shrinkAbove is dropped once the queue is short again
// (a burst is over), rather than kept; under load both buffers are reused.
const shrinkAbove = 8 << 20

// run is the writer goroutine: take the queue, write it, fsync when due,
// until Close and everything is written and synced.
func (s *Spool) run() {
	defer close(s.writerDone)
	w := &s.w
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed, stopping := false, false
	var backoff time.Duration
	for {
		if w.off == len(w.hand) {
			s.take()
		}
		err := s.write()
		if err == nil {
			err = s.maybeSync(stopping)
		}
		if err != nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			s.fail(err, backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-s.abandon:
				s.giveUp()
				return
			}
		}
		if backoff != 0 {
			backoff = 0
			s.log.Info("usage spool: writing again after failures")
			s.mu.Lock()
			s.werr = nil
			s.mu.Unlock()
		}
		if stopping && w.off == len(w.hand) && w.unsynced == 0 && s.queued() == 0 {
			if err := w.f.Close(); err != nil {
				s.log.Warn("usage spool: closing the active segment", slog.Any("error", err))
			}
			return
		}
		if w.unsynced > 0 && !armed {
			timer.Reset(max(0, s.opt.SyncInterval-time.Since(w.since)))
			armed = true
		}
		select {
		case <-s.kick:
		case <-timer.C:
			armed = false
		case <-s.stop:
			stopping = true
		}
	}
}

// take swaps the queue for the writer's emptied buffer.
func (s *Spool) take() {
	w := &s.w
	spare := w.hand[:0]
	s.qmu.Lock()
	if cap(spare) > shrinkAbove && len(s.queue) < shrinkAbove/8 {
		spare = nil
	}
	w.hand, s.queue = s.queue, spare
	s.qmu.Unlock()
	w.off = 0
	if len(w.hand) > 0 && s.full.Load() == fullQueue {
		s.full.Store(0)
	}
}

func (s *Spool) queued() int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.queue)
}

// write writes the frames in hand, sealing segments as they fill. Each
// write is published to readers as soon as it returns.
func (s *Spool) write() error {
	w := &s.w
	for w.off < len(w.hand) {
		if w.broken {
			if err := s.roll(frameSeq(w.hand[w.off:])); err != nil {
				return err
			}
		}
		end, n, lastSeq := w.off, 0, uint64(0)
		for end < len(w.hand) {
			fl := frameSize(w.hand[end:])
			if w.size+int64(end-w.off) > 0 && w.size+int64(end-w.off+fl) > s.opt.SegmentBytes {
				break
			}
			lastSeq = frameSeq(w.hand[end:])
			end += fl
			n++
		}
		if n == 0 { // the active segment is full
			if err := s.roll(frameSeq(w.hand[w.off:])); err != nil {
				return err
			}
			continue
		}
		if _, err := w.f.Write(w.hand[w.off:end]); err != nil {
			// Cut off whatever part of the write landed; readers never saw
			// it (they stop at the published size). If that fails too, the
			// next attempt starts a new segment instead.
			if terr := w.f.Truncate(w.size); terr != nil {
				w.broken = true
			}
			return fmt.Errorf("write %s: %w", segName(w.seg), err)
		}
		if w.unsynced == 0 {
			w.since = time.Now()
		}
		w.unsynced += n
		w.size += int64(end - w.off)
		w.next = lastSeq + 1
		w.off = end
		s.mu.Lock()
		s.segs[len(s.segs)-1].size = w.size
		s.flushed = w.next
		close(s.wrote)
		s.wrote = make(chan struct{})
		s.mu.Unlock()
	}
	w.hand, w.off = w.hand[:0], 0
	return nil
}

// maybeSync fsyncs the active segment when it is due.
func (s *Spool) maybeSync(stopping bool) error {
	w := &s.w
	if w.unsynced == 0 {
		return nil
	}
	if stopping || w.unsynced >= s.opt.SyncEvery || s.syncWant.Load() || time.Since(w.since) >= s.opt.SyncInterval {
		return s.sync()
	}
	return nil
}

// sync fsyncs the active segment and tells Sync callers. A failed fsync is
// not retried: Linux may have dropped the dirty pages and report the next
// fsync of the file as a success. The failure goes to Sync callers and the
// log, and the segment is sealed: writing goes on in a new one.
func (s *Spool) sync() error {
	w := &s.w
	if w.unsynced == 0 {
		return nil
	}
	s.syncWant.Store(false) // before: a Sync arriving during the fsync asks again
	err := w.f.Sync()
	if err != nil {
		w.broken = true
		err = fmt.Errorf("fsync %s: records before %d may not be durable: %w", segName(w.seg), w.next, err)
	}
	w.unsynced = 0
	s.mu.Lock()
	s.synced = w.next
	if err != nil {
		s.werr = err
	}
	close(s.syncCh)
	s.syncCh = make(chan struct{})
	s.mu.Unlock()
	return err
}

// roll seals the active segment (fsync, close) and starts one for records
// from base on. A broken segment that never got a record is replaced in
// place.
func (s *Spool) roll(base uint64) error {
	w := &s.w
	if w.f != nil {
		if w.broken {
			// Sealed whatever fsync says (see sync).
			if err := s.sync(); err != nil {
				s.log.Error("usage spool: sealing a failed segment", slog.Any("error", err))
			}
		} else if err := s.sync(); err != nil {
			return err
		}
		_ = w.f.Close() // fsynced, or sealed after a failure already reported
		w.f = nil
		w.broken = true // until the new segment exists
	}
	f, err := createSegment(s.opt.Dir, base)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Join(s.opt.Dir, segName(base)), err)
	}
	replace := base == w.seg
	w.f, w.seg, w.size, w.broken = f, base, 0, false
	s.mu.Lock()
	if replace {
		s.segs[len(s.segs)-1].size = 0
	} else {
		s.segs = append(s.segs, segment{base: base})
	}
	s.mu.Unlock()
	return nil
}

// fail reports a write or fsync failure; Sync callers get the error.
func (s *Spool) fail(err error, backoff time.Duration) {
	s.log.Error("usage spool: cannot write records; keeping them queued and retrying (Append refuses once the queue is full)",
		slog.Any("error", err), slog.Duration("retry_in", backoff),
		slog.Uint64("unwritten", s.next.Load()-s.w.next))
	s.mu.Lock()
	s.werr = err
	close(s.syncCh)
	s.syncCh = make(chan struct{})
	s.mu.Unlock()
}

// giveUp ends the writer when Close's deadline passed while the disk was
// failing: what is still queued is lost, and says so.
func (s *Spool) giveUp() {
	w := &s.w
	lost := s.next.Load() - w.next
	s.log.Error("usage spool: closed with records that could not be written; they are lost",
		slog.Uint64("records", lost), slog.Uint64("first_sequence", w.next))
	s.mu.Lock()
	s.werr = fmt.Errorf("%d records could not be written and are lost: %w", lost, s.werr)
	s.mu.Unlock()
	if w.f != nil {
		_ = w.f.Close()
	}
}
