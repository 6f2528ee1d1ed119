package simulator

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigExample(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if len(cfg.Instances) != 2 {
		t.Fatalf("instances = %d, want 2", len(cfg.Instances))
	}
	ptu, paygo := cfg.Instances[0], cfg.Instances[1]
	checks := []struct {
		name      string
		got, want any
	}{
		{"ptu name", ptu.Name, "ptu-eastus"},
		{"ptu api key", ptu.APIKey, "sim-key-eastus"},
		{"ptu ttft", ptu.Latency.TimeToFirstToken, 200 * time.Millisecond},
		{"ptu tps", ptu.Latency.TokensPerSecond, 80.0},
		{"ptu deployments", len(ptu.Deployments), 2},
		{"ptu embedding model", ptu.Deployments[1].Model, "text-embedding-3-small"},
		{"paygo listen default", paygo.Listen, DefaultListen},
		{"paygo completion tokens default", paygo.CompletionTokens, DefaultCompletionTokens},
		{"paygo bearer", paygo.BearerToken, "sim-entra-token"},
		{"paygo extra", paygo.Latency.Extra, 20 * time.Millisecond},
		{"paygo error rate", paygo.Faults.ErrorRate, 0.02},
		{"paygo extra latency", paygo.Faults.ExtraLatency, 2 * time.Second},
		{"paygo throttle rate", paygo.Faults.ThrottleRate, 0.01},
		{"paygo throttle retry after", paygo.Faults.ThrottleRetryAfter, 2 * time.Second},
		{"paygo window", paygo.RateLimitWindow, time.Minute},
		{"ptu window default", ptu.RateLimitWindow, DefaultRateLimitWindow},
		{"paygo rpm", paygo.Deployments[0].RPM, 60},
		{"paygo tpm", paygo.Deployments[1].TPM, 10000},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Every instance of the example must also build.
	for _, ic := range cfg.Instances {
		if _, err := New(ic, nil); err != nil {
			t.Errorf("New(%s): %v", ic.Name, err)
		}
	}
}

func TestParseConfigValidationListsEveryProblem(t *testing.T) {
	yaml := `
instances:
  - name: a
    listen: "not-an-address"
    completion_tokens: -1
    rate_limit_window: -2s
    latency:
      tokens_per_second: -5
    faults:
      error_rate: 1.5
      reset_rate: -0.1
      throttle_rate: 2
      throttle_retry_after: -1s
    deployments:
      - name: ""
        model: gpt-4o
      - name: x/y
        model: ""
        rpm: -1
        tpm: -2
  - name: b
    deployments: []
  - name: a
    deployments:
      - name: d
        model: gpt-4o
      - name: d
        model: gpt-4o-mini
`
	_, err := ParseConfig([]byte(yaml))
	if err == nil {
		t.Fatal("ParseConfig succeeded, want validation errors")
	}
	want := []string{
		"instances[0].listen: must be host:port",
		"instances[0].completion_tokens: must not be negative",
		"instances[0].latency.tokens_per_second: must not be negative",
		"instances[0].faults.error_rate: must be a fraction between 0 and 1",
		"instances[0].faults.reset_rate: must be a fraction between 0 and 1",
		"instances[0].rate_limit_window: must not be negative",
		"instances[0].faults.throttle_rate: must be a fraction between 0 and 1",
		"instances[0].faults.throttle_retry_after: must not be negative",
		"instances[0].deployments[0].name: required",
		"instances[0].deployments[1].name: \"x/y\" must not contain '/'",
		"instances[0].deployments[1].model: required",
		"instances[0].deployments[1].rpm: must not be negative",
		"instances[0].deployments[1].tpm: must not be negative",
		"instances[1].deployments: at least one deployment is required",
		"instances[2].name: \"a\" is already used by instances[0]",
		"instances[2].deployments[1].name: \"d\" is already used by deployments[0]",
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not mention %q\nfull error:\n%s", w, msg)
		}
	}
	if got := len(strings.Split(msg, "\n")); got != len(want) {
		t.Errorf("error has %d lines, want %d:\n%s", got, len(want), msg)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", "", "empty configuration"},
		{"no instances", "instances: []", "instances: at least one instance is required"},
		{"unknown field", "instances:\n  - name: a\n    colour: blue\n", "field colour not found"},
		{"bad duration", "instances:\n  - name: a\n    latency:\n      extra: soon\n", "cannot unmarshal"},
		{"missing name", "instances:\n  - deployments:\n      - name: d\n        model: m\n", "instances[0].name: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error = %v, want a not-exist error", err)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := New(InstanceConfig{Name: "x"}, nil)
	if err == nil || !strings.Contains(err.Error(), "deployments: at least one deployment is required") {
		t.Fatalf("New error = %v", err)
	}
}
