// Package spool is the durable on-disk queue between the request path and
// the usage sinks. Append hands a record to a background writer without
// waiting for disk I/O; each sink reads the records in order through its
// own Reader and acknowledges what it delivered. Records are opaque bytes
// (usage records as JSON) and are money: what the spool cannot keep it
// refuses (ErrFull) or counts and logs, never drops silently.
//
// # On disk
//
// Options.Dir holds the segment files and one cursor file per reader:
//
//	00000000000000000000.seg  records 0..41 (sealed)
//	00000000000000000042.seg  records 42.. (active: the writer appends here)
//	cursors/stdout            "v1 next=57 segment=42 offset=15360\n"
//
// Every record gets a sequence number, global and monotonic across restarts
// (Open continues after the last record on disk and after every cursor), so
// a reader's lag is a subtraction. A segment is named by its first record's
// sequence number, zero-padded so names sort, and is only appended to. Each
// record is one frame (integers little-endian):
//
//	offset 0   uint32  payload length, at most MaxRecordBytes
//	offset 4   uint32  CRC-32C (Castagnoli) of the payload
//	offset 8   uint64  sequence number
//	offset 16  uint32  CRC-32C of bytes 0..15
//	offset 20          payload
//
// The header has its own checksum so that a damaged header, whose length
// cannot be trusted, is told apart from a damaged payload, which is skipped
// by its length. After a damaged header a reader resynchronizes on the next
// intact frame; the sequence numbers then say exactly how many records were
// lost. Lost records are counted (Stats.Corrupt) and logged, and the reader
// goes on. A future format would use a different file extension.
//
// # Writing
//
// Append copies the record, already framed, into an in-memory queue (at
// most 32 MiB) and wakes the writer goroutine, which takes the whole queue
// at once and writes it with one write per segment touched. Written records
// are visible to readers at once; they are fsynced when SyncEvery records
// are unsynced, SyncInterval after the oldest unsynced one was written, when
// Sync asks, when a segment is sealed and on Close. A segment is sealed
// (fsynced, closed) once the next frame would take it past SegmentBytes, and
// the directory is fsynced whenever a file is created or removed.
//
// A write that fails (disk full, I/O error) is cut off the file (or, if
// that fails too, the segment is sealed there), logged, and retried with
// backoff; the records stay queued, the queue fills up and Append refuses
// with ErrFull. Only when Close gives up (its ctx ends) are unwritable
// records abandoned, and then their number is logged. A failed fsync is not
// retried (Linux may report a retry as a success after dropping the data):
// it is logged, Sync callers get it, and the segment is sealed.
//
// # Recovery
//
// Open lists the segments and scans only the last one, the only one a crash
// can leave half-written: it is cut after its last intact frame. Damage that
// intact frames follow is left for readers to skip. Sealed segments are
// trusted to their size and checked as they are read. If a cursor is ahead
// of the records on disk (they were delivered, then lost unsynced in a
// crash), numbering continues after the cursor in a new segment, so a new
// record never reuses a number a sink has acknowledged.
//
// # Reading and retention
//
// A Reader reads segment files through its own file handle, never past what
// the writer has written (the active segment's written size is published
// under a lock together with the sequence number after it). It keeps a read
// position, which Next advances, apart from its acknowledged cursor, which
// Ack makes durable (temporary file, fsync, rename, fsync of the
// directory). After a restart it resumes at the cursor, so delivery is at
// least once. A reader without a cursor starts at the oldest record the
// spool holds; cursors of names not in Options.Readers are ignored. A sealed
// segment is deleted once every reader has acknowledged past it; with no
// readers nothing is deleted.
//
// MaxBytes bounds the segments on disk plus the queued records; Append
// returns ErrFull past it until readers acknowledge and segments go.
package spool

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Errors Append and the readers return. Test with errors.Is.
var (
	// ErrFull: the queue or MaxBytes is exhausted; the record was not taken.
	ErrFull = errors.New("usage spool is full")
	// ErrClosed: the spool is closed.
	ErrClosed = errors.New("usage spool is closed")
	// ErrTooLarge: the record is larger than MaxRecordBytes or MaxBytes and
	// can never be taken.
	ErrTooLarge = errors.New("usage record is too large for the spool")
)

