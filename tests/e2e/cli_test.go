package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func asError[T error](err error, target *T) bool { return errors.As(err, target) }

// TestDemo runs the README's first command as a newcomer would and pastes
// what it prints.
func TestDemo(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "demo-data")
	p := start(t, "demo", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--data-dir", dataDir)
	line := p.stdout.waitFor(t, "gateway ", 20*time.Second)
	base := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "gateway"))
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("gateway line %q", line)
	}
	p.stdout.waitFor(t, "Press Ctrl-C", 5*time.Second)
	out := p.stdout.String()
	for _, want := range []string{"curl", "AzureOpenAI", "openai-go", "ptu-eastus", "paygo-eastus2", "paygo-swedencentral", "text-embedding-3-small"} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo banner does not mention %q", want)
		}
	}
	if st, err := os.Stat(dataDir); err != nil || !st.IsDir() {
		t.Errorf("data dir not created: %v", err)
	}

	// The banner's export TOKEN=... line carries a chat-app token.
	exported := strings.TrimPrefix(strings.TrimSpace(p.stdout.waitFor(t, "export TOKEN=", time.Second)), "export TOKEN=")
	// dev-token prints a token alone on its last line.
	tokOut, err := exec.Command(binary, "dev-token", "--app", "chat-app", "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatalf("dev-token: %v", err)
	}
	outLines := strings.Split(strings.TrimSpace(string(tokOut)), "\n")
	token := outLines[len(outLines)-1]
	if strings.Count(token, ".") != 2 || strings.Count(exported, ".") != 2 {
		t.Fatalf("dev-token's last line is not a JWT: %q", tokOut)
	}
	post := func(path, body, tok string) *http.Response {
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	// Without a token, or with an api-key, the gateway refuses.
	if resp := post("/v1/chat/completions", `{"model":"gpt-4o"}`, ""); resp.StatusCode != 401 {
		t.Errorf("no token: %d", resp.StatusCode)
	}

	// The banner's first curl: Azure style, non-streaming.
	resp := post("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
		`{"messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}`, exported)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"completion_tokens":20`) {
		t.Fatalf("chat: %d %s", resp.StatusCode, body)
	}

	// The streaming curl: OpenAI style, with the dev-token token.
	resp = post("/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`, token)
	events := 0
	sc := bufio.NewScanner(resp.Body)
	last := ""
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			events++
			last = sc.Text()
		}
	}
	resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") || events < 5 || last != "data: [DONE]" {
		t.Fatalf("stream: %q, %d events, last %q", resp.Header.Get("Content-Type"), events, last)
	}

	// batch-app may not stream.
	batch, err := exec.Command(binary, "dev-token", "--app", "batch-app", "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatal(err)
	}
	batchLines := strings.Split(strings.TrimSpace(string(batch)), "\n")
	resp = post("/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hello"}]}`, batchLines[len(batchLines)-1])
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 400 || !strings.Contains(string(b), "streaming_disabled") {
		t.Errorf("batch-app streaming: %d %s", resp.StatusCode, b)
	}

	// batch-app's small limit: five requests a minute, the sixth is a 429
	// with the headers the SDKs back off on.
	for i := range 6 {
		resp = post("/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, batchLines[len(batchLines)-1])
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case i < 5 && resp.StatusCode != 200:
			t.Errorf("batch-app request %d: %d %s", i+1, resp.StatusCode, b)
		case i == 5 && (resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" ||
			resp.Header.Get("X-Ratelimit-Limit-Requests") != "5" || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "0"):
			t.Errorf("batch-app request 6: %d %v %s", resp.StatusCode, resp.Header, b)
		}
	}

	// Every alias the banner names is served.
	for _, tc := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}`},
		{"/v1/embeddings", `{"model":"text-embedding-3-small","input":"hi"}`},
	} {
		resp := post(tc.path, tc.body, token)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", tc.body, resp.StatusCode, b)
		}
	}
	p.stop(t)

	// The report command the banner prints reads the demo's usage.db: the
	// refused batch-app call and chat-app's calls with their tokens and cost.
	if !strings.Contains(p.stdout.String(), "usage report --db sqlite:"+filepath.Join(dataDir, "usage.db")) {
		t.Errorf("the banner does not print the report command:\n%s", p.stdout.String())
	}
	report, err := exec.Command(binary, "usage", "report", "--db", "sqlite:"+filepath.Join(dataDir, "usage.db"),
		"--group-by", "app", "--format", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("usage report: %v\n%s", err, report)
	}
	var rows []struct {
		App              string
		Requests, Errors int
		PromptTokens     int64   `json:"prompt_tokens"`
		CompletionTokens int64   `json:"completion_tokens"`
		Cost             float64 `json:"cost"`
	}
	if err := json.Unmarshal(report, &rows); err != nil {
		t.Fatalf("report: %v\n%s", err, report)
	}
	byApp := map[string]int{}
	for i, r := range rows {
		byApp[r.App] = i
	}
	chat, batchRow := rows[byApp["chat-app"]], rows[byApp["batch-app"]]
	if chat.App != "chat-app" || chat.Requests < 4 || chat.PromptTokens == 0 || chat.CompletionTokens == 0 || chat.Cost <= 0 {
		t.Errorf("chat-app row: %+v\n%s", chat, report)
	}
	if batchRow.App != "batch-app" || batchRow.Requests != 7 || batchRow.Errors != 2 || batchRow.PromptTokens == 0 {
		t.Errorf("batch-app row: %+v\n%s", batchRow, report)
	}
}

func TestConfigValidate(t *testing.T) {
	run := func(args ...string) (string, int) {
		cmd := exec.Command(binary, args...)
		cmd.Env = append(os.Environ(), "PTU_EASTUS_URL=http://127.0.0.1:1", "PAYGO_EASTUS2_URL=http://127.0.0.1:2",
			"PAYGO_SWEDENCENTRAL_URL=http://127.0.0.1:3", "AZURE_OPENAI_EASTUS_KEY=k",
			"DEV_TENANT=7e5ab1c2-0d3f-4a6b-9c8d-1e2f3a4b5c6d", "DEV_ISSUER_URL=http://127.0.0.1:4",
			"EVENTHUBS_CONNECTION_STRING=Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	for _, f := range []string{"../../examples/azure.yaml", "../../examples/demo.yaml"} {
		if out, code := run("config", "validate", f); code != 0 || !strings.Contains(out, "is valid") {
			t.Errorf("%s: exit %d: %s", f, code, out)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte(`
backends:
  - name: a
    endpoint: http://10.0.0.1
  - name: b
    endpoint: https://b.openai.azure.com
    auth: {type: api-key}
models:
  - name: gpt-4o
    deployments: [{backend: c}]
`), 0o600)
	out, code := run("config", "validate", bad)
	if code != 1 {
		t.Fatalf("exit %d for an invalid file: %s", code, out)
	}
	for _, want := range []string{
		"backends[0].endpoint: \"http://10.0.0.1\" must be an https URL or a loopback http URL",
		"backends[1].auth.api_key: required",
		"models[0].deployments[0].backend: no backend is named \"c\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// serve refuses the same file, with the same list.
	if out, code := run("serve", "--config", bad); code != 1 || !strings.Contains(out, "backends[1].auth.api_key") {
		t.Errorf("serve with a bad config: exit %d: %s", code, out)
	}
	if _, code := run("nonsense"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}
