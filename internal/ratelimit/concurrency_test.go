package ratelimit

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/testenv"
)

// burst runs n Admits at once, spread over the limiters, and returns how
// many were admitted and the tokens they reserved. Any error but a rate
// refusal fails the test.
func burst(t *testing.T, ls []*Limiter, s Subject, n int, tokens func(i int) int64) (admitted int, reserved int64) {
	t.Helper()
	var (
		start = make(chan struct{})
		wg    sync.WaitGroup
		ok    atomic.Int64
		sum   atomic.Int64
		errs  = make(chan error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			_, err := ls[i%len(ls)].Admit(context.Background(), s, tokens(i))
			var e *openai.Error
			switch {
			case err == nil:
				ok.Add(1)
				sum.Add(tokens(i))
			case errors.As(err, &e) && e.Code == CodeRateLimited:
			default:
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Admit: %v", err)
	}
	return int(ok.Load()), sum.Load()
}

func one(int) int64 { return 1 }

// TestConcurrentAdmit: 1,000 simultaneous requests against 600 rpm admit
// exactly 600, on either store and across three replicas sharing Redis.
func TestConcurrentAdmit(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		cfg := limitsConfig([]config.Limit{{RPM: 600}})
		l := newLimiter(t, cfg, nil)
		if n, _ := burst(t, []*Limiter{l}, Subject{App: &cfg.Apps[0], Model: "m"}, 1000, one); n != 600 {
			t.Fatalf("admitted %d, want 600", n)
		}
	})
	t.Run("redis", func(t *testing.T) {
		cfg := limitsConfig([]config.Limit{{RPM: 600}})
		useRedis(cfg, testenv.Redis(t).Addr())
		l := newLimiter(t, cfg, nil)
		if n, _ := burst(t, []*Limiter{l}, Subject{App: &cfg.Apps[0], Model: "m"}, 1000, one); n != 600 {
			t.Fatalf("admitted %d, want 600", n)
		}
	})
	t.Run("replicas", func(t *testing.T) {
		cfg := limitsConfig([]config.Limit{{RPM: 600}}, []config.Limit{{TPM: 20000}})
		cfg.Limits.Replicas = 3
		useRedis(cfg, testenv.Redis(t).Addr())
		ls := []*Limiter{newLimiter(t, cfg, nil), newLimiter(t, cfg, nil), newLimiter(t, cfg, nil)}
		if n, _ := burst(t, ls, Subject{App: &cfg.Apps[0], Model: "m"}, 1000, one); n != 600 {
			t.Fatalf("rpm: admitted %d, want 600", n)
		}
		// Varied sizes (20 to 119 tokens, 600 requests asking ~42,000):
		// never over the limit, and nearly full.
		n, reserved := burst(t, ls, Subject{App: &cfg.Apps[1], Model: "m"}, 600, func(i int) int64 { return 20 + int64(i*37%100) })
		t.Logf("tpm 20000: %d requests admitted, %d tokens reserved", n, reserved)
		if reserved > 20000 || reserved < 20000-119 {
			t.Fatalf("tpm: %d tokens reserved, want at most 20000 and more than %d", reserved, 20000-119)
		}
		for _, l := range ls {
			if l.StoreErrors() != 0 {
				t.Fatalf("%d store errors", l.StoreErrors())
			}
		}
	})
}

// TestRedisOutage: Redis killed mid-test. Fail-open enforces limit /
// replicas locally and logs once; fail-closed answers 503; both go back to
// Redis by themselves when it is back.
func TestRedisOutage(t *testing.T) {
	srv := testenv.Redis(t)
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			srv.Start()
			var logs testenv.Buffer
			cfg := limitsConfig([]config.Limit{{RPM: 30}})
			cfg.Limits.Replicas = 3
			cfg.Limits.OnStoreError = mode
			cfg.Limits.Redis.Timeout = 500 * time.Millisecond
			useRedis(cfg, srv.Addr())
			l := newLimiter(t, cfg, logTo(&logs))
			l.redis.circuit.every = 100 * time.Millisecond
			s := Subject{App: &cfg.Apps[0], Model: "m"}
			ctx := context.Background()

			before := mustAdmit(t, l, s, 1)
			srv.Stop()
			start := time.Now()
			before.Settle(ctx, 1, 0) // fails or is skipped, within the timeout
			if d := time.Since(start); d > time.Second {
				t.Errorf("Settle during the outage took %v", d)
			}
			codes := map[int]int{}
			for range 15 {
				_, e := admit(t, l, s, 1)
				if e == nil {
					codes[http.StatusOK]++
					continue
				}
				codes[e.Status]++
				if e.Status == http.StatusServiceUnavailable && (e.Code != CodeUnavailable || e.Header.Get("Retry-After") == "") {
					t.Errorf("503: %s %v", e.Code, e.Header)
				}
			}
			want := map[int]int{http.StatusOK: 10, http.StatusTooManyRequests: 5} // 30 / 3 replicas
			if mode == "closed" {
				want = map[int]int{http.StatusServiceUnavailable: 15}
			}
			if len(codes) != len(want) || codes[200] != want[200] || codes[429] != want[429] || codes[503] != want[503] {
				t.Fatalf("during the outage: %v, want %v", codes, want)
			}
			if l.StoreErrors() == 0 {
				t.Error("StoreErrors is 0 during an outage")
			}

			srv.Start()
			deadline := time.Now().Add(5 * time.Second)
			for {
				res, e := admit(t, l, s, 1)
				// Redis counts 30 per minute, where the local share (10)
				// is used up: only Redis can admit this.
				if e == nil {
					if h := headers(res); h.Get("X-Ratelimit-Limit-Requests") != "30" {
						t.Fatalf("after recovery: headers %v", h)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("still refused 5 s after Redis came back: %v", e)
				}
				time.Sleep(50 * time.Millisecond)
			}
			out := logs.String()
			if n := strings.Count(out, "Redis unreachable"); n != 1 {
				t.Errorf("%d outage lines, want 1:\n%s", n, out)
			}
			if n := strings.Count(out, "Redis answers again"); n != 1 {
				t.Errorf("%d recovery lines, want 1:\n%s", n, out)
			}
		})
	}
}

