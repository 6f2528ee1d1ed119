package balancer

import (
	"errors"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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
	bal, err := New(cfg, backends, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return bal
}

const doc = `
identity: {anonymous: true}
backends:
  - {name: ptu, endpoint: "http://127.0.0.1:1", auth: {type: none}}
  - {name: a, endpoint: "http://127.0.0.1:2", auth: {type: none}}
  - {name: b, endpoint: "http://127.0.0.1:3", api_version: "2025-01-01", auth: {type: none}}
pools:
  - name: main
    backends: [{backend: ptu, priority: 1}, {backend: a, priority: 2, weight: 3}, {backend: b, priority: 2, weight: 1}]
models:
  - name: gpt-4o
    deployments: [{backend: ptu, name: gpt-4o-ptu, api_version: "2024-06-01"}, {backend: a}, {backend: b}]
  - name: mini
    deployments: [{backend: b, name: mini-b}, {backend: a, name: mini-a}]
`

// pick runs one selection's first attempt and reports success.
func pick(t *testing.T, bal *Balancer, alias string) upstream.Target {
	t.Helper()
	s, err := bal.Select("main", alias, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Next()
	if err != nil {
		t.Fatal(err)
	}
	s.Report(&http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}, nil)
	return got
}

func TestPickPrefersBestPriority(t *testing.T) {
	bal := newTest(t, doc)
	for range 100 {
		got := pick(t, bal, "gpt-4o")
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
		got := pick(t, bal, "mini")
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
	_, err := bal.Select("main", "gpt-5", 0, true)
	var e *openai.Error
	if !errors.As(err, &e) || e.Status != 404 {
		t.Fatalf("want a 404 naming the alias, got %v", err)
	}
	if pt, _ := bal.PassThrough().Next(); pt.Backend.Name != "ptu" || pt.Deployment != "" {
		t.Fatalf("pass-through goes to the best-priority backend, got %+v", pt)
	}
}

func BenchmarkPick(b *testing.B) {
	cfg, _ := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	backends := map[string]*upstream.Backend{}
	for _, bc := range cfg.Backends {
		backends[bc.Name], _ = upstream.NewBackend(bc)
	}
	bal, _ := New(cfg, backends, slog.New(slog.DiscardHandler))
	b.ReportAllocs()
	for b.Loop() {
		s, _ := bal.Select("main", "mini", 100, true)
		_, _ = s.Next()
	}
}

// trip opens the breakers of the named backends for an hour.
func trip(bal *Balancer, names ...string) {
	for _, s := range bal.states {
		if slices.Contains(names, s.backend) {
			s.openUntil.Store(time.Now().Add(time.Hour).UnixNano())
		}
	}
}

func TestPickWeightsAmongAvailable(t *testing.T) {
	const weighted = `
identity: {anonymous: true}
backends:
  - {name: w1, endpoint: "http://127.0.0.1:1", auth: {type: none}}
  - {name: w2, endpoint: "http://127.0.0.1:2", auth: {type: none}}
  - {name: w3, endpoint: "http://127.0.0.1:3", auth: {type: none}}
  - {name: w4, endpoint: "http://127.0.0.1:4", auth: {type: none}}
pools:
  - name: main
    backends: [{backend: w1, priority: 1, weight: 1}, {backend: w2, priority: 1, weight: 2}, {backend: w3, priority: 1, weight: 3}, {backend: w4, priority: 1, weight: 4}]
models:
  - name: m
    deployments: [{backend: w1}, {backend: w2}, {backend: w3}, {backend: w4}]
`
	bal := newTest(t, weighted)
	trip(bal, "w4") // the heaviest: most draws over the whole group miss
	const n = 30000
	count := map[string]int{}
	for range n {
		count[pick(t, bal, "m").Backend.Name]++
	}
	if count["w4"] != 0 {
		t.Fatalf("a tripped backend was picked %d times", count["w4"])
	}
	for name, want := range map[string]float64{"w1": 1.0 / 6, "w2": 2.0 / 6, "w3": 3.0 / 6} {
		if share := float64(count[name]) / n; math.Abs(share-want) > 0.015 {
			t.Errorf("%s got %.3f of picks, want %.3f±0.015", name, share, want)
		}
	}
}

func TestPickLargeGroupMostlyTripped(t *testing.T) {
	for _, strategy := range []string{"weighted", "round-robin"} {
		t.Run(strategy, func(t *testing.T) {
			doc := benchPool(1000)
			if strategy == "round-robin" {
				doc = strings.Replace(doc, "{name: main,", "{name: main, strategy: round-robin,", 1)
			}
			bal := newTest(t, doc)
			// Only b0..b9 stay closed; benchPool puts the even ones at
			// priority 1, so those five take every request.
			var tripped []string
			for i := 10; i < 1000; i++ {
				tripped = append(tripped, "b"+strconv.Itoa(i))
			}
			trip(bal, tripped...)
			count := map[string]int{}
			for range 5000 {
				count[pick(t, bal, "m").Backend.Name]++
			}
			if len(count) != 5 {
				t.Fatalf("picked %v, want only b0, b2, b4, b6, b8 (the untripped of priority 1)", count)
			}
			for _, name := range []string{"b0", "b2", "b4", "b6", "b8"} {
				if c := count[name]; c < 800 || c > 1200 {
					t.Errorf("%s picked %d of 5000 times, want about 1000", name, c)
				}
			}
		})
	}
}

func TestRoundRobinSkipsATrippedMemberEvenly(t *testing.T) {
	const rr = `
identity: {anonymous: true}
backends:
  - {name: a, endpoint: "http://127.0.0.1:1", auth: {type: none}}
  - {name: b, endpoint: "http://127.0.0.1:2", auth: {type: none}}
  - {name: c, endpoint: "http://127.0.0.1:3", auth: {type: none}}
pools:
  - name: main
    strategy: round-robin
    backends: [{backend: a, priority: 1}, {backend: b, priority: 1}, {backend: c, priority: 1}]
models:
  - name: m
    deployments: [{backend: a}, {backend: b}, {backend: c}]
`
	bal := newTest(t, rr)
	trip(bal, "c")
	count := map[string]int{}
	for range 600 {
		count[pick(t, bal, "m").Backend.Name]++
	}
	if count["a"] != 300 || count["b"] != 300 {
		t.Fatalf("round-robin with c tripped: %v, want a and b 300 each", count)
	}
}
