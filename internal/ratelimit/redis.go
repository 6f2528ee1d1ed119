package ratelimit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/tokengate/tokengate/internal/config"
)

// redisStore keeps counters in Redis, shared by every replica. Each
// admission and each settlement is one Lua script, run atomically by the
// server in one round trip: concurrent requests on any number of replicas
// never interleave between the check and the take.
//
// Rolling windows are hashes (field: bucket number, value: count) that
// expire one window after their last write; quotas and budgets are one
// string per calendar period that expires an hour after the period ends.
//
// Time comes from the Redis server (TIME inside the scripts), the one clock
// every replica agrees on: with callers' clocks, a replica running 2 s fast
// would see buckets leave the window 2 s early and over-admit. Calendar
// periods are still computed by the gateway (Lua has no time zones), so a
// skewed replica can count a request near midnight in the neighbouring
// day; that moves a few requests between periods and never admits more
// than the limit within one period's key. WithClock switches the scripts to
// the caller's clock, for tests.
//
// Keys of one request must live on one node: Redis Cluster (and clustered
// Azure tiers) are not supported.
type redisStore struct {
	client  *redis.Client
	server  string // addr/db: whether a reload kept the server
	prefix  string // limits.redis.key_prefix + "rl:"
	timeout time.Duration
	geo     geometry
	fixed   bool // send the caller's clock instead of using the server's
	circuit circuit
}

var _ store = (*redisStore)(nil)

