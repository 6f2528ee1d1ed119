package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/testenv"
)

// TestPeek: every limit of an app with what its counter holds, on both
// stores alike, as the window moves; reading takes nothing.
func TestPeek(t *testing.T) {
	limits := []config.Limit{
		{RPM: 10, TPM: 1000},
		{Per: "user", RPM: 2},
		{Model: "gpt-4o", TPM: 500},
		{TokensPerDay: 5000},
		{BudgetPerMonth: 2.5},
		{RPM: 1, Shadow: true},
	}
	// Quotas reset at midnight in Paris (22:00 UTC in June).
	const day, month = `"resets_at":"2025-06-03T00:00:00+02:00"`, `"resets_at":"2025-07-01T00:00:00+02:00"`
	// Bucket 0 leaves the window at 61 s, bucket 10 at 71 s (14:01:01 and
	// 14:01:11 in Paris).
	const b0, b10 = `"resets_at":"2025-06-02T14:01:01+02:00"`, `"resets_at":"2025-06-02T14:01:11+02:00"`
	steps := []struct {
		at   float64
		want []string // JSON of each LimitState, in config order
	}{
		{0, []string{
			`{"id":"app/a/limits[0].rpm","scope":"app","kind":"rpm","limit":10,"used":0,"remaining":10}`,
			`{"id":"app/a/limits[0].tpm","scope":"app","kind":"tpm","limit":1000,"used":0,"remaining":1000}`,
			`{"id":"app/a/limits[1].rpm","scope":"app","kind":"rpm","limit":2,"per_user":true,"used":0,"remaining":2}`,
			`{"id":"app/a/limits[2].tpm","scope":"app","kind":"tpm","limit":500,"model":"gpt-4o","used":0,"remaining":500}`,
			`{"id":"app/a/limits[3].tokens_per_day","scope":"app","kind":"tokens_per_day","limit":5000,"used":0,"remaining":5000,` + day + `}`,
			`{"id":"app/a/limits[4].budget_per_month","scope":"app","kind":"budget_per_month","budget":2.5,"used":0,"remaining":0,` + month + `}`,
			`{"id":"app/a/limits[5].rpm","scope":"app","kind":"rpm","limit":1,"shadow":true,"used":0,"remaining":1}`,
			`{"id":"team/t/limits[0].tpm","scope":"team","kind":"tpm","limit":3000,"used":0,"remaining":3000}`,
		}},
		{20, []string{
			`{"id":"app/a/limits[0].rpm","scope":"app","kind":"rpm","limit":10,"used":2,"remaining":8,` + b10 + `}`,
			`{"id":"app/a/limits[0].tpm","scope":"app","kind":"tpm","limit":1000,"used":250,"remaining":750,` + b10 + `}`,
			`{"id":"app/a/limits[1].rpm","scope":"app","kind":"rpm","limit":2,"per_user":true,"used":0,"remaining":2}`,
			`{"id":"app/a/limits[2].tpm","scope":"app","kind":"tpm","limit":500,"model":"gpt-4o","used":50,"remaining":450,` + b0 + `}`,
			`{"id":"app/a/limits[3].tokens_per_day","scope":"app","kind":"tokens_per_day","limit":5000,"used":250,"remaining":4750,` + day + `}`,
			`{"id":"app/a/limits[4].budget_per_month","scope":"app","kind":"budget_per_month","budget":2.5,"used":0,"spent":0.75,"remaining":0,` + month + `}`,
			`{"id":"app/a/limits[5].rpm","scope":"app","kind":"rpm","limit":1,"shadow":true,"used":1,"remaining":0,` + b0 + `}`,
			`{"id":"team/t/limits[0].tpm","scope":"team","kind":"tpm","limit":3000,"used":250,"remaining":2750,` + b10 + `}`,
		}},
		{65, []string{ // bucket 0 has left
			`{"id":"app/a/limits[0].rpm","scope":"app","kind":"rpm","limit":10,"used":1,"remaining":9,` + b10 + `}`,
			`{"id":"app/a/limits[0].tpm","scope":"app","kind":"tpm","limit":1000,"used":200,"remaining":800,` + b10 + `}`,
			`{"id":"app/a/limits[1].rpm","scope":"app","kind":"rpm","limit":2,"per_user":true,"used":0,"remaining":2}`,
			`{"id":"app/a/limits[2].tpm","scope":"app","kind":"tpm","limit":500,"model":"gpt-4o","used":0,"remaining":500}`,
			`{"id":"app/a/limits[3].tokens_per_day","scope":"app","kind":"tokens_per_day","limit":5000,"used":250,"remaining":4750,` + day + `}`,
			`{"id":"app/a/limits[4].budget_per_month","scope":"app","kind":"budget_per_month","budget":2.5,"used":0,"spent":0.75,"remaining":0,` + month + `}`,
			`{"id":"app/a/limits[5].rpm","scope":"app","kind":"rpm","limit":1,"shadow":true,"used":0,"remaining":1}`,
			`{"id":"team/t/limits[0].tpm","scope":"team","kind":"tpm","limit":3000,"used":200,"remaining":2800,` + b10 + `}`,
		}},
		{71, []string{ // every bucket has left
			`{"id":"app/a/limits[0].rpm","scope":"app","kind":"rpm","limit":10,"used":0,"remaining":10}`,
			`{"id":"app/a/limits[0].tpm","scope":"app","kind":"tpm","limit":1000,"used":0,"remaining":1000}`,
			`{"id":"app/a/limits[1].rpm","scope":"app","kind":"rpm","limit":2,"per_user":true,"used":0,"remaining":2}`,
			`{"id":"app/a/limits[2].tpm","scope":"app","kind":"tpm","limit":500,"model":"gpt-4o","used":0,"remaining":500}`,
			`{"id":"app/a/limits[3].tokens_per_day","scope":"app","kind":"tokens_per_day","limit":5000,"used":250,"remaining":4750,` + day + `}`,
			`{"id":"app/a/limits[4].budget_per_month","scope":"app","kind":"budget_per_month","budget":2.5,"used":0,"spent":0.75,"remaining":0,` + month + `}`,
			`{"id":"app/a/limits[5].rpm","scope":"app","kind":"rpm","limit":1,"shadow":true,"used":0,"remaining":1}`,
			`{"id":"team/t/limits[0].tpm","scope":"team","kind":"tpm","limit":3000,"used":0,"remaining":3000}`,
		}},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(at(0))
			cfg := limitsConfig(limits, nil)
			cfg.Apps[0].Team = "t"
			cfg.Teams = []config.Team{{Name: "t", Limits: []config.Limit{{TPM: 3000}}}}
			cfg.Limits.TimeZone = "Europe/Paris"
			l := st.new(t, cfg, WithClock(clk.Now))
			ctx := context.Background()
			a := &cfg.Apps[0]
			for _, step := range steps {
				clk.Set(at(step.at))
				if step.at == 20 {
					// What the step at 20 s sees: two requests, one settled.
					clk.Set(at(0.5))
					mustAdmit(t, l, Subject{App: a, User: "u1", Model: "gpt-4o"}, 100).Settle(ctx, 50, 0.75)
					clk.Set(at(10.5))
					mustAdmit(t, l, Subject{App: a, User: "u2", Model: "gpt-4o-mini"}, 200)
					clk.Set(at(20))
				}
				for range 2 { // reading twice reads the same: Peek takes nothing
					got, err := l.Peek(ctx, a)
					if err != nil {
						t.Fatal(err)
					}
					if diff := diffStates(got, step.want); diff != "" {
						t.Fatalf("at %v s:\n%s", step.at, diff)
					}
				}
			}
			for _, none := range []*config.App{nil, &cfg.Apps[1]} {
				if got, err := l.Peek(ctx, none); got != nil || err != nil {
					t.Errorf("Peek(%v) = %v, %v; want nil, nil", none, got, err)
				}
			}
			// An app the config does not register: read from its own limits.
			other := &config.App{Name: "zz", Limits: []config.Limit{{RPM: 3}}}
			mustAdmit(t, l, Subject{App: other, Model: "m"}, 1)
			got, err := l.Peek(ctx, other)
			if err != nil || len(got) != 1 || got[0].Used != 1 || got[0].Remaining != 2 {
				t.Errorf("unregistered app: %+v, %v", got, err)
			}
		})
	}
}

