package ratelimit

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/testenv"
)

// reload builds the Limiter of a reloaded config: limits as given, the
// store settings (Redis address and key prefix included) of old's config.
func reload(t *testing.T, prev *Limiter, old *config.Config, limits []config.Limit, opts ...Option) (*Limiter, *config.Config) {
	t.Helper()
	cfg := limitsConfig(limits)
	cfg.Limits = old.Limits
	return newLimiter(t, cfg, nil, append(opts, WithPrevious(prev))...), cfg
}

// TestReloadKeepsCounters: a reload resets no counter, and a changed
// number applies to what is counted: 5 requests under rpm 5 leave exactly
// 5 more under rpm 10 and none under rpm 3. Quotas and budgets carry over
// alike, and closing the previous Limiter changes nothing.
func TestReloadKeepsCounters(t *testing.T) {
	cases := []struct {
		name   string
		before config.Limit
		after  config.Limit
		fill   func(t *testing.T, l *Limiter, s Subject) // uses up before
		admits int                                       // requests of 1 token admitted after the reload
		code   string                                    // of the refusal that follows
	}{
		{"rpm 5 to 10", config.Limit{RPM: 5}, config.Limit{RPM: 10}, admitN(5, 1), 5, CodeRateLimited},
		{"rpm 5 to 3", config.Limit{RPM: 5}, config.Limit{RPM: 3}, admitN(5, 1), 0, CodeRateLimited},
		{"rpm 5 to 5", config.Limit{RPM: 5}, config.Limit{RPM: 5}, admitN(5, 1), 0, CodeRateLimited},
		{"tpm 100 to 103", config.Limit{TPM: 100}, config.Limit{TPM: 103}, admitN(1, 100), 3, CodeRateLimited},
		{"per-user rpm 2 to 4", config.Limit{Per: "user", RPM: 2}, config.Limit{Per: "user", RPM: 4}, admitN(2, 1), 2, CodeRateLimited},
		{"tokens_per_day 50 to 52", config.Limit{TokensPerDay: 50}, config.Limit{TokensPerDay: 52}, admitN(1, 50), 2, CodeQuotaExceeded},
		{"budget 1 to 2", config.Limit{BudgetPerMonth: 1}, config.Limit{BudgetPerMonth: 2}, func(t *testing.T, l *Limiter, s Subject) {
			mustAdmit(t, l, s, 1).Settle(context.Background(), 1, 1.5) // spent 1.5: room under 2
		}, 1, ""},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					clk := newClock(at(0.5))
					cfg := limitsConfig([]config.Limit{tc.before})
					l := st.new(t, cfg, WithClock(clk.Now))
					s := Subject{App: &cfg.Apps[0], User: "u1", Model: "m"}
					tc.fill(t, l, s)
					clk.Set(at(10))
					l2, cfg2 := reload(t, l, cfg, []config.Limit{tc.after}, WithClock(clk.Now))
					if err := l.Close(context.Background()); err != nil {
						t.Fatal(err)
					}
					s2 := Subject{App: &cfg2.Apps[0], User: "u1", Model: "m"}
					for i := range tc.admits {
						res, e := admit(t, l2, s2, 1)
						if e != nil {
							t.Fatalf("request %d after the reload refused: %v", i+1, e)
						}
						res.Settle(context.Background(), 1, 1) // budgets: spent 2.5 after the first
					}
					if tc.code == "" {
						tc.code = CodeQuotaExceeded
					}
					mustRefuse(t, l2, s2, 1, http.StatusTooManyRequests, tc.code)
				})
			}
		})
	}
}

// admitN admits n requests of tokens each.
func admitN(n int, tokens int64) func(*testing.T, *Limiter, Subject) {
	return func(t *testing.T, l *Limiter, s Subject) {
		t.Helper()
		for range n {
			mustAdmit(t, l, s, tokens)
		}
		if _, e := admit(t, l, s, tokens); e == nil {
			t.Fatalf("admitted after %d requests of %d tokens: the limit is not used up", n, tokens)
		}
	}
}

