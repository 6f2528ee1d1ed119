package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/loadtest"
	"github.com/tokengate/tokengate/internal/simulator"
)

func TestLoadtestCommand(t *testing.T) {
	sim, err := simulator.New(simulator.InstanceConfig{
		Name: "lt", APIKey: "sim-key",
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}, {Name: "gpt-4o-mini", Model: "gpt-4o-mini"}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	url, err := sim.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close(context.Background())

	t.Run("json report", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), []string{"loadtest", "--url", url, "--concurrency", "2", "--duration", "300ms",
			"--stream-share", "0.5", "--max-tokens", "8", "--header", "api-key: sim-key", "--json"}, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("exit %d, stderr: %s", code, stderr.String())
		}
		var rep loadtest.Report
		dec := json.NewDecoder(&stdout)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("stdout is not one JSON report: %v", err)
		}
		if dec.More() {
			t.Error("stdout has more than the report")
		}
		if rep.Mode != "closed" || rep.Sent == 0 || rep.StatusCodes["200"] != rep.Sent || rep.CompletionTokens != 8*rep.Sent || rep.TTFT.Count == 0 {
			t.Errorf("report %+v", rep)
		}
		if strings.Contains(stdout.String()+stderr.String(), "sim-key") {
			t.Error("the api-key was printed")
		}
	})

	t.Run("mix file and text report", func(t *testing.T) {
		t.Setenv("LT_KEY", "sim-key")
		mix := filepath.Join(t.TempDir(), "mix.yaml")
		if err := os.WriteFile(mix, []byte(`
stream_share: 1
models: [{alias: gpt-4o}, {alias: gpt-4o-mini}]
apps:
  - {name: one, headers: {api-key: "${LT_KEY}"}}
  - {name: two, headers: {api-key: "${LT_KEY}"}}
`), 0o600); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), []string{"loadtest", "--url", url, "--rate", "50", "--duration", "200ms",
			"--mix", mix, "--stream-share", "0", "--max-tokens", "4"}, &stdout, &stderr)
		out := stdout.String()
		if code != 0 {
			t.Fatalf("exit %d, stderr: %s", code, stderr.String())
		}
		// --stream-share 0 was explicit: it wins over the file.
		for _, want := range []string{"open loop: 50 requests/s", "0% streaming", "by app", "by model", "gpt-4o-mini", "status     200: 10"} {
			if !strings.Contains(out, want) {
				t.Errorf("report lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "sim-key") {
			t.Error("the api-key was printed")
		}
	})

	t.Run("nothing answers", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), []string{"loadtest", "--url", "http://" + addr, "--rate", "20", "--duration", "100ms", "--json"}, &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "no request got a response") || !strings.Contains(stderr.String(), "connection_refused") {
			t.Errorf("exit %d, stderr %s", code, stderr.String())
		}
		var rep loadtest.Report
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.TransportErrors["connection_refused"] != 2 {
			t.Errorf("report %s: %v", stdout.String(), err)
		}
	})
}

func TestLoadtestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no url", []string{"--rate", "1"}, "--url: required"},
		{"negative rate", []string{"--url", "http://x", "--rate", "-1"}, "--rate: must be"},
		{"no load model", []string{"--url", "http://x"}, "set --rate R"},
		{"stream share", []string{"--url", "http://x", "--rate", "1", "--stream-share", "1.5"}, "--stream-share: must be a fraction between 0 and 1"},
		{"header syntax", []string{"--url", "http://x", "--rate", "1", "--header", "Authorization Bearer hunter2"}, `--header #1: want "Name: value"`},
		{"mix file", []string{"--url", "http://x", "--rate", "1", "--mix", "/nonexistent/mix.yaml"}, "/nonexistent/mix.yaml"},
		{"api", []string{"--url", "http://x", "--rate", "1", "--api", "openai"}, "--api: must be azure or v1"},
		{"bad number", []string{"--url", "http://x", "--rate", "fast"}, "invalid value"},
		{"argument", []string{"--url", "http://x", "--rate", "1", "extra"}, `unexpected argument "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), append([]string{"loadtest"}, tc.args...), &stdout, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr.String(), tc.want)
			}
			if strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("a header value was echoed: %s", stderr.String())
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q", stdout.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := Run(context.Background(), []string{"loadtest", "--help"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "prompt_tokens: [{tokens: 50") {
		t.Errorf("--help: exit %d, %s", code, stderr.String())
	}
}
