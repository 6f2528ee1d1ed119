package loadtest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

// sim is a started simulator instance with the observations it made.
type sim struct {
	*simulator.Instance
	url string

	mu  sync.Mutex
	obs []simulator.Observation
}

// startSim serves a simulator of cfg (Name and Deployments defaulted) on
// its own listener for the test.
func startSim(t testing.TB, cfg simulator.InstanceConfig) *sim {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "sim"
	}
	if len(cfg.Deployments) == 0 {
		cfg.Deployments = []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}, {Name: "gpt-4o-mini", Model: "gpt-4o-mini"}}
	}
	s := &sim{}
	in, err := simulator.New(cfg, nil, simulator.WithObserver(func(o simulator.Observation) {
		o.Body = nil
		s.mu.Lock()
		s.obs = append(s.obs, o)
		s.mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	s.Instance = in
	if s.url, err = in.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(context.Background()) })
	return s
}

// observations waits until the simulator observed n requests (its
// observer runs just after the client has read the response) and returns
// them.
func (s *sim) observations(t *testing.T, n int64) []simulator.Observation {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		s.mu.Lock()
		got := append([]simulator.Observation(nil), s.obs...)
		s.mu.Unlock()
		if int64(len(got)) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run is Run failing the test on an error.
func run(t *testing.T, cfg Config) *Report {
	t.Helper()
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return rep
}

// checkInvariants checks what every report must satisfy.
func checkInvariants(t *testing.T, rep *Report) {
	t.Helper()
	if got := rep.Completed + rep.IncompleteStreams + rep.IncompleteBodies + sum(rep.TransportErrors); got != rep.Sent {
		t.Errorf("completed %d + incomplete %d+%d + transport %d != sent %d",
			rep.Completed, rep.IncompleteStreams, rep.IncompleteBodies, sum(rep.TransportErrors), rep.Sent)
	}
	if got := sum(rep.StatusCodes) + sum(rep.TransportErrors); got != rep.Sent {
		t.Errorf("status codes + transport errors = %d, want sent %d", got, rep.Sent)
	}
	if rep.Latency.Count != rep.Succeeded || rep.LatencyJSON.Count+rep.LatencyStream.Count != rep.Succeeded {
		t.Errorf("latency counts %d = %d + %d, want succeeded %d", rep.Latency.Count, rep.LatencyJSON.Count, rep.LatencyStream.Count, rep.Succeeded)
	}
	if rep.Mode == "open" && rep.Scheduled != rep.Sent+rep.Unsent {
		t.Errorf("scheduled %d != sent %d + unsent %d", rep.Scheduled, rep.Sent, rep.Unsent)
	}
	if rep.Succeeded+rep.Errors != rep.Sent {
		t.Errorf("succeeded %d + errors %d != sent %d", rep.Succeeded, rep.Errors, rep.Sent)
	}
	if rep.Throttled != rep.StatusCodes["429"] {
		t.Errorf("throttled %d, status 429 %d", rep.Throttled, rep.StatusCodes["429"])
	}
	for _, s := range []Stats{rep.Latency, rep.LatencyJSON, rep.LatencyStream, rep.TTFT} {
		if s.Count > 0 && !(s.Min <= s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.P999 && s.P999 <= s.Max) {
			t.Errorf("stats out of order: %+v", s)
		}
	}
}

// waitGoroutines waits for the goroutine count to fall to at most n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chatJSON is a small chat completion with usage, as Azure sends it.
const chatJSON = `{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"Hello there","role":"assistant"}}],` +
	`"created":1,"id":"chatcmpl-1","model":"gpt-4o","object":"chat.completion",` +
	`"usage":{"completion_tokens":2,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":11}}`

// chatSSE is a small stream with usage in its last chunk.
const chatSSE = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n" +
	"data: {\"choices\":[{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"index\":0}],\"usage\":null}\n\n" +
	"data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"Hello\"},\"index\":0}],\"usage\":null}\n\n" +
	"data: {\"choices\":[{\"delta\":{\"content\":\" there\"},\"index\":0}],\"usage\":null}\n\n" +
	"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"usage\":null}\n\n" +
	"data: {\"choices\":[],\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":9,\"total_tokens\":11}}\n\n" +
	"data: [DONE]\n\n"

// cannedServer answers chat completions with chatJSON or chatSSE (by the
// request's "stream"), after hook (if any) ran.
func cannedServer(t testing.TB, hook func(r *http.Request)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Stream bool `json:"stream"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if hook != nil {
			hook(r)
		}
		if body.Stream {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write([]byte(chatSSE))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(chatJSON))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func errorsContain(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