// TestReloadSettlesPrevious: reservations taken before a reload settle
// into the counters the new Limiter reads, also after the previous one is
// closed; once every Limiter is closed, Redis settlements are dropped
// quietly.
func TestReloadSettlesPrevious(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(at(0.5))
			limits := []config.Limit{{TPM: 1000, TokensPerDay: 5000}, {BudgetPerMonth: 1}}
			cfg := limitsConfig(limits)
			l := st.new(t, cfg, WithClock(clk.Now))
			ctx := context.Background()
			s := Subject{App: &cfg.Apps[0], Model: "m"}
			refund := mustAdmit(t, l, s, 600)
			excess := mustAdmit(t, l, s, 400)
			late := mustAdmit(t, l, s, 0)

			clk.Set(at(5))
			l2, cfg2 := reload(t, l, cfg, limits, WithClock(clk.Now))
			s2 := Subject{App: &cfg2.Apps[0], Model: "m"}
			mustRefuse(t, l2, s2, 1, http.StatusTooManyRequests, CodeRateLimited)
			refund.Settle(ctx, 100, 0.25) // before the old Limiter is closed: 500 tokens free
			if err := l.Close(ctx); err != nil {
				t.Fatal(err)
			}
			excess.Settle(ctx, 500, 0.5) // after: 100 more used, budget spent 0.75
			peekUsed(t, l2, &cfg2.Apps[0], map[string]int64{"tpm": 600, "tokens_per_day": 600})
			mustAdmit(t, l2, s2, 400)
			mustRefuse(t, l2, s2, 1, http.StatusTooManyRequests, CodeRateLimited)
			if st, _ := l2.Peek(ctx, &cfg2.Apps[0]); st[2].Spent != 0.75 {
				t.Errorf("budget spent %v after settling on the closed Limiter, want 0.75", st[2].Spent)
			}
			if err := l2.Close(ctx); err != nil {
				t.Fatal(err)
			}
			late.Settle(ctx, 0, 1) // nowhere to go with Redis; the memory counters still take it
			if l.StoreErrors() != 0 || l2.StoreErrors() != 0 {
				t.Errorf("StoreErrors %d, %d; want 0", l.StoreErrors(), l2.StoreErrors())
			}
		})
	}
}

// peekUsed fails unless Peek reports used for the app's limits of the
// given kinds.
func peekUsed(t *testing.T, l *Limiter, a *config.App, want map[string]int64) {
	t.Helper()
	st, err := l.Peek(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if w, ok := want[s.Kind]; ok && s.Used != w {
			t.Errorf("%s: used %d, want %d", s.ID, s.Used, w)
		}
	}
}

// TestReloadWindowChange: a changed limits.window restarts the rates,
// whose buckets no longer line up (with Redis in both directions: buckets
// counted at another length neither count nor linger), and keeps quotas.
func TestReloadWindowChange(t *testing.T) {
	for _, st := range stores {
		for _, tc := range []struct{ from, to time.Duration }{{time.Minute, 3 * time.Second}, {3 * time.Second, time.Minute}} {
			t.Run(st.name+"/"+tc.from.String()+" to "+tc.to.String(), func(t *testing.T) {
				clk := newClock(at(0.5))
				limits := []config.Limit{{RPM: 2, TokensPerDay: 100}}
				cfg := limitsConfig(limits)
				cfg.Limits.Window = tc.from
				l := st.new(t, cfg, WithClock(clk.Now))
				s := Subject{App: &cfg.Apps[0], Model: "m"}
				mustAdmit(t, l, s, 10)
				mustAdmit(t, l, s, 10)
				mustRefuse(t, l, s, 10, http.StatusTooManyRequests, CodeRateLimited)

				clk.Set(at(1))
				cfg2 := limitsConfig(limits)
				cfg2.Limits = cfg.Limits
				cfg2.Limits.Window = tc.to
				l2 := newLimiter(t, cfg2, nil, WithClock(clk.Now), WithPrevious(l))
				s2 := Subject{App: &cfg2.Apps[0], Model: "m"}
				peekUsed(t, l2, s2.App, map[string]int64{"rpm": 0, "tokens_per_day": 20})
				mustAdmit(t, l2, s2, 10)
				mustAdmit(t, l2, s2, 10)
				mustRefuse(t, l2, s2, 10, http.StatusTooManyRequests, CodeRateLimited)
				peekUsed(t, l2, s2.App, map[string]int64{"rpm": 2, "tokens_per_day": 40})
			})
		}
	}
}

