package simulator

import (
	"errors"
	"io"
	"net/http"
	"strings"
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