// maxQueueBytes bounds the records waiting in memory for the writer (and
// again what the writer holds while it writes): about three seconds of a
// stalled disk at 10 MB/s of records.
const maxQueueBytes = 32 << 20

// Options configure a Spool. Zero values take the defaults documented on
// each field, which match the gateway's usage.spool configuration.
type Options struct {
	// Dir holds the segment files and the cursors directory; created if
	// missing. Required.
	Dir string
	// SegmentBytes is the size past which a segment is sealed and a new one
	// started. Default 16 MiB.
	SegmentBytes int64
	// MaxBytes bounds the segments on disk plus the records queued in
	// memory. Default 1 GiB.
	MaxBytes int64
	// SyncInterval is the longest a written record stays unsynced. Default 1s.
	SyncInterval time.Duration
	// SyncEvery fsyncs once this many records are unsynced. Default 1000.
	SyncEvery int
	// Readers names the readers (one per sink): letters, digits, '-', '_'
	// and '.'. Only their cursors keep segments from being deleted.
	Readers []string
	// Log receives recovery, damage and write-failure reports. Default: none.
	Log *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("dir: required"))
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = 16 << 20
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 30
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = time.Second
	}
	if o.SyncEvery <= 0 {
		o.SyncEvery = 1000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	seen := map[string]bool{}
	for i, name := range o.Readers {
		switch {
		case !validName(name):
			errs = append(errs, fmt.Errorf("readers[%d]: %q: use letters, digits, '-', '_' and '.'", i, name))
		case seen[name]:
			errs = append(errs, fmt.Errorf("readers[%d]: %q is listed twice", i, name))
		}
		seen[name] = true
	}
	return o, errors.Join(errs...)
}

