package auth

import (
	"crypto/sha256"
	"sync"
	"time"
)

// maxCacheTTL bounds how long a verified token is trusted without being
// verified again, so an app removed from the config (the authenticator is
// rebuilt) or a key withdrawn from the JWKS stops working within minutes
// even for long-lived tokens.
const maxCacheTTL = 10 * time.Minute

// cacheShards spreads the cache over independently locked maps; hits take
// only a read lock on one shard.
const cacheShards = 16

// tokenCache maps sha256(raw token) to the Caller it verified as. Only
// successful verifications are stored. Safe for concurrent use.
type tokenCache struct {
	shards   []cacheShard
	perShard int
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[[sha256.Size]byte]cacheEntry
	_  [40]byte // keep neighbouring shards' locks off one cache line
}

type cacheEntry struct {
	caller *Caller
	until  int64 // unix nanoseconds; the entry is unusable from then on
}

// newTokenCache returns a cache of about size entries, or nil (no caching)
// when size <= 0.
func newTokenCache(size int) *tokenCache {
	if size <= 0 {
		return nil
	}
	n := cacheShards
	if size < 16*cacheShards {
		n = 1
	}
	c := &tokenCache{shards: make([]cacheShard, n), perShard: (size + n - 1) / n}
	for i := range c.shards {
		c.shards[i].m = make(map[[sha256.Size]byte]cacheEntry)
	}
	return c
}

func (c *tokenCache) shard(key *[sha256.Size]byte) *cacheShard {
	return &c.shards[int(key[0])%len(c.shards)]
}

// get returns the cached Caller, or nil when absent or expired at now.
func (c *tokenCache) get(key *[sha256.Size]byte, now time.Time) *Caller {
	if c == nil {
		return nil
	}
	s := c.shard(key)
	s.mu.RLock()
	e, ok := s.m[*key]
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	if now.UnixNano() >= e.until {
		s.mu.Lock()
		if cur, ok := s.m[*key]; ok && cur.until == e.until {
			delete(s.m, *key)
		}
		s.mu.Unlock()
		return nil
	}
	return e.caller
}

// put stores caller until the given time. A full shard first drops expired
// entries among a few it looks at, else one arbitrary entry: Go's random map
// iteration order makes that a cheap random eviction.
func (c *tokenCache) put(key *[sha256.Size]byte, caller *Caller, until, now time.Time) {
	if c == nil || !until.After(now) {
		return
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[*key]; !ok && len(s.m) >= c.perShard {
		const look = 8
		var victim [sha256.Size]byte
		seen, dropped := 0, false
		for k, e := range s.m {
			if now.UnixNano() >= e.until {
				delete(s.m, k)
				dropped = true
			} else if seen == 0 {
				victim = k
			}
			if seen++; seen == look {
				break
			}
		}
		if !dropped {
			delete(s.m, victim)
		}
	}
	s.m[*key] = cacheEntry{caller: caller, until: until.UnixNano()}
}

// len reports the number of entries, for tests.
func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
