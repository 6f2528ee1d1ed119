package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRewind(t *testing.T) {
	o, _ := options(t, t.TempDir(), "a")
	s := open(t, o)
	appendRange(t, s, 0, 30)
	r := s.Reader("a")
	wantRecords(t, read(t, r, 10, true), 0)
	wantRecords(t, read(t, r, 5, false), 10)
	wantRecords(t, read(t, r, 5, false), 15) // continues without Ack
	r.Rewind()
	wantRecords(t, read(t, r, 20, false), 10)
}

func TestRetentionWaitsForEveryReader(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "fast", "slow")
	o.SegmentBytes = 1 << 10
	s := open(t, o)
	appendRange(t, s, 0, 200)
	fast, slow := s.Reader("fast"), s.Reader("slow")
	wantRecords(t, read(t, fast, 200, true), 0)
	files := len(segFiles(t, dir))
	if files < 10 {
		t.Fatalf("%d segment files; want many", files)
	}
	if n := len(segFiles(t, dir)); n != files || s.Stats().Segments != files {
		t.Fatalf("segments deleted while slow acked nothing: %d files left of %d", n, files)
	}
	wantRecords(t, read(t, slow, 100, true), 0)
	half := len(segFiles(t, dir))
	if half >= files || half <= 1 {
		t.Fatalf("after slow acked half: %d of %d segment files", half, files)
	}
	wantRecords(t, read(t, slow, 100, true), 100)
	if n := len(segFiles(t, dir)); n != 1 || s.Stats().Segments != 1 {
		t.Fatalf("after both acked everything: %d segment files, stats %+v; want only the active one", n, s.Stats())
	}
	// Deleted segments do not confuse a rewound or restarted reader.
	slow.Rewind()
	wantIdle(t, slow)
	closeSpool(t, s)
	s = open(t, o)
	wantIdle(t, s.Reader("slow"))
	appendRange(t, s, 200, 201)
	wantRecords(t, read(t, s.Reader("slow"), 1, true), 200)
}

func TestZeroReadersKeepEverything(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir)
	o.SegmentBytes = 1 << 10
	s := open(t, o)
	appendRange(t, s, 0, 100)
	closeSpool(t, s)
	files := len(segFiles(t, dir))
	o.Readers = []string{"late"}
	s = open(t, o)
	wantRecords(t, read(t, s.Reader("late"), 100, false), 0)
	if n := len(segFiles(t, dir)); n != files {
		t.Fatalf("%d segment files, want %d", n, files)
	}
}

func TestNewAndRemovedReaders(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SegmentBytes = 1 << 10
	s := open(t, o)
	appendRange(t, s, 0, 100)
	read(t, s.Reader("a"), 60, true)
	closeSpool(t, s)

	// A new reader starts at the oldest record still held.
	o.Readers = []string{"a", "b"}
	s = open(t, o)
	var oldest uint64
	fmt.Sscanf(filepath.Base(segFiles(t, dir)[0]), "%d", &oldest)
	if oldest == 0 || oldest > 60 {
		t.Fatalf("oldest segment starts at %d; want some deleted, none past the cursor", oldest)
	}
	b := s.Reader("b")
	if lag := b.Lag(); lag != 100-int64(oldest) {
		t.Errorf("new reader's lag %d, want %d", lag, 100-oldest)
	}
	wantRecords(t, read(t, b, 100-int(oldest), true), int(oldest))
	closeSpool(t, s)

	// A reader no longer configured does not keep segments.
	o.Readers = []string{"b"}
	s = open(t, o)
	appendRange(t, s, 100, 200)
	wantRecords(t, read(t, s.Reader("b"), 100, true), 100)
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files; the removed reader's cursor kept segments", n)
	}
}

func TestCursorAheadOfData(t *testing.T) {
	// A reader delivered and acked records that were then lost unsynced in
	// a crash: new records must not reuse their numbers, or the reader
	// would skip them.
	dir := t.TempDir()
	o, logs := options(t, dir, "a")
	s := open(t, o)
	appendRange(t, s, 0, 10)
	read(t, s.Reader("a"), 10, true)
	closeSpool(t, s)
	for _, f := range segFiles(t, dir) {
		if err := os.Truncate(f, 0); err != nil {
			t.Fatal(err)
		}
	}
	s = open(t, o)
	if !strings.Contains(logs.String(), "cursor is past the last record") {
		t.Error("not logged")
	}
	appendRange(t, s, 10, 15)
	wantRecords(t, read(t, s.Reader("a"), 5, true), 10)
	if c := s.Stats().Corrupt; c != 0 {
		t.Errorf("corrupt %d, want 0", c)
	}
}

func TestConcurrentAppendAndRead(t *testing.T) {
	const producers, each = 8, 1000
	dir := t.TempDir()
	o, _ := options(t, dir, "r1", "r2")
	o.SegmentBytes = 32 << 10
	s := open(t, o)

	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				for {
					err := s.Append(fmt.Appendf(nil, "%d/%d", p, i))
					if err == nil {
						break
					}
					if !errors.Is(err, ErrFull) {
						t.Error(err)
						return
					}
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	consume := func(r *Reader, batch int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		next := make([]int, producers) // next i expected from each producer
		for total := 0; total < producers*each; {
			b, err := r.Next(ctx, batch)
			if err != nil {
				return fmt.Errorf("after %d records: %w", total, err)
			}
			for _, rec := range b.Records {
				var p, i int
				if _, err := fmt.Sscanf(string(rec), "%d/%d", &p, &i); err != nil || p >= producers {
					return fmt.Errorf("record %q", rec)
				}
				if i != next[p] {
					return fmt.Errorf("producer %d: got record %d, want %d", p, i, next[p])
				}
				next[p]++
			}
			total += len(b.Records)
			if err := r.Ack(b); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error, 2)
	go func() { errs <- consume(s.Reader("r1"), 37) }()
	go func() { errs <- consume(s.Reader("r2"), 500) }()
	wg.Wait()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	wantIdle(t, s.Reader("r1"))
	wantIdle(t, s.Reader("r2"))
	if st := s.Stats(); st.Appended != producers*each || st.Segments != 1 {
		t.Errorf("stats %+v", st)
	}
	if !slices.Equal([]int64{s.Reader("r1").Lag(), s.Reader("r2").Lag()}, []int64{0, 0}) {
		t.Error("lag after everything was acked")
	}
}

func TestAckWhileNextWaits(t *testing.T) {
	// A sink may ack from one goroutine while another waits in Next.
	o, _ := options(t, t.TempDir(), "a")
	s := open(t, o)
	appendRange(t, s, 0, 5)
	r := s.Reader("a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Sync(ctx); err != nil { // all five written: one Next gets them
		t.Fatal(err)
	}
	b, err := r.Next(ctx, 5)
	if err != nil || len(b.Records) != 5 {
		t.Fatalf("first batch: %d records, %v", len(b.Records), err)
	}
	next := make(chan Batch, 1)
	go func() {
		b, _ := r.Next(ctx, 5)
		next <- b
	}()
	time.Sleep(20 * time.Millisecond) // let Next wait
	if err := r.Ack(b); err != nil {
		t.Fatal(err)
	}
	appendRange(t, s, 5, 6)
	wantRecords(t, (<-next).Records, 5)
}