// validName keeps reader names safe as file names.
func validName(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// Why the last refused Append was refused (Spool.full).
const (
	fullQueue int32 = 1 + iota
	fullBytes
)

// Spool is the on-disk queue. Append, Sync, Stats and Reader are safe for
// concurrent use; see Reader for its methods' rules.
type Spool struct {
	opt    Options
	log    *slog.Logger
	curDir string
	qcap   int

	// qmu is Append's lock: held to reserve space, take a sequence number
	// and copy the frame, nothing more.
	qmu     sync.Mutex
	queue   []byte // frames the writer has not taken yet
	used    int64  // segment bytes plus queued frame bytes, at most MaxBytes
	qclosed bool
	next    atomic.Uint64 // next sequence number to hand out; stored under qmu

	full     atomic.Int32 // fullQueue or fullBytes while refusing, else 0
	syncWant atomic.Bool  // Sync is waiting: fsync now

	kick        chan struct{} // capacity 1: wakes the writer
	stop        chan struct{} // closed by Close: write everything, fsync, exit
	abandon     chan struct{} // closed when Close's ctx ends first
	abandonOnce sync.Once
	writerDone  chan struct{}
	done        chan struct{} // closed when closed: wakes readers and Sync

	w writer // the writer goroutine's own state

	mu          sync.Mutex // guards what follows
	segs        []segment  // in order; the last is the active one
	flushed     uint64     // sequence number after the last written record
	synced      uint64     // sequence number after the last fsynced record
	wrote       chan struct{}
	syncCh      chan struct{}
	werr        error // the writer's last failure, nil once it recovers
	closed      bool
	corrupt     uint64
	corruptMark uint64             // records below it were counted already
	readers     map[string]*Reader // fixed at Open

	openNext uint64
}

// Append spools a copy of rec. It never waits for disk I/O: the record is
// queued for the writer goroutine and Append returns. ErrFull means the
// queue or MaxBytes is exhausted (try again later or count the record as
// unspooled), ErrTooLarge that it never fits, ErrClosed that Close was
// called. Safe for concurrent use.
func (s *Spool) Append(rec []byte) error {
	size := hdrLen + len(rec)
	if len(rec) > MaxRecordBytes || int64(size) > s.opt.MaxBytes {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(rec))
	}
	sum := crc32.Checksum(rec, castagnoli) // outside the lock: it is most of the work
	s.qmu.Lock()
	if s.qclosed {
		s.qmu.Unlock()
		return ErrClosed
	}
	if len(s.queue)+size > s.qcap {
		s.qmu.Unlock()
		s.full.Store(fullQueue)
		return ErrFull
	}
	if s.used+int64(size) > s.opt.MaxBytes {
		s.qmu.Unlock()
		s.full.Store(fullBytes)
		return ErrFull
	}
	seq := s.next.Load()
	s.next.Store(seq + 1)
	s.used += int64(size)
	wake := len(s.queue) == 0
	s.queue = appendFrame(s.queue, seq, sum, rec)
	s.qmu.Unlock()
	if s.full.Load() != 0 {
		s.full.Store(0)
	}
	// Whoever made the queue non-empty wakes the writer; it takes the whole
	// queue, so later Appends need not (and do not contend on the channel).
	if wake {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Sync waits until every record appended before the call is written and
// fsynced, ctx is done, the spool is closed (ErrClosed) or the writer fails
// (its error; it keeps retrying).
func (s *Spool) Sync(ctx context.Context) error {
	target := s.next.Load()
	for {
		s.mu.Lock()
		synced, werr, ch, closed := s.synced, s.werr, s.syncCh, s.closed
		s.mu.Unlock()
		switch {
		case werr != nil:
			return fmt.Errorf("usage spool sync: %w", werr)
		case synced >= target:
			return nil
		case closed:
			return ErrClosed
		}
		s.syncWant.Store(true)
		select {
		case s.kick <- struct{}{}:
		default:
		}
		select {
		case <-ch:
		case <-s.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Stats describe the spool. The counters (Appended, Written, Synced) count
// since Open.
type Stats struct {
	// Bytes is the size of the segment files.
	Bytes int64 `json:"bytes"`
	// Segments is the number of segment files.
	Segments int `json:"segments"`
	// Pending is the number of records queued in memory, not yet written.
	Pending int64 `json:"pending"`
	// Appended, Written and Synced count records taken by Append, written
	// to segment files (visible to readers), and fsynced.
	Appended uint64 `json:"appended"`
	Written  uint64 `json:"written"`
	Synced   uint64 `json:"synced"`
	// Full is true from an Append refused with ErrFull until an Append
	// succeeds or space is freed (the writer drained the queue, or segments
	// were deleted).
	Full bool `json:"full"`
	// Corrupt counts records found damaged and skipped by readers.
	Corrupt uint64 `json:"corrupt"`
}

// Full reports what Stats().Full does, without a lock: it is read on
// every request.
func (s *Spool) Full() bool { return s.full.Load() != 0 }

// Stats reports the spool's state. Safe for concurrent use.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.next.Load() // after s.mu: never behind s.flushed
	st := Stats{
		Segments: len(s.segs),
		Pending:  int64(next - s.flushed),
		Appended: next - s.openNext,
		Written:  s.flushed - s.openNext,
		Synced:   s.synced - s.openNext,
		Full:     s.full.Load() != 0,
		Corrupt:  s.corrupt,
	}
	for _, g := range s.segs {
		st.Bytes += g.size
	}
	return st
}

// Reader returns the reader named name, which must be one of
// Options.Readers (it panics otherwise: that is a wiring bug). Every call
// with a name returns the same Reader.
func (s *Spool) Reader(name string) *Reader {
	r, ok := s.readers[name]
	if !ok {
		panic(fmt.Sprintf("usage spool: reader %q is not in Options.Readers", name))
	}
	return r
}

// Close stops taking records, writes and fsyncs what is queued, closes the
// files and wakes blocked readers and Sync calls (they get ErrClosed). If
// ctx ends first it returns ctx's error; the writer goes on writing in the
// background, and gives up (counting and logging the records) only if the
// disk is failing. Readers may still Ack after Close.
func (s *Spool) Close(ctx context.Context) error {
	s.qmu.Lock()
	first := !s.qclosed
	s.qclosed = true
	s.qmu.Unlock()
	if first {
		close(s.stop)
	}
	var err error
	select {
	case <-s.writerDone:
	case <-ctx.Done():
		s.abandonOnce.Do(func() { close(s.abandon) })
		err = fmt.Errorf("usage spool close: %w", ctx.Err())
	}
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	if err == nil && s.werr != nil {
		err = fmt.Errorf("usage spool close: %w", s.werr)
	}
	s.mu.Unlock()
	for _, r := range s.readers {
		r.mu.Lock()
		r.dec.close()
		r.mu.Unlock()
	}
	return err
}
