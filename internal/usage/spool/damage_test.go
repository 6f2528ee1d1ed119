package spool

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTornTailRecovered(t *testing.T) {
	const n = 20
	garbage := make([]byte, 300)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	tests := []struct {
		name string
		cut  func(offs []int64) int64 // where to truncate (-1: keep all)
		add  []byte                   // then append
		keep int                      // records that survive
	}{
		{"cut in a header", func(o []int64) int64 { return o[15] + 7 }, nil, 15},
		{"cut in a payload", func(o []int64) int64 { return o[15] + hdrLen + 3 }, nil, 15},
		{"cut at a frame boundary", func(o []int64) int64 { return o[15] }, nil, 15},
		{"cut to nothing", func(o []int64) int64 { return 0 }, nil, 0},
		{"garbage appended", func(o []int64) int64 { return -1 }, garbage, n},
		{"zeros appended", func(o []int64) int64 { return -1 }, make([]byte, 4096), n},
		{"cut then garbage", func(o []int64) int64 { return o[15] + 25 }, garbage, 15},
		{"cut in a header then zeros", func(o []int64) int64 { return o[3] + 2 }, make([]byte, 100), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			o, logs := options(t, dir, "a")
			o.SegmentBytes = 1 << 20
			s := open(t, o)
			appendRange(t, s, 0, n)
			closeSpool(t, s)
			path := segFiles(t, dir)[0]
			offs := frameOffsets(t, path)
			size := offs[n-1] + int64(hdrLen+len(rec(n-1)))
			if cut := tt.cut(offs); cut >= 0 {
				size = cut
				if err := os.Truncate(path, cut); err != nil {
					t.Fatal(err)
				}
			}
			if tt.add != nil {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(tt.add)
				f.Close()
				size += int64(len(tt.add))
			}

			s = open(t, o)
			r := s.Reader("a")
			wantRecords(t, read(t, r, tt.keep, true), 0)
			wantIdle(t, r)
			end := int64(0)
			if tt.keep < n {
				end = offs[tt.keep]
			} else {
				end = offs[n-1] + int64(hdrLen+len(rec(n-1)))
			}
			if st := s.Stats(); st.Bytes != end || st.Corrupt != 0 {
				t.Errorf("stats %+v: want %d bytes, nothing corrupt", st, end)
			}
			if fi, err := os.Stat(path); err != nil || fi.Size() != end {
				t.Errorf("file not cut at %d: %v %v", end, fi.Size(), err)
			}
			if logged := strings.Contains(logs.String(), "torn tail"); logged != (size != end) {
				t.Errorf("torn tail logged: %v; %d bytes cut", logged, size-end)
			}
			// New records follow the survivors.
			appendRange(t, s, 1000, 1003)
			got := read(t, r, 3, true)
			wantRecords(t, got, 1000)
			if lag := r.Lag(); lag != 0 {
				t.Errorf("lag %d", lag)
			}
		})
	}
}

