package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/upstream"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		h    map[string]string
		want time.Duration
		ok   bool
	}{
		{"retry-after-ms", map[string]string{"retry-after-ms": "1500", "retry-after": "9"}, 1500 * time.Millisecond, true},
		{"retry-after-ms fractional", map[string]string{"retry-after-ms": "20.5"}, 20500 * time.Microsecond, true},
		{"retry-after seconds", map[string]string{"retry-after": "7"}, 7 * time.Second, true},
		{"retry-after date", map[string]string{"retry-after": now.Add(30 * time.Second).Format(http.TimeFormat)}, 30 * time.Second, true},
		{"retry-after past date", map[string]string{"retry-after": now.Add(-time.Minute).Format(http.TimeFormat), "x-ratelimit-reset-tokens": "2s"}, 2 * time.Second, true},
		{"reset-requests", map[string]string{"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, time.Second, true},
		{"reset-tokens", map[string]string{"x-ratelimit-reset-tokens": "6m0s"}, 6 * time.Minute, true},
		{"reset ms", map[string]string{"x-ratelimit-reset-tokens": "20ms"}, 20 * time.Millisecond, true},
		{"reset bare seconds", map[string]string{"x-ratelimit-reset-requests": "3"}, 3 * time.Second, true},
		{"garbage ms falls through", map[string]string{"retry-after-ms": "soon", "retry-after": "4"}, 4 * time.Second, true},
		{"garbage everywhere", map[string]string{"retry-after-ms": "x", "retry-after": "tomorrow", "x-ratelimit-reset-requests": "-1s", "x-ratelimit-reset-tokens": "1y"}, 0, false},
		{"zero", map[string]string{"retry-after": "0"}, 0, false},
		{"negative", map[string]string{"retry-after": "-5"}, 0, false},
		{"absurd", map[string]string{"retry-after": "1e300"}, 0, false},
		{"none", nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.h {
				h.Set(k, v)
			}
			got, ok := RetryAfter(h, now)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("RetryAfter = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// clock is a fake time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func newClocked(t *testing.T, doc string) (*Balancer, *clock) {
	t.Helper()
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	backends := map[string]*upstream.Backend{}
	for _, bc := range cfg.Backends {
		backends[bc.Name], _ = upstream.NewBackend(bc)
	}
	c := &clock{now: time.Unix(1_800_000_000, 0)}
	b, err := New(cfg, backends, slog.New(slog.DiscardHandler), WithClock(c.Now))
	if err != nil {
		t.Fatal(err)
	}
	return b, c
}

const twoTier = `
identity: {anonymous: true}
backends:
  - {name: ptu, endpoint: "http://127.0.0.1:1", auth: {type: none}}
  - {name: a, endpoint: "http://127.0.0.1:2", auth: {type: none}}
  - {name: b, endpoint: "http://127.0.0.1:3", auth: {type: none}}
pools:
  - name: main
    strategy: round-robin
    backends: [{backend: ptu, priority: 1}, {backend: a, priority: 2}, {backend: b, priority: 2}]
    breaker: {failures: 2, interval: 10s, trip_duration: 5s}
    retry: {attempts: 3, budget: 30s}
models:
  - name: m
    deployments: [{backend: ptu}, {backend: a}, {backend: b}]
`

func resp(status int, h ...string) *http.Response {
	r := &http.Response{StatusCode: status, Header: http.Header{}, Body: http.NoBody}
	for i := 0; i+1 < len(h); i += 2 {
		r.Header.Set(h[i], h[i+1])
	}
	return r
}

// try runs one request's first attempt and reports r for it.
func try(t *testing.T, b *Balancer, r *http.Response, err error) (string, bool) {
	t.Helper()
	s, e := b.Select("main", "m", 100, true)
	if e != nil {
		t.Fatal(e)
	}
	tg, e := s.Next()
	if e != nil {
		return "", false
	}
	s.Report(r, err)
	return tg.Backend.Name, true
}

func TestBreakerTripsForRetryAfterThenProbesOnce(t *testing.T) {
	b, clk := newClocked(t, twoTier)
	// One failure is below the rule's count of 2: still closed.
	if got, _ := try(t, b, resp(500), nil); got != "ptu" {
		t.Fatalf("first pick %s", got)
	}
	if got, _ := try(t, b, resp(429, "retry-after", "7"), nil); got != "ptu" {
		t.Fatalf("second pick %s", got)
	}
	// Tripped for exactly 7 s (the backend's retry-after, not trip_duration).
	for _, d := range []time.Duration{0, 3 * time.Second, 3900 * time.Millisecond} {
		clk.Advance(d)
		if got, _ := try(t, b, resp(200), nil); got == "ptu" {
			t.Fatalf("ptu picked %v into its 7s trip", d)
		}
	}
	clk.Advance(200 * time.Millisecond) // 7.1s: half-open
	s1, _ := b.Select("main", "m", 100, true)
	probe, _ := s1.Next()
	if probe.Backend.Name != "ptu" {
		t.Fatalf("the half-open probe went to %s", probe.Backend.Name)
	}
	// While the probe is in flight nobody else gets ptu.
	for range 5 {
		s, _ := b.Select("main", "m", 100, true)
		if tg, _ := s.Next(); tg.Backend.Name == "ptu" {
			t.Fatal("a second request reached a half-open backend during its probe")
		}
	}
	if snap := b.Snapshot(); snap[len(snap)-1].Backend != "ptu" || snap[len(snap)-1].State != StateHalfOpen {
		t.Fatalf("snapshot %+v", snap)
	}
	s1.Report(resp(200), nil)
	if got, _ := try(t, b, resp(200), nil); got != "ptu" {
		t.Fatalf("after a good probe ptu should take traffic again, got %s", got)
	}
}

func TestServerErrorIgnoresQuotaResetHeaders(t *testing.T) {
	b, clk := newClocked(t, strings.Replace(twoTier, "failures: 2", "failures: 1", 1))
	// A 503 from a rate-limited deployment carries x-ratelimit-reset-* (when
	// its quota window is full again): that is no request to wait 60 s.
	try(t, b, resp(503, "x-ratelimit-reset-requests", "60s", "x-ratelimit-reset-tokens", "60s"), nil)
	clk.Advance(5100 * time.Millisecond) // past trip_duration 5s
	if got, _ := try(t, b, resp(200), nil); got != "ptu" {
		t.Fatalf("a 503 tripped the breaker past trip_duration: got %s", got)
	}
	// A 503 that asks explicitly is honoured.
	try(t, b, resp(503, "retry-after", "20"), nil)
	clk.Advance(10 * time.Second)
	if got, _ := try(t, b, resp(200), nil); got == "ptu" {
		t.Fatal("a 503's retry-after: 20 was not honoured")
	}
}

func TestFailedProbeRetrips(t *testing.T) {
	b, clk := newClocked(t, twoTier)
	try(t, b, resp(503), nil)
	try(t, b, resp(503), nil) // tripped for trip_duration 5s (no retry-after)
	clk.Advance(4 * time.Second)
	if got, _ := try(t, b, resp(200), nil); got == "ptu" {
		t.Fatal("ptu picked inside trip_duration")
	}
	clk.Advance(1100 * time.Millisecond)
	if got, _ := try(t, b, resp(500), nil); got != "ptu" { // the probe fails: re-trip at once
		t.Fatalf("probe went to %s", got)
	}
	if got, _ := try(t, b, resp(200), nil); got == "ptu" {
		t.Fatal("a failed probe must re-open the breaker")
	}
}

func TestRetriesNeverRepeatABackendAndStopAtAttempts(t *testing.T) {
	b, _ := newClocked(t, twoTier)
	s, _ := b.Select("main", "m", 100, true)
	seen := map[string]bool{}
	for i := 0; ; i++ {
		tg, err := s.Next()
		if err != nil {
			if !errors.Is(err, errNoMore) || i != 3 {
				t.Fatalf("after %d attempts: %v", i, err)
			}
			break
		}
		if seen[tg.Backend.Name] {
			t.Fatalf("%s tried twice", tg.Backend.Name)
		}
		seen[tg.Backend.Name] = true
		if retry := s.Report(nil, fmt.Errorf("dial tcp: connection refused")); retry != (i < 2) {
			t.Fatalf("attempt %d: retry=%v", i, retry)
		}
	}
	if len(s.Attempts()) != 3 || !s.Spilled() {
		t.Fatalf("attempts %+v spilled %v", s.Attempts(), s.Spilled())
	}
	// A 400 is the client's problem: never retried.
	s, _ = b.Select("main", "m", 100, true)
	_, _ = s.Next()
	if s.Report(resp(400), nil) {
		t.Fatal("a 400 was retried")
	}
	// Without a replayable body there is one attempt only.
	s, _ = b.Select("main", "m", 100, false)
	_, _ = s.Next()
	if s.Report(resp(503), nil) {
		t.Fatal("retried a request whose body cannot be re-sent")
	}
}

func TestAllThrottledAnswers429WithSoonestRetryAfter(t *testing.T) {
	b, _ := newClocked(t, strings.Replace(twoTier, "failures: 2", "failures: 1", 1))
	for _, ra := range []string{"9", "3", "6"} {
		if _, ok := try(t, b, resp(429, "retry-after", ra), nil); !ok {
			t.Fatal("no backend left before all were tripped")
		}
	}
	s, _ := b.Select("main", "m", 100, true)
	_, err := s.Next()
	var e *openai.Error
	if !errors.As(err, &e) || e.Status != 429 || e.Header.Get("Retry-After") != "3" {
		t.Fatalf("want 429 with retry-after 3, got %v %v", err, e)
	}
}

func TestSteeringSpillsBeforeA429(t *testing.T) {
	b, clk := newClocked(t, twoTier)
	// ptu says 500 tokens remain for the next 2 s.
	try(t, b, resp(200, "x-ratelimit-remaining-tokens", "500", "x-ratelimit-reset-tokens", "2s"), nil)
	// A request estimated at 100 tokens still fits...
	if got, _ := try(t, b, resp(200), nil); got != "ptu" {
		t.Fatalf("got %s", got)
	}
	// ...one at 1000 does not: it spills to priority 2.
	s, _ := b.Select("main", "m", 1000, true)
	if tg, _ := s.Next(); tg.Backend.Name == "ptu" || !s.Spilled() {
		t.Fatalf("not steered away: %s", tg.Backend.Name)
	}
	// After the window resets, ptu is eligible again.
	clk.Advance(2100 * time.Millisecond)
	s, _ = b.Select("main", "m", 1000, true)
	if tg, _ := s.Next(); tg.Backend.Name != "ptu" {
		t.Fatalf("after reset got %s", tg.Backend.Name)
	}
}

func TestRoundRobinShares(t *testing.T) {
	b, _ := newClocked(t, twoTier)
	try(t, b, resp(503), nil)
	try(t, b, resp(503), nil) // trip ptu so priority 2 serves
	count := map[string]int{}
	for range 100 {
		name, _ := try(t, b, resp(200), nil)
		count[name]++
	}
	if count["a"] != 50 || count["b"] != 50 {
		t.Fatalf("round-robin shares %v", count)
	}
}

func benchPool(n int) string {
	doc := "identity: {anonymous: true}\nbackends:\n"
	members, deps := "", ""
	for i := range n {
		doc += fmt.Sprintf("  - {name: b%d, endpoint: \"http://127.0.0.1:%d\", auth: {type: none}}\n", i, 1000+i)
		members += fmt.Sprintf("{backend: b%d, priority: %d},", i, 1+i%2)
		deps += "{backend: b" + strconv.Itoa(i) + "},"
	}
	return doc + "pools: [{name: main, backends: [" + members + "]}]\nmodels: [{name: m, deployments: [" + deps + "]}]\n"
}

// BenchmarkSelect measures one request's pick (select + next + report) as
// the pool grows (half the backends at priority 1, half at 2), and with
// 1000 backends when half of priority 1 is tripped.
func BenchmarkSelect(b *testing.B) {
	for _, c := range []struct {
		n       int
		tripped bool
	}{{1, false}, {10, false}, {100, false}, {1000, false}, {1000, true}} {
		name := strconv.Itoa(c.n)
		if c.tripped {
			name += "/half-tripped"
		}
		b.Run(name, func(b *testing.B) {
			cfg, err := config.Parse([]byte(benchPool(c.n)), func(string) (string, bool) { return "", false })
			if err != nil {
				b.Fatal(err)
			}
			backends := map[string]*upstream.Backend{}
			for _, bc := range cfg.Backends {
				backends[bc.Name], _ = upstream.NewBackend(bc)
			}
			bal, _ := New(cfg, backends, slog.New(slog.DiscardHandler))
			if c.tripped {
				for i, m := range bal.pools["main"].aliases["m"][0].members {
					if i%2 == 0 {
						m.state.openUntil.Store(time.Now().Add(time.Hour).UnixNano())
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ok := resp(200, "x-ratelimit-remaining-tokens", "100000")
				for pb.Next() {
					s, _ := bal.Select("main", "m", 100, true)
					if _, err := s.Next(); err != nil {
						b.Fatal(err)
					}
					ok.Body = http.NoBody // Report wraps it
					s.Report(ok, nil)
				}
			})
		})
	}
}

// BenchmarkNew measures building a Balancer for a reloaded config
// (WithPrevious: every deployment's State carries over) as the pool grows.
func BenchmarkNew(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			cfg, err := config.Parse([]byte(benchPool(n)), func(string) (string, bool) { return "", false })
			if err != nil {
				b.Fatal(err)
			}
			backends := map[string]*upstream.Backend{}
			for _, bc := range cfg.Backends {
				backends[bc.Name], _ = upstream.NewBackend(bc)
			}
			log := slog.New(slog.DiscardHandler)
			prev, err := New(cfg, backends, log)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(cfg, backends, log, WithPrevious(prev)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestWithPreviousKeepsBreakerState(t *testing.T) {
	b, clk := newClocked(t, twoTier)
	try(t, b, resp(500), nil)
	try(t, b, resp(429, "retry-after", "30"), nil) // ptu trips for 30s
	// The reloaded config drops backend b and changes a's weight.
	doc := strings.Replace(twoTier, "{backend: b, priority: 2}]", "]", 1)
	doc = strings.Replace(doc, "{backend: a, priority: 2},", "{backend: a, priority: 2, weight: 5}", 1)
	doc = strings.Replace(doc, ", {backend: b}]", "]", 1)
	doc = strings.Replace(doc, `  - {name: b, endpoint: "http://127.0.0.1:3", auth: {type: none}}`+"\n", "", 1)
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	backends := map[string]*upstream.Backend{}
	for _, bc := range cfg.Backends {
		backends[bc.Name], _ = upstream.NewBackend(bc)
	}
	nb, err := New(cfg, backends, slog.New(slog.DiscardHandler), WithClock(clk.Now), WithPrevious(b))
	if err != nil {
		t.Fatal(err)
	}
	if nb.prev != nil {
		t.Fatal("the new balancer keeps its predecessor: every reload would chain the old ones in memory")
	}
	snap := nb.Snapshot()
	if len(snap) != 2 {
		t.Fatalf("want a and ptu, got %+v", snap)
	}
	if ptu := snap[1]; ptu.Backend != "ptu" || ptu.State != StateOpen || ptu.Trips != 1 {
		t.Fatalf("ptu's open breaker did not survive the reload: %+v", ptu)
	}
	// The open breaker keeps steering new requests away; a request that
	// started on the old balancer reports into the same state.
	if got, _ := try(t, nb, resp(200), nil); got != "a" {
		t.Fatalf("picked %s while ptu is open", got)
	}
	clk.Advance(31 * time.Second)
	if got, _ := try(t, nb, resp(200), nil); got != "ptu" {
		t.Fatalf("ptu should take the half-open probe after its trip, got %s", got)
	}
	if s := b.Snapshot(); s[len(s)-1].State != StateClosed {
		t.Fatalf("the old balancer should see the shared state closed again: %+v", s)
	}
}
