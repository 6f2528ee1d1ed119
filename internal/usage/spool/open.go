package spool

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Open opens (or creates) the spool in o.Dir, recovers it after a crash,
// loads the readers' cursors and starts the writer. Close it.
func Open(o Options) (*Spool, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("usage spool options: %w", err)
	}
	s := &Spool{
		opt:        o,
		log:        o.Log.With(slog.String("spool", o.Dir)),
		curDir:     filepath.Join(o.Dir, "cursors"),
		qcap:       int(min(maxQueueBytes, o.MaxBytes)),
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		abandon:    make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
		wrote:      make(chan struct{}),
		syncCh:     make(chan struct{}),
		readers:    map[string]*Reader{},
	}
	if err := os.MkdirAll(s.curDir, 0o700); err != nil {
		return nil, err
	}
	cursors, err := s.loadCursors()
	if err != nil {
		return nil, err
	}
	if err := s.recover(cursors); err != nil {
		if s.w.f != nil {
			_ = s.w.f.Close()
		}
		return nil, err
	}
	for _, name := range o.Readers {
		c, ok := cursors[name]
		r := &Reader{s: s, name: name, path: filepath.Join(s.curDir, name)}
		r.read = s.startPos(name, c, ok)
		r.acked = r.read
		r.ackedNext.Store(r.read.next)
		s.readers[name] = r
	}
	// A crash between an Ack and the deletion it allowed leaves segments
	// every cursor is past.
	s.collect()
	go s.run()
	return s, nil
}

// recover finds the segments, cuts a torn tail off the last one, and opens
// it (or a new one) for the writer.
func (s *Spool) recover(cursors map[string]cursor) error {
	dir := s.opt.Dir
	segs, err := listSegments(dir)
	if err != nil {
		return err
	}
	var ahead uint64 // the highest cursor, of any reader, past or present
	for _, c := range cursors {
		ahead = max(ahead, c.next)
	}
	next := ahead
	if len(segs) > 0 {
		last := &segs[len(segs)-1]
		end, tailNext, err := s.cutTail(last)
		if err != nil {
			return err
		}
		next = tailNext
		if ahead > tailNext {
			s.log.Warn("usage spool: a cursor is past the last record on disk (delivered records were lost unsynced in a crash); numbering continues after it",
				slog.Uint64("next_on_disk", tailNext), slog.Uint64("cursor", ahead))
			next = ahead
		} else {
			f, err := os.OpenFile(filepath.Join(dir, segName(last.base)), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			s.w.f, s.w.seg, s.w.size = f, last.base, end
		}
	}
	if s.w.f == nil {
		f, err := createSegment(dir, next)
		if err != nil {
			return err
		}
		s.w.f, s.w.seg, s.w.size = f, next, 0
		segs = append(segs, segment{base: next})
	}
	s.w.next = next
	s.segs = segs
	s.flushed, s.synced, s.openNext = next, next, next
	s.next.Store(next)
	for _, g := range segs {
		s.used += g.size
	}
	return nil
}

// cutTail scans the last segment and truncates it after its last intact
// frame; it returns that offset and the sequence number after the frame.
func (s *Spool) cutTail(last *segment) (int64, uint64, error) {
	path := filepath.Join(s.opt.Dir, segName(last.base))
	var d decoder
	if err := d.use(s.opt.Dir, last.base); err != nil {
		return 0, 0, err
	}
	end, next, err := scanTail(&d, *last)
	d.close()
	if err != nil {
		return 0, 0, fmt.Errorf("scan %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = f.Close() }() // fsynced below; Close has nothing to add
	if end < last.size {
		s.log.Warn("usage spool: cut a torn tail off the last segment (a crash interrupted a write; those records were never synced)",
			slog.String("segment", segName(last.base)), slog.Int64("offset", end), slog.Int64("bytes", last.size-end))
		if err := f.Truncate(end); err != nil {
			return 0, 0, err
		}
	}
	// What a crash of the process left in the page cache becomes durable
	// before anything is appended after it.
	if err := f.Sync(); err != nil {
		return 0, 0, err
	}
	last.size = end
	return end, next, nil
}

// createSegment creates the segment file for records from base on and makes
// its name durable.
func createSegment(dir string, base uint64) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, segName(base)), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}

// loadCursors reads every cursor in the cursors directory (also those of
// readers no longer configured: they keep sequence numbers monotonic) and
// removes temporary files a crash left.
func (s *Spool) loadCursors() (map[string]cursor, error) {
	ents, err := os.ReadDir(s.curDir)
	if err != nil {
		return nil, err
	}
	cursors := map[string]cursor{}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(s.curDir, name)
		if strings.HasSuffix(name, tmpSuffix) {
			_ = os.Remove(path) // left by a crash; the cursor itself is intact
			continue
		}
		if !validName(name) || !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(io.LimitReader(f, 256))
		_ = f.Close() // read-only
		if err != nil {
			return nil, err
		}
		c, err := parseCursor(b)
		if err != nil {
			s.log.Warn("usage spool: unreadable cursor ignored; the reader starts at the oldest record",
				slog.String("reader", name), slog.Any("error", err))
			continue
		}
		cursors[name] = c
	}
	return cursors, nil
}

// startPos is where a reader with cursor c (ok false: none) resumes.
func (s *Spool) startPos(name string, c cursor, ok bool) pos {
	oldest := s.segs[0].base
	if !ok {
		return pos{seg: oldest, seq: oldest, next: oldest}
	}
	if c.next < oldest {
		s.log.Warn("usage spool: cursor is older than the oldest record held (deleted while this reader was not configured); it resumes at the oldest",
			slog.String("reader", name), slog.Uint64("cursor", c.next), slog.Uint64("oldest", oldest))
		return pos{seg: oldest, seq: oldest, next: oldest}
	}
	// The saved offset is used only if it still points at the record the
	// cursor names; otherwise the segment is read from its start, skipping
	// what was delivered.
	i, found := slices.BinarySearchFunc(s.segs, c.seg, func(g segment, b uint64) int { return cmpUint(g.base, b) })
	if found && c.off <= s.segs[i].size {
		end := s.flushed
		if i+1 < len(s.segs) {
			end = s.segs[i+1].base
		}
		if c.off == s.segs[i].size && c.next == end {
			return pos{seg: c.seg, off: c.off, seq: c.next, next: c.next}
		}
		var d decoder
		if d.use(s.opt.Dir, c.seg) == nil {
			_, st, err := d.frameAt(c.off, c.next, c.next+1, s.segs[i].size)
			d.close()
			if err == nil && st == frameOK {
				return pos{seg: c.seg, off: c.off, seq: c.next, next: c.next}
			}
		}
	}
	g := s.segs[s.covering(c.next)]
	return pos{seg: g.base, seq: g.base, next: c.next}
}