// TestReloadRedisOutage: a reload during a Redis outage keeps the outage
// (logged once, not again), the local fallback's counters and the error
// count; the reload after Redis is back ends it.
func TestReloadRedisOutage(t *testing.T) {
	srv := testenv.Redis(t)
	var logs testenv.Buffer
	cfg := limitsConfig([]config.Limit{{RPM: 3}})
	useRedis(cfg, srv.Addr())
	cfg.Limits.OnStoreError = "open"
	cfg.Limits.Redis.Timeout = 500 * time.Millisecond
	l1 := newLimiter(t, cfg, logTo(&logs))
	s := Subject{App: &cfg.Apps[0], Model: "m"}
	mustAdmit(t, l1, s, 1) // in Redis

	srv.Stop()
	mustAdmit(t, l1, s, 1) // fails over: local 1
	mustAdmit(t, l1, s, 1) // local 2
	errs := l1.StoreErrors()
	if errs == 0 || !l1.redis.circuit.down.Load() {
		t.Fatalf("after the outage began: %d errors, circuit down %v", errs, l1.redis.circuit.down.Load())
	}

	l2 := newLimiter(t, cfg, logTo(&logs), WithPrevious(l1)) // New cannot reach Redis: one more error
	if err := l1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l2.StoreErrors(); got != errs+1 || !l2.redis.circuit.down.Load() {
		t.Fatalf("after a reload in the outage: %d errors (want %d), circuit down %v", got, errs+1, l2.redis.circuit.down.Load())
	}
	mustAdmit(t, l2, s, 1) // local 3
	mustRefuse(t, l2, s, 1, http.StatusTooManyRequests, CodeRateLimited)

	srv.Start()
	l3 := newLimiter(t, cfg, logTo(&logs), WithPrevious(l2))
	if got := l3.StoreErrors(); got != errs+1 || l3.redis.circuit.down.Load() {
		t.Fatalf("after a reload with Redis back: %d errors (want %d), circuit down %v", got, errs+1, l3.redis.circuit.down.Load())
	}
	mustAdmit(t, l3, s, 1) // Redis, emptied by the restart
	out := logs.String()
	if n := strings.Count(out, "Redis unreachable"); n != 1 {
		t.Errorf("%d outage lines, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "Redis answers again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, out)
	}
}

// TestReloadStoreChange: switching stores starts the counters over.
func TestReloadStoreChange(t *testing.T) {
	addr := testenv.Redis(t).Addr()
	cfg := limitsConfig([]config.Limit{{RPM: 1}})
	l := newLimiter(t, cfg, nil)
	mustAdmit(t, l, Subject{App: &cfg.Apps[0], Model: "m"}, 1)
	cfg2 := limitsConfig([]config.Limit{{RPM: 1}})
	useRedis(cfg2, addr)
	l2 := newLimiter(t, cfg2, nil, WithPrevious(l))
	mustAdmit(t, l2, Subject{App: &cfg2.Apps[0], Model: "m"}, 1)
	cfg3 := limitsConfig([]config.Limit{{RPM: 1}})
	l3 := newLimiter(t, cfg3, nil, WithPrevious(l2))
	mustAdmit(t, l3, Subject{App: &cfg3.Apps[0], Model: "m"}, 1)
	mustRefuse(t, l3, Subject{App: &cfg3.Apps[0], Model: "m"}, 1, http.StatusTooManyRequests, CodeRateLimited)
}

// TestReloadConcurrent: requests on the old and the new Limiter at once,
// as during a swap, share one set of counters: 600 rpm admit exactly 600.
func TestReloadConcurrent(t *testing.T) {
	cfg := limitsConfig([]config.Limit{{RPM: 600}})
	l := newLimiter(t, cfg, nil)
	l2, _ := reload(t, l, cfg, []config.Limit{{RPM: 600}})
	if n, _ := burst(t, []*Limiter{l, l2}, Subject{App: &cfg.Apps[0], Model: "m"}, 1000, one); n != 600 {
		t.Fatalf("admitted %d, want 600", n)
	}
}
