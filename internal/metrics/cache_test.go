package metrics

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

func TestCacheResolvesEachKeyOnce(t *testing.T) {
	var c cache[int, string]
	var calls [500]atomic.Int32
	resolve := func(k int) string {
		calls[k].Add(1)
		return strconv.Itoa(k)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for round := range 3 {
				for i := range len(calls) {
					k := (i*7 + g*31 + round) % len(calls)
					if v := c.get(k, resolve); v != strconv.Itoa(k) {
						t.Errorf("get(%d) = %q", k, v)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for k := range calls {
		if n := calls[k].Load(); n != 1 {
			t.Errorf("key %d resolved %d times, want once", k, n)
		}
	}
	if n := c.len(); n != len(calls) {
		t.Fatalf("len = %d, want %d", n, len(calls))
	}
	// Every key is read without the lock after at most as many misses as
	// there are keys (the dirty map is promoted then).
	for range len(calls) {
		for k := range len(calls) {
			c.get(k, resolve)
		}
	}
	if m := c.read.Load(); m == nil || len(*m) != len(calls) {
		t.Fatalf("the read map holds %v keys, want all %d", m, len(calls))
	}
}

// BenchmarkCacheAdd measures the first lookup of a key in a cache that
// already holds n keys: it must not grow with n (the series of every app,
// model and backend are added this way as traffic first reaches them).
func BenchmarkCacheAdd(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			var c cache[int, int]
			id := func(k int) int { return k }
			for k := range n {
				c.get(k, id)
			}
			k := n
			b.ReportAllocs()
			for b.Loop() {
				c.get(k, id)
				k++
			}
		})
	}
}

// BenchmarkRequestFirstSeen measures Request for a label set not seen
// before, with n apps' series already cached: flat in n.
func BenchmarkRequestFirstSeen(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			m := New("dev", nil)
			l, rec := benchRecord()
			app := func(i int) Labels {
				l.App = fmt.Sprintf("app-%06d", i)
				return l
			}
			for i := range n {
				m.Request(app(i), rec, false)
			}
			labels := make([]Labels, 0, 1<<16)
			for i := range cap(labels) {
				labels = append(labels, app(n+i))
			}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				if i == len(labels) {
					b.StopTimer()
					m = New("dev", nil) // start over rather than measure a bigger cache
					for j := range n {
						m.Request(app(j), rec, false)
					}
					i = 0
					b.StartTimer()
				}
				m.Request(labels[i], rec, false)
				i++
			}
		})
	}
}