// newRedisStore connects lazily; errs counts the failed calls (shared
// across reloads).
func newRedisStore(lc config.Limits, geo geometry, fixed bool, errs *atomic.Uint64) *redisStore {
	r := lc.Redis
	opts := &redis.Options{
		Addr:     r.Addr,
		Username: r.Username,
		Password: r.Password,
		DB:       r.DB,
		// Every call is bounded by the request-path timeout, however it
		// spends it (dial, pool wait, read).
		DialTimeout:           r.Timeout,
		ReadTimeout:           r.Timeout,
		WriteTimeout:          r.Timeout,
		PoolTimeout:           r.Timeout,
		ContextTimeoutEnabled: true,
		DialerRetries:         1,
		// Every admission is one round trip: a burst of concurrent
		// requests needs connections more than a few seconds of queueing
		// (go-redis's default is 10 per CPU).
		PoolSize: 128,
		// A script retried after a lost reply would take twice.
		MaxRetries:      -1,
		DisableIdentity: true,
		// Maintenance hand-offs relax timeouts to seconds; a limiter would
		// rather fall back than wait.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if r.TLS {
		host, _, err := net.SplitHostPort(r.Addr)
		if err != nil {
			host = r.Addr
		}
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	return &redisStore{
		client:  redis.NewClient(opts),
		server:  r.Addr + "/" + strconv.Itoa(r.DB),
		prefix:  r.KeyPrefix + "rl:",
		timeout: r.Timeout,
		geo:     geo,
		fixed:   fixed,
		circuit: circuit{every: time.Second, errs: errs},
	}
}

// scriptClock opens every script: now (ms; ARGV[1], or the server's clock
// when it is 0), the bucket length bms and buckets counted nb (ARGV[2] and
// ARGV[3]), and the current bucket cur.
const scriptClock = `
local now = tonumber(ARGV[1])
if now == 0 then
	local t = redis.call('TIME')
	now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local bms, nb = tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = math.floor(now / bms)
`

// admitScript checks every limit of one request and, when every enforced
// one fits, takes all that fit.
//
// KEYS: one counter per limit.
// ARGV: now_ms (0: the server's clock), bucket_ms, buckets counted, then
// five per key: kind ('r' rolling window, 'q' quota, 'b' budget), limit,
// n, shadow ('1' or '0'), ttl_ms (quotas).
// Returns now_ms, the current bucket, then five per key: fits, took, used,
// retry_ms, reset_ms (as memory.admit computes them).
//
// A window's buckets more than a window ahead of the current one were
// counted with another bucket length (limits.window changed in a reload or
// a deploy): they are deleted like those that left, or they would count
// forever. The window then starts over, as the memory store's does.
var admitScript = redis.NewScript(scriptClock + `
local out = {now, cur}
local fit = {}
local refused = false
for i, key in ipairs(KEYS) do
	local a = 3 + (i - 1) * 5
	local kind, limit, n = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
	local used, ok, retry, reset = 0, true, 0, 0
	if kind == 'r' then
		local h = redis.call('HGETALL', key)
		local newest = -1
		for j = 1, #h, 2 do
			local b = tonumber(h[j])
			if b <= cur - nb or b > cur + nb then
				redis.call('HDEL', key, h[j])
			else
				local v = tonumber(h[j + 1])
				used = used + v
				if v ~= 0 and b > newest then newest = b end
			end
		end
		ok = used + n <= limit
		if newest >= 0 then reset = (newest + nb) * bms - now end
		if not ok then
			-- Only a refusal needs the buckets in order: oldest first, until
			-- enough have left for n to fit.
			local bs = {}
			for j = 1, #h, 2 do
				local b = tonumber(h[j])
				if b > cur - nb and b <= cur + nb then bs[#bs + 1] = {b, tonumber(h[j + 1])} end
			end
			table.sort(bs, function(x, y) return x[1] < y[1] end)
			local freed = 0
			for _, bv in ipairs(bs) do
				freed = freed + bv[2]
				if used - freed + n <= limit then
					retry = (bv[1] + nb) * bms - now
					break
				end
			end
			if retry == 0 then retry = (cur + nb) * bms - now end
		end
	elseif kind == 'q' then
		used = tonumber(redis.call('GET', key) or '0')
		ok = used + n <= limit
	else
		ok = tonumber(redis.call('GET', key) or '0') < limit
	end
	if not ok and ARGV[a + 4] ~= '1' then refused = true end
	fit[i] = ok
	out[#out + 1] = ok and 1 or 0
	out[#out + 1] = 0
	out[#out + 1] = used
	out[#out + 1] = retry
	out[#out + 1] = reset
end
if refused then return out end
local bucket = string.format('%d', cur)
for i, key in ipairs(KEYS) do
	if fit[i] then
		local a = 3 + (i - 1) * 5
		local kind, n = ARGV[a + 1], tonumber(ARGV[a + 3])
		out[2 + (i - 1) * 5 + 2] = 1
		if n ~= 0 and kind == 'r' then
			redis.call('HINCRBY', key, bucket, n)
			redis.call('PEXPIRE', key, (nb + 1) * bms)
			out[2 + (i - 1) * 5 + 5] = (cur + nb) * bms - now
		elseif n ~= 0 and kind == 'q' then
			redis.call('INCRBY', key, n)
			redis.call('PEXPIRE', key, ARGV[a + 5])
		end
	end
end
return out
`)

// settleScript applies settlements.
//
// ARGV: now_ms (0: the server's clock), bucket_ms, buckets counted, then
// four per key: kind, delta, bucket (rolling windows), ttl_ms (budgets). A window's bucket is adjusted only while it is in the window
// and a quota only while its key lives: a refund or excess that comes later
// than that no longer counts.
var settleScript = redis.NewScript(scriptClock + `
for i, key in ipairs(KEYS) do
	local a = 3 + (i - 1) * 4
	local kind, delta = ARGV[a + 1], ARGV[a + 2]
	if kind == 'r' then
		if tonumber(ARGV[a + 3]) > cur - nb and redis.call('HEXISTS', key, ARGV[a + 3]) == 1 then
			redis.call('HINCRBY', key, ARGV[a + 3], delta)
		end
	elseif kind == 'q' then
		if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, delta) end
	else
		redis.call('INCRBYFLOAT', key, delta)
		redis.call('PEXPIRE', key, ARGV[a + 4])
	end
end
return 1
`)

// peekScript reads counters for Peek, changing nothing.
//
// ARGV: now_ms (0: the server's clock), bucket_ms, buckets counted, then
// one kind per key ('r', 'q', 'b').
// Returns two values per key: for a window the count in it and the Unix ms
// it is whole again (0: it counts nothing); for a quota its count
// and 0; for a budget the spent cost as a string (Lua numbers are returned
// as integers) and 0. Windows count their buckets as the admit script
// does.
var peekScript = redis.NewScript(scriptClock + `
local out = {}
for i, key in ipairs(KEYS) do
	local kind = ARGV[3 + i]
	if kind == 'r' then
		local h = redis.call('HGETALL', key)
		local used, newest = 0, -1
		for j = 1, #h, 2 do
			local b, v = tonumber(h[j]), tonumber(h[j + 1])
			if b > cur - nb and b <= cur + nb and v ~= 0 then
				used = used + v
				if b > newest then newest = b end
			end
		end
		out[#out + 1] = used
		out[#out + 1] = newest >= 0 and (newest + nb) * bms or 0
	elseif kind == 'q' then
		out[#out + 1] = tonumber(redis.call('GET', key) or '0')
		out[#out + 1] = 0
	else
		out[#out + 1] = redis.call('GET', key) or '0'
		out[#out + 1] = 0
	end
end
return out
`)

// peek reads the counters of rules (per-user ones excepted: see Peek) in
// one round trip, within the timeout.
func (s *redisStore) peek(ctx context.Context, now time.Time, rules []rule, per *periods, out []reading) error {
	var keys []string
	args := []any{s.clock(now), s.geo.bucket, s.geo.n}
	var idx []int // the rule of each key
	for i := range rules {
		r := &rules[i]
		if r.perUser {
			continue
		}
		c := check{rule: r}
		c.periodStart, c.periodEnd = per.bounds(r.kind)
		keys = append(keys, s.key(&c))
		args = append(args, kindArg(r.kind))
		idx = append(idx, i)
	}
	if keys == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := peekScript.Run(ctx, s.client, keys, args...).Slice()
	if err != nil {
		return err
	}
	if len(v) != 2*len(keys) {
		return fmt.Errorf("ratelimit: peek script returned %d values for %d keys", len(v), len(keys))
	}
	for j, i := range idx {
		a, b := v[2*j], v[2*j+1]
		if sp, ok := a.(string); ok {
			f, err := strconv.ParseFloat(sp, 64)
			if err != nil {
				return fmt.Errorf("ratelimit: budget counter %s: %w", keys[j], err)
			}
			out[i].spent = f
			continue
		}
		used, ok1 := a.(int64)
		whole, ok2 := b.(int64)
		if !ok1 || !ok2 {
			return fmt.Errorf("ratelimit: peek script returned %T, %T for %s", a, b, keys[j])
		}
		out[i].used, out[i].whole = used, whole
	}
	return nil
}

func (s *redisStore) admit(ctx context.Context, now time.Time, cs []check) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	keys := make([]string, len(cs))
	args := make([]any, 0, 3+5*len(cs))
	args = append(args, s.clock(now), s.geo.bucket, s.geo.n)
	for i := range cs {
		c := &cs[i]
		keys[i] = s.key(c)
		var limit any = c.rule.limit
		if c.rule.kind == kindBudget {
			limit = c.rule.budget
		}
		shadow := "0"
		if c.rule.shadow {
			shadow = "1"
		}
		args = append(args, kindArg(c.rule.kind), limit, c.n, shadow, ttl(c, now))
	}
	out, err := admitScript.Run(ctx, s.client, keys, args...).Int64Slice()
	if err != nil {
		return err
	}
	if len(out) != 2+5*len(cs) {
		return fmt.Errorf("ratelimit: admit script returned %d values for %d keys", len(out), len(cs))
	}
	for i := range cs {
		c, v := &cs[i], out[2+5*i:]
		c.limit = c.rule.limit
		c.fits, c.took = v[0] == 1, v[1] == 1
		c.used, c.retry, c.reset = v[2], v[3], v[4]
		c.bucket = out[1]
	}
	return nil
}

