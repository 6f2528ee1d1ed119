package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

func TestAdminKeyMatches(t *testing.T) {
	keys := []string{strings.Repeat("a", 32), strings.Repeat("b", 40)}
	for _, tc := range []struct {
		token string
		want  bool
	}{
		{strings.Repeat("a", 32), true},
		{strings.Repeat("b", 40), true},
		{strings.Repeat("a", 31), false},
		{strings.Repeat("a", 33), false},
		{"", false},
	} {
		if got := adminKeyMatches(keys, tc.token); got != tc.want {
			t.Errorf("adminKeyMatches(%q) = %v", tc.token, got)
		}
	}
	if adminKeyMatches(nil, "") {
		t.Error("no keys must match nothing")
	}
}

// TestRedactedConfig: no secret reaches /admin/config, whatever field it is in.
func TestRedactedConfig(t *testing.T) {
	secrets := []string{"backend-key-0123456789", "redis-pass-0123456789", "pg-pass-0123456789",
		"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=eh-0123456789",
		"kafka-pass-0123456789", "admin-key-0123456789abcdefghijklmnopqrstuv", "otlp-key-0123456789"}
	doc := `
listen: {addr: "127.0.0.1:0", admin_addr: "off"}
identity: {anonymous: true}
backends:
  - {name: east, endpoint: "http://127.0.0.1:1", auth: {type: api-key, api_key: "` + secrets[0] + `"}}
models: [{name: m, deployments: [{backend: east}]}]
limits: {store: redis, redis: {addr: "127.0.0.1:1", password: "` + secrets[1] + `"}}
usage:
  sinks:
    - {name: pg, type: postgres, dsn: "postgres://u:` + secrets[2] + `@db:5432/x"}
    - {name: eh, type: eventhubs, topic: usage, connection_string: "` + secrets[3] + `"}
    - {name: k, type: kafka, brokers: ["127.0.0.1:9092"], topic: t, sasl: {mechanism: plain, username: u, password: "` + secrets[4] + `"}}
admin: {keys: ["` + secrets[5] + `"]}
telemetry: {traces: {endpoint: "http://127.0.0.1:4318", headers: {x-api-key: "` + secrets[6] + `"}}}
`
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(redacted(reflect.ValueOf(cfg), false))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if strings.Contains(string(out), s) || strings.Contains(string(out), s[:12]) {
			t.Errorf("secret %q is in the redacted config", s)
		}
	}
	for _, want := range []string{`"[redacted]"`, `"endpoint":"http://127.0.0.1:1"`, `"x-api-key":"[redacted]"`, `"shutdown_timeout":"30s"`, `"username":"u"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the redacted config lacks %s:\n%s", want, out)
		}
	}
}

// reloadGateway builds a gateway from a config file whose backend is
// backend, serving on a loopback port; it returns the gateway, its base
// URL and the file.
func reloadGateway(t *testing.T, doc, backend string) (*Gateway, string, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokengate.yaml")
	write := strings.ReplaceAll(doc, "${BACKEND}", backend) + "usage: {spool: {dir: " + filepath.Join(dir, "spool") + "}}\nreload: {watch: false}\n"
	if err := os.WriteFile(path, []byte(write), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := NewGateway(cfg, slog.New(slog.DiscardHandler), WithConfigFile(path, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	return gw, serveForTest(t, gw), path
}

// rewrite replaces old with next in the config file at path, keeping the
// lines reloadGateway appended.
func rewrite(t *testing.T, path, old, next string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatal("rewrite: the file does not hold the old config")
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), old, next, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReloadSwapsRuntime: a request in flight finishes on the runtime it
// started on, which closes after it; new requests use the new config; a
// bad file changes nothing.
func TestReloadSwapsRuntime(t *testing.T) {
	release := make(chan struct{})
	fb := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/slow/") {
			<-release
		}
		okJSON(w, r)
	})
	doc := strings.Replace(testConfig, "  - name: emb\n", "  - name: slow\n    deployments: [{backend: east}]\n  - name: emb\n", 1)
	gw, base, path := reloadGateway(t, doc, fb.URL)
	old := gw.rt.Load()

	slow := make(chan int, 1)
	go func() {
		resp, err := http.Post(base+"/openai/deployments/slow/chat/completions?api-version=2024-10-21", "application/json", strings.NewReader(`{"messages":[]}`))
		if err != nil {
			slow <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	for deadline := time.Now().Add(5 * time.Second); old.active.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the slow request never started")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The new config adds a model alias.
	next := strings.Replace(doc, "  - name: emb\n", "  - name: added\n    deployments: [{backend: east}]\n  - name: emb\n", 1)
	rewrite(t, path, strings.ReplaceAll(doc, "${BACKEND}", fb.URL), strings.ReplaceAll(next, "${BACKEND}", fb.URL))
	if err := gw.Reload("test"); err != nil {
		t.Fatal(err)
	}
	if gw.rt.Load() == old || !old.retired.Load() {
		t.Fatal("the reload did not swap the runtime")
	}
	resp := post(t, base+"/openai/deployments/added/chat/completions?api-version=2024-10-21", `{"messages":[]}`, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the added alias: %d", resp.StatusCode)
	}
	select {
	case <-old.closed:
		t.Fatal("the old runtime closed under a request still running on it")
	default:
	}
	close(release)
	if code := <-slow; code != http.StatusOK {
		t.Fatalf("the request in flight across the reload got %d", code)
	}
	select {
	case <-old.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the old runtime was not closed after its last request")
	}

	// A broken file: the error lists the problem, the config keeps serving.
	cur := gw.rt.Load()
	bad := strings.Replace(next, "api_version: \"2024-10-21\"", "api_version: \"2024-10-21\"\n    bogus_field: 1", 1)
	rewrite(t, path, strings.ReplaceAll(next, "${BACKEND}", fb.URL), strings.ReplaceAll(bad, "${BACKEND}", fb.URL))
	err := gw.Reload("test")
	if err == nil || !strings.Contains(err.Error(), "bogus_field") {
		t.Fatalf("a broken file must be rejected naming the problem: %v", err)
	}
	if gw.rt.Load() != cur || gw.reloads.OK || len(gw.reloads.Errors) == 0 {
		t.Fatalf("a rejected reload changed the runtime or hid the failure: %+v", gw.reloads)
	}
	resp = post(t, base+"/openai/deployments/added/chat/completions?api-version=2024-10-21", `{"messages":[]}`, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after a rejected reload: %d", resp.StatusCode)
	}
}

// TestReloadRestartOnlySections: sections that need a restart keep their
// start-up values and are reported.
func TestReloadRestartOnlySections(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	gw, _, path := reloadGateway(t, testConfig, fb.URL)
	next := strings.Replace(testConfig, `log: {level: error}`, `log: {level: debug}`, 1)
	rewrite(t, path, strings.ReplaceAll(testConfig, "${BACKEND}", fb.URL), strings.ReplaceAll(next, "${BACKEND}", fb.URL))
	if err := gw.Reload("test"); err != nil {
		t.Fatal(err)
	}
	if got := gw.reloads.RestartRequired; len(got) != 1 || got[0] != "log" {
		t.Fatalf("restart_required = %v, want [log]", got)
	}
	if gw.rt.Load().cfg.Log.Level != "error" {
		t.Fatal("the running config must keep the start-up log level")
	}
}

// TestAdminAuthExposed: an exposed admin listener wants an admin key for
// everything but health checks.
func TestAdminAuthExposed(t *testing.T) {
	key := strings.Repeat("k", 40)
	fb := newFakeBackend(t, okJSON)
	doc := strings.Replace(testConfig, `admin_addr: "off"`, `admin_addr: "192.0.2.10:8081"`, 1) + "admin: {keys: [\"" + key + "\"], profiling: true}\n"
	cfg, err := config.Parse([]byte(doc), func(k string) (string, bool) { return fb.URL, k == "BACKEND" })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Usage.Spool.Dir = t.TempDir()
	gw, err := NewGateway(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close(context.Background())
	srv := httptest.NewServer(gw.AdminHandler())
	defer srv.Close()
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/healthz", "", 200},
		{"/readyz", "", 200},
		{"/metrics", "", 401},
		{"/admin/config", "", 401},
		{"/admin/config", "Bearer " + strings.Repeat("x", 40), 401},
		{"/admin/config", "Basic " + key, 401},
		{"/admin/config", "Bearer " + key, 200},
		{"/metrics", "Bearer " + key, 200},
		{"/admin/nothing", "Bearer " + key, 404},
		{"/debug/pprof/", "", 401},
		{"/debug/pprof/", "Bearer " + key, 200},
	} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s with %q: %d, want %d: %s", tc.path, tc.auth, resp.StatusCode, tc.want, body)
		}
		if tc.want == 401 && !strings.Contains(string(body), `"error"`) {
			t.Errorf("%s: the refusal is not in the error shape: %s", tc.path, body)
		}
		if strings.Contains(string(body), key) {
			t.Errorf("%s echoes the admin key", tc.path)
		}
	}
	// Without keys or a role, an exposed admin listener is a config error.
	bare := strings.Replace(testConfig, `admin_addr: "off"`, `admin_addr: "192.0.2.10:8081"`, 1)
	if _, err := config.Parse([]byte(bare), func(k string) (string, bool) { return fb.URL, k == "BACKEND" }); err == nil ||
		!strings.Contains(err.Error(), "listen.admin_addr") {
		t.Fatalf("an exposed admin listener without protection must not validate: %v", err)
	}
}

// TestProfilingOffByDefault: pprof is served only when admin.profiling says so.
func TestProfilingOffByDefault(t *testing.T) {
	fb := newFakeBackend(t, okJSON)
	gw, _, _ := reloadGateway(t, testConfig, fb.URL)
	srv := httptest.NewServer(gw.AdminHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ without admin.profiling: %d, want 404", resp.StatusCode)
	}
}
