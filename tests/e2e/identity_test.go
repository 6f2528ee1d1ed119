package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"

	"github.com/tokengate/tokengate/internal/devissuer"
	"github.com/tokengate/tokengate/internal/simulator"
)

const (
	chatAppID  = "0c7f6a1e-5b3d-4e2a-9f10-2a3b4c5d6e7f"
	batchAppID = "5d2e8b4a-1c6f-4e3d-8a9b-7f0e1d2c3b4a"
	cogAud     = "https://cognitiveservices.azure.com"
)

// startIssuer runs the development issuer with the two demo-style apps.
func startIssuer(t *testing.T) *devissuer.Issuer {
	t.Helper()
	is, err := devissuer.Start(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = is.Close(context.Background()) })
	if err := is.Publish("api://tokengate-test", map[string]string{"chat-app": chatAppID, "batch-app": batchAppID}); err != nil {
		t.Fatal(err)
	}
	return is
}

func mint(t *testing.T, is *devissuer.Issuer, app string) string {
	t.Helper()
	tok, err := is.Mint(app, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func identityConfig(is *devissuer.Issuer, backends string) string {
	st := is.State()
	return fmt.Sprintf(`
log: {level: warn}
identity:
  audiences: [api://tokengate-test]
  entra: {tenants: [%[1]s], authority_host: %[2]q, v1_issuer_host: %[2]q}
  pass_through: {enabled: true, tenants: [%[1]s], apps: [%[3]s]}
apps:
  - {name: chat-app, app_ids: [%[3]s], team: web, roles: [openai-user]}
  - {name: batch-app, app_ids: [%[4]s], team: data, roles: [openai-user], streaming: false, max_tokens: {cap: 256}}
%[5]s`, st.Tenant, st.URL, chatAppID, batchAppID, backends)
}

// serveInsecure is serve() for configs trusting the plain-http dev issuer.
func serveInsecure(t *testing.T, config string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokengate.yaml")
	writeFile(t, path, config)
	addr := freeAddr(t)
	p := start(t, "serve", "--config", path, "--addr", addr, "--admin-addr", "off", "--insecure-dev-issuer")
	base := "http://" + addr
	waitReady(t, base, p)
	return base
}

// staticToken is an azcore.TokenCredential handing out one token, as
// azidentity would.
type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestIdentityWithOfficialSDK(t *testing.T) {
	is := startIssuer(t)
	obs := newObservations()
	sim := startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: "gateway-own-key",
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}}}, obs)
	base := serveInsecure(t, identityConfig(is, fmt.Sprintf(`
backends: [{name: sim, endpoint: %q, auth: {type: api-key, api_key: gateway-own-key}}]
models: [{name: gpt-4o, deployments: [{backend: sim}]}]
`, sim.URL())))
	token := mint(t, is, "chat-app")
	ctx := context.Background()

	t.Run("azure client with a token credential", func(t *testing.T) {
		c := openai.NewClient(azure.WithEndpoint(base, apiVersion), azure.WithTokenCredential(staticToken(token)),
			azure.WithUnsafeAllowHTTP(), option.WithMaxRetries(0))
		got, err := c.Chat.Completions.New(ctx, chatParams(false))
		if err != nil || got.Usage.CompletionTokens != 40 {
			t.Fatalf("%v %+v", err, got)
		}
	})
	t.Run("v1 client with the token as bearer, streaming", func(t *testing.T) {
		c := openai.NewClient(option.WithBaseURL(base+"/openai/v1/"), option.WithAPIKey(token), option.WithMaxRetries(0))
		s := c.Chat.Completions.NewStreaming(ctx, chatParams(true))
		n := 0
		for s.Next() {
			n++
		}
		if s.Err() != nil || n < 5 {
			t.Fatalf("%d chunks, %v", n, s.Err())
		}
	})
	for _, ob := range obs.list() {
		if ob.Header.Get("api-key") != "gateway-own-key" {
			t.Errorf("backend saw api-key %q, want the gateway's own", ob.Header.Get("api-key"))
		}
		if a := ob.Header.Get("Authorization"); a != "" {
			t.Errorf("the caller's token reached a backend that uses the gateway's credential: %.20q", a)
		}
	}

	t.Run("batch-app may not stream", func(t *testing.T) {
		c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(mint(t, is, "batch-app")), option.WithMaxRetries(0))
		s := c.Chat.Completions.NewStreaming(ctx, chatParams(true))
		for s.Next() {
		}
		var apiErr *openai.Error
		if !asError(s.Err(), &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "streaming") {
			t.Fatalf("want 400 streaming disabled, got %v", s.Err())
		}
		p := chatParams(false)
		p.MaxTokens = openai.Int(1000)
		_, err := c.Chat.Completions.New(ctx, p)
		if !asError(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "256") {
			t.Fatalf("want 400 naming the cap, got %v", err)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			header map[string]string
			status int
			want   string
		}{
			{"no credentials", nil, 401, "Bearer"},
			{"azure api-key", map[string]string{"api-key": "0123456789abcdef"}, 401, "api"},
			{"garbage token", map[string]string{"Authorization": "Bearer not.a.jwt"}, 401, ""},
			{"pass-through token at a gateway-credential backend", map[string]string{"Authorization": "Bearer " + mintFor(t, is, "chat-app", cogAud)}, 200, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
				for k, v := range tc.header {
					req.Header.Set(k, v)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.StatusCode != tc.status {
					b, _ := io.ReadAll(resp.Body)
					t.Fatalf("status %d: %s", resp.StatusCode, b)
				}
				if tc.status == 401 {
					if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
						t.Errorf("401 without WWW-Authenticate: Bearer")
					}
					code, msg := errorOf(t, resp)
					if tc.want != "" && !strings.Contains(code+" "+msg, tc.want) {
						t.Errorf("%s: %s does not say %q", code, msg, tc.want)
					}
				}
			})
		}
	})
}

