package loadtest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
	"github.com/tokengate/tokengate/internal/testenv"
)

// The closed loop's counts, statuses and tokens equal what the simulator
// served.
func TestClosedLoopMatchesSimulator(t *testing.T) {
	for _, tc := range []struct {
		name        string
		streamShare float64
		warmup      time.Duration
		maxTokens   int
	}{
		{"json", 0, 0, 16},
		{"half streams", 0.5, 0, 16},
		{"warmup not counted", 0.5, 300 * time.Millisecond, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startSim(t, simulator.InstanceConfig{})
			rep := run(t, Config{
				URL: s.url, Concurrency: 8, Duration: time.Second, Warmup: tc.warmup,
				StreamShare: tc.streamShare, MaxTokens: tc.maxTokens, PromptTokens: []PromptShare{{Tokens: 50}},
			})
			checkInvariants(t, rep)
			if rep.Mode != "closed" || rep.Sent < 50 || rep.Succeeded != rep.Sent || rep.Errors != 0 {
				t.Fatalf("mode %s sent %d succeeded %d errors %d", rep.Mode, rep.Sent, rep.Succeeded, rep.Errors)
			}
			obs := s.observations(t, rep.Sent)
			if tc.warmup > 0 {
				if int64(len(obs)) <= rep.Sent {
					t.Errorf("warmup: simulator saw %d requests, report %d: the warmup's should be left out", len(obs), rep.Sent)
				}
			} else {
				var prompt, completion, streams int64
				for _, o := range obs {
					prompt += int64(o.PromptTokens)
					completion += int64(o.CompletionTokens)
					if o.Stream {
						streams++
					}
					if o.Status != 200 {
						t.Errorf("simulator answered %d", o.Status)
					}
				}
				if int64(len(obs)) != rep.Sent {
					t.Errorf("simulator saw %d requests, report sent %d", len(obs), rep.Sent)
				}
				if prompt != rep.PromptTokens || completion != rep.CompletionTokens {
					t.Errorf("tokens: simulator %d+%d, report %d+%d", prompt, completion, rep.PromptTokens, rep.CompletionTokens)
				}
				if rep.LatencyStream.Count != streams {
					t.Errorf("streams: simulator %d, report %d", streams, rep.LatencyStream.Count)
				}
			}
			if rep.CompletionTokens != int64(tc.maxTokens)*rep.Succeeded {
				t.Errorf("completion tokens %d, want %d × %d", rep.CompletionTokens, tc.maxTokens, rep.Succeeded)
			}
			// 50 words and the chat framing.
			if per := rep.PromptTokens / rep.Succeeded; per < 50 || per > 65 || rep.PromptTokens%rep.Succeeded != 0 {
				t.Errorf("prompt tokens per request %d (total %d)", per, rep.PromptTokens)
			}
			if want := tc.streamShare * float64(rep.Sent); float64(rep.LatencyStream.Count) < want-1 || float64(rep.LatencyStream.Count) > want+1 {
				t.Errorf("streams %d of %d, want share %g", rep.LatencyStream.Count, rep.Sent, tc.streamShare)
			}
			if rep.ScheduleLag != nil || rep.PeakInFlight != 8 || rep.MissingUsage != 0 || rep.ElapsedS < 1 {
				t.Errorf("lag %v peak %d missing usage %d elapsed %g", rep.ScheduleLag, rep.PeakInFlight, rep.MissingUsage, rep.ElapsedS)
			}
		})
	}
}

