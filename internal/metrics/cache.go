package metrics

import (
	"sync"
	"sync/atomic"
)

// cache maps a comparable key to a resolved metric child. Reads are a
// lock-free load of an immutable map and do not allocate (unlike sync.Map,
// whose any-typed keys box a struct key on every lookup); a miss copies the
// map under a lock. A copy costs O(entries), which is fine because entries
// are bounded by the config (apps x models x backends ...) and a miss
// happens once per entry for the life of the process. The zero value is
// ready to use; safe for concurrent use.
type cache[K comparable, V any] struct {
	m  atomic.Pointer[map[K]V]
	mu sync.Mutex // serializes misses
}

// get returns the value for k, calling resolve(k) on the first request for
// k. resolve runs under the cache's lock, at most once per key.
func (c *cache[K, V]) get(k K, resolve func(K) V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	return c.add(k, resolve)
}

func (c *cache[K, V]) add(k K, resolve func(K) V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	n := make(map[K]V, 1+lenOf(old))
	if old != nil {
		for ok, ov := range *old {
			n[ok] = ov
		}
	}
	v := resolve(k)
	n[k] = v
	c.m.Store(&n)
	return v
}

// len is the number of cached keys.
func (c *cache[K, V]) len() int { return lenOf(c.m.Load()) }

func lenOf[K comparable, V any](m *map[K]V) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// lazy is a value resolved on first use. Concurrent first uses may both
// resolve; resolve must return the same value each time (a vector's
// WithLabelValues does), so the race is harmless. The zero value is ready to
// use.
type lazy[T any] struct{ p atomic.Pointer[T] }

func (l *lazy[T]) get(resolve func() T) T {
	if p := l.p.Load(); p != nil {
		return *p
	}
	v := resolve()
	l.p.Store(&v)
	return v
}