func TestDamagedRecordsSkipped(t *testing.T) {
	const n = 60
	tests := []struct {
		name   string
		last   bool                         // damage the last (active) segment instead of the first
		damage func(b []byte, offs []int64) // flips bits in the file
		lost   []int                        // frame indexes in that segment that are lost
	}{
		{"payload bit", false, func(b []byte, o []int64) { b[o[2]+hdrLen+2] ^= 0x10 }, []int{2}},
		{"length bit", false, func(b []byte, o []int64) { b[o[2]+1] ^= 0x01 }, []int{2}},
		{"length huge", false, func(b []byte, o []int64) { b[o[2]+3] = 0xff }, []int{2}},
		{"sequence bit", false, func(b []byte, o []int64) { b[o[2]+9] ^= 0x40 }, []int{2}},
		{"header checksum bit", false, func(b []byte, o []int64) { b[o[2]+17] ^= 0x01 }, []int{2}},
		{"two frames", false, func(b []byte, o []int64) { b[o[2]+hdrLen] ^= 1; b[o[3]+1] ^= 1 }, []int{2, 3}},
		{"last frame of a sealed segment", false, func(b []byte, o []int64) { b[o[len(o)-1]] ^= 1 }, []int{-1}},
		{"first frame", false, func(b []byte, o []int64) { b[o[0]+5] ^= 1 }, []int{0}},
		{"active segment", true, func(b []byte, o []int64) { b[o[1]+hdrLen+1] ^= 0x80 }, []int{1}},
		{"active segment header", true, func(b []byte, o []int64) { b[o[0]+2] ^= 0x80 }, []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			o, logs := options(t, dir, "a", "b")
			o.SegmentBytes = 1 << 10
			if tt.last {
				o.SegmentBytes = 1 << 20 // one segment: the active one
			}
			s := open(t, o)
			appendRange(t, s, 0, n)
			closeSpool(t, s)
			files := segFiles(t, dir)
			path := files[0]
			if tt.last {
				path = files[len(files)-1]
			}
			base := segBase(t, path)
			offs := frameOffsets(t, path)
			if tt.last && len(offs) < 3 {
				t.Fatalf("active segment holds %d frames; the test needs more", len(offs))
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(b, offs)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			lost := map[int]bool{}
			for _, i := range tt.lost {
				if i < 0 {
					i += len(offs)
				}
				lost[base+i] = true
			}

			s = open(t, o)
			for _, name := range []string{"a", "b"} {
				r := s.Reader(name)
				got := read(t, r, n-len(lost), true)
				j := 0
				for i := range n {
					if lost[i] {
						continue
					}
					if !bytes.Equal(got[j], rec(i)) {
						t.Fatalf("reader %s: record %d is %q, want %q", name, j, got[j], rec(i))
					}
					j++
				}
				wantIdle(t, r)
				if lag := r.Lag(); lag != 0 {
					t.Errorf("reader %s: lag %d after reading past the damage", name, lag)
				}
			}
			if c := s.Stats().Corrupt; c != uint64(len(lost)) {
				t.Errorf("corrupt %d, want %d (counted once for both readers)", c, len(lost))
			}
			if !strings.Contains(logs.String(), "damaged records skipped") {
				t.Error("damage not logged")
			}
		})
	}
}

func TestJunkBetweenFramesSkipped(t *testing.T) {
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SegmentBytes = 1 << 10
	s := open(t, o)
	appendRange(t, s, 0, 40)
	closeSpool(t, s)
	path := segFiles(t, dir)[0]
	offs := frameOffsets(t, path)
	b, _ := os.ReadFile(path)
	b = append(b[:offs[3]:offs[3]], append([]byte("junk!!!"), b[offs[3]:]...)...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, o)
	wantRecords(t, read(t, s.Reader("a"), 40, true), 0)
	if c := s.Stats().Corrupt; c != 0 {
		t.Errorf("corrupt %d; no record was lost", c)
	}
}

func TestMissingSegmentCounted(t *testing.T) {
	// A segment file removed behind the spool's back is counted, not a hang.
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SegmentBytes = 1 << 10
	s := open(t, o)
	appendRange(t, s, 0, 60)
	closeSpool(t, s)
	files := segFiles(t, dir)
	second, third := segBase(t, files[1]), segBase(t, files[2])
	os.Remove(files[1])
	s = open(t, o)
	r := s.Reader("a")
	got := read(t, r, 60-(third-second), true)
	wantRecords(t, got[:second], 0)
	wantRecords(t, got[second:], third)
	if c := s.Stats().Corrupt; c != uint64(third-second) {
		t.Errorf("corrupt %d, want %d", c, third-second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Next(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}

func segBase(t *testing.T, path string) int {
	t.Helper()
	base, ok := parseSegName(filepath.Base(path))
	if !ok {
		t.Fatalf("%s is not a segment", path)
	}
	return int(base)
}

func TestSealedSegmentCutShort(t *testing.T) {
	// A sealed segment shorter than the spool recorded (cut while it was
	// open): the missing records are counted, quickly, not scanned for
	// byte by byte.
	dir := t.TempDir()
	o, _ := options(t, dir, "a")
	o.SegmentBytes = 1 << 20
	s := open(t, o)
	big := bytes.Repeat([]byte("x"), 200<<10)
	for range 6 { // five fill the first segment, the sixth starts the second
		if err := s.Append(big); err != nil {
			t.Fatal(err)
		}
	}
	appendRange(t, s, 0, 1)
	r := s.Reader("a")
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(segFiles(t, dir)[0], 1000); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := read(t, r, 2, true)
	if !bytes.Equal(got[0], big) {
		t.Errorf("first record read is not the sixth")
	}
	wantRecords(t, got[1:], 0)
	if c := s.Stats().Corrupt; c != 5 {
		t.Errorf("corrupt %d, want 5", c)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v", d)
	}
}