func TestOpenLoopRate(t *testing.T) {
	s := startSim(t, simulator.InstanceConfig{})
	var progress testenv.Buffer
	// 1.3s: long enough for one progress line.
	rep := run(t, Config{URL: s.url, Rate: 200, Duration: 1300 * time.Millisecond, StreamShare: 0.25, MaxTokens: 4, Progress: &progress})
	checkInvariants(t, rep)
	const n = 260
	if rep.Mode != "open" || rep.Scheduled != n || rep.Sent != n || rep.Unsent != 0 || rep.Succeeded != n {
		t.Fatalf("mode %s scheduled %d sent %d unsent %d succeeded %d", rep.Mode, rep.Scheduled, rep.Sent, rep.Unsent, rep.Succeeded)
	}
	// Loose: the machine is shared and noisy (under -race, with the
	// simulator in process, a busy machine stretches the drain).
	if rep.AchievedRate < 120 || rep.AchievedRate > 205 {
		t.Errorf("achieved rate %g, want about 200: %+v lag %+v elapsed %g", rep.AchievedRate, rep.Latency, rep.ScheduleLag, rep.ElapsedS)
	}
	if rep.ScheduleLag == nil || rep.ScheduleLag.Count != n {
		t.Fatalf("schedule lag %+v", rep.ScheduleLag)
	}
	if rep.LatencyStream.Count != n/4 || rep.TTFT.Count != n/4 {
		t.Errorf("streams %d ttft %d, want %d", rep.LatencyStream.Count, rep.TTFT.Count, n/4)
	}
	if got := len(s.observations(t, n)); got != n {
		t.Errorf("simulator saw %d requests", got)
	}
	// A progress line a second, ended by a newline.
	if out := progress.String(); !strings.HasPrefix(out, "\r    1s  sent ") || !strings.Contains(out, "/s  errors 0  in flight ") || !strings.HasSuffix(out, "\n") {
		t.Errorf("progress %q", out)
	}
}

func TestStreaming(t *testing.T) {
	s := startSim(t, simulator.InstanceConfig{Latency: simulator.Latency{TimeToFirstToken: 20 * time.Millisecond, TokensPerSecond: 500}})
	rep := run(t, Config{URL: s.url, Concurrency: 4, Duration: time.Second, StreamShare: 1, MaxTokens: 10})
	checkInvariants(t, rep)
	if rep.Succeeded == 0 || rep.LatencyJSON.Count != 0 || rep.LatencyStream.Count != rep.Succeeded || rep.TTFT.Count != rep.Succeeded {
		t.Fatalf("succeeded %d json %d stream %d ttft %d", rep.Succeeded, rep.LatencyJSON.Count, rep.LatencyStream.Count, rep.TTFT.Count)
	}
	if rep.IncompleteStreams != 0 || rep.CompletionTokens != 10*rep.Succeeded {
		t.Errorf("incomplete %d completion tokens %d", rep.IncompleteStreams, rep.CompletionTokens)
	}
	// First token after 20ms, the last 9 tokens at 2ms each later.
	if rep.TTFT.P50 < 19 || rep.TTFT.P50 >= rep.LatencyStream.P50 || rep.LatencyStream.P50 < 36 {
		t.Errorf("ttft p50 %gms, stream latency p50 %gms", rep.TTFT.P50, rep.LatencyStream.P50)
	}
}

// Faults of the simulator are counted as it served them.
func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    simulator.InstanceConfig
		stream float64
		check  func(t *testing.T, rep *Report)
	}{
		{"server errors", simulator.InstanceConfig{Faults: simulator.Faults{ErrorRate: 0.4}}, 0.5, func(t *testing.T, rep *Report) {
			if rep.StatusCodes["500"] == 0 || rep.StatusCodes["503"] == 0 || rep.Errors != rep.StatusCodes["500"]+rep.StatusCodes["503"] {
				t.Errorf("status %v errors %d", rep.StatusCodes, rep.Errors)
			}
		}},
		{"injected throttling", simulator.InstanceConfig{Faults: simulator.Faults{ThrottleRate: 0.3}}, 0, func(t *testing.T, rep *Report) {
			if rep.Throttled == 0 || rep.Errors != rep.Throttled {
				t.Errorf("throttled %d errors %d", rep.Throttled, rep.Errors)
			}
		}},
		{"rate limit", simulator.InstanceConfig{
			RateLimitWindow: time.Minute,
			Deployments:     []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o", RPM: 20}},
		}, 0.5, func(t *testing.T, rep *Report) {
			if rep.Succeeded != 20 || rep.Throttled != rep.Sent-20 {
				t.Errorf("succeeded %d throttled %d of %d, want 20 admitted", rep.Succeeded, rep.Throttled, rep.Sent)
			}
		}},
		{"streams cut", simulator.InstanceConfig{Faults: simulator.Faults{ResetRate: 1}}, 1, func(t *testing.T, rep *Report) {
			if rep.IncompleteStreams != rep.Sent || rep.Succeeded != 0 || rep.StatusCodes["200"] != rep.Sent {
				t.Errorf("incomplete %d of %d, succeeded %d, status %v", rep.IncompleteStreams, rep.Sent, rep.Succeeded, rep.StatusCodes)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startSim(t, tc.cfg)
			rep := run(t, Config{URL: s.url, Concurrency: 4, Duration: 500 * time.Millisecond, StreamShare: tc.stream, MaxTokens: 8})
			checkInvariants(t, rep)
			obs := s.observations(t, rep.Sent)
			served := map[string]int64{}
			for _, o := range obs {
				served[statusKey(o.Status)]++
			}
			if len(obs) != int(rep.Sent) {
				t.Errorf("simulator saw %d, report sent %d", len(obs), rep.Sent)
			}
			for k, n := range served {
				if rep.StatusCodes[k] != n {
					t.Errorf("status %s: simulator %d, report %d", k, n, rep.StatusCodes[k])
				}
			}
			tc.check(t, rep)
		})
	}
}

