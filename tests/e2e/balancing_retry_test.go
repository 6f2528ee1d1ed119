package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

// TestBalancingAdminBackendsAndBackendHeader: x-tokengate-backend names the
// serving backend (never its URL) and GET /admin/backends on the admin
// listener shows every backend x deployment with its breaker state, until
// when, last remaining tokens and requests, and in-flight count.
func TestBalancingAdminBackendsAndBackendHeader(t *testing.T) {
	obs := newObservations()
	deps := []simulator.DeploymentConfig{
		{Name: lbAlias, Model: "gpt-4o", RPM: 100, TPM: 100000},
		// No limits, so its responses carry no x-ratelimit-* headers and a
		// 5xx trips it for the pool's trip_duration (see
		// TestBalancingServerErrorTripsForTripDuration).
		{Name: "mini", Model: "gpt-4o-mini"},
	}
	lat := simulator.Latency{TokensPerSecond: 100}
	east := startSimulator(t, simulator.InstanceConfig{Name: "east", RateLimitWindow: time.Minute, Latency: lat, Deployments: deps}, obs)
	west := startSimulator(t, simulator.InstanceConfig{Name: "west", RateLimitWindow: time.Minute, Latency: lat, Deployments: deps}, obs)
	base, admin, _ := serveWithAdmin(t, fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
backends:
  - {name: east, endpoint: %q, auth: {type: none}}
  - {name: west, endpoint: %q, auth: {type: none}}
pools:
  - name: main
    strategy: round-robin
    breaker: {trip_duration: 1s}
    backends: [{backend: east}, {backend: west}]
models:
  - name: gpt-4o
    deployments: [{backend: east}, {backend: west}]
  - name: gpt-4o-mini
    deployments: [{backend: east, name: mini}, {backend: west, name: mini}]
`, east.URL(), west.URL()))
	client := lbHTTP(t)
	body := lbChatBody(5, false)

	snaps := lbAdmin(t, admin)
	if len(snaps) != 4 {
		t.Fatalf("/admin/backends lists %d entries, want 4 (2 backends x 2 deployments): %+v", len(snaps), snaps)
	}
	for _, s := range snaps {
		if s.State != "closed" || s.OpenUntil != nil || s.InFlight == nil || *s.InFlight != 0 {
			t.Errorf("before any traffic: %+v, want closed, not open, nothing in flight", s)
		}
	}

	// Round-robin over two: four requests, two each; the header names the
	// backend the simulator saw serve it.
	served := map[string]int{}
	for i := range 4 {
		r := lbChat(client, base, lbAlias, fmt.Sprintf("hdr-%d", i), body)
		if r.failed() {
			t.Fatal(r)
		}
		if strings.Contains(r.backend, "/") || strings.Contains(r.backend, "127.0.0.1") {
			t.Fatalf("x-tokengate-backend %q leaks a URL", r.backend)
		}
		served[r.backend]++
	}
	byReq := lbByRequest(obs.settle())
	for i := range 4 {
		id := fmt.Sprintf("hdr-%d", i)
		if got := byReq[id]; len(got) != 1 || got[0].Instance == "" {
			t.Fatalf("%s reached %v, want one instance", id, summarize(got))
		}
	}
	if served["east"] != 2 || served["west"] != 2 {
		t.Errorf("round-robin served %v, want 2 each", served)
	}
	for _, name := range []string{"east", "west"} {
		s := lbFind(t, lbAdmin(t, admin), name, lbAlias)
		if s.RemainingRequests == nil || *s.RemainingRequests != 98 || s.RemainingTokens == nil || *s.RemainingTokens >= 100000 {
			t.Errorf("%s after 2 requests: %+v, want remaining_requests 98 and remaining_tokens below 100000", name, s)
		}
		if m := lbFind(t, lbAdmin(t, admin), name, "mini"); m.RemainingRequests != nil {
			t.Errorf("%s/mini took no request but shows readings: %+v", name, m)
		}
	}

	// In flight: a slow stream counts until its body is done.
	req, _ := http.NewRequest(http.MethodPost, base+"/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
		strings.NewReader(string(lbChatBody(100, true))))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	streaming := resp.Header.Get("X-Tokengate-Backend")
	if s := lbFind(t, lbAdmin(t, admin), streaming, "mini"); s.InFlight == nil || *s.InFlight != 1 {
		t.Errorf("while %s streams: %+v, want in_flight 1", streaming, s)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	time.Sleep(50 * time.Millisecond)
	if s := lbFind(t, lbAdmin(t, admin), streaming, "mini"); s.InFlight == nil || *s.InFlight != 0 {
		t.Errorf("after the stream: %+v, want in_flight 0", s)
	}

	// Open: west's gpt-4o deployment throttled for 3s; its mini stays closed
	// (breakers are per deployment).
	if err := west.SetFaults(simulator.Faults{ThrottleRate: 1, ThrottleRetryAfter: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4 && lbFind(t, lbAdmin(t, admin), "west", lbAlias).State == "closed"; i++ {
		if r := lbChat(client, base, lbAlias, fmt.Sprintf("open-%d", i), body); r.failed() || r.backend != "east" {
			t.Fatalf("with west throttled: %v, want 200 from east", r)
		}
	}
	s := lbFind(t, lbAdmin(t, admin), "west", lbAlias)
	if s.State != "open" || s.OpenUntil == nil || time.Until(*s.OpenUntil) < 2*time.Second || time.Until(*s.OpenUntil) > 3*time.Second {
		t.Fatalf("west/gpt-4o after its 429: %+v, want open for about 3s more", s)
	}
	if m := lbFind(t, lbAdmin(t, admin), "west", "mini"); m.State != "closed" {
		t.Errorf("west/mini %+v, want closed: only gpt-4o was throttled", m)
	}

	// Half-open: west's mini fails once (1s trip), then nobody asks it.
	if err := west.SetFaults(simulator.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4 && lbFind(t, lbAdmin(t, admin), "west", "mini").State == "closed"; i++ {
		if r := lbChat(client, base, "gpt-4o-mini", fmt.Sprintf("half-%d", i), body); r.failed() || r.backend != "east" {
			t.Fatalf("with west failing: %v, want 200 from east", r)
		}
	}
	if m := lbFind(t, lbAdmin(t, admin), "west", "mini"); m.State != "open" {
		t.Fatalf("west/mini after its 500: %+v, want open", m)
	}
	time.Sleep(1100 * time.Millisecond)
	if m := lbFind(t, lbAdmin(t, admin), "west", "mini"); m.State != "half-open" || m.OpenUntil == nil {
		t.Errorf("west/mini after its 1s trip: %+v, want half-open", m)
	}
	if s := lbFind(t, lbAdmin(t, admin), "west", lbAlias); s.State != "open" {
		t.Errorf("west/gpt-4o %+v, want still open (3s retry-after)", s)
	}
}

// TestBalancingRetriesEachBackendAtMostOnce: with every backend failing, a
// request makes exactly min(attempts, backends) attempts, each at a
// different backend, each with the whole request body.
func TestBalancingRetriesEachBackendAtMostOnce(t *testing.T) {
	obs := newObservations()
	var bs []lbBackend
	for _, name := range []string{"x", "y", "z"} {
		bs = append(bs, lbBackend{name, 1, lbSim(t, obs, name, time.Minute, 0, 0, simulator.Faults{ErrorRate: 1}, simulator.Latency{})})
	}
	body := lbChatBody(20, false)
	for _, tc := range []struct{ attempts, want int }{{1, 1}, {2, 2}, {5, 3}} {
		t.Run(fmt.Sprintf("attempts=%d", tc.attempts), func(t *testing.T) {
			// Breakers that never trip, so every request may pick any backend.
			base, admin, _ := serveWithAdmin(t, lbConfig(bs, fmt.Sprintf("breaker: {failures: 100000}\n    retry: {attempts: %d}", tc.attempts)))
			client := lbHTTP(t)
			var ids []string
			for i := range 10 {
				id := fmt.Sprintf("retry-%d-%d", tc.attempts, i)
				ids = append(ids, id)
				if r := lbChat(client, base, lbAlias, id, body); r.err != nil || r.status < 500 {
					t.Fatalf("with every backend failing: %v, want the last 5xx", r)
				}
			}
			byReq := lbByRequest(obs.settle())
			for _, id := range ids {
				got := byReq[id]
				seen := map[string]bool{}
				for _, ob := range got {
					if seen[ob.Instance] {
						t.Errorf("%s reached %s twice: %v", id, ob.Instance, summarize(got))
					}
					seen[ob.Instance] = true
					if string(ob.Body) != string(body) {
						t.Errorf("%s attempt at %s carried body %q, want the client's %q", id, ob.Instance, ob.Body, body)
					}
				}
				if len(got) != tc.want {
					t.Errorf("%s made %d attempts %v, want %d", id, len(got), summarize(got), tc.want)
				}
			}
			lbIdle(t, admin)
		})
	}
}

// TestBalancingServerErrorTripsForTripDuration: a 500 says nothing about
// when to come back, so it trips the backend for the rule's trip_duration.
// Its x-ratelimit-reset-* headers (which Azure and the simulator send on
// every response of a rate-limited deployment) only say when the quota
// window is whole again; they are no reason to shun a backend with quota
// left for the rest of the window.
func TestBalancingServerErrorTripsForTripDuration(t *testing.T) {
	const trip = 500 * time.Millisecond
	obs := newObservations()
	broken := lbSim(t, obs, "broken", time.Minute, 1000, 1000000, simulator.Faults{ErrorRate: 1}, simulator.Latency{})
	spare := lbSim(t, obs, "spare", time.Minute, 1000, 1000000, simulator.Faults{}, simulator.Latency{})
	base, admin, _ := serveWithAdmin(t, lbConfig([]lbBackend{{"broken", 1, broken}, {"spare", 2, spare}},
		"breaker: {trip_duration: 500ms}"))
	client := lbHTTP(t)

	r := lbChat(client, base, lbAlias, "trip-1", lbChatBody(20, false))
	if r.failed() || r.backend != "spare" {
		t.Fatalf("want 200 from spare after broken failed, got %v", r)
	}
	got := lbByRequest(obs.settle())["trip-1"]
	if len(got) != 2 || got[0].Instance != "broken" || got[0].Status < 500 {
		t.Fatalf("trip-1 reached %v, want broken (5xx) then spare", summarize(got))
	}
	s := lbFind(t, lbAdmin(t, admin), "broken", lbAlias)
	if s.OpenUntil == nil {
		t.Fatalf("broken after its %d: %+v, want open", got[0].Status, s)
	}
	if d := s.OpenUntil.Sub(got[0].End); d > trip+500*time.Millisecond {
		t.Errorf("BUG: a %d without retry-after (but with x-ratelimit-reset-* headers) tripped broken for %v, want the %v trip_duration",
			got[0].Status, d.Round(time.Millisecond), trip)
	}
}

// TestBalancingRetriesTimeoutsAndRefusedConnections: a backend that refuses
// the connection and one that sends no response header in time are both
// retried on the next backend, and both are then skipped.
func TestBalancingRetriesTimeoutsAndRefusedConnections(t *testing.T) {
	obs := newObservations()
	slow := lbSim(t, obs, "slow", time.Minute, 0, 0, simulator.Faults{}, simulator.Latency{TimeToFirstToken: 3 * time.Second})
	ok := lbSim(t, obs, "ok", time.Minute, 0, 0, simulator.Faults{}, simulator.Latency{})
	dead := "http://" + freeAddr(t) // nothing listens there
	base, admin, _ := serveWithAdmin(t, fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
upstream: {response_header_timeout: 300ms}
backends:
  - {name: dead, endpoint: %q, auth: {type: none}}
  - {name: slow, endpoint: %q, auth: {type: none}}
  - {name: ok, endpoint: %q, auth: {type: none}}
pools:
  - name: main
    backends: [{backend: dead, priority: 1}, {backend: slow, priority: 1}, {backend: ok, priority: 2}]
models:
  - name: gpt-4o
    deployments: [{backend: dead}, {backend: slow}, {backend: ok}]
`, dead, slow.URL(), ok.URL()))
	client := lbHTTP(t)
	for i := range 2 {
		r := lbChat(client, base, lbAlias, fmt.Sprintf("conn-%d", i), lbChatBody(20, false))
		if r.failed() || r.backend != "ok" {
			t.Fatalf("request %d: %v, want 200 from ok", i, r)
		}
		if i == 0 && r.end.Sub(r.start) > 2*time.Second {
			t.Errorf("the first request took %v: the slow backend's 3s was not cut at 300ms", r.end.Sub(r.start))
		}
	}
	byReq := lbByRequest(obs.settle())
	if got := byReq["conn-0"]; len(got) != 2 || got[0].Instance != "slow" || !got[0].Cancelled || got[1].Instance != "ok" {
		t.Errorf("conn-0 reached %v, want slow (cut by the gateway) then ok", summarize(got))
	}
	if got := byReq["conn-1"]; len(got) != 1 || got[0].Instance != "ok" {
		t.Errorf("conn-1 reached %v, want ok only: dead and slow are tripped", summarize(got))
	}
	snaps := lbAdmin(t, admin)
	for _, name := range []string{"dead", "slow"} {
		if s := lbFind(t, snaps, name, lbAlias); s.State != "open" || s.Trips != 1 {
			t.Errorf("%s: %+v, want open after one trip", name, s)
		}
	}
}
