package simulator

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/tokens"
)

func TestLimiter(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		at       time.Duration // since t0
		cost     int
		allowed  bool
		kind     string
		retry    time.Duration
		remReq   int
		remToken int
	}
	tests := []struct {
		name     string
		rpm, tpm int
		steps    []step
	}{
		{"rpm", 2, 0, []step{
			{0, 10, true, "", 0, 1, -1},
			{10 * time.Second, 10, true, "", 0, 0, -1},
			{20 * time.Second, 10, false, "call", 40 * time.Second, 0, -1},
			{59 * time.Second, 10, false, "call", time.Second, 0, -1},
			{60 * time.Second, 10, true, "", 0, 0, -1}, // the first left the window
			{65 * time.Second, 10, false, "call", 5 * time.Second, 0, -1},
			{130 * time.Second, 10, true, "", 0, 1, -1}, // all gone
		}},
		{"tpm", 0, 100, []step{
			{0, 40, true, "", 0, -1, 60},
			{time.Second, 40, true, "", 0, -1, 20},
			{2 * time.Second, 30, false, "token", 58 * time.Second, -1, 20},
			{2 * time.Second, 20, true, "", 0, -1, 0}, // fits exactly
			{30 * time.Second, 60, false, "token", 31 * time.Second, -1, 0},
			{61 * time.Second, 60, true, "", 0, -1, 20}, // the first two left
		}},
		{"cost above the limit never fits", 0, 100, []step{
			{0, 101, false, "token", time.Minute, -1, 100},
		}},
		{"both limits, the longer wait wins", 2, 100, []step{
			{0, 90, true, "", 0, 1, 10},
			{30 * time.Second, 5, true, "", 0, 0, 5},
			{40 * time.Second, 100, false, "token", 50 * time.Second, 0, 5},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(tt.rpm, tt.tpm, DefaultRateLimitWindow)
			for i, s := range tt.steps {
				d := l.admit(t0.Add(s.at), s.cost)
				if d.allowed != s.allowed || d.kind != s.kind || d.retryAfter != s.retry || d.remainingRequests != s.remReq || d.remainingTokens != s.remToken {
					t.Errorf("step %d: got %+v, want allowed %v kind %q retry %s remaining %d/%d", i, d, s.allowed, s.kind, s.retry, s.remReq, s.remToken)
				}
			}
		})
	}
	if l := newLimiter(0, 0, DefaultRateLimitWindow); l != nil {
		t.Error("an unlimited deployment got a limiter")
	}
	var none *limiter
	if d := none.admit(t0, 1e9); !d.allowed {
		t.Error("nil limiter refused")
	}
}

func TestLimiterCompacts(t *testing.T) {
	l := newLimiter(10, 0, DefaultRateLimitWindow)
	t0 := time.Now()
	for i := range 10000 {
		l.admit(t0.Add(time.Duration(i)*7*time.Second), 1)
	}
	if len(l.log) > 200 {
		t.Errorf("log holds %d admissions for a window of at most 10", len(l.log))
	}
}

func TestRateLimitRPMOverHTTP(t *testing.T) {
	clock := newFakeClock()
	cfg := testConfig()
	cfg.Deployments[0].RPM = 2
	_, srv := newServer(t, cfg, WithClock(clock.Now))
	url := deploymentURL(srv.URL, "gpt-4o", "chat/completions")

	for i, wantRemaining := range []string{"1", "0"} {
		resp, b := post(t, url, chatBody, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, b)
		}
		if got := resp.Header.Get("x-ratelimit-remaining-requests"); got != wantRemaining {
			t.Errorf("request %d: x-ratelimit-remaining-requests = %q, want %s", i, got, wantRemaining)
		}
		if got := resp.Header.Get("x-ratelimit-limit-requests"); got != "2" {
			t.Errorf("x-ratelimit-limit-requests = %q", got)
		}
		if got := resp.Header.Get("x-ratelimit-limit-tokens"); got != "" {
			t.Errorf("x-ratelimit-limit-tokens = %q without a TPM limit", got)
		}
	}

	clock.Advance(20 * time.Second)
	resp, b := post(t, url, chatBody, nil)
	check429(t, resp, b, "call", 40)
	if got := resp.Header.Get("x-ratelimit-remaining-requests"); got != "0" {
		t.Errorf("429: x-ratelimit-remaining-requests = %q", got)
	}

	// Other deployments are not affected.
	if resp, _ := post(t, deploymentURL(srv.URL, "gpt-35", "chat/completions"), chatBody, nil); resp.StatusCode != 200 {
		t.Errorf("another deployment got %d", resp.StatusCode)
	}

	clock.Advance(40 * time.Second) // the first request leaves the window
	resp, b = post(t, url, chatBody, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("after the window: status %d: %s", resp.StatusCode, b)
	}
}

