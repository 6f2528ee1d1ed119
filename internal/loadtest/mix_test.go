package loadtest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseMix(t *testing.T) {
	full := `
stream_share: 0.3
max_tokens: 128
prompt_tokens: [{tokens: 50, weight: 3}, {tokens: 2000}]
models: [{alias: gpt-4o, weight: 3}, {alias: gpt-4o-mini, weight: 1}]
apps:
  - {name: chat-app, weight: 1, headers: {Authorization: "Bearer ${CHAT_TOKEN}"}}
  - {name: batch-app, headers: {api-key: "${A}-${B}", X-Literal: "$5 off"}}
`
	share, maxTok := 0.3, 128
	for _, tc := range []struct {
		name, yaml string
		env        map[string]string
		want       *Mix
		err        string // substring of the error, "" = valid
	}{
		{"full", full, map[string]string{"CHAT_TOKEN": "tok", "A": "a", "B": "b"}, &Mix{
			StreamShare:  &share,
			MaxTokens:    &maxTok,
			PromptTokens: []PromptShare{{Tokens: 50, Weight: 3}, {Tokens: 2000}},
			Models:       []ModelShare{{Alias: "gpt-4o", Weight: 3}, {Alias: "gpt-4o-mini", Weight: 1}},
			Apps: []App{
				{Name: "chat-app", Weight: 1, Headers: map[string]string{"Authorization": "Bearer tok"}},
				{Name: "batch-app", Headers: map[string]string{"api-key": "a-b", "X-Literal": "$5 off"}},
			},
		}, ""},
		{"only models", "models: [{alias: m}]\n", nil, &Mix{Models: []ModelShare{{Alias: "m"}}}, ""},
		{"empty", "", nil, nil, "mix.yaml: empty mix file"},
		{"unknown field", "stream_share: 0.5\nstreams: 3\n", nil, nil, "line 2: field streams not found"},
		{"wrong type", "max_tokens: lots\n", nil, nil, "line 1: cannot unmarshal"},
		{"stream share", "max_tokens: 5\nstream_share: 2\n", nil, nil, "mix.yaml:2: stream_share: must be a fraction between 0 and 1, got 2"},
		{"prompt tokens", "prompt_tokens:\n  - {tokens: 10}\n  - {tokens: 0}\n", nil, nil, "mix.yaml:3: prompt_tokens[1].tokens: must be between 1"},
		{"weight", "models:\n  - alias: m\n    weight: -1\n", nil, nil, "mix.yaml:3: models[0].weight: must be positive, got -1"},
		{"alias", "models: [{weight: 2}]\n", nil, nil, "models[0].alias: required"},
		{"app name twice", "apps:\n  - {name: a}\n  - {name: a}\n", nil, nil, `mix.yaml:3: apps[1].name: "a" is already used by apps[0]`},
		{"env not set", "apps:\n  - {name: a, headers: {Authorization: \"Bearer ${NOPE}\"}}\n", nil, nil, "mix.yaml:2: apps[0].headers.Authorization: environment variable NOPE is not set"},
		{"env unterminated", "apps: [{name: a, headers: {k: \"${X\"}}]\n", nil, nil, `unterminated "${"`},
		{"bad header name", "apps: [{name: a, headers: {\"Bad Name\": v}}]\n", nil, nil, `header name "Bad Name" is not a valid HTTP token`},
		{"several problems", "stream_share: -1\nmax_tokens: 0\n", nil, nil, "mix.yaml:2: max_tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMix("mix.yaml", []byte(tc.yaml), env(tc.env))
			if tc.err != "" {
				if !errorsContain(err, tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestLoadMixErrorNamesFile(t *testing.T) {
	_, err := LoadMix(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errorsContain(err, "missing.yaml") {
		t.Fatalf("error %v", err)
	}
	path := filepath.Join(t.TempDir(), "mix.yaml")
	if err := os.WriteFile(path, []byte("max_tokens: 1\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadMix(path); !errorsContain(err, path) || !errorsContain(err, "line 2") {
		t.Fatalf("error %v", err)
	}
	t.Setenv("LOADTEST_TEST_TOKEN", "from-env")
	if err := os.WriteFile(path, []byte(`apps: [{name: a, headers: {Authorization: "Bearer ${LOADTEST_TEST_TOKEN}"}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := LoadMix(path)
	if err != nil || m.Apps[0].Headers["Authorization"] != "Bearer from-env" {
		t.Fatalf("mix %+v, %v", m, err)
	}
}

func TestMixApply(t *testing.T) {
	share, maxTok := 0.5, 7
	m := &Mix{StreamShare: &share, MaxTokens: &maxTok, PromptTokens: []PromptShare{{Tokens: 9}},
		Models: []ModelShare{{Alias: "a"}, {Alias: "b"}}, Apps: []App{{Name: "x"}}}
	for _, tc := range []struct {
		name     string
		explicit []string
		want     Config
	}{
		{"file wins over defaults", nil, Config{StreamShare: 0.5, MaxTokens: 7, PromptTokens: []PromptShare{{Tokens: 9}},
			Models: []ModelShare{{Alias: "a"}, {Alias: "b"}}, Apps: []App{{Name: "x"}}}},
		{"explicit flags win", []string{"stream-share", "max-tokens", "prompt-tokens", "model"}, Config{StreamShare: 0.1, MaxTokens: 64,
			PromptTokens: []PromptShare{{Tokens: 100}}, Models: []ModelShare{{Alias: "flag"}}, Apps: []App{{Name: "x"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{StreamShare: 0.1, MaxTokens: 64, PromptTokens: []PromptShare{{Tokens: 100}}, Models: []ModelShare{{Alias: "flag"}}}
			m.Apply(&c, func(f string) bool { return strings.Contains(strings.Join(tc.explicit, ","), f) })
			if !reflect.DeepEqual(c, tc.want) {
				t.Fatalf("got %+v\nwant %+v", c, tc.want)
			}
		})
	}
}

// A mix spreads requests over apps (each with its own headers) and models,
// and the report breaks them down.
func TestMixRun(t *testing.T) {
	s := startSim(t, simulator.InstanceConfig{})
	rep := run(t, Config{
		URL:          s.url,
		Concurrency:  4,
		Duration:     500 * time.Millisecond,
		MaxTokens:    4,
		StreamShare:  0.5,
		Header:       []Header{{Name: "X-Run", Value: "r1"}, {Name: "X-Team", Value: "flag"}},
		Models:       []ModelShare{{Alias: "gpt-4o", Weight: 3}, {Alias: "gpt-4o-mini", Weight: 1}},
		PromptTokens: []PromptShare{{Tokens: 10}, {Tokens: 500}},
		Apps: []App{
			{Name: "chat", Headers: map[string]string{"X-App": "chat", "X-Team": "app"}},
			{Name: "batch", Headers: map[string]string{"X-App": "batch"}},
		},
	})
	checkInvariants(t, rep)
	obs := s.observations(t, rep.Sent)
	byApp, byModel := map[string]int64{}, map[string]int64{}
	small, large := 0, 0
	for _, o := range obs {
		if o.Header.Get("X-Run") != "r1" || o.Header.Get("X-Team") != "flag" {
			t.Fatalf("headers %v: --header must be on every request and win", o.Header)
		}
		byApp[o.Header.Get("X-App")]++
		byModel[o.Deployment]++
		if o.PromptTokens < 100 {
			small++
		} else {
			large++
		}
	}
	if len(rep.ByApp) != 2 || len(rep.ByModel) != 2 {
		t.Fatalf("by app %+v by model %+v", rep.ByApp, rep.ByModel)
	}
	for _, b := range rep.ByApp {
		if b.Sent != byApp[b.Name] || b.Sent == 0 || b.StatusCodes["200"] != b.Sent {
			t.Errorf("app %s: %+v, simulator saw %d", b.Name, b, byApp[b.Name])
		}
	}
	for _, b := range rep.ByModel {
		if b.Sent != byModel[b.Name] || b.Sent == 0 {
			t.Errorf("model %s: %+v, simulator saw %d", b.Name, b, byModel[b.Name])
		}
	}
	if rep.ByModel[0].Sent < rep.ByModel[1].Sent {
		t.Errorf("weights 3:1, got %d:%d", rep.ByModel[0].Sent, rep.ByModel[1].Sent)
	}
	if small == 0 || large == 0 {
		t.Errorf("prompt sizes: %d small, %d large", small, large)
	}
}