// TestRedisHangs: a Redis that accepts connections but never answers costs
// a request at most limits.redis.timeout, then the fallback decides; a few
// timeouts in a row open the circuit, and then requests do not wait at all.
func TestRedisHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var conns []net.Conn // read nothing, answer nothing
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	var logs testenv.Buffer
	cfg := limitsConfig([]config.Limit{{RPM: 4}})
	cfg.Limits.Store, cfg.Limits.Redis.Addr = "redis", ln.Addr().String()
	cfg.Limits.Redis.Timeout = 100 * time.Millisecond
	start := time.Now()
	l := newLimiter(t, cfg, logTo(&logs))
	if d := time.Since(start); d > time.Second || !l.redis.circuit.down.Load() || l.StoreErrors() != 1 {
		t.Fatalf("New took %v, circuit down %v, %d errors; want about 100ms, true, 1", d, l.redis.circuit.down.Load(), l.StoreErrors())
	}
	// As if Redis had answered until now.
	l.redis.circuit.ok(slog.New(slog.DiscardHandler))
	s := Subject{App: &cfg.Apps[0], Model: "m"}
	for i := range tripTimeouts {
		start := time.Now()
		mustAdmit(t, l, s, 1) // each one times out, and falls back alone
		if d := time.Since(start); d < 90*time.Millisecond || d > time.Second {
			t.Errorf("request %d took %v with a 100ms timeout", i, d)
		}
		if down := l.redis.circuit.down.Load(); down != (i == tripTimeouts-1) {
			t.Errorf("after %d timeouts: circuit down %v", i+1, down)
		}
	}
	start = time.Now()
	mustAdmit(t, l, s, 1)
	mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeRateLimited)
	// Either one waiting on Redis would take its whole timeout.
	if d := time.Since(start); d >= cfg.Limits.Redis.Timeout {
		t.Errorf("two requests with the circuit open took %v: one waited on Redis", d)
	}
	if l.StoreErrors() != 1+tripTimeouts {
		t.Errorf("StoreErrors %d, want %d", l.StoreErrors(), 1+tripTimeouts)
	}
	if n := strings.Count(logs.String(), "Redis unreachable"); n != 2 {
		t.Errorf("%d outage lines, want 2 (at New, after the timeouts):\n%s", n, logs.String())
	}
}

// TestSweep: idle counters are dropped, bounding memory.
func TestSweep(t *testing.T) {
	clk := newClock(at(0))
	cfg := limitsConfig([]config.Limit{{Per: "user", RPM: 5, TokensPerHour: 1000}})
	l := newLimiter(t, cfg, nil, WithClock(clk.Now))
	for i := range 100 {
		mustAdmit(t, l, Subject{App: &cfg.Apps[0], User: strconv.Itoa(i), Model: "m"}, 1)
	}
	if len(l.mem.windows) != 100 || len(l.mem.quotas) != 100 {
		t.Fatalf("%d windows, %d quotas; want 100 each", len(l.mem.windows), len(l.mem.quotas))
	}
	clk.Set(at(3600)) // the next hour: every window and quota is idle
	mustAdmit(t, l, Subject{App: &cfg.Apps[0], User: "new", Model: "m"}, 1)
	if len(l.mem.windows) != 1 || len(l.mem.quotas) != 1 {
		t.Fatalf("after the sweep: %d windows, %d quotas; want 1 each", len(l.mem.windows), len(l.mem.quotas))
	}
}