// diffStates compares states with their expected JSON, line by line.
func diffStates(got []LimitState, want []string) string {
	var b strings.Builder
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			j, err := json.Marshal(got[i])
			if err != nil {
				return err.Error()
			}
			g = string(j)
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			fmt.Fprintf(&b, " got %s\nwant %s\n", g, w)
		}
	}
	return b.String()
}

// TestPeekMemoryReadOnly: Peek creates no counter and moves no window.
func TestPeekMemoryReadOnly(t *testing.T) {
	clk := newClock(at(0.5))
	cfg := limitsConfig([]config.Limit{{RPM: 5, TokensPerHour: 100}})
	l := newLimiter(t, cfg, nil, WithClock(clk.Now))
	if _, err := l.Peek(context.Background(), &cfg.Apps[0]); err != nil {
		t.Fatal(err)
	}
	if len(l.mem.windows) != 0 || len(l.mem.quotas) != 0 {
		t.Fatalf("Peek created %d windows, %d quotas", len(l.mem.windows), len(l.mem.quotas))
	}
	mustAdmit(t, l, Subject{App: &cfg.Apps[0], Model: "m"}, 1)
	w := *l.mem.windows[counterKey{key: "a:a:rpm"}]
	clk.Set(at(30))
	if _, err := l.Peek(context.Background(), &cfg.Apps[0]); err != nil {
		t.Fatal(err)
	}
	if got := *l.mem.windows[counterKey{key: "a:a:rpm"}]; got != w {
		t.Errorf("Peek moved the window: last %d -> %d", w.last, got.last)
	}
}