// The open loop avoids coordinated omission: one request stalling 500ms
// delays the ones queued behind it (at most one in flight), and their
// latency counts from when they were due.
func TestCoordinatedOmission(t *testing.T) {
	for _, tc := range []struct {
		name        string
		concurrency int
		check       func(t *testing.T, rep *Report)
	}{
		{"queued behind the stall", 1, func(t *testing.T, rep *Report) {
			// Requests 10..59 (of 100) were due during the stall; their
			// latencies spread from 500ms down to about 10ms.
			if rep.Latency.P90 < 250 || rep.Latency.Mean < 60 || rep.Latency.Max < 450 {
				t.Errorf("latency %+v: the stall's queueing is missing", rep.Latency)
			}
			if rep.ScheduleLag.P90 < 250 {
				t.Errorf("schedule lag %+v: requests waited for the slot", rep.ScheduleLag)
			}
		}},
		{"no limit: only the stalled request is slow", 0, func(t *testing.T, rep *Report) {
			if rep.Latency.Max < 450 || rep.Latency.P90 > 100 {
				t.Errorf("latency %+v", rep.Latency)
			}
			if rep.PeakInFlight < 2 {
				t.Errorf("peak in flight %d: the scheduler waited for the stalled request", rep.PeakInFlight)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			srv := cannedServer(t, func(*http.Request) {
				if n.Add(1) == 10 {
					time.Sleep(500 * time.Millisecond)
				}
			})
			rep := run(t, Config{URL: srv.URL, Rate: 100, Concurrency: tc.concurrency, Duration: time.Second})
			checkInvariants(t, rep)
			if rep.Sent != 100 || rep.Succeeded != 100 {
				t.Fatalf("sent %d succeeded %d", rep.Sent, rep.Succeeded)
			}
			tc.check(t, rep)
		})
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		rep, err := Run(context.Background(), Config{URL: "http://" + addr, Concurrency: 2, Duration: 200 * time.Millisecond})
		if !errors.Is(err, ErrNoResponses) || !errorsContain(err, "connection_refused") {
			t.Fatalf("err %v", err)
		}
		checkInvariants(t, rep)
		if rep.TransportErrors["connection_refused"] == 0 || rep.Sent != rep.TransportErrors["connection_refused"] {
			t.Errorf("transport errors %v of %d", rep.TransportErrors, rep.Sent)
		}
		// Workers pause after an error instead of spinning.
		if rep.Sent > 100 {
			t.Errorf("sent %d in 200ms to a closed port", rep.Sent)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		srv := cannedServer(t, func(r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		})
		rep, err := Run(context.Background(), Config{URL: srv.URL, Rate: 20, Duration: 200 * time.Millisecond, Timeout: 100 * time.Millisecond})
		if !errors.Is(err, ErrNoResponses) {
			t.Fatalf("err %v", err)
		}
		checkInvariants(t, rep)
		if rep.TransportErrors["timeout"] != rep.Sent || rep.Sent != 4 {
			t.Errorf("transport errors %v of %d", rep.TransportErrors, rep.Sent)
		}
	})
}

// Cancelling the context stops sending at once, gives requests in flight
// the grace period, cuts them, reports what was measured and leaves no
// goroutine behind.
func TestInterrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"closed loop", Config{Concurrency: 20, StreamShare: 0.5}},
		{"open loop", Config{Rate: 100, StreamShare: 0.5}},
		{"open loop queued", Config{Rate: 200, Concurrency: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			// 9 tokens at 20/s: each request takes 400ms.
			s := startSim(t, simulator.InstanceConfig{Latency: simulator.Latency{TokensPerSecond: 20}})
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(600*time.Millisecond, cancel)
			cfg := tc.cfg
			cfg.URL, cfg.Duration, cfg.Grace, cfg.MaxTokens = s.url, 10*time.Second, 100*time.Millisecond, 9
			start := time.Now()
			rep, err := Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("Run took %s after the interruption", took)
			}
			checkInvariants(t, rep)
			if !rep.Interrupted || rep.Succeeded == 0 || rep.TransportErrors["canceled"] == 0 {
				t.Errorf("interrupted %v succeeded %d transport %v", rep.Interrupted, rep.Succeeded, rep.TransportErrors)
			}
			if rep.ElapsedS > 1.5 {
				t.Errorf("elapsed %gs", rep.ElapsedS)
			}
			if tc.cfg.Concurrency == 2 && rep.Unsent == 0 {
				t.Errorf("unsent 0: the queue behind 2 slots was not dropped")
			}
			_ = s.Close(context.Background())
			waitGoroutines(t, before+2)
		})
	}
}

