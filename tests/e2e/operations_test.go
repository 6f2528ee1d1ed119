package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"
	_ "modernc.org/sqlite"

	"github.com/tokengate/tokengate/internal/simulator"
	"github.com/tokengate/tokengate/internal/telemetry/otlptest"
)

// TestMetricsMatchRecords runs the demo, makes a scripted mix of calls
// (served, streamed with and without usage, refused for streaming, for a
// rate limit, for no token, for an unknown alias) and checks that what
// /metrics counted is exactly what the usage records say, and that the
// admin summary is the chargeback report.
func TestMetricsMatchRecords(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "demo-data")
	p := start(t, "demo", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--data-dir", dataDir)
	p.stdout.waitFor(t, "Press Ctrl-C", 20*time.Second)
	base, admin := demoBannerURL(t, p, "gateway"), demoBannerURL(t, p, "admin")
	chatTok, batchTok := demoToken(t, dataDir, "chat-app"), demoToken(t, dataDir, "batch-app")
	ctx := context.Background()
	sent := 0 // requests the gateway answered (each makes one record)

	// Served: the official SDKs, Azure style with a token credential and
	// v1 style with the token as bearer.
	az := openai.NewClient(azure.WithEndpoint(base, apiVersion), azure.WithTokenCredential(staticToken(chatTok)),
		azure.WithUnsafeAllowHTTP(), option.WithMaxRetries(0))
	v1 := openai.NewClient(option.WithBaseURL(base+"/openai/v1/"), option.WithAPIKey(chatTok), option.WithMaxRetries(0))
	p4o := chatParams(false)
	p4o.MaxTokens = openai.Int(15)
	if _, err := az.Chat.Completions.New(ctx, p4o); err != nil {
		t.Fatalf("chat: %v", err)
	}
	sent++
	pStream := chatParams(true) // include_usage
	pStream.MaxTokens = openai.Int(15)
	s := v1.Chat.Completions.NewStreaming(ctx, pStream)
	var streamUsage int64
	for s.Next() {
		if u := s.Current().Usage; u.TotalTokens > 0 {
			streamUsage = u.TotalTokens
		}
	}
	if s.Err() != nil || streamUsage == 0 {
		t.Fatalf("stream with include_usage: %v, usage %d", s.Err(), streamUsage)
	}
	sent++
	if _, err := v1.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("chargeback me")}}); err != nil {
		t.Fatalf("embeddings: %v", err)
	}
	sent++
	// Raw: a stream without include_usage (the client must see no usage)
	// and a JSON chat on the other chat alias.
	resp, body := opsDo(t, "POST", base+"/v1/chat/completions", chatTok,
		`{"model":"gpt-4o-mini","stream":true,"max_tokens":12,"messages":[{"role":"user","content":"Tell a story"}]}`, nil)
	sent++
	if resp.StatusCode != 200 || bytes.Contains(body, []byte(`"usage"`)) || !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
		t.Fatalf("stream without include_usage: %d\n%s", resp.StatusCode, body)
	}
	resp, body = opsDo(t, "POST", base+"/v1/chat/completions", chatTok,
		`{"model":"gpt-4o-mini","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`, nil)
	sent++
	if resp.StatusCode != 200 {
		t.Fatalf("gpt-4o-mini: %d %s", resp.StatusCode, body)
	}

	// Refused: batch-app may not stream (through the SDK)...
	batch := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(batchTok), option.WithMaxRetries(0))
	bs := batch.Chat.Completions.NewStreaming(ctx, pStream)
	for bs.Next() {
	}
	var apiErr *openai.Error
	if !errors.As(bs.Err(), &apiErr) || apiErr.StatusCode != 400 {
		t.Fatalf("batch-app streaming: want 400, got %v", bs.Err())
	}
	sent++
	// ...may make five requests a minute, the sixth is a 429...
	for i := range 6 {
		resp, body := opsDo(t, "POST", base+"/v1/chat/completions", batchTok,
			`{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, nil)
		sent++
		if want := map[bool]int{true: 200, false: 429}[i < 5]; resp.StatusCode != want {
			t.Fatalf("batch-app request %d: %d, want %d: %s", i+1, resp.StatusCode, want, body)
		}
	}
	// ...a caller without a token is nobody the registry knows...
	if resp, body := opsDo(t, "POST", base+"/v1/chat/completions", "", `{"model":"gpt-4o","messages":[]}`, nil); resp.StatusCode != 401 {
		t.Fatalf("no token: %d %s", resp.StatusCode, body)
	}
	sent++
	// ...and a model alias nobody configured must not become a label.
	const unknownAlias = "gpt-5-bespoke-e2e"
	_, err := v1.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: unknownAlias,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("unknown alias: want 404, got %v", err)
	}
	sent++

	// Metrics are counted when a request's record is written, which can
	// be just after the client has its answer: wait until all are in.
	var fams map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		fams = opsScrape(t, admin+"/metrics", "")
		if n := opsSum(opsSamples(fams, "tokengate_requests_total")); n == float64(sent) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("tokengate_requests_total sums to %v after 10s; %d requests were answered", n, sent)
		}
	}
	// Every record is spooled now; the summary is complete once the
	// SQLite sink has caught up.
	var summary []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, body := opsDo(t, "GET", admin+"/admin/usage/summary?group_by=app,model", "", "", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("/admin/usage/summary: %d %s", resp.StatusCode, body)
		}
		if resp.Header.Get("X-Tokengate-Sink-Lag") == "0" {
			summary = body
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("X-Tokengate-Sink-Lag still %q after 10s", resp.Header.Get("X-Tokengate-Sink-Lag"))
		}
	}
	p.stop(t) // SIGINT, exit 0: every record is in usage.db
	if t.Failed() {
		t.FailNow()
	}

	dbPath := filepath.Join(dataDir, "usage.db")
	recs := opsRecords(t, dbPath)
	if len(recs) != sent {
		t.Fatalf("%d records in usage.db, %d requests answered", len(recs), sent)
	}
	aliases := []string{"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"}
	label := func(r opsRecord) (app, mdl string) {
		app, mdl = r.app, r.model
		if app == "" {
			app = "unknown"
		}
		if mdl != "" && !slices.Contains(aliases, mdl) {
			mdl = "other"
		}
		return app, mdl
	}

	// Tokens by (app, model, type), summed over backends (and teams), and
	// also series by series.
	wantTok, wantTokSeries := map[string]float64{}, map[string]float64{}
	for _, r := range recs {
		app, mdl := label(r)
		for typ, n := range map[string]int64{"prompt": r.prompt, "completion": r.completion, "cached_prompt": r.cached, "reasoning": r.reasoning} {
			if n > 0 {
				wantTok[opsKey("app", app, "model", mdl, "type", typ)] += float64(n)
				wantTokSeries[opsKey("app", app, "team", r.team, "model", mdl, "backend", r.backend, "type", typ)] += float64(n)
			}
		}
	}
	opsCompare(t, "tokengate_tokens_total by app, model, type", opsByLabels(opsSamples(fams, "tokengate_tokens_total"), "app", "model", "type"), wantTok, 0)
	opsCompare(t, "tokengate_tokens_total series", opsByLabels(opsSamples(fams, "tokengate_tokens_total"), "app", "team", "model", "backend", "type"), wantTokSeries, 0)

	// Requests, errors and cost.
	wantReq, wantErr, wantCost := map[string]float64{}, map[string]float64{}, map[string]float64{}
	var costSum float64
	for _, r := range recs {
		app, mdl := label(r)
		wantReq[opsKey("app", app, "model", mdl, "operation", r.operation, "backend", r.backend, "status_class", opsStatusClass(r.status))]++
		if r.errorClass != "" {
			wantErr[opsKey("app", app, "error_class", r.errorClass)]++
		}
		if r.cost > 0 {
			wantCost[opsKey("app", app, "currency", r.currency)] += r.cost
			costSum += r.cost
		}
	}
	reqs := opsSamples(fams, "tokengate_requests_total")
	opsCompare(t, "tokengate_requests_total", opsByLabels(reqs, "app", "model", "operation", "backend", "status_class"), wantReq, 0)
	opsCompare(t, "tokengate_request_errors_total", opsByLabels(opsSamples(fams, "tokengate_request_errors_total"), "app", "error_class"), wantErr, 0)
	opsCompare(t, "tokengate_cost_total by app", opsByLabels(opsSamples(fams, "tokengate_cost_total"), "app", "currency"), wantCost, 1e-9)
	if costSum <= 0 {
		t.Errorf("the records cost nothing: %+v", recs)
	}

	// Bounded labels: the unknown alias is "other", the unauthenticated
	// caller "unknown"; the raw alias is in the record only.
	var other, unknown bool
	for _, s := range reqs {
		other = other || (s.labels["model"] == "other" && s.labels["status_class"] == "4xx")
		unknown = unknown || (s.labels["app"] == "unknown" && s.labels["status_class"] == "4xx")
	}
	if !other || !unknown {
		t.Errorf("no 4xx series with model=\"other\" (%v) or app=\"unknown\" (%v): %v", other, unknown, reqs)
	}
	if i := slices.IndexFunc(recs, func(r opsRecord) bool { return r.model == unknownAlias && r.status == 404 }); i < 0 {
		t.Errorf("no 404 record naming %q", unknownAlias)
	}
	scraped := opsText(fams)
	if strings.Contains(scraped, unknownAlias) {
		t.Errorf("the raw alias %q is a metric label", unknownAlias)
	}

	// Build info and every demo backend's breaker.
	if bi := opsSamples(fams, "tokengate_build_info"); len(bi) != 1 || bi[0].value != 1 || bi[0].labels["goversion"] == "" || bi[0].labels["version"] == "" {
		t.Errorf("tokengate_build_info: %v", bi)
	}
	breakers := opsSamples(fams, "tokengate_backend_breaker_state")
	for _, b := range []string{"ptu-eastus", "paygo-eastus2", "paygo-swedencentral"} {
		closed := 0
		for _, s := range breakers {
			if s.labels["backend"] == b && s.labels["state"] == "closed" && s.value == 1 {
				closed++
			}
		}
		if closed == 0 {
			t.Errorf("no closed breaker series for backend %s: %v", b, breakers)
		}
		if !slices.ContainsFunc(opsSamples(fams, "tokengate_backend_breaker_trips_total"), func(s opsSample) bool { return s.labels["backend"] == b }) {
			t.Errorf("no tokengate_backend_breaker_trips_total for %s", b)
		}
	}

	// The admin summary is the chargeback report, to the byte.
	report, err := exec.Command(binary, "usage", "report", "--db", "sqlite:"+dbPath, "--group-by", "app,model", "--format", "json").Output()
	if err != nil {
		t.Fatalf("usage report: %v", err)
	}
	if !bytes.Equal(bytes.TrimSpace(summary), bytes.TrimSpace(report)) {
		t.Errorf("/admin/usage/summary differs from usage report:\n%s\nreport:\n%s", summary, report)
	}
	var rows []struct {
		Requests int     `json:"requests"`
		Cost     float64 `json:"cost"`
	}
	if err := json.Unmarshal(report, &rows); err != nil {
		t.Fatalf("report: %v\n%s", err, report)
	}
	n, c := 0, 0.0
	for _, r := range rows {
		n, c = n+r.Requests, c+r.Cost
	}
	if n != sent || math.Abs(c-costSum) > 1e-6 {
		t.Errorf("report: %d requests costing %g; records: %d costing %g", n, c, sent, costSum)
	}
}

// TestAdminAPIExposed binds the admin listener to a non-loopback address:
// then everything but health checks needs an admin key or a token with the
// admin role, and a config that sets neither is refused.
func TestAdminAPIExposed(t *testing.T) {
	ip := opsExternalIPv4(t)
	adminKey, wrongKey := opsHex(t, 32), opsHex(t, 32)
	t.Setenv("TOKENGATE_E2E_ADMIN_KEY", adminKey)
	is, issuerDir := opsIssuer(t)
	sim := startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: "sim-key",
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}}}, nil)
	backends := fmt.Sprintf(`
backends: [{name: sim, endpoint: %q, auth: {type: api-key, api_key: sim-key}}]
models: [{name: gpt-4o, deployments: [{backend: sim}]}]
usage: {spool: {dir: spool}}
`, sim.URL())
	adminAddr := opsFreeAddrOn(t, ip)
	exposed := identityConfig(is, backends+fmt.Sprintf("listen: {admin_addr: %q}\n", adminAddr))
	dir := t.TempDir()

	// Validation refuses an exposed admin listener with no protection.
	bare := filepath.Join(dir, "bare.yaml")
	writeFile(t, bare, exposed)
	out, code := opsRun(t, "config", "validate", bare)
	if code != 1 || !strings.Contains(out, "listen.admin_addr") || !strings.Contains(out, "admin.keys or admin.role") {
		t.Errorf("config validate with an exposed, unprotected admin_addr: exit %d:\n%s", code, out)
	}
	// serve --admin-addr validates the override the same way.
	loop := filepath.Join(dir, "loopback.yaml")
	writeFile(t, loop, identityConfig(is, backends))
	out, code = opsRun(t, "serve", "--config", loop, "--addr", freeAddr(t), "--admin-addr", adminAddr, "--insecure-dev-issuer")
	if code != 1 || !strings.Contains(out, "listen.admin_addr") {
		t.Errorf("serve --admin-addr %s without admin auth: exit %d:\n%s", adminAddr, code, out)
	}
	short := filepath.Join(dir, "short.yaml")
	writeFile(t, short, exposed+"admin: {keys: [too-short]}\n")
	if out, code := opsRun(t, "config", "validate", short); code != 1 || !strings.Contains(out, "admin.keys[0]") {
		t.Errorf("config validate with a short admin key: exit %d:\n%s", code, out)
	}

	path := filepath.Join(dir, "tokengate.yaml")
	writeFile(t, path, exposed+"admin: {keys: [\"${TOKENGATE_E2E_ADMIN_KEY}\"], role: tokengate.admin}\n")
	if out, code := opsRun(t, "config", "validate", path); code != 0 {
		t.Fatalf("config validate: exit %d:\n%s", code, out)
	}
	addr := freeAddr(t)
	p := start(t, "serve", "--config", path, "--addr", addr, "--insecure-dev-issuer")
	waitReady(t, "http://"+addr, p)
	admin := "http://" + adminAddr
	if strings.Contains(p.stderr.String(), adminKey) {
		t.Error("the admin key appears in the log")
	}

	// Health checks stay open for probes.
	for _, path := range []string{"/healthz", "/readyz"} {
		if resp, body := opsDo(t, "GET", admin+path, "", "", nil); resp.StatusCode != 200 {
			t.Errorf("%s without credentials: %d %s", path, resp.StatusCode, body)
		}
	}

	withRole := opsMintWithRoles(t, is, issuerDir, "chat-app", "api://tokengate-test", []string{"tokengate.admin"})
	otherRole := opsMintWithRoles(t, is, issuerDir, "chat-app", "api://tokengate-test", []string{"openai-user"})
	wrongAud := opsMintWithRoles(t, is, issuerDir, "chat-app", "api://someone-else", []string{"tokengate.admin"})
	for _, tc := range []struct {
		name, bearer string
		status       int
	}{
		{"no credentials", "", 401},
		{"wrong admin key", wrongKey, 401},
		{"garbage token", "not.a.jwt", 401},
		{"token for another audience with the role", wrongAud, 401},
		{"dev-issuer token without roles", mint(t, is, "chat-app"), 403},
		{"token with another role", otherRole, 403},
		{"admin key", adminKey, 200},
		{"token with the admin role", withRole, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/metrics", "/admin/backends", "/admin/config", "/admin/apps", "/admin/usage/spool"} {
				resp, body := opsDo(t, "GET", admin+path, tc.bearer, "", nil)
				if resp.StatusCode != tc.status {
					t.Errorf("GET %s: %d, want %d: %.300s", path, resp.StatusCode, tc.status, body)
					continue
				}
				switch {
				case tc.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer"):
					t.Errorf("GET %s: 401 without WWW-Authenticate: Bearer", path)
				case tc.status != 200:
					code, msg := opsErrorShape(t, body)
					if tc.status == 403 && !strings.Contains(msg, "tokengate.admin") {
						t.Errorf("GET %s: 403 %s: %q does not name the role", path, code, msg)
					}
				case path == "/metrics" && !bytes.Contains(body, []byte("tokengate_build_info")):
					t.Errorf("GET /metrics: no tokengate_build_info in %.300s", body)
				}
			}
		})
	}
	// Reloading is an admin action too.
	if resp, body := opsDo(t, "POST", admin+"/admin/reload", "", "", nil); resp.StatusCode != 401 {
		t.Errorf("POST /admin/reload without credentials: %d %s", resp.StatusCode, body)
	}
	if resp, body := opsDo(t, "POST", admin+"/admin/reload", adminKey, "", nil); resp.StatusCode != 200 {
		t.Errorf("POST /admin/reload with the admin key: %d %s", resp.StatusCode, body)
	}
	// The admin key is not a client credential.
	if resp, body := opsDo(t, "POST", "http://"+addr+"/v1/chat/completions", adminKey,
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, nil); resp.StatusCode != 401 {
		t.Errorf("the admin key on the client listener: %d %s", resp.StatusCode, body)
	}
}

// TestAdminConfigRedactsSecrets: /admin/config shows the running config
// with no secret in it.
func TestAdminConfigRedactsSecrets(t *testing.T) {
	backendKey := "sk-" + opsHex(t, 16)
	t.Setenv("TOKENGATE_E2E_SECRET_KEY", backendKey)
	redisPassword, traceKey, adminKey := "redis-"+opsHex(t, 12), "otlp-"+opsHex(t, 12), opsHex(t, 32)
	rcv := otlptest.NewReceiver(t)
	sim := startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: backendKey,
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o-d", Model: "gpt-4o"}}}, nil)
	// store: redis does not connect at start (on_store_error: open), so
	// nothing needs to listen at its address.
	redisAddr := freeAddr(t)
	_, admin, p := serveWithAdmin(t, fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
backends:
  - {name: sim-eastus, endpoint: %q, auth: {type: api-key, api_key: "${TOKENGATE_E2E_SECRET_KEY}"}}
models: [{name: gpt-4o, deployments: [{backend: sim-eastus, name: gpt-4o-d}]}]
limits: {store: redis, on_store_error: open, redis: {addr: %q, password: %q}}
telemetry: {traces: {endpoint: %q, headers: {x-api-key: %q}}}
admin: {keys: [%q]}
usage: {spool: {dir: spool}}
`, sim.URL(), redisAddr, redisPassword, rcv.URL(), traceKey, adminKey))
	// A reload of the unchanged file (the listeners came from --addr and
	// --admin-addr) needs no restart.
	if resp, body := opsDo(t, "POST", admin+"/admin/reload", "", "", nil); resp.StatusCode != 200 ||
		strings.Contains(string(body), "restart_required") {
		t.Fatalf("POST /admin/reload of the unchanged file: %d %s", resp.StatusCode, body)
	}
	resp, body := opsDo(t, "GET", admin+"/admin/config", "", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/admin/config: %d %s", resp.StatusCode, body)
	}
	for name, secret := range map[string]string{"backend api_key": backendKey, "redis password": redisPassword,
		"trace export header": traceKey, "admin key": adminKey} {
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("/admin/config shows the %s", name)
		}
		if strings.Contains(p.stderr.String(), secret) {
			t.Errorf("the log shows the %s", name)
		}
	}
	if !bytes.Contains(body, []byte(`"[redacted]"`)) {
		t.Fatalf("/admin/config redacts nothing:\n%s", body)
	}
	var got struct {
		File   string `json:"file"`
		Config struct {
			Backends []struct {
				Name     string `json:"name"`
				Endpoint string `json:"endpoint"`
				Auth     struct {
					Type   string `json:"type"`
					APIKey string `json:"api_key"`
				} `json:"auth"`
			} `json:"backends"`
			Models []struct {
				Name string `json:"name"`
			} `json:"models"`
			Limits struct {
				Store string `json:"store"`
				Redis struct {
					Addr     string `json:"addr"`
					Password string `json:"password"`
				} `json:"redis"`
			} `json:"limits"`
			Telemetry struct {
				Traces struct {
					Endpoint string            `json:"endpoint"`
					Headers  map[string]string `json:"headers"`
				} `json:"traces"`
			} `json:"telemetry"`
			Admin struct {
				Keys []string `json:"keys"`
			} `json:"admin"`
		} `json:"config"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("/admin/config: %v\n%s", err, body)
	}
	c := got.Config
	if len(c.Backends) != 1 || c.Backends[0].Name != "sim-eastus" || c.Backends[0].Endpoint != sim.URL() ||
		c.Backends[0].Auth.Type != "api-key" || c.Backends[0].Auth.APIKey != "[redacted]" {
		t.Errorf("backends: %+v", c.Backends)
	}
	if len(c.Models) != 1 || c.Models[0].Name != "gpt-4o" {
		t.Errorf("models: %+v", c.Models)
	}
	if c.Limits.Store != "redis" || c.Limits.Redis.Addr != redisAddr || c.Limits.Redis.Password != "[redacted]" {
		t.Errorf("limits: %+v", c.Limits)
	}
	if c.Telemetry.Traces.Endpoint != rcv.URL() || c.Telemetry.Traces.Headers["x-api-key"] != "[redacted]" {
		t.Errorf("telemetry.traces: %+v", c.Telemetry.Traces)
	}
	if !slices.Equal(c.Admin.Keys, []string{"[redacted]"}) {
		t.Errorf("admin.keys: %v", c.Admin.Keys)
	}
	if !strings.HasSuffix(got.File, "tokengate.yaml") {
		t.Errorf("file: %q", got.File)
	}
}

// TestAdminApps: /admin/apps shows an app's limits and what it has used.
func TestAdminApps(t *testing.T) {
	sim := startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: "sim-key", CompletionTokens: 10,
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o-d", Model: "gpt-4o"}}}, nil)
	const rpm, tpm = 7, 50000
	base, admin, _ := serveWithAdmin(t, fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
apps:
  - {name: anonymous, team: ops, cost_center: CC-9, limits: [{rpm: %d, tpm: %d}]}
backends: [{name: sim, endpoint: %q, auth: {type: api-key, api_key: sim-key}}]
models: [{name: gpt-4o, deployments: [{backend: sim, name: gpt-4o-d}]}]
usage: {spool: {dir: spool}}
`, rpm, tpm, sim.URL()))

	type limitState struct {
		ID        string     `json:"id"`
		Scope     string     `json:"scope"`
		Kind      string     `json:"kind"`
		Limit     int64      `json:"limit"`
		Used      int64      `json:"used"`
		Remaining int64      `json:"remaining"`
		ResetsAt  *time.Time `json:"resets_at"`
	}
	type appState struct {
		Name        string       `json:"name"`
		Team        string       `json:"team"`
		CostCenter  string       `json:"cost_center"`
		Streaming   bool         `json:"streaming"`
		Limits      []limitState `json:"limits"`
		LimitsError string       `json:"limits_error"`
	}
	apps := func() (rpmState, tpmState limitState, a appState) {
		t.Helper()
		resp, body := opsDo(t, "GET", admin+"/admin/apps", "", "", nil)
		var got struct{ Apps []appState }
		if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 || len(got.Apps) != 1 || len(got.Apps[0].Limits) != 2 {
			t.Fatalf("/admin/apps: %d %v %s", resp.StatusCode, err, body)
		}
		a = got.Apps[0]
		for _, l := range a.Limits {
			switch l.Kind {
			case "rpm":
				rpmState = l
			case "tpm":
				tpmState = l
			}
		}
		return rpmState, tpmState, a
	}

	r, tk, a := apps()
	if a.Name != "anonymous" || a.Team != "ops" || a.CostCenter != "CC-9" || !a.Streaming || a.LimitsError != "" {
		t.Errorf("app: %+v", a)
	}
	if r.ID != "app/anonymous/limits[0].rpm" || r.Scope != "app" || r.Limit != rpm || r.Used != 0 || r.Remaining != rpm || r.ResetsAt != nil {
		t.Errorf("rpm before any request: %+v", r)
	}
	if tk.ID != "app/anonymous/limits[0].tpm" || tk.Limit != tpm || tk.Used != 0 || tk.Remaining != tpm {
		t.Errorf("tpm before any request: %+v", tk)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	var tokens int64
	for range 2 {
		rep := chatOnce(client, base, "gpt-4o", 20)
		if rep.status != 200 || rep.usage == 0 {
			t.Fatalf("chat: %d %s", rep.status, rep.body)
		}
		tokens += rep.usage
	}
	// The token count is settled after the response: poll.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, tk, _ = apps()
		if r.Used == 2 && tk.Used == tokens {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 requests of %d tokens: rpm %+v, tpm %+v", tokens, r, tk)
		}
	}
	if r.Remaining != rpm-2 || tk.Remaining != tpm-tokens {
		t.Errorf("remaining: rpm %+v, tpm %+v", r, tk)
	}
	now := time.Now()
	if r.ResetsAt == nil || !r.ResetsAt.After(now) || r.ResetsAt.After(now.Add(61*time.Second)) {
		t.Errorf("rpm resets_at %v: want within the next minute", r.ResetsAt)
	}
}