func (s *redisStore) settle(ctx context.Context, now time.Time, cs []check, tokens int64, cost float64) error {
	return s.settleVia(ctx, s.client, now, cs, tokens, cost)
}

// settleVia settles checks s took through client: s's own, or after a
// reload closed it, the newest Limiter's (Reservation.Settle).
func (s *redisStore) settleVia(ctx context.Context, client *redis.Client, now time.Time, cs []check, tokens int64, cost float64) error {
	var keys []string
	var args []any
	for i := range cs {
		c := &cs[i]
		d, f := c.adjustment(tokens, cost)
		if d == 0 && f == 0 {
			continue
		}
		if args == nil {
			args = append(make([]any, 0, 3+4*len(cs)), s.clock(now), s.geo.bucket, s.geo.n)
		}
		keys = append(keys, s.key(c))
		var delta any = d
		if c.rule.kind == kindBudget {
			delta = f
		}
		args = append(args, kindArg(c.rule.kind), delta, c.bucket, ttl(c, now))
	}
	if keys == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return settleScript.Run(ctx, client, keys, args...).Err()
}

// warm loads the scripts. Without it, the first burst after a start finds
// them missing: every request then pays a second round trip (NOSCRIPT, then
// EVAL with the source) at the moment the connection pool is still being
// dialed, and enough of them exceed the timeout to fall back. (After an
// outage the probe's own EVAL reloads them.)
func (s *redisStore) warm() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := admitScript.Load(ctx, s.client).Err(); err != nil {
		return err
	}
	return settleScript.Load(ctx, s.client).Err()
}

