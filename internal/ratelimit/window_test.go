package ratelimit

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// at is t0 plus a number of seconds.
func at(secs float64) time.Time { return t0.Add(time.Duration(secs * float64(time.Second))) }

// TestRPMWindow: capacity comes back exactly as buckets leave the window,
// and Retry-After says when.
func TestRPMWindow(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(at(0.5))
			cfg := limitsConfig([]config.Limit{{RPM: 3}})
			l := st.new(t, cfg, WithClock(clk.Now))
			s := Subject{App: &cfg.Apps[0], Model: "gpt-4o"}

			mustAdmit(t, l, s, 10) // bucket 0
			clk.Set(at(10.2))
			mustAdmit(t, l, s, 10) // bucket 10
			clk.Set(at(20.7))
			mustAdmit(t, l, s, 10) // bucket 20

			// Bucket 0 leaves the window at 61 s: the whole of its second
			// is then more than a minute old.
			clk.Set(at(30))
			e := mustRefuse(t, l, s, 10, http.StatusTooManyRequests, CodeRateLimited)
			if ra, ms := retryAfter(e); ra != "31" || ms != "31000" {
				t.Errorf("at 30 s: Retry-After %s, retry-after-ms %s; want 31, 31000", ra, ms)
			}
			if want := "app a: 3 requests per minute exceeded; retry after 31 seconds"; e.Message != want {
				t.Errorf("message %q, want %q", e.Message, want)
			}
			clk.Set(at(60.999))
			e = mustRefuse(t, l, s, 10, http.StatusTooManyRequests, CodeRateLimited)
			if ra, ms := retryAfter(e); ra != "1" || ms != "1" {
				t.Errorf("at 60.999 s: Retry-After %s, retry-after-ms %s; want 1, 1", ra, ms)
			}
			clk.Set(at(61))
			mustAdmit(t, l, s, 10)
			e = mustRefuse(t, l, s, 10, http.StatusTooManyRequests, CodeRateLimited)
			if ra, _ := retryAfter(e); ra != "10" {
				t.Errorf("at 61 s: Retry-After %s, want 10 (bucket 10 leaves at 71 s)", ra)
			}
			clk.Set(at(71))
			mustAdmit(t, l, s, 10)
			clk.Set(at(81))
			mustAdmit(t, l, s, 10)
			mustRefuse(t, l, s, 10, http.StatusTooManyRequests, CodeRateLimited)
		})
	}
}

// TestTPMWindow: multi-token requests fit only where the window has room,
// and Retry-After waits for enough of it, not just for any bucket.
func TestTPMWindow(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(at(0.5))
			cfg := limitsConfig([]config.Limit{{TPM: 1000}})
			l := st.new(t, cfg, WithClock(clk.Now))
			s := Subject{App: &cfg.Apps[0], Model: "gpt-4o"}

			mustAdmit(t, l, s, 400) // bucket 0
			clk.Set(at(5.5))
			mustAdmit(t, l, s, 100) // bucket 5
			clk.Set(at(6.5))
			mustAdmit(t, l, s, 300) // bucket 6
			clk.Set(at(10.5))
			// 800 used: 300 more needs bucket 0's 400 gone (at 61 s).
			e := mustRefuse(t, l, s, 300, http.StatusTooManyRequests, CodeRateLimited)
			if ra, ms := retryAfter(e); ra != "51" || ms != "50500" {
				t.Errorf("Retry-After %s, retry-after-ms %s; want 51, 50500", ra, ms)
			}
			if !strings.Contains(e.Message, "1000 tokens per minute exceeded (this request reserves 300") {
				t.Errorf("message %q", e.Message)
			}
			res := mustAdmit(t, l, s, 200) // exactly full
			if h := headers(res); h.Get("X-Ratelimit-Remaining-Tokens") != "0" {
				t.Errorf("remaining tokens %q, want 0", h.Get("X-Ratelimit-Remaining-Tokens"))
			}
			e = mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeRateLimited)
			if ra, _ := retryAfter(e); ra != "51" {
				t.Errorf("1 token: Retry-After %s, want 51", ra)
			}
			// At 61 s, 600 used: 600 more needs 200 freed, which takes
			// buckets 5 and 6 (gone at 67 s).
			clk.Set(at(61))
			e = mustRefuse(t, l, s, 600, http.StatusTooManyRequests, CodeRateLimited)
			if ra, _ := retryAfter(e); ra != "6" {
				t.Errorf("600 tokens at 61 s: Retry-After %s, want 6", ra)
			}
			mustAdmit(t, l, s, 400)
		})
	}
}

