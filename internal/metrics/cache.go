package metrics

import (
	"sync"
	"sync/atomic"
)

// cache maps a comparable key to a resolved metric child. Reads are a
// lock-free load of an immutable map and do not allocate (unlike sync.Map,
// whose any-typed keys box a struct key on every lookup). New keys go to a
// dirty map under a lock, which also holds every read key; once the misses
// since the last promotion number as many as the dirty map's keys, it
// becomes the read map (as in sync.Map). So a new key costs O(1) amortized
// however many there are: copying the read map on every miss cost each
// first request O(keys): the first requests of 10,000 apps (their series
// and limit decisions) copied for over a minute, under the lock. A new key
// is lock-free after at most as many misses as there are keys. The zero
// value is ready to use; safe for concurrent use.
type cache[K comparable, V any] struct {
	read atomic.Pointer[map[K]V]

	mu     sync.Mutex // guards dirty and misses; serializes resolve
	dirty  map[K]V    // read's keys and the newer ones; nil until a key is added after a promotion
	misses int        // lookups that missed read since the last promotion
}

// get returns the value for k, calling resolve(k) on the first request for
// k. resolve runs under the cache's lock, at most once per key.
func (c *cache[K, V]) get(k K, resolve func(K) V) V {
	if m := c.read.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	return c.miss(k, resolve)
}

func (c *cache[K, V]) miss(k K, resolve func(K) V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	read := c.read.Load()
	if read != nil {
		if v, ok := (*read)[k]; ok {
			return v // promoted while this caller waited
		}
	}
	v, ok := c.dirty[k]
	if !ok {
		if c.dirty == nil {
			c.dirty = make(map[K]V, 1+lenOf(read))
			if read != nil {
				for rk, rv := range *read {
					c.dirty[rk] = rv
				}
			}
		}
		v = resolve(k)
		c.dirty[k] = v
	}
	if c.misses++; c.misses >= len(c.dirty) {
		m := c.dirty
		c.read.Store(&m)
		c.dirty, c.misses = nil, 0
	}
	return v
}

// len is the number of cached keys.
func (c *cache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dirty != nil {
		return len(c.dirty)
	}
	return lenOf(c.read.Load())
}

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
