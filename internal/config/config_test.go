package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

const minimal = `
identity: {anonymous: true}
backends:
  - name: east
    endpoint: https://east.openai.azure.com
models:
  - name: gpt-4o
    deployments:
      - backend: east
`

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Backends[0]
	if p := cfg.Pools; len(p) != 1 || p[0].Name != DefaultPool || p[0].Backends[0] != (PoolMember{Backend: "east", Priority: 1, Weight: 1}) ||
		p[0].Retry.Attempts != 3 || p[0].Breaker.Failures != 1 || !p[0].SteeringEnabled() || p[0].Strategy != "weighted" {
		t.Errorf("default pool: %+v", cfg.Pools)
	}
	if b.APIVersion != DefaultAPIVersion || b.Auth.Type != AuthEntra || b.Auth.Scope != CognitiveServicesScope {
		t.Errorf("backend defaults not filled: %+v", b)
	}
	if d := cfg.Models[0].Deployments[0]; d.Name != "gpt-4o" {
		t.Errorf("deployment name defaults to the alias, got %q", d.Name)
	}
	if cfg.Listen.MaxBodyBytes != 16<<20 || cfg.Listen.Addr != "127.0.0.1:8080" || cfg.Listen.WriteTimeout != 30*time.Second {
		t.Errorf("listen defaults: %+v", cfg.Listen)
	}
}

func TestParseSubstitution(t *testing.T) {
	doc := `
identity: {anonymous: true}
listen:
  max_body_bytes: ${MAX}
backends:
  - name: east
    endpoint: ${EAST_URL}
    auth: {type: api-key, api_key: "${EAST_KEY}"}
  - name: west
    endpoint: ${WEST_URL:-https://west.openai.azure.com}
    auth: {type: api-key, api_key: "${WEST_KEY}"}
models:
  - name: gpt-4o
    deployments: [{backend: east}, {backend: west, name: "$${literal}"}]
`
	cfg, err := Parse([]byte(doc), env(map[string]string{
		"MAX":      "1024",
		"EAST_URL": "https://east.openai.azure.com",
		"EAST_KEY": "k: #not-a-comment [x]",
		"WEST_KEY": "null",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.MaxBodyBytes != 1024 {
		t.Errorf("int from env: %d", cfg.Listen.MaxBodyBytes)
	}
	if got := cfg.Backends[0].Auth.APIKey; got != "k: #not-a-comment [x]" {
		t.Errorf("a secret with YAML syntax must stay one string, got %q", got)
	}
	if got := cfg.Backends[1].Auth.APIKey; got != "null" {
		t.Errorf(`a secret "null" must stay a string, got %q`, got)
	}
	if got := cfg.Backends[1].Endpoint; got != "https://west.openai.azure.com" {
		t.Errorf("default: %q", got)
	}
	if got := cfg.Models[0].Deployments[1].Name; got != "${literal}" {
		t.Errorf("$$ escape: %q", got)
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := `
listen:
  addr: nonsense
  max_body_bytes: -1
log: {level: loud}
backends:
  - name: east
    endpoint: http://east.openai.azure.com
    auth: {type: api-key}
  - name: east
    endpoint: ftp://x
    auth: {type: magic}
  - name: "bad name"
    endpoint: https://user:pw@x.openai.azure.com
pools:
  - name: p
    strategy: random
    backends: [{backend: east, priority: -1}, {backend: ghost}]
    breaker: {trip_on: ["429", "600-700", "x"]}
models:
  - name: gpt-4o
    pool: nope
    deployments:
      - backend: nowhere
      - backend: east
      - backend: east
  - name: empty
`
	_, err := Parse([]byte(doc), env(nil))
	if err == nil {
		t.Fatal("expected errors")
	}
	want := []string{
		"listen.addr:",
		"listen.max_body_bytes: must be positive",
		"log.level:",
		"backends[0].endpoint: \"http://east.openai.azure.com\" must be an https URL or a loopback http URL",
		"pools[0].backends[0].priority:",
		"pools[0].backends[1].backend: no backend is named \"ghost\"",
		"pools[0].strategy:",
		"pools[0].breaker.trip_on[1]:",
		"pools[0].breaker.trip_on[2]:",
		"models[0].pool: no pool is named \"nope\"",
		"backends[0].auth.api_key: required",
		"backends[1].name: \"east\" is used by another backend",
		"backends[1].endpoint:",
		"backends[1].auth.type:",
		"backends[2].name:",
		"backends[2].endpoint:",
		"models[0].deployments[0].backend: no backend is named \"nowhere\"",
		"models[0].deployments[2].backend: \"east\" serves this alias twice",
		"models[1].deployments: at least one deployment is required",
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%v", w, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		doc  string
		want string
	}{
		"unknown field":    {minimal + "\nbogus: 1\n", "field bogus not found"},
		"unset variable":   {strings.Replace(minimal, "https://east.openai.azure.com", "${NOPE}", 1), "backends[0].endpoint: environment variable NOPE is not set"},
		"bad variable":     {strings.Replace(minimal, "https://east.openai.azure.com", "${1X}", 1), "invalid variable name"},
		"unterminated":     {strings.Replace(minimal, "https://east.openai.azure.com", "${X", 1), "unterminated"},
		"empty":            {"", "empty"},
		"not yaml":         {"backends: [", "yaml"},
		"bad duration":     {minimal + "\nlisten: {write_timeout: soon}\n", "yaml"},
		"loopback is fine": {strings.Replace(minimal, "https://east.openai.azure.com", "http://127.0.0.1:9000", 1), ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), env(nil))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLoadExamples(t *testing.T) {
	t.Setenv("PTU_EASTUS_URL", "http://127.0.0.1:1")
	t.Setenv("PAYGO_EASTUS2_URL", "http://127.0.0.1:2")
	t.Setenv("PAYGO_SWEDENCENTRAL_URL", "http://127.0.0.1:3")
	t.Setenv("AZURE_OPENAI_EASTUS_KEY", "k")
	t.Setenv("DEV_TENANT", "7e5ab1c2-0d3f-4a6b-9c8d-1e2f3a4b5c6d")
	t.Setenv("DEV_ISSUER_URL", "http://127.0.0.1:4")
	t.Setenv("EVENTHUBS_CONNECTION_STRING", "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k")
	files, _ := filepath.Glob("../../examples/*.yaml")
	n := 0
	for _, f := range files {
		if strings.Contains(f, "simulator") {
			continue
		}
		n++
		if _, err := Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if n < 2 {
		t.Fatalf("expected the demo and the Azure example, found %v", files)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