// TestSettle: a refund frees capacity at once; an excess pushes the
// window over its limit and later requests wait it out; a settlement after
// the bucket left the window changes nothing; only the first call counts.
func TestSettle(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(at(0.5))
			tpm := []config.Limit{{TPM: 1000}}
			cfg := limitsConfig(tpm, tpm, tpm)
			l := st.new(t, cfg, WithClock(clk.Now))
			ctx := context.Background()
			refund := Subject{App: &cfg.Apps[0], Model: "gpt-4o"}
			excess := Subject{App: &cfg.Apps[1], Model: "gpt-4o"}
			late := Subject{App: &cfg.Apps[2], Model: "gpt-4o"}

			r := mustAdmit(t, l, refund, 1000)
			mustRefuse(t, l, refund, 1, http.StatusTooManyRequests, CodeRateLimited)
			r.Settle(ctx, 100, 0)
			r.Settle(ctx, 0, 0) // ignored: settled already
			mustAdmit(t, l, refund, 900)
			mustRefuse(t, l, refund, 1, http.StatusTooManyRequests, CodeRateLimited)

			r = mustAdmit(t, l, excess, 500)
			r.Settle(ctx, 2500, 0)
			clk.Set(at(30))
			e := mustRefuse(t, l, excess, 1, http.StatusTooManyRequests, CodeRateLimited)
			if ra, _ := retryAfter(e); ra != "31" {
				t.Errorf("after an excess: Retry-After %s, want 31", ra)
			}
			clk.Set(at(61))
			mustAdmit(t, l, excess, 1000)

			r = mustAdmit(t, l, late, 1000)
			clk.Set(at(122)) // bucket 61 has left
			r.Settle(ctx, 0, 0)
			mustAdmit(t, l, late, 1000)
			mustRefuse(t, l, late, 1, http.StatusTooManyRequests, CodeRateLimited)
		})
	}
}

// TestNeverFits: a request larger than a whole limit is refused at once,
// without a Retry-After to wait for.
func TestNeverFits(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			cfg := limitsConfig([]config.Limit{{TPM: 1000}}, []config.Limit{{TokensPerDay: 500}},
				[]config.Limit{{TPM: 100, Shadow: true}})
			cfg.Limits.QuotaStatus = http.StatusForbidden
			l := st.new(t, cfg, WithClock(newClock(at(0)).Now))
			e := mustRefuse(t, l, Subject{App: &cfg.Apps[0], Model: "m"}, 1001, http.StatusTooManyRequests, CodeRateLimited)
			if !strings.Contains(e.Message, "reserves 1001 tokens") || !strings.Contains(e.Message, "can never be admitted") ||
				e.Header.Get("Retry-After") != "" {
				t.Errorf("tpm: %q, headers %v", e.Message, e.Header)
			}
			e = mustRefuse(t, l, Subject{App: &cfg.Apps[1], Model: "m"}, 501, http.StatusForbidden, CodeQuotaExceeded)
			if !strings.Contains(e.Message, "quota of 500 tokens per day") || e.Header.Get("Retry-After") != "" {
				t.Errorf("quota: %q, headers %v", e.Message, e.Header)
			}
			res := mustAdmit(t, l, Subject{App: &cfg.Apps[2], Model: "m"}, 101)
			if len(res.ShadowRefused) != 1 || res.ShadowRefused[0] != "app/c/limits[0].tpm" {
				t.Errorf("shadow: ShadowRefused %q", res.ShadowRefused)
			}
		})
	}
}

