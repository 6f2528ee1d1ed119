package ratelimit

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/testenv"
)

// withLog is WithClock's sibling for tests: the limiter logs to log.
func withLog(log *slog.Logger) Option { return func(l *Limiter) { l.log = log } }

// TestQuotaPeriods: quotas reset at calendar boundaries of the configured
// zone, across DST changes and month ends, and refusals say when.
func TestQuotaPeriods(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skipf("no tzdata: %v", err)
	}
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	cases := []struct {
		name  string
		limit config.Limit
		// The quota is used up at full, refused until reset, whose local
		// form is resets; retry is Retry-After at full.
		full, reset time.Time
		resets      string
		retry       string
	}{
		// 01:30 EST; the next hour starts at 03:00 EDT, one hour after 01:00 EST.
		{"hour, spring forward", config.Limit{TokensPerHour: 100}, utc("2025-03-09T06:30:00Z"), utc("2025-03-09T07:00:00Z"),
			"2025-03-09T03:00:00-04:00", "1800"},
		// 01:30 EDT; the repeated 01:00-02:00 (EST) is a new hour.
		{"hour, fall back", config.Limit{TokensPerHour: 100}, utc("2025-11-02T05:30:00Z"), utc("2025-11-02T06:00:00Z"),
			"2025-11-02T01:00:00-05:00", "1800"},
		// March 9 has 23 hours: noon EDT to midnight is 12 hours.
		{"day, spring forward", config.Limit{TokensPerDay: 100}, utc("2025-03-09T16:00:00Z"), utc("2025-03-10T04:00:00Z"),
			"2025-03-10T00:00:00-04:00", "43200"},
		// November 2 has 25 hours: midnight EDT to midnight EST.
		{"day, fall back", config.Limit{TokensPerDay: 100}, utc("2025-11-02T04:00:00Z"), utc("2025-11-03T05:00:00Z"),
			"2025-11-03T00:00:00-05:00", "90000"},
		{"month, January 31", config.Limit{TokensPerMonth: 100}, utc("2025-02-01T04:59:00Z"), utc("2025-02-01T05:00:00Z"),
			"2025-02-01T00:00:00-05:00", "60"},
		{"month, February 28", config.Limit{TokensPerMonth: 100}, utc("2025-03-01T04:00:00Z"), utc("2025-03-01T05:00:00Z"),
			"2025-03-01T00:00:00-05:00", "3600"},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			var limits [][]config.Limit
			for _, tc := range cases {
				limits = append(limits, []config.Limit{tc.limit})
			}
			cfg := limitsConfig(limits...)
			cfg.Limits.TimeZone = ny.String()
			clk := newClock(t0)
			l := st.new(t, cfg, WithClock(clk.Now))
			for i, tc := range cases {
				s := Subject{App: &cfg.Apps[i], Model: "m"}
				// Used the period before: does not count in this one.
				clk.Set(tc.full.Add(-time.Hour * 24 * 32))
				mustAdmit(t, l, s, 100)

				clk.Set(tc.full)
				mustAdmit(t, l, s, 60)
				mustAdmit(t, l, s, 40)
				e := mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeQuotaExceeded)
				if ra, _ := retryAfter(e); ra != tc.retry || !strings.Contains(e.Message, "it resets at "+tc.resets) {
					t.Errorf("%s: Retry-After %s, message %q; want %s and reset %s", tc.name, ra, e.Message, tc.retry, tc.resets)
				}
				clk.Set(tc.reset.Add(-time.Millisecond))
				mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeQuotaExceeded)
				clk.Set(tc.reset)
				mustAdmit(t, l, s, 100)
			}
		})
	}
}

// TestQuotaSettle: quotas reserve the estimate and settle to the actual.
func TestQuotaSettle(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			cfg := limitsConfig([]config.Limit{{TokensPerDay: 1000}})
			l := st.new(t, cfg, WithClock(newClock(at(0)).Now))
			s := Subject{App: &cfg.Apps[0], Model: "m"}
			r := mustAdmit(t, l, s, 1000)
			mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeQuotaExceeded)
			r.Settle(context.Background(), 300, 0)
			r = mustAdmit(t, l, s, 700)
			r.Settle(context.Background(), 800, 0) // 1100: over
			e := mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeQuotaExceeded)
			if want := "app a: quota of 1000 tokens per day exhausted (this request reserves 1 tokens); it resets at 2025-06-03T00:00:00Z"; e.Message != want {
				t.Errorf("message %q, want %q", e.Message, want)
			}
		})
	}
}

