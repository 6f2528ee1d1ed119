package ratelimit

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/testenv"
)

// clock is a settable clock for WithClock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// t0 is a whole second, far enough ahead that Redis TTLs keep test keys.
var t0 = time.Date(2025, 6, 2, 12, 0, 0, 0, time.UTC)

// limitsConfig registers apps with the given limits (apps "a", "b", ...).
func limitsConfig(limits ...[]config.Limit) *config.Config {
	cfg := &config.Config{}
	for i, ls := range limits {
		cfg.Apps = append(cfg.Apps, config.App{Name: string(rune('a' + i)), Limits: ls})
	}
	cfg.Limits = config.Limits{Store: "memory", Window: time.Minute}
	return cfg
}

// prefixes tells tests sharing one redis-server apart.
var prefixes atomic.Int64

// storeCase builds a limiter over one kind of store.
type storeCase struct {
	name string
	new  func(t *testing.T, cfg *config.Config, opts ...Option) *Limiter
}

// stores are the memory store and, with a fixed clock passed to the
// scripts, the Redis store on a private redis-server: the same decisions
// must come out of both.
var stores = []storeCase{
	{"memory", func(t *testing.T, cfg *config.Config, opts ...Option) *Limiter {
		return newLimiter(t, cfg, nil, opts...)
	}},
	{"redis", func(t *testing.T, cfg *config.Config, opts ...Option) *Limiter {
		useRedis(cfg, testenv.Redis(t).Addr())
		return newLimiter(t, cfg, nil, opts...)
	}},
}

// useRedis points cfg at addr under a key prefix of its own.
func useRedis(cfg *config.Config, addr string) {
	cfg.Limits.Store = "redis"
	cfg.Limits.Redis.Addr = addr
	cfg.Limits.Redis.KeyPrefix = "test" + strconv.FormatInt(prefixes.Add(1), 10) + ":"
	if cfg.Limits.Redis.Timeout == 0 {
		cfg.Limits.Redis.Timeout = 5 * time.Second // -race on 2 cores
	}
	if cfg.Limits.OnStoreError == "" {
		cfg.Limits.OnStoreError = "closed" // a store error must show, not fall back
	}
}

func newLimiter(t *testing.T, cfg *config.Config, log *slog.Logger, opts ...Option) *Limiter {
	t.Helper()
	l, err := New(cfg, log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	return l
}

// admit calls Admit and returns the reservation or the *openai.Error.
func admit(t *testing.T, l *Limiter, s Subject, tokens int64) (*Reservation, *openai.Error) {
	t.Helper()
	res, err := l.Admit(context.Background(), s, tokens)
	if err == nil {
		return res, nil
	}
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("Admit: %v (not an *openai.Error)", err)
	}
	return nil, e
}

// mustAdmit fails unless s is admitted.
func mustAdmit(t *testing.T, l *Limiter, s Subject, tokens int64) *Reservation {
	t.Helper()
	res, e := admit(t, l, s, tokens)
	if e != nil {
		t.Fatalf("refused: %v", e)
	}
	return res
}

// mustRefuse fails unless s is refused with status and code, and returns
// the error.
func mustRefuse(t *testing.T, l *Limiter, s Subject, tokens int64, status int, code string) *openai.Error {
	t.Helper()
	_, e := admit(t, l, s, tokens)
	if e == nil {
		t.Fatalf("admitted; want %d %s", status, code)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("refused with %d %s (%s); want %d %s", e.Status, e.Code, e.Message, status, code)
	}
	return e
}

// retryAfter returns the refusal's Retry-After and retry-after-ms.
func retryAfter(e *openai.Error) (string, string) {
	return e.Header.Get("Retry-After"), e.Header.Get("retry-after-ms")
}

// logTo is a logger whose lines can be read back from b.
func logTo(b *testenv.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// headers returns what Reservation.Headers sets.
func headers(r *Reservation) http.Header {
	h := http.Header{}
	r.Headers(h)
	return h
}