// TestPeekConcurrent: Peek while requests are admitted and settled (run
// with -race).
func TestPeekConcurrent(t *testing.T) {
	cfg := limitsConfig([]config.Limit{{RPM: 1 << 30, TPM: 1 << 40, TokensPerDay: 1 << 50, BudgetPerMonth: 1e9}})
	l := newLimiter(t, cfg, nil)
	ctx := context.Background()
	s := Subject{App: &cfg.Apps[0], Model: "m"}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				res, err := l.Admit(ctx, s, 10)
				if err != nil {
					t.Error(err)
					return
				}
				res.Settle(ctx, 5, 0.5)
			}
		})
	}
	for range 100 {
		if _, err := l.Peek(ctx, s.App); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	st, err := l.Peek(ctx, s.App)
	if err != nil || st[0].Used != 800 || st[1].Used != 4000 || st[2].Used != 4000 || st[3].Spent != 400 {
		t.Errorf("after 800 requests: %+v, %v", st, err)
	}
}

// TestPeekRedisDown: with Redis unreachable Peek fails with
// ErrStoreUnavailable within the timeout, counts the error, and reads
// again once Redis is back.
func TestPeekRedisDown(t *testing.T) {
	srv := testenv.Redis(t)
	cfg := limitsConfig([]config.Limit{{RPM: 5}})
	cfg.Limits.Redis.Timeout = 500 * time.Millisecond
	useRedis(cfg, srv.Addr())
	l := newLimiter(t, cfg, nil)
	l.redis.circuit.every = 50 * time.Millisecond
	ctx := context.Background()
	mustAdmit(t, l, Subject{App: &cfg.Apps[0], Model: "m"}, 1)

	srv.Stop()
	start := time.Now()
	for range 2 { // the call that fails, then the open circuit
		if _, err := l.Peek(ctx, &cfg.Apps[0]); !errors.Is(err, ErrStoreUnavailable) {
			t.Fatalf("Peek with Redis down: %v", err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Peek took %v with a 500ms timeout", d)
	}
	if l.StoreErrors() != 1 || !l.redis.circuit.down.Load() {
		t.Errorf("%d errors, circuit down %v; want 1, true", l.StoreErrors(), l.redis.circuit.down.Load())
	}

	srv.Start() // empty
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := l.Peek(ctx, &cfg.Apps[0])
		if err == nil {
			if len(got) != 1 || got[0].Used != 0 || l.redis.circuit.down.Load() {
				t.Errorf("with Redis back: %+v, circuit down %v", got, l.redis.circuit.down.Load())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Peek still fails 5 s after Redis came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDecisions: EachDecision reports every limit that judged an admitted
// request; RefusedBy names the limit of a refusal, through wrapping and
// openai.AsError, and nothing else.
func TestDecisions(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			cfg := limitsConfig([]config.Limit{
				{RPM: 2, TPM: 1000},
				{Model: "other", RPM: 1},
				{RPM: 1, Shadow: true},
				{TPM: 100, Shadow: true},
			}, []config.Limit{{TokensPerDay: 10}})
			l := st.new(t, cfg, WithClock(newClock(at(0)).Now))
			s := Subject{App: &cfg.Apps[0], Model: "m"}
			decisions := func(r *Reservation) string {
				var out []string
				r.EachDecision(func(id string, shadowRefused bool) { out = append(out, fmt.Sprintf("%s=%v", id, shadowRefused)) })
				return strings.Join(out, " ")
			}
			for _, tc := range []struct {
				tokens int64
				want   string
			}{
				{50, "app/a/limits[0].rpm=false app/a/limits[0].tpm=false app/a/limits[2].rpm=false app/a/limits[3].tpm=false"},
				// The tpm shadow limit can never fit 200: reported first.
				{200, "app/a/limits[3].tpm=true app/a/limits[0].rpm=false app/a/limits[0].tpm=false app/a/limits[2].rpm=true"},
			} {
				if got := decisions(mustAdmit(t, l, s, tc.tokens)); got != tc.want {
					t.Errorf("%d tokens: decisions\n %s\nwant\n %s", tc.tokens, got, tc.want)
				}
			}
			if got := decisions(nil) + decisions(mustAdmit(t, l, Subject{Model: "m"}, 1)); got != "" {
				t.Errorf("no limits: decisions %q", got)
			}

			_, rate := l.Admit(context.Background(), s, 1)
			_, never := l.Admit(context.Background(), Subject{App: &cfg.Apps[1], Model: "m"}, 11)
			mustAdmit(t, l, Subject{App: &cfg.Apps[1], Model: "m"}, 10)
			_, quota := l.Admit(context.Background(), Subject{App: &cfg.Apps[1], Model: "m"}, 1)
			for _, tc := range []struct {
				name string
				err  error
				want string
			}{
				{"rate", rate, "app/a/limits[0].rpm"},
				{"never fits", never, "app/b/limits[0].tokens_per_day"},
				{"quota", quota, "app/b/limits[0].tokens_per_day"},
				{"wrapped", fmt.Errorf("limit step: %w", rate), "app/a/limits[0].rpm"},
				{"as written", openai.AsError(quota), "app/b/limits[0].tokens_per_day"},
				{"unavailable", &openai.Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Err: ErrStoreUnavailable}, ""},
				{"other", errors.New("x"), ""},
				{"nil", nil, ""},
			} {
				if got := RefusedBy(tc.err); got != tc.want {
					t.Errorf("%s: RefusedBy(%v) = %q, want %q", tc.name, tc.err, got, tc.want)
				}
			}
			if !strings.Contains(rate.Error(), "refused by limit app/a/limits[0].rpm") {
				t.Errorf("the error does not log the limit: %v", rate)
			}
		})
	}
}

// TestRefusedByUnavailable: the 503 of a fail-closed outage names no limit.
func TestRefusedByUnavailable(t *testing.T) {
	srv := testenv.Redis(t)
	cfg := limitsConfig([]config.Limit{{RPM: 5}})
	useRedis(cfg, srv.Addr())
	l := newLimiter(t, cfg, nil)
	srv.Stop()
	_, err := l.Admit(context.Background(), Subject{App: &cfg.Apps[0], Model: "m"}, 1)
	if e := openai.AsError(err); e.Code != CodeUnavailable || RefusedBy(err) != "" || !errors.Is(err, ErrStoreUnavailable) {
		t.Errorf("Admit with Redis down: %v, RefusedBy %q", err, RefusedBy(err))
	}
}
