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
			l := newLimiter(tt.rpm, tt.tpm)
			for i, s := range tt.steps {
				d := l.admit(t0.Add(s.at), s.cost)
				if d.allowed != s.allowed || d.kind != s.kind || d.retryAfter != s.retry || d.remainingRequests != s.remReq || d.remainingTokens != s.remToken {
					t.Errorf("step %d: got %+v, want allowed %v kind %q retry %s remaining %d/%d", i, d, s.allowed, s.kind, s.retry, s.remReq, s.remToken)
				}
			}
		})
	}
	if l := newLimiter(0, 0); l != nil {
		t.Error("an unlimited deployment got a limiter")
	}
	var none *limiter
	if d := none.admit(t0, 1e9); !d.allowed {
		t.Error("nil limiter refused")
	}
}

func TestLimiterCompacts(t *testing.T) {
	l := newLimiter(10, 0)
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
	if resp.StatusCode != 400 || resp.Header.Get("x-ratelimit-remaining-requests") != "5" {
		t.Errorf("400: status %d, remaining %q", resp.StatusCode, resp.Header.Get("x-ratelimit-remaining-requests"))
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