func mintFor(t *testing.T, is *devissuer.Issuer, app, aud string) string {
	t.Helper()
	tok, err := is.MintFor(app, aud, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestPassThroughSendsCallersToken(t *testing.T) {
	is := startIssuer(t)
	callerToken := mintFor(t, is, "chat-app", cogAud)
	obs := newObservations()
	// The simulated instance accepts only the caller's own token, as Azure
	// OpenAI's RBAC would.
	sim := startSimulator(t, simulator.InstanceConfig{Name: "rbac", BearerToken: callerToken,
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}}}, obs)
	base := serveInsecure(t, identityConfig(is, fmt.Sprintf(`
backends: [{name: rbac, endpoint: %q, auth: {type: caller}}]
models: [{name: gpt-4o, deployments: [{backend: rbac}]}]
`, sim.URL())))
	c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(callerToken), option.WithMaxRetries(0))
	if _, err := c.Chat.Completions.New(context.Background(), chatParams(false)); err != nil {
		t.Fatal(err)
	}
	obsAll := obs.list()
	if len(obsAll) != 1 || obsAll[0].Header.Get("Authorization") != "Bearer "+callerToken || obsAll[0].Header.Get("api-key") != "" {
		t.Fatalf("the backend did not see exactly the caller's token: %d requests", len(obsAll))
	}
	// A token for the gateway's own audience cannot be forwarded.
	c = openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(mint(t, is, "chat-app")), option.WithMaxRetries(0))
	_, err := c.Chat.Completions.New(context.Background(), chatParams(false))
	var apiErr *openai.Error
	if !asError(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Fatalf("want 403 for a gateway-audience token at a pass-through backend, got %v", err)
	}
	if len(obs.list()) != 1 {
		t.Fatal("the refused request reached the backend")
	}
}

func TestServeRefusesDevIssuerWithoutFlag(t *testing.T) {
	is := startIssuer(t)
	path := filepath.Join(t.TempDir(), "tokengate.yaml")
	writeFile(t, path, identityConfig(is, `
backends: [{name: sim, endpoint: "http://127.0.0.1:1", auth: {type: none}}]
models: [{name: gpt-4o, deployments: [{backend: sim}]}]
`))
	out, err := exec.Command(binary, "serve", "--config", path, "--addr", freeAddr(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--insecure-dev-issuer") {
		t.Fatalf("serve accepted a plain-http issuer without the flag: %v\n%s", err, out)
	}
}

// TestGatewayKeysLifecycle issues, uses, lists and revokes a gateway key
// with the CLI while the gateway runs, and uses it from the official SDK in
// the api-key header as Azure's own keys are sent.
func TestGatewayKeysLifecycle(t *testing.T) {
	sim := startSimulator(t, simulator.InstanceConfig{Name: "sim", APIKey: "own",
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}}}, nil)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "tokengate.yaml")
	writeFile(t, cfgPath, fmt.Sprintf(`
log: {level: warn}
identity:
  gateway_keys: {enabled: true, file: %q}
apps:
  - {name: legacy-app, team: ops, roles: [openai-user]}
backends: [{name: sim, endpoint: %q, auth: {type: api-key, api_key: own}}]
models: [{name: gpt-4o, deployments: [{backend: sim}]}]
`, filepath.Join(dir, "keys.json"), sim.URL()))
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(binary, args...)
		cmd.Dir = dir // "keys create --app NAME" finds ./tokengate.yaml
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := cli("keys", "create", "--app", "legacy-app")
	if err != nil {
		t.Fatalf("create: %v %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	key := lines[len(lines)-1]
	if !strings.HasPrefix(key, "tgk_") {
		t.Fatalf("key line %q", key)
	}
	if data, _ := exec.Command("cat", filepath.Join(dir, "keys.json")).Output(); strings.Contains(string(data), key) {
		t.Fatal("the key store holds the key itself")
	}
	if _, err := cli("keys", "create", "--config", cfgPath, "--app", "nobody"); err == nil {
		t.Fatal("a key for an unregistered app was issued")
	}

	addr := freeAddr(t)
	p := start(t, "serve", "--config", cfgPath, "--addr", addr, "--admin-addr", "off")
	base := "http://" + addr
	waitReady(t, base, p)
	c := azureClient(base, key)
	if _, err := c.Chat.Completions.New(context.Background(), chatParams(false)); err != nil {
		t.Fatalf("gateway key refused: %v", err)
	}
	if strings.Contains(p.stderr.String(), key) {
		t.Fatal("the key appears in the gateway log")
	}

	out, _ = cli("keys", "list", "--config", cfgPath)
	prefix := strings.Split(key, "_")[1]
	if !strings.Contains(out, prefix) || !strings.Contains(out, "legacy-app") {
		t.Fatalf("list: %s", out)
	}
	if out, err := cli("keys", "revoke", "--config", cfgPath, prefix); err != nil {
		t.Fatalf("revoke: %v %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Chat.Completions.New(context.Background(), chatParams(false))
		var apiErr *openai.Error
		if asError(err, &apiErr) && apiErr.StatusCode == 401 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a revoked key still works: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