func TestValidate(t *testing.T) {
	ok := Config{URL: "http://127.0.0.1:1", Rate: 1}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" = valid
	}{
		{"ok", func(*Config) {}, ""},
		{"closed", func(c *Config) { c.Rate, c.Concurrency = 0, 4 }, ""},
		{"no url", func(c *Config) { c.URL = "" }, "--url: required"},
		{"bad url", func(c *Config) { c.URL = "127.0.0.1:8080" }, "--url: want an http:// or https://"},
		{"url with query", func(c *Config) { c.URL = "http://x/?a=1" }, "--url: a base URL has no query"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "--rate: must be"},
		{"neither", func(c *Config) { c.Rate = 0 }, "set --rate R"},
		{"stream share", func(c *Config) { c.StreamShare = 1.5 }, "--stream-share: must be a fraction"},
		{"api", func(c *Config) { c.API = "openai" }, `--api: must be azure or v1, not "openai"`},
		{"ramp", func(c *Config) { c.Concurrency, c.Ramp = 2, time.Minute }, "--ramp: 1m0s must be shorter"},
		{"prompt", func(c *Config) { c.PromptTokens = []PromptShare{{Tokens: -3}} }, "tokens must be between 1"},
		{"header", func(c *Config) { c.Header = []Header{{Name: "Bad Name", Value: "x"}} }, "--header #1: header name"},
		{"apps", func(c *Config) { c.Apps = []App{{Name: "a"}, {Name: "a"}} }, `apps[1].name: "a" is used twice`},
		{"several at once", func(c *Config) { c.Rate, c.StreamShare = -1, 2 }, "--stream-share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errorsContain(err, tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		in, name, value string
		ok              bool
	}{
		{"Authorization: Bearer abc", "Authorization", "Bearer abc", true},
		{"api-key:k:with:colons", "api-key", "k:with:colons", true},
		{"  X-Empty:  ", "X-Empty", "", true},
		{"Authorization Bearer s3cr3t", "", "", false},
		{": s3cr3t", "", "", false},
		{"Bad Name: s3cr3t", "", "", false},
	} {
		h, err := ParseHeader(tc.in)
		if (err == nil) != tc.ok || h.Name != tc.name || h.Value != tc.value {
			t.Errorf("ParseHeader(%q) = %+v, %v", tc.in, h, err)
		}
		if errorsContain(err, "s3cr3t") {
			t.Errorf("ParseHeader(%q): the error quotes the value: %v", tc.in, err)
		}
	}
}
