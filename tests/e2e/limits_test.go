package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/tokengate/tokengate/internal/simulator"
	"github.com/tokengate/tokengate/internal/testenv"
)

// limitsConfig is a gateway whose anonymous callers count as app
// "anonymous" with limits, sharing counters in Redis (or memory).
func limitsConfig(simURL, store, redisAddr, limits, extra string) string {
	prefix := strconv.FormatInt(time.Now().UnixNano(), 36) // tests sharing a redis-server do not share counters
	return fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
apps:
  - name: anonymous
    limits: %s
limits:
  store: %s
  redis: {addr: %q, key_prefix: "%s:", timeout: 2s} # exactness, not latency, is under test (CI runs packages in parallel)
  replicas: 3
%s
backends:
  - {name: sim, endpoint: %q, auth: {type: api-key, api_key: sim-key}}
models:
  - name: gpt-4o
    deployments: [{backend: sim, name: gpt-4o-d}]
  - name: gpt-4o-mini
    deployments: [{backend: sim, name: mini-d}]
usage:
  spool: {dir: spool}
`, limits, store, redisAddr, prefix, extra, simURL)
}

func limitsSim(t *testing.T) *simulator.Instance {
	return startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: "sim-key", CompletionTokens: 10,
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o-d", Model: "gpt-4o"}, {Name: "mini-d", Model: "gpt-4o-mini"}}}, nil)
}

type limitReply struct {
	status  int
	header  http.Header
	body    []byte
	usage   int64
	started time.Time
}

func chatOnce(client *http.Client, base, model string, maxTokens int) limitReply {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello there, how are you today?"}],"max_tokens":%d}`, model, maxTokens)
	r := limitReply{started: time.Now()}
	resp, err := client.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return limitReply{status: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	r.status, r.header = resp.StatusCode, resp.Header
	r.body, _ = io.ReadAll(resp.Body)
	var u struct {
		Usage struct {
			TotalTokens int64 `json:"total_tokens"`
		} `json:"usage"`
	}
	_ = json.Unmarshal(r.body, &u)
	r.usage = u.Usage.TotalTokens
	return r
}

// burst sends n concurrent requests spread over the gateways.
func burst(bases []string, n int, model string, maxTokens func(i int) int) []limitReply {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}, Timeout: 30 * time.Second}
	out := make([]limitReply, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			out[i] = chatOnce(client, bases[i%len(bases)], model, maxTokens(i))
		})
	}
	close(start)
	wg.Wait()
	return out
}

