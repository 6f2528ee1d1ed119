package balancer

import (
	"errors"
	"math"
	"testing"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/upstream"
)

func newTest(t *testing.T, doc string) *Balancer {
	t.Helper()
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	backends := map[string]*upstream.Backend{}
	for _, bc := range cfg.Backends {
		b, err := upstream.NewBackend(bc)
		if err != nil {
			t.Fatal(err)
		}
		backends[bc.Name] = b
	}
	bal, err := New(cfg, backends)
	if err != nil {
		t.Fatal(err)
	}
	return bal
}

const doc = `
identity: {anonymous: true}
backends:
  - {name: ptu, endpoint: "http://127.0.0.1:1", priority: 1, auth: {type: none}}
  - {name: a, endpoint: "http://127.0.0.1:2", priority: 2, weight: 3, auth: {type: none}}
  - {name: b, endpoint: "http://127.0.0.1:3", priority: 2, weight: 1, api_version: "2025-01-01", auth: {type: none}}
models:
  - name: gpt-4o
    deployments: [{backend: ptu, name: gpt-4o-ptu, api_version: "2024-06-01"}, {backend: a}, {backend: b}]
  - name: mini
    deployments: [{backend: b, name: mini-b}, {backend: a, name: mini-a}]
`

func TestPickPrefersBestPriority(t *testing.T) {
	bal := newTest(t, doc)
	for range 100 {
		got, err := bal.Pick("gpt-4o")
		if err != nil {
			t.Fatal(err)
		}
		if got.Backend.Name != "ptu" || got.Deployment != "gpt-4o-ptu" || got.APIVersion != "2024-06-01" {
			t.Fatalf("got %s/%s@%s", got.Backend.Name, got.Deployment, got.APIVersion)
		}
	}
}

func TestPickWeights(t *testing.T) {
	bal := newTest(t, doc)
	const n = 10000
	count := map[string]int{}
	for range n {
		got, err := bal.Pick("mini")
		if err != nil {
			t.Fatal(err)
		}
		count[got.Backend.Name]++
		if got.Backend.Name == "b" && (got.Deployment != "mini-b" || got.APIVersion != "2025-01-01") {
			t.Fatalf("b's deployment mapping: %+v", got)
		}
	}
	for name, weight := range map[string]float64{"a": 0.75, "b": 0.25} {
		share := float64(count[name]) / n
		if math.Abs(share-weight) > 0.02 {
			t.Errorf("%s got %.3f of picks, want %.2f±0.02", name, share, weight)
		}
	}
}

func TestPickUnknownAlias(t *testing.T) {
	bal := newTest(t, doc)
	_, err := bal.Pick("gpt-5")
	var e *openai.Error
	if !errors.As(err, &e) || e.Status != 404 {
		t.Fatalf("want a 404 naming the alias, got %v", err)
	}
	if pt := bal.PassThrough(); pt.Backend.Name != "ptu" || pt.Deployment != "" {
		t.Fatalf("pass-through goes to the best-priority backend, got %+v", pt)
	}
}

func BenchmarkPick(b *testing.B) {
	cfg, _ := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	backends := map[string]*upstream.Backend{}
	for _, bc := range cfg.Backends {
		backends[bc.Name], _ = upstream.NewBackend(bc)
	}
	bal, _ := New(cfg, backends)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = bal.Pick("mini")
	}
}
