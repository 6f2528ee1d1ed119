package simulator

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestErrorRateOneGivesOnlyServerErrors(t *testing.T) {
	cfg := testConfig()
	cfg.Faults.ErrorRate = 1
	in, srv := newServer(t, cfg, WithSeed(7))
	seen := map[int]bool{}
	for range 40 {
		resp, b := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody, nil)
		seen[resp.StatusCode] = true
		e := decode[errorBody](t, b)
		switch resp.StatusCode {
		case 500:
			if e.Error.Type != "server_error" || !strings.Contains(e.Error.Message, resp.Header.Get("apim-request-id")) {
				t.Errorf("500 body = %s", b)
			}
		case 503:
			if e.Error.Type != "server_error" || e.Error.Message == "" {
				t.Errorf("503 body = %s", b)
			}
		default:
			t.Fatalf("status %d, want only 500 and 503: %s", resp.StatusCode, b)
		}
	}
	if !seen[500] || !seen[503] {
		t.Errorf("statuses seen = %v, want both 500 and 503", seen)
	}
	if st := in.Stats(); st.ByStatus[500]+st.ByStatus[503] != 40 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestErrorRateZeroAndFractional(t *testing.T) {
	cfg := testConfig()
	cfg.Faults.ErrorRate = 0.5
	in, srv := newServer(t, cfg, WithSeed(1))
	for range 200 {
		resp, _ := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody, nil)
		if resp.StatusCode != 200 && resp.StatusCode != 500 && resp.StatusCode != 503 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	ok := in.Stats().ByStatus[200]
	if ok < 60 || ok > 140 {
		t.Errorf("%d of 200 succeeded at error_rate 0.5", ok)
	}
}

func TestSeedMakesFaultsReproducible(t *testing.T) {
	run := func() []int {
		cfg := testConfig()
		cfg.Faults.ErrorRate = 0.5
		_, srv := newServer(t, cfg, WithSeed(42))
		var statuses []int
		for range 30 {
			resp, _ := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody, nil)
			statuses = append(statuses, resp.StatusCode)
		}
		return statuses
	}
	a, b := run(), run()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("runs differ at %d: %v vs %v", i, a, b)
		}
	}
}

func TestResetRateOneCutsStreams(t *testing.T) {
	cfg := testConfig()
	cfg.Faults.ResetRate = 1
	cfg.CompletionTokens = 10
	obs := newObservations()
	in, srv := newServer(t, cfg, obs.option())

	for _, op := range []string{"chat/completions", "completions"} {
		body := `{"messages":[{"role":"user","content":"hi"}],"stream":true}`
		if op == "completions" {
			body = `{"prompt":"hi","stream":true}`
		}
		resp, err := http.Post(deploymentURL(srv.URL, "gpt-4o", op), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", op, resp.StatusCode)
		}
		events, err := sseEvents(resp.Body)
		resp.Body.Close()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: read error = %v, want unexpected EOF", op, err)
		}
		if len(events) < 2 {
			t.Errorf("%s: cut before any content: %v", op, events)
		}
		for _, e := range events {
			if e == "[DONE]" {
				t.Errorf("%s: stream reached [DONE]", op)
			}
		}
		o := obs.next(t, time.Second)
		if !o.Reset || o.Cancelled || o.Status != 200 || o.CompletionTokens != 5 {
			t.Errorf("%s: observation reset %v cancelled %v status %d completion %d", op, o.Reset, o.Cancelled, o.Status, o.CompletionTokens)
		}
	}
	if st := in.Stats(); st.Resets != 2 {
		t.Errorf("Stats.Resets = %d", st.Resets)
	}

	// Non-streaming responses are not cut.
	if resp, b := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody, nil); resp.StatusCode != 200 {
		t.Errorf("non-streaming: status %d: %s", resp.StatusCode, b)
	}
}

func TestExtraLatency(t *testing.T) {
	tests := []struct {
		name   string
		faults Faults
		extra  time.Duration
		want   time.Duration
	}{
		{"latency.extra", Faults{}, 80 * time.Millisecond, 80 * time.Millisecond},
		{"faults.extra_latency always", Faults{ExtraLatency: 80 * time.Millisecond, ExtraLatencyRate: 1}, 0, 80 * time.Millisecond},
		{"both", Faults{ExtraLatency: 50 * time.Millisecond, ExtraLatencyRate: 1}, 50 * time.Millisecond, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Faults = tt.faults
			cfg.Latency.Extra = tt.extra
			_, srv := newServer(t, cfg)
			// Errors are delayed too.
			for _, url := range []string{deploymentURL(srv.URL, "gpt-4o", "chat/completions"), srv.URL + "/nope"} {
				start := time.Now()
				post(t, url, chatBody, nil)
				if d := time.Since(start); d < tt.want {
					t.Errorf("%s answered after %s, want at least %s", url, d, tt.want)
				}
			}
		})
	}
}

