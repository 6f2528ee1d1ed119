package simulator

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/tokens"
)

const chatBody = `{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":4}`

func TestAuthAndRouting(t *testing.T) {
	cfg := testConfig()
	cfg.APIKey = "key-1"
	cfg.BearerToken = "token-1"
	_, srv := newServer(t, cfg)

	key := http.Header{"Api-Key": {"key-1"}}
	chat := deploymentURL(srv.URL, "gpt-4o", "chat/completions")
	tests := []struct {
		name     string
		method   string
		url      string
		body     string
		header   http.Header
		status   int
		code     string // error.code, "" for null or success
		contains string // in error.message
	}{
		{"api key", "POST", chat, chatBody, key, 200, "", ""},
		{"bearer token", "POST", chat, chatBody, http.Header{"Authorization": {"Bearer token-1"}}, 200, "", ""},
		{"bearer scheme is case-insensitive", "POST", chat, chatBody, http.Header{"Authorization": {"bearer token-1"}}, 200, "", ""},
		{"wrong api key", "POST", chat, chatBody, http.Header{"Api-Key": {"nope"}}, 401, "401", "Access denied due to invalid subscription key or wrong API endpoint"},
		{"no credentials", "POST", chat, chatBody, nil, 401, "401", "Access denied"},
		{"wrong bearer", "POST", chat, chatBody, http.Header{"Authorization": {"Bearer nope"}}, 401, "401", "Access denied"},
		{"api key as bearer on a deployments route", "POST", chat, chatBody, http.Header{"Authorization": {"Bearer key-1"}}, 401, "401", "Access denied"},
		{"api key as bearer on a v1 route", "POST", srv.URL + "/openai/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, http.Header{"Authorization": {"Bearer key-1"}}, 200, "", ""},
		{"unknown path unauthenticated", "POST", srv.URL + "/nope", "{}", nil, 401, "401", "Access denied"},
		{"unknown path", "POST", srv.URL + "/nope", "{}", key, 404, "404", "Resource not found"},
		{"unknown operation", "POST", deploymentURL(srv.URL, "gpt-4o", "images/generations"), "{}", key, 404, "404", "Resource not found"},
		{"trailing slash", "POST", srv.URL + "/openai/deployments/gpt-4o/chat/completions/?api-version=" + testAPIVersion, chatBody, key, 404, "404", "Resource not found"},
		{"GET", "GET", chat, "", key, 404, "404", "Resource not found"},
		{"missing api-version", "POST", srv.URL + "/openai/deployments/gpt-4o/chat/completions", chatBody, key, 404, "404", "Resource not found"},
		{"unknown deployment", "POST", deploymentURL(srv.URL, "gpt-9", "chat/completions"), chatBody, key, 404, "DeploymentNotFound", "The API deployment for this resource does not exist"},
		{"v1 without api-version", "POST", srv.URL + "/openai/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, key, 200, "", ""},
		{"bare v1", "POST", srv.URL + "/v1/embeddings", `{"model":"emb","input":"hi"}`, key, 200, "", ""},
		{"v1 unknown model", "POST", srv.URL + "/openai/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}`, key, 404, "DeploymentNotFound", "does not exist"},
		{"v1 missing model", "POST", srv.URL + "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, key, 400, "missing_required_parameter", "you must provide a model parameter"},
		{"embeddings on a chat deployment", "POST", deploymentURL(srv.URL, "gpt-4o", "embeddings"), `{"input":"hi"}`, key, 400, "OperationNotSupported", "The embeddings operation does not work with the specified model, gpt-4o."},
		{"chat on an embeddings deployment", "POST", deploymentURL(srv.URL, "emb", "chat/completions"), chatBody, key, 400, "OperationNotSupported", "The chatCompletion operation does not work with the specified model, text-embedding-3-small."},
		{"completions on an embeddings deployment", "POST", deploymentURL(srv.URL, "emb", "completions"), `{"prompt":"hi"}`, key, 400, "OperationNotSupported", "The completion operation"},
		{"malformed JSON", "POST", chat, `{"messages":[`, key, 400, "", "We could not parse the JSON body of your request."},
		{"not an object", "POST", chat, `[1,2]`, key, 400, "invalid_type", "expected an object"},
		{"wrong type", "POST", chat, `{"messages":[{"role":"user","content":"hi"}],"n":"two"}`, key, 400, "invalid_type", "Invalid type for 'n'"},
		{"n zero", "POST", chat, `{"messages":[{"role":"user","content":"hi"}],"n":0}`, key, 400, "integer_below_min_value", "Expected a value >= 1, but got 0"},
		{"n too large", "POST", chat, `{"messages":[{"role":"user","content":"hi"}],"n":1000}`, key, 400, "integer_above_max_value", "<= 128"},
		{"max_tokens zero", "POST", chat, `{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}`, key, 400, "integer_below_min_value", "Invalid 'max_tokens'"},
		{"missing messages", "POST", chat, `{}`, key, 400, "missing_required_parameter", "Missing required parameter: 'messages'."},
		{"empty messages", "POST", chat, `{"messages":[]}`, key, 400, "empty_array", "empty array"},
		{"missing role", "POST", chat, `{"messages":[{"content":"hi"}]}`, key, 400, "missing_required_parameter", "'messages[0].role'"},
		{"bad role", "POST", chat, `{"messages":[{"role":"robot","content":"hi"}]}`, key, 400, "invalid_value", "Invalid value: 'robot'"},
		{"bad content", "POST", chat, `{"messages":[{"role":"user","content":42}]}`, key, 400, "invalid_type", "messages[0].content"},
		{"stream_options without stream", "POST", chat, `{"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}`, key, 400, "invalid_value", "only allowed when 'stream' is enabled"},
		{"missing prompt", "POST", deploymentURL(srv.URL, "gpt-4o", "completions"), `{}`, key, 400, "missing_required_parameter", "'prompt'"},
		{"empty input", "POST", deploymentURL(srv.URL, "emb", "embeddings"), `{"input":""}`, key, 400, "", "'$.input' is invalid."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.url, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, tt.status, body)
			}
			if tt.status == 200 {
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			e := decode[errorBody](t, body)
			var code string
			if e.Error.Code != nil {
				code = *e.Error.Code
			}
			if code != tt.code {
				t.Errorf("error.code = %q, want %q; body %s", code, tt.code, body)
			}
			if !strings.Contains(e.Error.Message, tt.contains) {
				t.Errorf("error.message = %q, want it to contain %q", e.Error.Message, tt.contains)
			}
			if resp.Header.Get("apim-request-id") == "" {
				t.Error("error response lacks apim-request-id")
			}
		})
	}
}

func TestErrorShapes(t *testing.T) {
	// The two layers of Azure answer in different shapes; check them exactly.
	_, srv := newServer(t, testConfig())
	tests := []struct {
		name, url, body, want string
	}{
		{"gateway shape", srv.URL + "/nope", "{}", `{"error":{"code":"404","message":"Resource not found"}}`},
		{"model shape", deploymentURL(srv.URL, "gpt-4o", "chat/completions"), `{"messages":[{"role":"user","content":"hi"}],"n":0}`,
			`{"error":{"message":"Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.","type":"invalid_request_error","param":"n","code":"integer_below_min_value"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, body := post(t, tt.url, tt.body, nil)
			if string(body) != tt.want {
				t.Errorf("body = %s\nwant   %s", body, tt.want)
			}
		})
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestResponseHeaders(t *testing.T) {
	_, srv := newServer(t, testConfig())
	resp, _ := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody,
		http.Header{"X-Ms-Client-Request-Id": {"client-123"}})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, h := range []string{"apim-request-id", "x-request-id"} {
		if v := resp.Header.Get(h); !uuidRE.MatchString(v) {
			t.Errorf("%s = %q, want a UUID", h, v)
		}
	}
	if resp.Header.Get("apim-request-id") == resp.Header.Get("x-request-id") {
		t.Error("apim-request-id and x-request-id should differ")
	}
	want := map[string]string{
		"x-ms-client-request-id": "client-123",
		"x-ms-deployment-name":   "gpt-4o",
		"Content-Type":           "application/json",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// Unlimited deployments carry no rate-limit headers.
	if v := resp.Header.Get("x-ratelimit-remaining-requests"); v != "" {
		t.Errorf("x-ratelimit-remaining-requests = %q on an unlimited deployment", v)
	}

	resp, _ = post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), chatBody, nil)
	if v := resp.Header.Get("x-ms-client-request-id"); v != "" {
		t.Errorf("x-ms-client-request-id = %q without one in the request", v)
	}
}

func TestObservation(t *testing.T) {
	obs := newObservations()
	in, srv := newServer(t, testConfig(), obs.option())
	body := `{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":4}`
	resp, _ := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), body, http.Header{"X-Trace": {"abc"}})
	o := obs.next(t, time.Second)
	checks := []struct {
		name      string
		got, want any
	}{
		{"instance", o.Instance, "test"},
		{"request id", o.RequestID, resp.Header.Get("apim-request-id")},
		{"method", o.Method, "POST"},
		{"path", o.Path, "/openai/deployments/gpt-4o/chat/completions"},
		{"api-version", o.Query.Get("api-version"), testAPIVersion},
		{"header", o.Header.Get("X-Trace"), "abc"},
		{"body", string(o.Body), body},
		{"deployment", o.Deployment, "gpt-4o"},
		{"model", o.Model, "gpt-4o"},
		{"operation", o.Operation, "chat.completions"},
		{"stream", o.Stream, false},
		{"status", o.Status, 200},
		{"cancelled", o.Cancelled, false},
		{"reset", o.Reset, false},
		{"completion tokens", o.CompletionTokens, 4},
		{"prompt tokens", o.PromptTokens, tokens.ForModel("gpt-4o").CountChat([]tokens.Message{{Role: "user", Content: "Say hello."}})},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if o.End.Before(o.Start) || o.Start.IsZero() {
		t.Errorf("Start %v End %v", o.Start, o.End)
	}

	// 404s are observed too, without a deployment.
	post(t, srv.URL+"/nope", "x", nil)
	o = obs.next(t, time.Second)
	if o.Status != 404 || o.Deployment != "" || o.Operation != "" || !bytes.Equal(o.Body, []byte{}) {
		t.Errorf("404 observation = %+v", o)
	}

	st := in.Stats()
	if st.Requests != 2 || st.ByStatus[200] != 1 || st.ByStatus[404] != 1 || st.InFlight != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestBodyTooLarge(t *testing.T) {
	in, srv := newServer(t, testConfig())
	in.maxBody = 1 << 10
	big := `{"messages":[{"role":"user","content":"` + strings.Repeat("a", 2<<10) + `"}]}`
	resp, body := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), big, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status = %d, want 413; body %.200s", resp.StatusCode, body)
	}
}

func TestStartAndClose(t *testing.T) {
	in, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if in.URL() != "" {
		t.Errorf("URL before Start = %q", in.URL())
	}
	base, err := in.Start()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if base != in.URL() || !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Errorf("Start returned %q, URL() %q", base, in.URL())
	}
	if _, err := in.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	resp, _ := post(t, deploymentURL(base, "gpt-4o", "chat/completions"), chatBody, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := in.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := in.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := http.Post(deploymentURL(base, "gpt-4o", "chat/completions"), "application/json", strings.NewReader(chatBody)); err == nil {
		t.Error("request after Close succeeded")
	}
	if _, err := in.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// TestObservationsCountRequestsPerDeploymentOverTime shows how a
// load-balancing test buckets what each deployment served by arrival time.
func TestObservationsCountRequestsPerDeploymentOverTime(t *testing.T) {
	obs := newObservations()
	_, srv := newServer(t, testConfig(), obs.option())
	before := time.Now()
	for _, dep := range []string{"gpt-4o", "gpt-35", "gpt-4o"} {
		post(t, deploymentURL(srv.URL, dep, "chat/completions"), chatBody, nil)
	}
	after := time.Now()
	count := map[string]int{}
	for range 3 {
		o := obs.next(t, time.Second)
		if o.Start.Before(before) || o.Start.After(o.End) || o.End.After(after) {
			t.Errorf("%s: start %s end %s outside [%s, %s]", o.Deployment, o.Start, o.End, before, after)
		}
		count[o.Deployment]++
	}
	if count["gpt-4o"] != 2 || count["gpt-35"] != 1 {
		t.Errorf("per deployment = %v", count)
	}
}
