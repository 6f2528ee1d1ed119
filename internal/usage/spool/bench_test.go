package spool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// benchRecord is a usage record of about 1 KB, like the gateway's.
func benchRecord() []byte {
	return fmt.Appendf(nil, `{"schema":1,"request_id":"%s","start":"2025-01-01T00:00:00Z","end":"2025-01-01T00:00:01Z",`+
		`"caller":{"tenant_id":"%s","app_id":"%s","app":"billing-assistant","team":"finance","cost_center":"cc-1234","auth_method":"entra"},`+
		`"client_ip":"10.1.2.3","user_agent":"openai-python/1.0","operation":"chat/completions","model":"gpt-4o","pool":"default",`+
		`"backend":"eastus","deployment":"gpt-4o-2024-08-06","attempts":[{"backend":"eastus","deployment":"gpt-4o-2024-08-06","status":200}],`+
		`"status":200,"stream":true,"tokens":{"prompt":1234,"completion":567,"total":1801,"cached_prompt":0,"reasoning":0,"source":"backend"},`+
		`"latency":{"total_ms":1234.5,"first_token_ms":234.5,"upstream_ms":1200.1},"cost":{"amount":0.0123,"currency":"USD"},"pad":"%s"}`,
		strings.Repeat("r", 36), strings.Repeat("t", 36), strings.Repeat("a", 36), strings.Repeat("x", 180))
}

// benchSpool uses the gateway's defaults (16 MiB segments, fsync every
// second or 1000 records) without a bound on disk.
func benchSpool(b *testing.B, readers ...string) *Spool {
	s, err := Open(Options{
		Dir:          b.TempDir(),
		SegmentBytes: 16 << 20,
		MaxBytes:     1 << 40,
		SyncInterval: time.Second,
		SyncEvery:    1000,
		Readers:      readers,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// appendWait appends rec, waiting while the queue is full (the writer is
// behind), and reports how often it was.
func appendWait(b *testing.B, s *Spool, rec []byte) (full int) {
	for {
		err := s.Append(rec)
		if err == nil {
			return full
		}
		if !errors.Is(err, ErrFull) {
			b.Fatal(err)
		}
		full++
		time.Sleep(50 * time.Microsecond)
	}
}

func report(b *testing.B, full int64) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(full)/float64(b.N), "full/op")
}

// BenchmarkAppend measures sustained appends: the time includes writing
// and fsyncing everything.
func BenchmarkAppend(b *testing.B) {
	s := benchSpool(b)
	rec := benchRecord()
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	full := 0
	b.ResetTimer()
	for range b.N {
		full += appendWait(b, s, rec)
	}
	if err := s.Sync(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	report(b, int64(full))
}

// BenchmarkAppendParallel is Append from many request goroutines.
func BenchmarkAppendParallel(b *testing.B) {
	s := benchSpool(b)
	rec := benchRecord()
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	var full atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			full.Add(int64(appendWait(b, s, rec)))
		}
	})
	if err := s.Sync(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	report(b, full.Load())
}

// BenchmarkAppendRead appends while one reader reads and acks batches of
// 500 (a sink's default); the time includes the reader catching up, and
// acknowledged segments are deleted as it goes.
func BenchmarkAppendRead(b *testing.B) {
	s := benchSpool(b, "sink")
	r := s.Reader("sink")
	rec := benchRecord()
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for n := 0; n < b.N; {
			batch, err := r.Next(context.Background(), 500)
			if err != nil {
				done <- err
				return
			}
			n += len(batch.Records)
			if err := r.Ack(batch); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	full := 0
	for range b.N {
		full += appendWait(b, s, rec)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	report(b, int64(full))
}