func TestThrottleRate(t *testing.T) {
	tests := []struct {
		name          string
		retryAfter    time.Duration
		secs, ms      string
		secondsPhrase string
	}{
		{"default", 0, "1", "1000", "retry after 1 second."},
		{"7s", 7 * time.Second, "7", "7000", "retry after 7 seconds."},
		{"rounded up", 1500 * time.Millisecond, "2", "1500", "retry after 2 seconds."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Deployments[0].RPM = 1
			cfg.Faults = Faults{ThrottleRate: 1, ThrottleRetryAfter: tt.retryAfter}
			obs := newObservations()
			in, srv := newServer(t, cfg, obs.option())
			url := deploymentURL(srv.URL, "gpt-4o", "chat/completions")
			for range 3 {
				resp, b := post(t, url, chatBody, nil)
				if resp.StatusCode != http.StatusTooManyRequests {
					t.Fatalf("status %d, want 429: %s", resp.StatusCode, b)
				}
				for h, want := range map[string]string{
					"retry-after":                    tt.secs,
					"retry-after-ms":                 tt.ms,
					"x-ratelimit-limit-requests":     "1",
					"x-ratelimit-remaining-requests": "1", // throttling is not charged
					"x-ratelimit-reset-requests":     "0s",
				} {
					if got := resp.Header.Get(h); got != want {
						t.Errorf("%s = %q, want %q", h, got, want)
					}
				}
				e := decode[errorBody](t, b)
				if e.Error.Code == nil || *e.Error.Code != "429" || !strings.Contains(e.Error.Message, "exceeded call rate limit") || !strings.Contains(e.Error.Message, tt.secondsPhrase) {
					t.Errorf("body = %s", b)
				}
				if o := obs.next(t, time.Second); o.Status != 429 || o.Deployment != "gpt-4o" {
					t.Errorf("observation status %d deployment %q", o.Status, o.Deployment)
				}
			}
			// Requests that never reach a deployment are not throttled.
			if resp, _ := post(t, deploymentURL(srv.URL, "nope", "chat/completions"), chatBody, nil); resp.StatusCode != 404 {
				t.Errorf("unknown deployment: status %d, want 404", resp.StatusCode)
			}
			// Recovery: the throttled requests left the RPM budget untouched.
			if err := in.SetFaults(Faults{}); err != nil {
				t.Fatal(err)
			}
			if resp, b := post(t, url, chatBody, nil); resp.StatusCode != 200 {
				t.Fatalf("after SetFaults: status %d: %s", resp.StatusCode, b)
			}
		})
	}
}

func TestThrottleRateFractional(t *testing.T) {
	cfg := testConfig()
	cfg.Faults.ThrottleRate = 0.5
	in, srv := newServer(t, cfg, WithSeed(3))
	for range 200 {
		post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody, nil)
	}
	st := in.Stats()
	if n := st.ByStatus[429]; n < 60 || n > 140 || st.ByStatus[200]+n != 200 {
		t.Errorf("statuses %v at throttle_rate 0.5", st.ByStatus)
	}
}

func TestSetFaultsAndLatency(t *testing.T) {
	in, srv := newServer(t, testConfig())
	url := deploymentURL(srv.URL, "gpt-4o", "chat/completions")
	status := func() int {
		resp, _ := post(t, url, chatBody, nil)
		return resp.StatusCode
	}
	if got := status(); got != 200 {
		t.Fatalf("healthy: status %d", got)
	}

	if err := in.SetFaults(Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	if got := in.Faults(); got.ErrorRate != 1 {
		t.Errorf("Faults() = %+v", got)
	}
	for range 5 {
		if got := status(); got != 500 && got != 503 {
			t.Fatalf("failing: status %d, want 500 or 503", got)
		}
	}
	if err := in.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != 200 {
		t.Fatalf("recovered: status %d", got)
	}

	if err := in.SetLatency(Latency{Extra: 150 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	status()
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("slow: answered in %s, want at least 150ms", d)
	}
	if err := in.SetLatency(Latency{}); err != nil {
		t.Fatal(err)
	}
	if in.Latency() != (Latency{}) {
		t.Errorf("Latency() = %+v", in.Latency())
	}

	// Invalid settings are refused whole and change nothing.
	err := in.SetFaults(Faults{ErrorRate: 2, ThrottleRetryAfter: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "error_rate") || !strings.Contains(err.Error(), "throttle_retry_after") {
		t.Errorf("SetFaults(invalid) = %v", err)
	}
	if err := in.SetLatency(Latency{TokensPerSecond: -1}); err == nil {
		t.Error("SetLatency(invalid) succeeded")
	}
	if in.Faults() != (Faults{}) || in.Latency() != (Latency{}) {
		t.Errorf("invalid settings were applied: %+v %+v", in.Faults(), in.Latency())
	}
}

func TestSetFaultsWhileServing(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 4
	in, srv := newServer(t, cfg)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Post(deploymentURL(srv.URL, "gpt-4o", "chat/completions"), "application/json",
					strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"stream":true}`))
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	for i := range 50 {
		f := Faults{}
		if i%2 == 0 {
			f = Faults{ErrorRate: 0.5, ThrottleRate: 0.2, ResetRate: 0.5}
		}
		if err := in.SetFaults(f); err != nil {
			t.Fatal(err)
		}
		if err := in.SetLatency(Latency{TokensPerSecond: float64(1000 + i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if in.Stats().Requests == 0 {
		t.Error("no requests were served")
	}
}