func TestRateLimitTPMOverHTTP(t *testing.T) {
	clock := newFakeClock()
	cfg := testConfig()
	cfg.Deployments[0].TPM = 100
	_, srv := newServer(t, cfg, WithClock(clock.Now))
	url := deploymentURL(srv.URL, "gpt-4o", "chat/completions")
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":60}`
	prompt := tokens.ForModel("gpt-4o").CountChat([]tokens.Message{{Role: "user", Content: "hi"}})
	cost := prompt + 60 // charged at admission: prompt + max_tokens

	resp, b := post(t, url, body, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got, want := resp.Header.Get("x-ratelimit-remaining-tokens"), strconv.Itoa(100-cost); got != want {
		t.Errorf("x-ratelimit-remaining-tokens = %q, want %s", got, want)
	}
	if got := resp.Header.Get("x-ratelimit-limit-tokens"); got != "100" {
		t.Errorf("x-ratelimit-limit-tokens = %q", got)
	}

	clock.Advance(15 * time.Second)
	resp, b = post(t, url, body, nil)
	if 2*cost <= 100 {
		t.Fatalf("test assumes two requests exceed 100 tokens; cost is %d", cost)
	}
	check429(t, resp, b, "token", 45)

	// A small request still fits.
	small := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}`
	if resp, b := post(t, url, small, nil); resp.StatusCode != 200 {
		t.Errorf("small request: status %d: %s", resp.StatusCode, b)
	}

	clock.Advance(45 * time.Second)
	if resp, b := post(t, url, body, nil); resp.StatusCode != 200 {
		t.Errorf("after the window: status %d: %s", resp.StatusCode, b)
	}
}

func TestRateLimitEmbeddingsCostPromptOnly(t *testing.T) {
	cfg := testConfig()
	cfg.Deployments[2].TPM = 1000
	_, srv := newServer(t, cfg)
	resp, b := post(t, deploymentURL(srv.URL, "emb", "embeddings"), `{"input":"hello world"}`, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := resp.Header.Get("x-ratelimit-remaining-tokens"); got != "998" {
		t.Errorf("x-ratelimit-remaining-tokens = %q, want 998", got)
	}
}

func TestRateLimitHeadersOnErrors(t *testing.T) {
	cfg := testConfig()
	cfg.Deployments[0].RPM = 5
	_, srv := newServer(t, cfg)
	resp, _ := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), `{"messages":[]}`, nil)
	if resp.StatusCode != 400 || resp.Header.Get("x-ratelimit-remaining-requests") != "5" || resp.Header.Get("x-ratelimit-reset-requests") != "0s" {
		t.Errorf("400: status %d, remaining %q, reset %q", resp.StatusCode, resp.Header.Get("x-ratelimit-remaining-requests"), resp.Header.Get("x-ratelimit-reset-requests"))
	}
}

func TestRateLimitIsSafeUnderConcurrency(t *testing.T) {
	cfg := testConfig()
	cfg.Deployments[0].RPM = 25
	in, srv := newServer(t, cfg)
	var wg sync.WaitGroup
	for range 60 {
		wg.Go(func() {
			resp, err := http.Post(deploymentURL(srv.URL, "gpt-4o", "chat/completions"), "application/json", strings.NewReader(chatBody))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	st := in.Stats()
	if st.ByStatus[200] != 25 || st.ByStatus[429] != 35 {
		t.Errorf("statuses = %v, want 25×200 and 35×429", st.ByStatus)
	}
}

func check429(t *testing.T, resp *http.Response, body []byte, kind string, retrySeconds int) {
	t.Helper()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429: %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("retry-after"); got != strconv.Itoa(retrySeconds) {
		t.Errorf("retry-after = %q, want %d", got, retrySeconds)
	}
	if got := resp.Header.Get("retry-after-ms"); got != strconv.Itoa(retrySeconds*1000) {
		t.Errorf("retry-after-ms = %q, want %d", got, retrySeconds*1000)
	}
	e := decode[errorBody](t, body)
	if e.Error.Code == nil || *e.Error.Code != "429" {
		t.Errorf("error.code = %v", e.Error.Code)
	}
	want := "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version " + testAPIVersion +
		" have exceeded " + kind + " rate limit of your current OpenAI S0 pricing tier. Please retry after " + strconv.Itoa(retrySeconds) + " seconds."
	if !strings.HasPrefix(e.Error.Message, want) {
		t.Errorf("message = %q\nwant prefix %q", e.Error.Message, want)
	}
}

func TestLimiterReset(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLimiter(3, 100, 2*time.Second)
	type want struct {
		remReq, remTok     int
		resetReq, resetTok time.Duration
	}
	steps := []struct {
		name  string
		at    time.Duration
		admit int // cost to admit; -1 to peek
		want  want
	}{
		{"untouched", 0, -1, want{3, 100, 0, 0}},
		{"first", 0, 10, want{2, 90, 2 * time.Second, 2 * time.Second}},
		{"second: whole again when the newest leaves", 500 * time.Millisecond, 20, want{1, 70, 2 * time.Second, 2 * time.Second}},
		{"later", time.Second, -1, want{1, 70, 1500 * time.Millisecond, 1500 * time.Millisecond}},
		{"a free request charges no tokens", 1200 * time.Millisecond, 0, want{0, 70, 2 * time.Second, 1300 * time.Millisecond}},
		{"all gone", 3200 * time.Millisecond, -1, want{3, 100, 0, 0}},
	}
	for _, s := range steps {
		var b budget
		if s.admit < 0 {
			b = l.peek(t0.Add(s.at))
		} else {
			d := l.admit(t0.Add(s.at), s.admit)
			if !d.allowed {
				t.Fatalf("%s: refused: %+v", s.name, d)
			}
			b = d.budget
		}
		got := want{b.remainingRequests, b.remainingTokens, b.resetRequests, b.resetTokens}
		if got != s.want {
			t.Errorf("%s: got %+v, want %+v", s.name, got, s.want)
		}
	}
}

func TestFormatReset(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{time.Nanosecond, "1ms"}, // rounded up: never a reset sooner than the truth
		{20 * time.Millisecond, "20ms"},
		{time.Second, "1s"},
		{1500 * time.Millisecond, "1.5s"},
		{1234567 * time.Microsecond, "1.235s"},
		{6 * time.Minute, "6m0s"},
	}
	for _, tt := range tests {
		if got := formatReset(tt.d); got != tt.want {
			t.Errorf("formatReset(%s) = %q, want %q", tt.d, got, tt.want)
		}
		if d, err := time.ParseDuration(formatReset(tt.d)); err != nil || d < tt.d {
			t.Errorf("formatReset(%s) parses back as %s, %v", tt.d, d, err)
		}
	}
}

func TestRateLimitWindowAndResetHeaders(t *testing.T) {
	clock := newFakeClock()
	cfg := testConfig()
	cfg.RateLimitWindow = 2 * time.Second
	cfg.Deployments[0].RPM = 2
	cfg.Deployments[0].TPM = 100000
	_, srv := newServer(t, cfg, WithClock(clock.Now))
	url := deploymentURL(srv.URL, "gpt-4o", "chat/completions")

	for i := range 2 {
		resp, b := post(t, url, chatBody, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, b)
		}
		for _, h := range []string{"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"} {
			if got := resp.Header.Get(h); got != "2s" {
				t.Errorf("request %d: %s = %q, want 2s", i, h, got)
			}
		}
		clock.Advance(500 * time.Millisecond)
	}

	// At 1s the window of 2 requests is full until the first leaves at 2s.
	resp, b := post(t, url, chatBody, nil)
	if resp.StatusCode != 429 {
		t.Fatalf("third request: status %d: %s", resp.StatusCode, b)
	}
	for h, want := range map[string]string{
		"retry-after":                    "1",
		"retry-after-ms":                 "1000",
		"x-ratelimit-remaining-requests": "0",
		"x-ratelimit-reset-requests":     "1.5s", // the second leaves at 2.5s
		"x-ratelimit-reset-tokens":       "1.5s",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("429: %s = %q, want %q", h, got, want)
		}
	}

	clock.Advance(time.Second)
	if resp, b := post(t, url, chatBody, nil); resp.StatusCode != 200 {
		t.Fatalf("after the first left the window: status %d: %s", resp.StatusCode, b)
	}

	// Unlimited deployments send no rate-limit headers at all.
	resp, _ = post(t, deploymentURL(srv.URL, "gpt-35", "chat/completions"), chatBody, nil)
	for h := range resp.Header {
		if strings.HasPrefix(strings.ToLower(h), "x-ratelimit-") {
			t.Errorf("unlimited deployment sent %s", h)
		}
	}
}

func TestRateLimitWindowOnTheWallClock(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimitWindow = 300 * time.Millisecond
	cfg.Deployments[0].RPM = 1
	_, srv := newServer(t, cfg)
	url := deploymentURL(srv.URL, "gpt-4o", "chat/completions")
	if resp, b := post(t, url, chatBody, nil); resp.StatusCode != 200 {
		t.Fatalf("first: status %d: %s", resp.StatusCode, b)
	}
	resp, _ := post(t, url, chatBody, nil)
	if resp.StatusCode != 429 || resp.Header.Get("retry-after") != "1" {
		t.Fatalf("second: status %d, retry-after %q", resp.StatusCode, resp.Header.Get("retry-after"))
	}
	ms, _ := strconv.Atoi(resp.Header.Get("retry-after-ms"))
	if ms < 1 || ms > 300 {
		t.Errorf("retry-after-ms = %d, want within the 300ms window", ms)
	}
	time.Sleep(time.Duration(ms)*time.Millisecond + 20*time.Millisecond)
	if resp, b := post(t, url, chatBody, nil); resp.StatusCode != 200 {
		t.Fatalf("after retry-after-ms: status %d: %s", resp.StatusCode, b)
	}
}