// TestBudget: admitted while spent < budget; Settle adds the cost; the
// requests in flight when it runs out overrun it; a new month starts over.
func TestBudget(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(time.Date(2025, 6, 30, 10, 0, 0, 0, time.UTC))
			cfg := limitsConfig([]config.Limit{{BudgetPerMonth: 1}})
			cfg.Limits.QuotaStatus = http.StatusForbidden
			l := st.new(t, cfg, WithClock(clk.Now))
			s := Subject{App: &cfg.Apps[0], Model: "m"}
			ctx := context.Background()

			mustAdmit(t, l, s, 100).Settle(ctx, 100, 0.6)
			r2, r3 := mustAdmit(t, l, s, 100), mustAdmit(t, l, s, 100) // both in flight
			r2.Settle(ctx, 100, 0.6)
			r3.Settle(ctx, 100, 0.6) // 1.8 spent: the overrun in-flight requests allow
			e := mustRefuse(t, l, s, 100, http.StatusForbidden, CodeQuotaExceeded)
			if want := "app a: budget of 1 per month spent; it resets at 2025-07-01T00:00:00Z"; e.Message != want {
				t.Errorf("message %q, want %q", e.Message, want)
			}
			if ra, _ := retryAfter(e); ra != "50400" {
				t.Errorf("Retry-After %s, want 50400 (14 h)", ra)
			}
			clk.Set(time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC))
			mustAdmit(t, l, s, 100)
			// Operations without a model cost nothing: budgets ignore them.
			clk.Set(time.Date(2025, 6, 30, 11, 0, 0, 0, time.UTC))
			mustAdmit(t, l, Subject{App: &cfg.Apps[0]}, 0)
		})
	}
}

// TestShadow: shadow limits never refuse; they report and log what they
// would have refused, and count only what they would have admitted.
func TestShadow(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			var logs testenv.Buffer
			clk := newClock(at(0))
			cfg := limitsConfig([]config.Limit{{RPM: 1, Shadow: true}, {TPM: 100, Shadow: true}, {RPM: 10}})
			l := st.new(t, cfg, WithClock(clk.Now), withLog(logTo(&logs)))
			s := Subject{App: &cfg.Apps[0], Model: "m"}

			if r := mustAdmit(t, l, s, 50); r.ShadowRefused != nil {
				t.Errorf("first request: ShadowRefused %q", r.ShadowRefused)
			}
			clk.Set(at(1))
			r := mustAdmit(t, l, s, 60)
			if got := strings.Join(r.ShadowRefused, " "); got != "app/a/limits[0].rpm app/a/limits[1].tpm" {
				t.Errorf("second request: ShadowRefused %q", got)
			}
			// The tpm shadow counted only the first 50: 50 more fit.
			if r := mustAdmit(t, l, s, 50); strings.Join(r.ShadowRefused, " ") != "app/a/limits[0].rpm" {
				t.Errorf("third request: ShadowRefused %q", r.ShadowRefused)
			}
			if r := mustAdmit(t, l, s, 101); strings.Join(r.ShadowRefused, " ") != "app/a/limits[1].tpm app/a/limits[0].rpm" {
				t.Errorf("larger than the tpm: ShadowRefused %q", r.ShadowRefused)
			}
			if h := headers(r); h.Get("X-Ratelimit-Limit-Requests") != "10" || h.Get("X-Ratelimit-Limit-Tokens") != "" {
				t.Errorf("headers count shadow limits: %v", h)
			}
			out := logs.String()
			if n := strings.Count(out, `msg="ratelimit: shadow limit would refuse" app=a limit=app/a/limits[0].rpm retry_after=1m0s`); n != 3 {
				t.Errorf("%d rpm shadow lines, want 3:\n%s", n, out)
			}
			if !strings.Contains(out, "limit=app/a/limits[1].tpm never_fits=true") {
				t.Errorf("no never-fits shadow line:\n%s", out)
			}
		})
	}
}