// TestHeaders: names and values of the x-ratelimit-* headers, from the
// tightest limit, on admission and on refusal.
func TestHeaders(t *testing.T) {
	clk := newClock(at(0.5))
	cfg := limitsConfig([]config.Limit{{RPM: 10, TPM: 1000}, {Per: "user", RPM: 3}, {RPM: 1, Shadow: true}})
	l := newLimiter(t, cfg, nil, WithClock(clk.Now))
	s := Subject{App: &cfg.Apps[0], User: "u1", Model: "gpt-4o"}

	res := mustAdmit(t, l, s, 100)
	want := http.Header{
		"X-Ratelimit-Limit-Requests":     {"3"}, // the user's limit leaves less than the app's
		"X-Ratelimit-Remaining-Requests": {"2"},
		"X-Ratelimit-Reset-Requests":     {"1m0.5s"},
		"X-Ratelimit-Limit-Tokens":       {"1000"},
		"X-Ratelimit-Remaining-Tokens":   {"900"},
		"X-Ratelimit-Reset-Tokens":       {"1m0.5s"},
	}
	if h := headers(res); !equalHeaders(h, want) {
		t.Errorf("headers\n got %v\nwant %v", h, want)
	}

	clk.Set(at(10.5))
	mustAdmit(t, l, s, 100)
	mustAdmit(t, l, s, 100)
	e := mustRefuse(t, l, s, 100, http.StatusTooManyRequests, CodeRateLimited)
	want = http.Header{
		"Retry-After":                    {"51"},
		"Retry-After-Ms":                 {"50500"},
		"X-Ratelimit-Limit-Requests":     {"3"},
		"X-Ratelimit-Remaining-Requests": {"0"},
		"X-Ratelimit-Reset-Requests":     {"1m0.5s"}, // whole again when bucket 10 leaves, at 71 s
		"X-Ratelimit-Limit-Tokens":       {"1000"},
		"X-Ratelimit-Remaining-Tokens":   {"700"},
		"X-Ratelimit-Reset-Tokens":       {"1m0.5s"},
	}
	if !equalHeaders(e.Header, want) {
		t.Errorf("refusal headers\n got %v\nwant %v", e.Header, want)
	}
	if want := "app a, user u1: 3 requests per minute exceeded; retry after 51 seconds"; e.Message != want {
		t.Errorf("message %q, want %q", e.Message, want)
	}

	// No rpm or tpm limit applies: no headers. A nil Reservation is safe.
	quota := limitsConfig([]config.Limit{{TokensPerDay: 1000}})
	lq := newLimiter(t, quota, nil, WithClock(clk.Now))
	if h := headers(mustAdmit(t, lq, Subject{App: &quota.Apps[0], Model: "m"}, 10)); len(h) != 0 {
		t.Errorf("quota only: headers %v", h)
	}
	var none *Reservation
	if h := headers(none); len(h) != 0 {
		t.Errorf("nil reservation: headers %v", h)
	}
	none.Settle(context.Background(), 1, 1)
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if len(a[k]) != 1 || a[k][0] != v[0] {
			return false
		}
	}
	return true
}

// TestGeometry: a minute is 60 one-second buckets plus the current one;
// other windows keep at most 60 whole-millisecond buckets.
func TestGeometry(t *testing.T) {
	for _, tc := range []struct {
		window    time.Duration
		bucket, n int64
	}{
		{time.Minute, 1000, 61},
		{time.Second, 17, 60},
		{3 * time.Second, 50, 61},
		{90 * time.Second, 1500, 61},
		{time.Hour, 60000, 61},
	} {
		if g := newGeometry(tc.window); g.bucket != tc.bucket || g.n != tc.n || g.n > maxBuckets {
			t.Errorf("%v: bucket %d ms, %d counted; want %d, %d", tc.window, g.bucket, g.n, tc.bucket, tc.n)
		}
	}
}

// TestShortWindow: limits.window shorter than a minute, as the demo uses.
func TestShortWindow(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clk := newClock(at(0))
			cfg := limitsConfig([]config.Limit{{RPM: 2}})
			cfg.Limits.Window = 3 * time.Second
			l := st.new(t, cfg, WithClock(clk.Now))
			s := Subject{App: &cfg.Apps[0], Model: "m"}
			mustAdmit(t, l, s, 1)
			mustAdmit(t, l, s, 1)
			e := mustRefuse(t, l, s, 1, http.StatusTooManyRequests, CodeRateLimited)
			if ra, ms := retryAfter(e); ra != "4" || ms != "3050" {
				t.Errorf("Retry-After %s, retry-after-ms %s; want 4, 3050", ra, ms)
			}
			if !strings.Contains(e.Message, "2 requests per 3s exceeded") {
				t.Errorf("message %q", e.Message)
			}
			clk.Set(at(3.05))
			mustAdmit(t, l, s, 1)
		})
	}
}
