package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzOpen writes arbitrary bytes as a segment file (the only one, which
// Open recovers, or a sealed one followed by an empty active segment) and
// reads everything: no panic, no hang, allocations bounded by the file.
func FuzzOpen(f *testing.F) {
	seed := func(recs ...[]byte) []byte {
		var b []byte
		for i, r := range recs {
			b = appendFrame(b, uint64(i), crc(r), r)
		}
		return b
	}
	valid := seed([]byte(`{"a":1}`), []byte(`{"b":2}`), []byte{}, []byte(`{"c":3}`))
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(append(append([]byte{}, valid...), 0xde, 0xad))
	flipped := append([]byte{}, valid...)
	flipped[hdrLen+1] ^= 1
	f.Add(flipped)
	f.Add([]byte{})
	f.Add(make([]byte, 64))
	f.Add(appendFrame(nil, maxSeq-1, crc(nil), nil))
	for _, n := range []uint32{1 << 31, MaxRecordBytes} {
		// Intact headers claiming more than there is.
		var h [hdrLen]byte
		binary.LittleEndian.PutUint32(h[0:], n)
		binary.LittleEndian.PutUint32(h[16:], crc32.Checksum(h[:16], castagnoli))
		f.Add(append(h[:], valid...))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segName(0)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if len(data) > 0 && data[0]&1 == 1 {
			// Make the fuzzed file a sealed segment.
			if err := os.WriteFile(filepath.Join(dir, segName(1000)), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(Options{Dir: dir, Readers: []string{"a"}, SegmentBytes: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		r := s.Reader("a")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for r.Lag() > 0 {
			// Skipping damage at the end leaves nothing to return: Next
			// then waits for new records, with the lag down to zero.
			nctx, ncancel := context.WithTimeout(ctx, 50*time.Millisecond)
			b, err := r.Next(nctx, 100)
			ncancel()
			if err != nil {
				if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) && r.Lag() == 0 {
					break
				}
				t.Fatalf("Next with lag %d: %v", r.Lag(), err)
			}
			if err := r.Ack(b); err != nil {
				t.Fatal(err)
			}
		}
		// The spool still works after whatever it recovered from.
		if err := s.Append([]byte("after")); err != nil {
			t.Fatal(err)
		}
		b, err := r.Next(ctx, 100)
		if err != nil || len(b.Records) != 1 || string(b.Records[0]) != "after" {
			t.Fatalf("after recovery: %q, %v", b.Records, err)
		}
	})
}

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