// TestTracesExported: each request is a server span continuing the
// client's trace, each upstream attempt a client span under it, and the
// backend receives the attempt's trace context.
func TestTracesExported(t *testing.T) {
	rcv := otlptest.NewReceiver(t)
	obs := newObservations()
	sim := startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: "sim-key", CompletionTokens: 12,
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o-dep", Model: "gpt-4o"}}}, obs)
	base, _ := serve(t, fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
backends: [{name: sim, endpoint: %q, auth: {type: api-key, api_key: sim-key}}]
models: [{name: gpt-4o, deployments: [{backend: sim, name: gpt-4o-dep}]}]
telemetry: {traces: {endpoint: %q, service_name: tokengate-e2e}}
usage: {spool: {dir: spool}}
`, sim.URL(), rcv.URL()))

	// A JSON chat completion continuing the client's trace.
	clientTrace, clientSpan := opsHex(t, 16), opsHex(t, 8)
	resp, body := opsDo(t, "POST", base+"/v1/chat/completions", "",
		`{"model":"gpt-4o","max_tokens":30,"messages":[{"role":"user","content":"Trace me"}]}`,
		map[string]string{"traceparent": "00-" + clientTrace + "-" + clientSpan + "-01"})
	if resp.StatusCode != 200 {
		t.Fatalf("chat: %d %s", resp.StatusCode, body)
	}
	var u struct {
		Usage struct {
			Prompt     int64 `json:"prompt_tokens"`
			Completion int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &u); err != nil || u.Usage.Prompt == 0 || u.Usage.Completion == 0 {
		t.Fatalf("chat usage: %v %s", err, body)
	}
	jsonID := resp.Header.Get("X-Request-Id")

	// A stream with a new trace, through the SDK.
	var raw *http.Response
	s := v1Client(base).Chat.Completions.NewStreaming(context.Background(), chatParams(true), option.WithResponseInto(&raw))
	var streamUsage openai.CompletionUsage
	for s.Next() {
		if c := s.Current(); c.Usage.TotalTokens > 0 {
			streamUsage = c.Usage
		}
	}
	if s.Err() != nil || streamUsage.TotalTokens == 0 {
		t.Fatalf("stream: %v, usage %+v", s.Err(), streamUsage)
	}
	streamID := raw.Header.Get("X-Request-Id")

	serverSpan := func(spans []otlptest.Span, id string) (otlptest.Span, bool) {
		for _, sp := range spans {
			if sp.Kind == trace.SpanKindServer && sp.Attr("tokengate.request_id") == id {
				return sp, true
			}
		}
		return otlptest.Span{}, false
	}
	children := func(spans []otlptest.Span, parent otlptest.Span) []otlptest.Span {
		var out []otlptest.Span
		for _, sp := range spans {
			if sp.Kind == trace.SpanKindClient && sp.TraceID == parent.TraceID && sp.ParentSpanID == parent.SpanID {
				out = append(out, sp)
			}
		}
		return out
	}
	spans := rcv.WaitFor(t, func(spans []otlptest.Span) bool {
		for _, id := range []string{jsonID, streamID} {
			sp, ok := serverSpan(spans, id)
			if !ok || len(children(spans, sp)) == 0 {
				return false
			}
		}
		return true
	}, 15*time.Second)

	for _, tc := range []struct {
		name, id          string
		stream            bool
		input, output     int64
		traceID, parentID string
		wantMaxTokens     int64
	}{
		{"json", jsonID, false, u.Usage.Prompt, u.Usage.Completion, clientTrace, clientSpan, 30},
		{"stream", streamID, true, streamUsage.PromptTokens, streamUsage.CompletionTokens, "", "", 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp, _ := serverSpan(spans, tc.id)
			if sp.Name != "chat gpt-4o" || sp.ServiceName != "tokengate-e2e" {
				t.Errorf("server span %q of service %q, want \"chat gpt-4o\" of tokengate-e2e", sp.Name, sp.ServiceName)
			}
			for k, want := range map[string]any{
				"gen_ai.operation.name":      "chat",
				"gen_ai.provider.name":       "azure.ai.openai",
				"gen_ai.request.model":       "gpt-4o",
				"gen_ai.request.stream":      tc.stream,
				"gen_ai.request.max_tokens":  tc.wantMaxTokens,
				"gen_ai.usage.input_tokens":  tc.input,
				"gen_ai.usage.output_tokens": tc.output,
				"http.response.status_code":  int64(200),
				"tokengate.backend":          "sim",
				"tokengate.app":              "anonymous",
				"tokengate.attempts":         int64(1),
			} {
				if got := sp.Attr(k); got != want {
					t.Errorf("server span %s = %#v, want %#v", k, got, want)
				}
			}
			if tc.traceID != "" && (sp.TraceID != tc.traceID || sp.ParentSpanID != tc.parentID) {
				t.Errorf("server span trace %s parent %s; the client sent trace %s span %s", sp.TraceID, sp.ParentSpanID, tc.traceID, tc.parentID)
			}
			if tc.traceID == "" && sp.ParentSpanID != "" {
				t.Errorf("a request without traceparent has parent span %s", sp.ParentSpanID)
			}
			kids := children(spans, sp)
			if len(kids) != 1 {
				t.Fatalf("%d client spans under the server span, want one per attempt (1)", len(kids))
			}
			k := kids[0]
			if k.Name != "chat gpt-4o-dep" || k.Attr("gen_ai.request.model") != "gpt-4o-dep" || k.Attr("tokengate.backend") != "sim" ||
				k.Attr("http.response.status_code") != int64(200) || k.Start.Before(sp.Start) || k.End.After(sp.End) {
				t.Errorf("attempt span %q %v [%v, %v] in server span [%v, %v]", k.Name, k.Attributes, k.Start, k.End, sp.Start, sp.End)
			}
			// The backend got the attempt's context, not the client's.
			var seen []string
			for _, ob := range obs.list() {
				if tp := ob.Header.Get("Traceparent"); strings.Contains(tp, sp.TraceID) {
					seen = append(seen, tp)
				}
			}
			if want := "00-" + sp.TraceID + "-" + k.SpanID + "-01"; len(seen) != 1 || seen[0] != want {
				t.Errorf("the backend saw traceparent %q, want [%s]", seen, want)
			}
		})
	}
}
