package e2e

// Load balancing end to end: pools, priorities, steering, circuit breakers
// that honour Retry-After, retries, and what operators see, asserted on what
// the simulated instances observed and on what clients got.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"

	"github.com/tokengate/tokengate/internal/simulator"
)

func TestBalancingPTUFillsFirstThenSpillsAndReturns(t *testing.T) {
	const (
		window    = 2 * time.Second
		ptuTPM    = 1000
		maxTokens = 50
	)
	obs := newObservations()
	ptu := lbSim(t, obs, "ptu", window, 0, ptuTPM, simulator.Faults{}, simulator.Latency{})
	payA := lbSim(t, obs, "paygo-a", window, 0, 0, simulator.Faults{}, simulator.Latency{})
	payB := lbSim(t, obs, "paygo-b", window, 0, 0, simulator.Faults{}, simulator.Latency{})
	base, _ := serve(t, lbConfig([]lbBackend{{"ptu", 1, ptu}, {"paygo-a", 2, payA}, {"paygo-b", 2, payB}}, ""))

	// A steady sequential load, one request every 40 ms, long enough for
	// fill, overflow, reset and a second fill.
	client := lbHTTP(t)
	body := lbChatBody(maxTokens, false)
	var replies []lbReply
	tick := time.NewTicker(40 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(window + 1800*time.Millisecond); time.Now().Before(end); <-tick.C {
		replies = append(replies, lbChat(client, base, lbAlias, fmt.Sprintf("fill-%d", len(replies)), body))
	}
	if bad := lbFailures(replies); len(bad) > 0 {
		t.Fatalf("%d of %d requests failed, want none; first: %v", len(bad), len(replies), bad[0])
	}
	list := obs.settle()
	byReq := lbByRequest(list)

	// Each reply was served by exactly the instance its header names, at
	// the first attempt: steering, not a 429, moved traffic off the PTU.
	for _, r := range replies {
		got := byReq[r.id]
		if len(got) != 1 || got[0].Instance != r.backend || got[0].Status != http.StatusOK {
			t.Fatalf("request %s (x-tokengate-backend %q) reached the instances as %+v, want one 200 from %q",
				r.id, r.backend, summarize(got), r.backend)
		}
	}
	if st := lbStatuses(lbAt(list, "ptu")); st[http.StatusTooManyRequests] > 0 {
		t.Errorf("the PTU answered %d requests with 429; steering should spill before it refuses", st[http.StatusTooManyRequests])
	}

	// Cut the sequence into runs served by the PTU and by the pay-as-you-go pair.
	type run struct {
		ptu     bool
		replies []lbReply
	}
	var runs []run
	for _, r := range replies {
		isPTU := r.backend == "ptu"
		if len(runs) == 0 || runs[len(runs)-1].ptu != isPTU {
			runs = append(runs, run{ptu: isPTU})
		}
		runs[len(runs)-1].replies = append(runs[len(runs)-1].replies, r)
	}
	var shape []string
	for _, r := range runs {
		name := "paygo"
		if r.ptu {
			name = "ptu"
		}
		shape = append(shape, fmt.Sprintf("%s×%d", name, len(r.replies)))
	}
	t.Logf("%d requests served as %v", len(replies), shape)
	if len(runs) < 3 || !runs[0].ptu {
		t.Fatalf("want the PTU first, then the pay-as-you-go pair, then the PTU again; got %v", shape)
	}

	// Every PTU run that overflowed filled the PTU to within one request of
	// its budget (estimates differ a little from the simulator's count).
	cost := func(r lbReply) int { return byReq[r.id][0].PromptTokens + maxTokens }
	for i, rn := range runs {
		if !rn.ptu || i == len(runs)-1 {
			continue
		}
		used := 0
		for _, r := range rn.replies {
			used += cost(r)
		}
		if c := cost(rn.replies[0]); used < ptuTPM-2*c || used > ptuTPM {
			t.Errorf("PTU run %d used %d tokens of its %d per window before spilling, want within two requests (%d each) of the budget",
				i, used, ptuTPM, c)
		}
	}

	// The overflow went to both members of the pay-as-you-go pair.
	over := map[string]int{}
	for _, r := range runs[1].replies {
		over[r.backend]++
	}
	if over["paygo-a"] == 0 || over["paygo-b"] == 0 {
		t.Errorf("the overflow went to %v, want both paygo-a and paygo-b", over)
	}

	// Traffic returned to the PTU when its window reset: not before the last
	// admission of the first fill left the window, and promptly after.
	lastFill := byReq[runs[0].replies[len(runs[0].replies)-1].id][0].Start
	back := byReq[runs[2].replies[0].id][0].Start
	if gap := back.Sub(lastFill); gap < window-100*time.Millisecond || gap > window+time.Second {
		t.Errorf("the PTU was used again %v after its last admission, want about its %v window", gap, window)
	}
}

// summarize is a short view of observations for failure messages.
func summarize(list []simulator.Observation) []string {
	var out []string
	for _, ob := range list {
		out = append(out, fmt.Sprintf("%s:%d@%s", ob.Instance, ob.Status, ob.Start.Format("15:04:05.000")))
	}
	return out
}

// TestBalancingRetryAfterKeepsThrottledBackendAlone: a priority-1 backend
// answers every request 429 with retry-after 7. After the first 429 no
// request reaches it for 7 s, then exactly one half-open probe does, while
// clients are served by the priority-2 backend without a single error.
func TestBalancingRetryAfterKeepsThrottledBackendAlone(t *testing.T) {
	const retryAfter = 7 * time.Second
	obs := newObservations()
	storm := lbSim(t, obs, "storm", time.Minute, 0, 0,
		simulator.Faults{ThrottleRate: 1, ThrottleRetryAfter: retryAfter}, simulator.Latency{})
	spare := lbSim(t, obs, "spare", time.Minute, 0, 0, simulator.Faults{}, simulator.Latency{})
	base, admin, _ := serveWithAdmin(t, lbConfig([]lbBackend{{"storm", 1, storm}, {"spare", 2, spare}}, ""))
	client := lbHTTP(t)
	body := lbChatBody(20, false)

	// The first request trips the breaker and is retried on the spare.
	first := lbChat(client, base, lbAlias, "storm-first", body)
	if first.failed() || first.backend != "spare" {
		t.Fatalf("first request: %v, want 200 from spare", first)
	}
	got := lbByRequest(obs.settle())["storm-first"]
	if len(got) != 2 || got[0].Instance != "storm" || got[0].Status != http.StatusTooManyRequests || got[1].Instance != "spare" {
		t.Fatalf("first request reached %v, want storm (429) then spare", summarize(got))
	}
	tripped := got[0].End
	snap := lbFind(t, lbAdmin(t, admin), "storm", lbAlias)
	if snap.State != "open" || snap.OpenUntil == nil || snap.Trips != 1 {
		t.Fatalf("after the 429, /admin/backends shows storm as %+v, want open once", snap)
	}
	if d := snap.OpenUntil.Sub(tripped); d < retryAfter || d > retryAfter+time.Second {
		t.Errorf("storm is open until %v after its 429, want the %v it asked for", d, retryAfter)
	}

	// The storm: four concurrent clients until just past the reopening.
	replies := lbLoad(client, base, "storm", 4, tripped.Add(retryAfter+600*time.Millisecond), 40*time.Millisecond, body)
	if bad := lbFailures(replies); len(bad) > 0 {
		t.Fatalf("%d of %d requests failed while spare had capacity; first: %v", len(bad), len(replies), bad[0])
	}
	at := lbAt(obs.settle(), "storm")
	var inside, probes []simulator.Observation
	for _, ob := range at[1:] {
		if ob.Start.Before(tripped.Add(retryAfter)) {
			inside = append(inside, ob)
		} else {
			probes = append(probes, ob)
		}
	}
	if len(inside) > 0 {
		t.Errorf("%d requests reached storm within %v of its 429 (retry-after %v): %v",
			len(inside), inside[0].Start.Sub(tripped), retryAfter, summarize(inside))
	}
	if len(probes) != 1 {
		t.Errorf("after the trip, storm got %d requests, want exactly one half-open probe: %v", len(probes), summarize(probes))
	}
	t.Logf("%d requests served by spare; storm saw %v", len(replies), summarize(at))
}

// TestBalancingFailingBackendProbedOncePerTrip: one of three backends
// answers every request 500/503. Clients barely notice; the broken backend
// gets one half-open probe per trip; once it recovers it is back in rotation
// within a couple of trip durations.
func TestBalancingFailingBackendProbedOncePerTrip(t *testing.T) {
	const trip = 500 * time.Millisecond
	obs := newObservations()
	lat := simulator.Latency{Extra: 5 * time.Millisecond}
	a := lbSim(t, obs, "a", time.Minute, 0, 0, simulator.Faults{}, lat)
	b := lbSim(t, obs, "b", time.Minute, 0, 0, simulator.Faults{}, lat)
	broken := lbSim(t, obs, "broken", time.Minute, 0, 0, simulator.Faults{ErrorRate: 1}, lat)
	base, admin, _ := serveWithAdmin(t, lbConfig([]lbBackend{{"a", 1, a}, {"b", 1, b}, {"broken", 1, broken}},
		"breaker: {trip_duration: 500ms}"))
	client := lbHTTP(t)
	body := lbChatBody(20, false)

	start := time.Now()
	replies := lbLoad(client, base, "broken", 4, start.Add(2*time.Second), 10*time.Millisecond, body)
	if len(replies) < 150 {
		t.Fatalf("only %d requests in 2s; the load is too thin to judge", len(replies))
	}
	if bad := lbFailures(replies); len(bad)*100 >= len(replies) {
		t.Fatalf("%d of %d requests failed, want under 1%%; first: %v", len(bad), len(replies), bad[0])
	}
	list := obs.settle()
	at := lbAt(list, "broken")
	// Requests that reached broken before its first failure came back were
	// sent while its breaker was still closed; after that, one probe per
	// trip, each a full trip after the failure before it.
	var initial, probes []simulator.Observation
	for _, ob := range at {
		if ob.Status < 500 {
			t.Fatalf("broken answered %d", ob.Status)
		}
		if ob.Start.Before(at[0].End) {
			initial = append(initial, ob)
		} else {
			probes = append(probes, ob)
		}
	}
	if len(initial) > 4 {
		t.Errorf("%d requests reached broken before its first failure, want at most one per client (4)", len(initial))
	}
	last := initial[len(initial)-1].End
	for _, ob := range initial {
		if ob.End.After(last) {
			last = ob.End
		}
	}
	for i, ob := range probes {
		if gap := ob.Start.Sub(last); gap < trip {
			t.Errorf("broken got probe %d only %v after the failure that tripped it, want a %v trip: %v",
				i, gap, trip, summarize(at))
		}
		last = ob.End
	}
	if maxProbes := int(2 * time.Second / trip); len(probes) < 1 || len(probes) > maxProbes {
		t.Errorf("broken got %d half-open probes in 2s with a %v trip, want 1..%d: %v", len(probes), trip, maxProbes, summarize(at))
	}
	if snap := lbFind(t, lbAdmin(t, admin), "broken", lbAlias); snap.Trips != int64(len(at)) {
		t.Errorf("/admin/backends counts %d trips of broken, want one per request it got (%d)", snap.Trips, len(at))
	}
	t.Logf("%d requests, %d failed; broken saw %v", len(replies), len(lbFailures(replies)), summarize(at))

	// Recovery: back in rotation within a couple of trip durations.
	if err := broken.SetFaults(simulator.Faults{}); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	replies = lbLoad(client, base, "healed", 4, healed.Add(1500*time.Millisecond), 15*time.Millisecond, body)
	if bad := lbFailures(replies); len(bad) > 0 {
		t.Fatalf("%d requests failed after recovery; first: %v", len(bad), bad[0])
	}
	var firstOK time.Time
	for _, ob := range lbAt(obs.settle(), "broken") {
		if ob.Status == http.StatusOK {
			firstOK = ob.Start
			break
		}
	}
	if firstOK.IsZero() || firstOK.Sub(healed) > 2*trip+200*time.Millisecond {
		t.Fatalf("broken served its first request %v after it recovered, want within %v", firstOK.Sub(healed), 2*trip)
	}
	served := map[string]int{}
	after := 0
	for _, r := range replies {
		if r.start.After(firstOK) {
			served[r.backend]++
			after++
		}
	}
	if served["broken"]*5 < after {
		t.Errorf("after recovery broken served %d of %d requests, want about a third", served["broken"], after)
	}
	if snap := lbFind(t, lbAdmin(t, admin), "broken", lbAlias); snap.State != "closed" {
		t.Errorf("after recovery /admin/backends shows broken %+v, want closed", snap)
	}
	lbIdle(t, admin)
}

// TestBalancingAllThrottledAnswers429WithSoonestRetryAfter: when every
// backend of the model is tripped the client gets the gateway's own 429,
// in the Azure error shape, with retry-after the soonest reopening.
func TestBalancingAllThrottledAnswers429WithSoonestRetryAfter(t *testing.T) {
	obs := newObservations()
	soon := lbSim(t, obs, "soon", time.Minute, 0, 0, simulator.Faults{ThrottleRate: 1, ThrottleRetryAfter: 3 * time.Second}, simulator.Latency{})
	late := lbSim(t, obs, "late", time.Minute, 0, 0, simulator.Faults{ThrottleRate: 1, ThrottleRetryAfter: 5 * time.Second}, simulator.Latency{})
	base, _ := serve(t, lbConfig([]lbBackend{{"soon", 1, soon}, {"late", 1, late}}, ""))
	client := lbHTTP(t)

	check := func(r lbReply) {
		t.Helper()
		if r.err != nil || r.status != http.StatusTooManyRequests {
			t.Fatalf("want 429, got %v", r)
		}
		if ra := r.header.Get("Retry-After"); ra != "3" && ra != "2" {
			t.Errorf("retry-after %q, want 3 (soon reopens in 3s, late in 5s)", ra)
		}
		if ms, err := strconv.Atoi(r.header.Get("Retry-After-Ms")); err != nil || ms <= 2000 || ms > 3000 {
			t.Errorf("retry-after-ms %q, want just under 3000", r.header.Get("Retry-After-Ms"))
		}
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Code == "" {
			t.Fatalf("not the Azure error shape: %s", r.body)
		}
		if m := e.Error.Message; !strings.Contains(m, "all backends") || !strings.Contains(m, "throttled") || !strings.Contains(m, lbAlias) {
			t.Errorf("message %q should say all backends for %s are throttled", m, lbAlias)
		}
	}
	// The first request tries both and finds both throttled.
	check(lbChat(client, base, lbAlias, "all-1", lbChatBody(20, false)))
	got := lbByRequest(obs.settle())["all-1"]
	if len(got) != 2 || got[0].Instance == got[1].Instance {
		t.Fatalf("first request reached %v, want each backend once", summarize(got))
	}
	// The next one is answered by the gateway without bothering either.
	check(lbChat(client, base, lbAlias, "all-2", lbChatBody(20, false)))
	if got := lbByRequest(obs.settle())["all-2"]; len(got) != 0 {
		t.Errorf("with every backend tripped, the request still reached %v", summarize(got))
	}
}

// TestBalancingMidStreamResetIsNotRetried: a backend that cuts a stream
// half-way is not retried (bytes already reached the client) and the client
// sees the stream end with an error event instead of hanging.
func TestBalancingMidStreamResetIsNotRetried(t *testing.T) {
	obs := newObservations()
	cut := lbSim(t, obs, "cut", time.Minute, 0, 0, simulator.Faults{ResetRate: 1}, simulator.Latency{TokensPerSecond: 50})
	spare := lbSim(t, obs, "spare", time.Minute, 0, 0, simulator.Faults{}, simulator.Latency{TokensPerSecond: 50})
	base, _ := serve(t, lbConfig([]lbBackend{{"cut", 1, cut}, {"spare", 2, spare}}, ""))

	t.Run("sdk", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := openai.NewClient(azure.WithEndpoint(base, "2024-10-21"), azure.WithAPIKey("unused"),
			azure.WithUnsafeAllowHTTP(), option.WithMaxRetries(0))
		s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:     lbAlias,
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Stream something long.")},
			MaxTokens: openai.Int(40),
		}, option.WithHeader("X-Ms-Client-Request-Id", "reset-sdk"))
		content := 0
		for s.Next() {
			if ch := s.Current(); len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
				content++
			}
		}
		err := s.Err()
		if ctx.Err() != nil {
			t.Fatalf("the stream hung: %v", err)
		}
		if err == nil || !strings.Contains(err.Error(), "upstream_stream_lost") {
			t.Fatalf("stream ended with %v after %d content chunks, want the gateway's error event", err, content)
		}
		if content == 0 {
			t.Errorf("no content before the reset")
		}
	})

	t.Run("raw", func(t *testing.T) {
		r := lbChat(lbHTTP(t), base, lbAlias, "reset-raw", lbChatBody(40, true))
		if r.err != nil || r.status != http.StatusOK || r.backend != "cut" {
			t.Fatalf("want a 200 stream from cut, got %v", r)
		}
		events := strings.Split(strings.TrimSpace(string(r.body)), "\n\n")
		last := events[len(events)-1]
		if len(events) < 3 || !strings.HasPrefix(last, `data: {"error":`) || strings.Contains(string(r.body), "[DONE]") {
			t.Fatalf("want content events ending in an error event and no [DONE], got %d events ending %q", len(events), last)
		}
	})

	byReq := lbByRequest(obs.settle())
	for _, id := range []string{"reset-sdk", "reset-raw"} {
		if got := byReq[id]; len(got) != 1 || got[0].Instance != "cut" || !got[0].Reset {
			t.Errorf("request %s reached %v, want exactly one reset stream at cut", id, summarize(got))
		}
	}
}