// TestLimitsAcrossReplicas: three gateways share one real redis-server.
// 1,000 concurrent clients against 600 requests per minute: 600 admitted in
// total, the rest refused with Azure's 429 shape and headers; a tokens per
// minute limit over-admits by at most 2%.
func TestLimitsAcrossReplicas(t *testing.T) {
	rs := testenv.Redis(t)
	sim := limitsSim(t)
	cfg := limitsConfig(sim.URL(), "redis", rs.Addr(),
		`[{model: gpt-4o, rpm: 600}, {model: gpt-4o-mini, tpm: 20000}]`, "")
	var bases []string
	for range 3 {
		base, _ := serve(t, cfg)
		bases = append(bases, base)
	}

	replies := burst(bases, 1000, "gpt-4o", func(int) int { return 16 })
	admitted, refused := 0, 0
	for _, r := range replies {
		switch r.status {
		case 200:
			admitted++
			if r.header.Get("X-Ratelimit-Limit-Requests") != "600" || r.header.Get("X-Ratelimit-Remaining-Requests") == "" {
				t.Fatalf("admitted response headers: %v", r.header)
			}
		case 429:
			refused++
			ra, err := strconv.Atoi(r.header.Get("Retry-After"))
			if err != nil || ra < 1 || ra > 61 || r.header.Get("X-Ratelimit-Remaining-Requests") != "0" || // 60 s window + the current 1 s bucket
				!strings.Contains(string(r.body), `"code":"rate_limit_exceeded"`) {
				t.Fatalf("refusal: retry-after %q, headers %v, body %s", r.header.Get("Retry-After"), r.header, r.body)
			}
		default:
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	}
	if admitted != 600 || refused != 400 {
		t.Fatalf("admitted %d, refused %d; want 600 and 400", admitted, refused)
	}

	// Tokens: varied max_tokens; the settled total of what was admitted
	// stays within 2% of the limit.
	replies = burst(bases, 600, "gpt-4o-mini", func(i int) int { return 20 + i%80 })
	var used int64
	admitted = 0
	for _, r := range replies {
		if r.status == 200 {
			admitted++
			used += r.usage
		} else if r.status != 429 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	}
	t.Logf("tpm 20000: %d of 600 admitted using %d tokens (reserved at prompt + max_tokens, settled to usage)", admitted, used)
	if used > 20400 || admitted == 0 || admitted == 600 {
		t.Fatalf("tpm over-admitted: %d requests, %d tokens", admitted, used)
	}
}

// TestLimitsRedisOutage: Redis dies mid-test. Fail-open enforces
// limit/replicas locally; fail-closed answers 503; both recover by
// themselves when Redis is back.
func TestLimitsRedisOutage(t *testing.T) {
	rs := testenv.Redis(t)
	sim := limitsSim(t)
	client := &http.Client{Timeout: 10 * time.Second}
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			base, _ := serve(t, limitsConfig(sim.URL(), "redis", rs.Addr(), `[{rpm: 30}]`,
				"  on_store_error: "+mode))
			if r := chatOnce(client, base, "gpt-4o", 5); r.status != 200 {
				t.Fatalf("before the outage: %d %s", r.status, r.body)
			}
			rs.Stop()
			var statuses []int
			for range 15 {
				statuses = append(statuses, chatOnce(client, base, "gpt-4o", 5).status)
			}
			counts := map[int]int{}
			for _, s := range statuses {
				counts[s]++
			}
			switch mode {
			case "open": // 30 rpm / 3 replicas = 10 locally
				if counts[200] != 10 || counts[429] != 5 {
					t.Fatalf("fail-open during the outage: %v", counts)
				}
			case "closed":
				if counts[503] != 15 {
					t.Fatalf("fail-closed during the outage: %v", counts)
				}
			}
			// Back on Redis by itself: its counter has 29 requests left, where
			// the local fallback (fail-open) is exhausted.
			rs.Start()
			deadline := time.Now().Add(10 * time.Second)
			for {
				r := chatOnce(client, base, "gpt-4o", 5)
				if r.status == 200 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("enforcement did not return to Redis: %d %s", r.status, r.body)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}

// TestLimitsSDKBackoff: the official SDK, pointed at a gateway with a tiny
// limit, gets the 429 and its own retry logic waits the Retry-After out.
func TestLimitsSDKBackoff(t *testing.T) {
	sim := limitsSim(t)
	base, _ := serve(t, limitsConfig(sim.URL(), "memory", "", `[{rpm: 2}]`, "  window: 3s"))
	var requests atomic.Int32
	client := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(3),
		option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
			requests.Add(1)
			return next(r)
		}))
	params := openai.ChatCompletionNewParams{Model: "gpt-4o", MaxTokens: openai.Int(5),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
	ctx := context.Background()
	for range 2 {
		if _, err := client.Chat.Completions.New(ctx, params); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	var raw *http.Response
	if _, err := client.Chat.Completions.New(ctx, params, option.WithResponseInto(&raw)); err != nil {
		t.Fatalf("the SDK gave up: %v", err)
	}
	waited := time.Since(start)
	if requests.Load() < 4 || waited < time.Second {
		t.Fatalf("the SDK did not back off: %d requests, waited %v", requests.Load(), waited)
	}
	t.Logf("third call admitted after the SDK waited %v over %d attempts", waited.Round(time.Millisecond), requests.Load()-2)
}

// TestLimitsSettlement: a request reserved at prompt + max_tokens that
// finishes short gets the difference back at once, so the next one fits.
func TestLimitsSettlement(t *testing.T) {
	sim := limitsSim(t) // completions are 10 tokens long
	base, _ := serve(t, limitsConfig(sim.URL(), "memory", "", `[{tpm: 1000}]`, ""))
	client := &http.Client{Timeout: 10 * time.Second}
	first := chatOnce(client, base, "gpt-4o", 600) // reserves ~610 of 1000
	if first.status != 200 || first.usage == 0 || first.usage > 40 {
		t.Fatalf("first: %d usage %d %s", first.status, first.usage, first.body)
	}
	// Without the refund only ~390 tokens would be left for 610.
	second := chatOnce(client, base, "gpt-4o", 600)
	if second.status != 200 {
		t.Fatalf("second request refused although the first used only %d tokens: %d %s", first.usage, second.status, second.body)
	}
	remaining, _ := strconv.Atoi(second.header.Get("X-Ratelimit-Remaining-Tokens"))
	if want := 1000 - int(first.usage) - 600; remaining > want || remaining < want-40 {
		t.Fatalf("remaining tokens after the second admission: %d, want about %d (1000 - %d used - 600 - its prompt)", remaining, want, first.usage)
	}
}
