package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuf collects log output for tests that check what was logged.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// options are small-segment options for dir, logging to the test's output
// and to the returned buffer.
func options(t *testing.T, dir string, readers ...string) (Options, *syncBuf) {
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), logs), nil))
	return Options{
		Dir:          dir,
		SegmentBytes: 4 << 10,
		MaxBytes:     64 << 20,
		SyncInterval: 10 * time.Millisecond,
		SyncEvery:    100,
		Readers:      readers,
		Log:          log,
	}, logs
}

func open(t *testing.T, o Options) *Spool {
	t.Helper()
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func closeSpool(t *testing.T, s *Spool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// rec is record i: its number and some padding of varying length.
func rec(i int) []byte {
	return fmt.Appendf(nil, `{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", i%97))
}

func appendRange(t *testing.T, s *Spool, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := s.Append(rec(i)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
}

// read returns the next n records of r, acking each batch when ack is set.
func read(t *testing.T, r *Reader, n int, ack bool) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got [][]byte
	for len(got) < n {
		b, err := r.Next(ctx, n-len(got))
		if err != nil {
			t.Fatalf("next after %d of %d records: %v", len(got), n, err)
		}
		got = append(got, b.Records...)
		if ack {
			if err := r.Ack(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(got) != n {
		t.Fatalf("got %d records, want %d", len(got), n)
	}
	return got
}

// wantRecords checks that got are records from, from+1, ... in order.
func wantRecords(t *testing.T, got [][]byte, from int) {
	t.Helper()
	for i, g := range got {
		if want := rec(from + i); !bytes.Equal(g, want) {
			t.Fatalf("record %d: got %q, want %q", i, g, want)
		}
	}
}

// wantIdle checks that r has nothing more to read.
func wantIdle(t *testing.T, r *Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if b, err := r.Next(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next: got %d records, %v; want nothing more", len(b.Records), err)
	}
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segExt))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// frameOffsets walks a segment file the spool wrote cleanly.
func frameOffsets(t *testing.T, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for off := 0; off+hdrLen <= len(b); off += hdrLen + int(binary.LittleEndian.Uint32(b[off:])) {
		offs = append(offs, int64(off))
	}
	return offs
}

func TestOrderAcrossSegments(t *testing.T) {
	tests := []struct {
		name    string
		records [][]byte
	}{
		{"small", func() (r [][]byte) {
			for i := range 500 {
				r = append(r, rec(i))
			}
			return r
		}()},
		{"larger than a segment", [][]byte{rec(1), bytes.Repeat([]byte("a"), 10<<10), rec(2), bytes.Repeat([]byte("b"), 5<<10), {}, rec(3)}},
		{"empty records", [][]byte{{}, {}, []byte("x"), {}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, _ := options(t, t.TempDir(), "a")
			s := open(t, o)
			for _, r := range tt.records {
				if err := s.Append(r); err != nil {
					t.Fatal(err)
				}
			}
			got := read(t, s.Reader("a"), len(tt.records), false)
			for i := range got {
				if !bytes.Equal(got[i], tt.records[i]) {
					t.Fatalf("record %d: got %d bytes, want %d", i, len(got[i]), len(tt.records[i]))
				}
			}
			wantIdle(t, s.Reader("a"))
			if err := s.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			st := s.Stats()
			n := uint64(len(tt.records))
			if st.Appended != n || st.Written != n || st.Synced != n || st.Pending != 0 {
				t.Errorf("stats %+v: want %d appended, written and synced, none pending", st, n)
			}
			if len(tt.records) > 4 && st.Segments < 2 {
				t.Errorf("stats %+v: want several segments", st)
			}
		})
	}
}

func TestRestartRedeliversUnacked(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	s := open(t, o)
	appendRange(t, s, 0, 300)
	r := s.Reader("a")
	wantRecords(t, read(t, r, 120, true), 0)
	wantRecords(t, read(t, r, 50, false), 120) // delivered, not acked
	if lag := r.Lag(); lag != 180 {
		t.Errorf("lag %d, want 180", lag)
	}
	closeSpool(t, s)

	s = open(t, o)
	r = s.Reader("a")
	if r.read.off == 0 {
		t.Error("the cursor's saved offset was not used")
	}
	if lag := r.Lag(); lag != 180 {
		t.Errorf("lag after restart %d, want 180", lag)
	}
	wantRecords(t, read(t, r, 180, true), 120)
	wantIdle(t, r)
	appendRange(t, s, 300, 310) // numbering continues
	wantRecords(t, read(t, r, 10, true), 300)
	if lag := r.Lag(); lag != 0 {
		t.Errorf("lag %d, want 0", lag)
	}
}

func TestFullThenRecovers(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SegmentBytes = 1 << 10
	o.MaxBytes = 8 << 10
	s := open(t, o)
	n := 0
	for ; n < 1000; n++ {
		err := s.Append(rec(n))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if n == 0 || n == 1000 {
		t.Fatalf("ErrFull after %d records", n)
	}
	if !s.Stats().Full {
		t.Error("Stats.Full is false after ErrFull")
	}
	r := s.Reader("a")
	wantRecords(t, read(t, r, n, true), 0)
	if s.Stats().Full {
		t.Error("Stats.Full still true after segments were deleted")
	}
	if st := s.Stats(); st.Bytes > 1<<10 {
		t.Errorf("%d bytes on disk after everything was acked", st.Bytes)
	}
	appendRange(t, s, n, n+20)
	wantRecords(t, read(t, r, 20, true), n)
}

func TestSyncMakesDurable(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SyncInterval = time.Hour
	o.SyncEvery = 1 << 30
	s := open(t, o)
	appendRange(t, s, 0, 50)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Synced != 50 {
		t.Fatalf("stats %+v: want 50 synced", st)
	}
	// What is on disk now, with the spool still open (as after a crash),
	// holds every record.
	crash := t.TempDir()
	for _, f := range segFiles(t, dir) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crash, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o.Dir = crash
	c := open(t, o)
	wantRecords(t, read(t, c.Reader("a"), 50, false), 0)
}

func TestCloseWakesNext(t *testing.T) {
	o, _ := options(t, t.TempDir(), "a")
	s := open(t, o)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Reader("a").Next(context.Background(), 10)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Next block
	closeSpool(t, s)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Next: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next still blocked after Close")
	}
	if err := s.Append(rec(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v", err)
	}
	if err := s.Sync(context.Background()); err != nil && !errors.Is(err, ErrClosed) {
		t.Errorf("Sync after Close: %v", err)
	}
}

func TestCloseWritesQueue(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SyncInterval = time.Hour
	s := open(t, o)
	appendRange(t, s, 0, 1000)
	closeSpool(t, s)
	s = open(t, o)
	wantRecords(t, read(t, s.Reader("a"), 1000, false), 0)
}

func TestAppendRefuses(t *testing.T) {
	o, _ := options(t, t.TempDir())
	o.MaxBytes = 1 << 20
	s := open(t, o)
	for _, n := range []int{MaxRecordBytes + 1, 1 << 20} {
		if err := s.Append(make([]byte, n)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Append %d bytes: %v, want ErrTooLarge", n, err)
		}
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name    string
		dir     string
		readers []string
		want    string
	}{
		{"no dir", "", nil, "dir: required"},
		{"bad name", "d", []string{"ok", "../x"}, `readers[1]: "../x"`},
		{"tilde", "d", []string{"a~tmp"}, `readers[0]`},
		{"duplicate", "d", []string{"a", "a"}, "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dir
			if dir != "" {
				dir = filepath.Join(t.TempDir(), dir)
			}
			_, err := Open(Options{Dir: dir, Readers: tt.readers})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("unknown reader", func(t *testing.T) {
		o, _ := options(t, t.TempDir(), "a")
		s := open(t, o)
		defer func() {
			if recover() == nil {
				t.Error("Reader of an unknown name did not panic")
			}
		}()
		s.Reader("b")
	})
}

func TestWriteFailureRetried(t *testing.T) {
	dir := t.TempDir()
	o, logs := options(t, dir, "a", "b")
	s := open(t, o)
	appendRange(t, s, 0, 10)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.w.f.Close() // the writer's file stops working, as on a failing disk
	appendRange(t, s, 10, 20)
	wantRecords(t, read(t, s.Reader("a"), 20, true), 0)
	if !strings.Contains(logs.String(), "cannot write records") {
		t.Error("failure not logged")
	}
	deadline := time.Now().Add(5 * time.Second)
	for err := s.Sync(context.Background()); err != nil; err = s.Sync(context.Background()) {
		if time.Now().After(deadline) {
			t.Fatalf("Sync still failing after the writer recovered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	closeSpool(t, s)
	s = open(t, o)
	wantRecords(t, read(t, s.Reader("b"), 20, true), 0)
	if c := s.Stats().Corrupt; c != 0 {
		t.Errorf("corrupt %d", c)
	}
}
