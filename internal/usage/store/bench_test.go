package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/usage"
)

// benchBatch is batch number n of size new records, as the gateway writes
// them: distinct request ids, a few apps and models, one attempt each.
func benchBatch(n, size int) []usage.Record {
	apps := []string{"chat", "batch", "search", "agents"}
	models := []string{"gpt-4o", "gpt-4o-mini", "o3"}
	batch := make([]usage.Record, size)
	for i := range batch {
		j := n*size + i
		r := rec(fmt.Sprintf("bench-%08d", j), apps[j%len(apps)], models[j%len(models)],
			t0.Add(time.Duration(j)*time.Second), 1000+int64(j%500), 200, 0.0042, "USD")
		r.ClientIP, r.UserAgent = "10.1.2.3", "openai-python/1.40"
		batch[i] = r
	}
	return batch
}

// BenchmarkWrite writes 500-record batches (the sinks' default batch size)
// of new records.
func BenchmarkWrite(b *testing.B) {
	const size = 500
	for _, db := range databases {
		b.Run(db.name, func(b *testing.B) {
			s := open(b, db.fresh(b))
			benchWrite(b, s, size)
		})
	}
}

func benchWrite(b *testing.B, s *Store, size int) {
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		b.StopTimer()
		batch := benchBatch(n, size) // not the store's cost
		n++
		b.StartTimer()
		if err := s.Write(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*size)/b.Elapsed().Seconds(), "rows/s")
}