// clock is the scripts' now_ms argument: 0 (use the server's clock) unless
// a test fixed the clock.
func (s *redisStore) clock(now time.Time) int64 {
	if s.fixed {
		return now.UnixMilli()
	}
	return 0
}

// key is c's counter: prefix, rule key with the user, and for quotas and
// budgets the period's start (Unix seconds).
func (s *redisStore) key(c *check) string {
	k := s.prefix + c.rule.keyHead + c.user + c.rule.keyTail
	if !c.rule.kind.rate() {
		k += ":" + strconv.FormatInt(c.periodStart/1000, 10)
	}
	return k
}

func kindArg(k kind) string {
	switch {
	case k.rate():
		return "r"
	case k == kindBudget:
		return "b"
	default:
		return "q"
	}
}

// ttl keeps a period's counter until an hour past the period's end, for
// settlements of requests still running at the boundary. It is relative
// (PEXPIRE), so the gateway's and the server's clocks need not agree.
func ttl(c *check, now time.Time) int64 {
	if c.rule.kind.rate() {
		return 0
	}
	return c.periodEnd - now.UnixMilli() + time.Hour.Milliseconds()
}

// circuit tracks whether Redis answers. While it does not, requests skip
// it (the fallback decides) except for one probe per interval, so an outage
// costs each request nothing and recovery needs no restart.
//
// A refused or broken connection opens the circuit at once. A timeout only
// sends its own request to the fallback, until tripTimeouts happen with no
// success between them: a burst that queues a few calls past the timeout
// must not hand the next second of traffic to local counters that start
// from zero.
type circuit struct {
	every    time.Duration
	down     atomic.Bool
	next     atomic.Int64 // Unix ns of the next probe while down
	timeouts atomic.Int64 // since the last success
	// errs counts failed calls; the Limiter's counter, which reloads
	// carry over (WithPrevious), so StoreErrors never decreases.
	errs *atomic.Uint64
}

const tripTimeouts = 3

// allow reports whether to call Redis: always while it is up; while it is
// down, for the one caller that claims the next probe.
func (c *circuit) allow() bool {
	if !c.down.Load() {
		return true
	}
	next, now := c.next.Load(), time.Now().UnixNano()
	return now >= next && c.next.CompareAndSwap(next, now+int64(c.every))
}

// failed counts a failed call and opens the circuit when it should.
func (c *circuit) failed(log *slog.Logger, err error, fallback string) {
	c.errs.Add(1)
	if c.down.Load() || isTimeout(err) && c.timeouts.Add(1) < tripTimeouts {
		return
	}
	c.trip(log, err, fallback)
}

// trip opens the circuit, logging on the first failure of an outage.
func (c *circuit) trip(log *slog.Logger, err error, fallback string) {
	c.next.Store(time.Now().Add(c.every).UnixNano())
	if c.down.CompareAndSwap(false, true) {
		log.LogAttrs(context.Background(), slog.LevelError, "ratelimit: Redis unreachable; "+fallback+" until it answers",
			slog.String("error", err.Error()))
	}
}

// ok records a success: it ends an outage, logging it once.
func (c *circuit) ok(log *slog.Logger) {
	if c.timeouts.Load() != 0 {
		c.timeouts.Store(0)
	}
	if c.down.Load() && c.down.CompareAndSwap(true, false) {
		log.LogAttrs(context.Background(), slog.LevelInfo, "ratelimit: Redis answers again; limits are shared across replicas again")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout) ||
		errors.As(err, &ne) && ne.Timeout()
}

// ErrStoreUnavailable is the cause of Admit's 503 (CodeUnavailable) while
// Redis is unreachable and on_store_error is closed, and of Peek's errors
// with store: redis when its counters cannot be read.
var ErrStoreUnavailable = errors.New("ratelimit: the Redis limit store is unreachable")