// TestScopes: per-user, per-model and team limits, and all-or-nothing
// admission across them.
func TestScopes(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			cfg := limitsConfig(
				[]config.Limit{{Per: "user", RPM: 2}},     // a
				[]config.Limit{{Model: "gpt-4o", RPM: 1}}, // b
				nil, // c, team t
				nil, // d, team t
				nil, // e
				[]config.Limit{{RPM: 5, TPM: 10, TokensPerDay: 10}},    // f
				[]config.Limit{{RPM: 10}},                              // g, team t2
				[]config.Limit{{Per: "user", Model: "gpt-4o", RPM: 1}}, // h
			)
			cfg.Apps[2].Team, cfg.Apps[3].Team, cfg.Apps[6].Team = "t", "t", "t2"
			cfg.Teams = []config.Team{{Name: "t", Limits: []config.Limit{{RPM: 3}}}, {Name: "t2", Limits: []config.Limit{{TPM: 100}}}}
			l := st.new(t, cfg, WithClock(newClock(at(0)).Now))
			app := func(i int, user, model string) Subject { return Subject{App: &cfg.Apps[i], User: user, Model: model} }
			const rate = http.StatusTooManyRequests

			// Per user: each caller has their own counter; no caller id, no limit.
			mustAdmit(t, l, app(0, "u1", "m"), 1)
			mustAdmit(t, l, app(0, "u1", "m"), 1)
			if e := mustRefuse(t, l, app(0, "u1", "m"), 1, rate, CodeRateLimited); !strings.HasPrefix(e.Message, "app a, user u1: 2 requests per minute") {
				t.Errorf("per user: %q", e.Message)
			}
			mustAdmit(t, l, app(0, "u2", "m"), 1)
			for range 3 {
				mustAdmit(t, l, app(0, "", "m"), 1)
			}

			// Per model: only that model counts.
			mustAdmit(t, l, app(1, "", "gpt-4o"), 1)
			if e := mustRefuse(t, l, app(1, "", "gpt-4o"), 1, rate, CodeRateLimited); !strings.HasPrefix(e.Message, "app b, model gpt-4o: 1 requests per minute") {
				t.Errorf("per model: %q", e.Message)
			}
			mustAdmit(t, l, app(1, "", "gpt-4o-mini"), 1)
			mustAdmit(t, l, app(7, "u1", "gpt-4o"), 1)
			mustRefuse(t, l, app(7, "u1", "gpt-4o"), 1, rate, CodeRateLimited)
			mustAdmit(t, l, app(7, "u2", "gpt-4o"), 1)
			mustAdmit(t, l, app(7, "u1", "gpt-4o-mini"), 1)

			// Team: two apps share the team's counter; an app without a team is free.
			mustAdmit(t, l, app(2, "", "m"), 1)
			mustAdmit(t, l, app(3, "", "m"), 1)
			mustAdmit(t, l, app(2, "", "m"), 1)
			for _, i := range []int{2, 3} {
				if e := mustRefuse(t, l, app(i, "", "m"), 1, rate, CodeRateLimited); !strings.HasPrefix(e.Message, "team t: 3 requests per minute") {
					t.Errorf("team: %q", e.Message)
				}
			}
			for range 5 {
				mustAdmit(t, l, app(4, "", "m"), 1)
			}

			// Without a model only request limits count.
			r := mustAdmit(t, l, app(5, "", ""), 1000)
			if h := headers(r); h.Get("X-Ratelimit-Limit-Requests") != "5" || h.Get("X-Ratelimit-Limit-Tokens") != "" {
				t.Errorf("no model: headers %v", h)
			}

			// All or nothing: the team's tpm refuses, so the app's rpm
			// counter takes nothing either.
			mustAdmit(t, l, app(6, "", "m"), 60)
			mustRefuse(t, l, app(6, "", "m"), 60, rate, CodeRateLimited)
			if h := headers(mustAdmit(t, l, app(6, "", "m"), 40)); h.Get("X-Ratelimit-Remaining-Requests") != "8" {
				t.Errorf("a refused request took from another limit: remaining %q, want 8", h.Get("X-Ratelimit-Remaining-Requests"))
			}

			// An app the config does not register still gets its limits;
			// no app means no limits.
			other := &config.App{Name: "zz", Limits: []config.Limit{{RPM: 1}}}
			mustAdmit(t, l, Subject{App: other, Model: "m"}, 1)
			mustRefuse(t, l, Subject{App: other, Model: "m"}, 1, rate, CodeRateLimited)
			for range 3 {
				mustAdmit(t, l, Subject{Model: "m"}, 1)
			}
		})
	}
}

// TestRules: ids name the config field; keys name what is counted, so
// reordering limits keeps counters, and equal scopes get distinct keys.
func TestRules(t *testing.T) {
	app := &config.App{Name: "batch", Team: "t", Limits: []config.Limit{
		{RPM: 10, TPM: 1000},
		{Per: "user", Model: "gpt-4o", RPM: 2},
		{RPM: 20},
		{RPM: 5, Shadow: true},
		{BudgetPerMonth: 2.5},
	}}
	teams := compileTeams([]config.Team{{Name: "t", Limits: []config.Limit{{TokensPerDay: 7}}}}, time.Minute)
	var got []string
	for _, r := range compileRules(app, teams, time.Minute) {
		got = append(got, r.id+" "+r.key+" "+r.what)
	}
	want := []string{
		"app/batch/limits[0].rpm a:batch:rpm 10 requests per minute",
		"app/batch/limits[0].tpm a:batch:tpm 1000 tokens per minute",
		"app/batch/limits[1].rpm a:batch:m:gpt-4o:u::rpm 2 requests per minute",
		"app/batch/limits[2].rpm a:batch:rpm#2 20 requests per minute",
		"app/batch/limits[3].rpm a:batch:rpm~shadow 5 requests per minute",
		"app/batch/limits[4].budget_per_month a:batch:budget_per_month budget of 2.5 per month",
		"team/t/limits[0].tokens_per_day t:t:tokens_per_day quota of 7 tokens per day",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
