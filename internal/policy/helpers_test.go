package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

// base is the part of every test config that policy does not read.
const base = `
backends:
  - name: east
    endpoint: https://east.openai.azure.com
models:
  - name: gpt-4o
    deployments: [{backend: east}]
  - name: gpt-4o-mini
    deployments: [{backend: east}]
  - name: text-embedding-3-small
    deployments: [{backend: east}]
`

// Identity blocks: gateway keys (apps need no app ids) or Entra.
const (
	keysIdentity = `
identity: {anonymous: false, gateway_keys: {enabled: true, file: /tmp/x}}
`
	entraIdentity = `
identity:
  audiences: [api://tokengate]
  entra: {tenants: [72f988bf-86f1-41af-91ab-2d7cd011db47]}
  unknown_apps: allow
`
)

func noEnv(string) (string, bool) { return "", false }

// newPolicy parses doc with config.Parse, so validation runs, and builds a
// Policy from it.
func newPolicy(t testing.TB, doc string) (*Policy, *config.Config) {
	t.Helper()
	cfg, err := config.Parse([]byte(doc), noEnv)
	if err != nil {
		t.Fatalf("config.Parse: %v\n%s", err, doc)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p, cfg
}

// appCaller is a caller authenticated as the registered app name.
func appCaller(t testing.TB, cfg *config.Config, name string) *auth.Caller {
	t.Helper()
	for i := range cfg.Apps {
		if cfg.Apps[i].Name == name {
			c := &auth.Caller{Method: auth.MethodGatewayKey, App: &cfg.Apps[i]}
			if len(cfg.Apps[i].AppIDs) > 0 {
				c.Method, c.AppID = auth.MethodEntra, cfg.Apps[i].AppIDs[0]
			}
			return c
		}
	}
	t.Fatalf("no app %q", name)
	return nil
}

// request parses method and path as the gateway does; alias defaults to the
// path's alias, or gpt-4o for v1-style routes.
func request(t testing.TB, method, path string, body openai.Body) Request {
	t.Helper()
	r, err := openai.ParseRoute(method, path)
	if err != nil {
		t.Fatalf("ParseRoute(%s %s): %v", method, path, err)
	}
	req := Request{Method: method, Route: r, Alias: r.Alias, Body: body}
	if r.ModelInBody {
		req.Alias = "gpt-4o"
	}
	return req
}

// wantRefusal checks that err is an *openai.Error with status and code whose
// message contains each of parts. An empty code wants no error.
func wantRefusal(t *testing.T, err error, status int, code string, parts ...string) {
	t.Helper()
	if code == "" {
		if err != nil {
			t.Fatalf("want allowed, got %v", err)
		}
		return
	}
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("want *openai.Error %d %s, got %v", status, code, err)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("want %d %s, got %d %s: %s", status, code, e.Status, e.Code, e.Message)
	}
	for _, p := range parts {
		if !strings.Contains(e.Message, p) {
			t.Errorf("message %q does not contain %q", e.Message, p)
		}
	}
}
