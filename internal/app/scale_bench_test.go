//go:build linux || darwin

package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/devissuer"
	"github.com/tokengate/tokengate/internal/simulator"
)

// BenchmarkScale measures the gateway's per-request cost as the config
// grows, in one run so the rows compare: N backends (all pointing at one
// simulator, all in one pool at one priority, each a deployment of the one
// model, so every selection considers all of them) and N registered apps
// (each with its own app id, a role and a limit; the caller is one of them
// and authenticates with an Entra-style JWT from the dev issuer).
//
// The pipeline runs in-process on the gateway's http.Handler, and so does
// the upstream call: the gateway's own transport hands it to the
// simulator's handler without a socket, so the rows differ only in the
// gateway's work, not in loopback noise. "direct" is the simulator's
// handler alone: the gateway's overhead at N is gateway(N) - direct.
// BenchmarkScaleLoopback is the same with the simulator behind a loopback
// listener.
//
// Each row also reports cpu-ns/op: the process's CPU time (user and
// system, getrusage) per request, which a busy machine inflates less than
// wall time. It counts the simulator and the usage spool's writer too (the
// same at every N).
//
//	go test -run '^$' -bench 'Scale$' -count 6 ./internal/app
func BenchmarkScale(b *testing.B) {
	env := newScaleEnv(b)
	b.Run("direct", func(b *testing.B) {
		rt := handlerTransport{env.sim}
		env.direct(b, rt, "http://sim")
	})
	env.sizes(b, true)
}

// BenchmarkScaleLoopback is BenchmarkScale with the upstream call over
// loopback to the simulator's listener, as in production.
func BenchmarkScaleLoopback(b *testing.B) {
	env := newScaleEnv(b)
	b.Run("direct", func(b *testing.B) {
		env.direct(b, &http.Transport{DisableCompression: true}, env.simURL)
	})
	env.sizes(b, false)
}

func (e *scaleEnv) sizes(b *testing.B, inMemory bool) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) { e.serve(b, n, 1, inMemory) })
	}
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("apps=%d", n), func(b *testing.B) { e.serve(b, 1, n, inMemory) })
	}
}

// direct sends the benchmark's request to the simulator through rt.
func (e *scaleEnv) direct(b *testing.B, rt http.RoundTripper, base string) {
	client := &http.Client{Transport: rt}
	b.ReportAllocs()
	defer cpuPerOp(b)()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, base+scalePath, strings.NewReader(scaleBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Api-Key", "k")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// BenchmarkScaleBuild measures what a start or reload costs with up to
// 1,000 backends and 10,000 apps: parsing (which validates) the file,
// validating it again, and NewGateway (balancer, policy, authenticator with
// its first JWKS fetch, limiter, metrics), with the heap the gateway keeps
// (heap-B).
func BenchmarkScaleBuild(b *testing.B) {
	env := newScaleEnv(b)
	// The tokenizer's tables are built once per process: not in heap-B.
	warm, err := NewGateway(env.config(b, 1, 1), env.log)
	if err != nil {
		b.Fatal(err)
	}
	_ = warm.Close(context.Background())
	for _, c := range []struct{ backends, apps int }{{1, 1}, {1000, 1}, {1, 10000}, {1000, 10000}} {
		doc := env.doc(c.backends, c.apps, b.TempDir())
		name := fmt.Sprintf("backends=%d/apps=%d", c.backends, c.apps)
		b.Run(name+"/parse", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := config.Parse(doc, noEnv); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/validate", func(b *testing.B) {
			cfg, err := config.Parse(doc, noEnv)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := cfg.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/gateway", func(b *testing.B) {
			cfg := env.config(b, c.backends, c.apps)
			heap := retained(b, func() (io.Closer, error) { return closing(NewGateway(cfg, env.log)) })
			defer func() { b.ReportMetric(float64(heap), "heap-B") }() // after the loop, which resets metrics
			b.ReportAllocs()
			for b.Loop() {
				gw, err := NewGateway(cfg, env.log)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = gw.Close(context.Background())
				b.StartTimer()
			}
		})
	}
}

// retained is how much heap what build returns keeps (it is closed after).
func retained(b *testing.B, build func() (io.Closer, error)) uint64 {
	var before, after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	c, err := build()
	if err != nil {
		b.Fatal(err)
	}
	goruntime.GC()
	goruntime.ReadMemStats(&after)
	goruntime.KeepAlive(c)
	_ = c.Close()
	if after.HeapAlloc < before.HeapAlloc {
		return 0
	}
	return after.HeapAlloc - before.HeapAlloc
}

func closing(gw *Gateway, err error) (io.Closer, error) {
	if err != nil {
		return nil, err
	}
	return closerFunc(func() error { return gw.Close(context.Background()) }), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

const (
	scalePath = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
	scaleBody = `{"messages":[{"role":"user","content":"Tell me about gateways."}],"max_tokens":16}`
)

func noEnv(string) (string, bool) { return "", false }

// scaleEnv is what every size shares: one simulator and one dev issuer.
type scaleEnv struct {
	log    *slog.Logger
	sim    *simulator.Instance
	simURL string
	issuer *devissuer.Issuer
}

func newScaleEnv(b *testing.B) *scaleEnv {
	b.Helper()
	log := slog.New(slog.DiscardHandler)
	sim, err := simulator.New(simulator.InstanceConfig{
		Name: "scale", Listen: "127.0.0.1:0", APIKey: "k", CompletionTokens: 16,
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}},
	}, log)
	if err != nil {
		b.Fatal(err)
	}
	simURL, err := sim.Start()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sim.Close(context.Background()) })
	issuer, err := devissuer.Start(b.TempDir(), log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = issuer.Close(context.Background()) })
	return &scaleEnv{log: log, sim: sim, simURL: simURL, issuer: issuer}
}

func scaleAppID(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }

// doc is the config file for the given sizes. Every app may use the
// model, has a limit far above what a benchmark reaches, and its own app id.
func (e *scaleEnv) doc(backends, apps int, dir string) []byte {
	var sb strings.Builder
	st := e.issuer.State()
	fmt.Fprintf(&sb, `listen: {admin_addr: "off"}
log: {level: error}
usage:
  spool: {dir: %q}
  sinks: [{type: file, path: %q}]
identity:
  audiences: [api://tokengate-scale]
  entra: {tenants: [%q], authority_host: %q, v1_issuer_host: %q}
apps:
`, filepath.Join(dir, "spool"), filepath.Join(dir, "usage.jsonl"), devissuer.Tenant, st.URL, st.URL)
	for i := range apps {
		fmt.Fprintf(&sb, "  - {name: app-%05d, app_ids: [%s], team: team-%d, roles: [openai-user], limits: [{rpm: 1000000000, tpm: 1000000000000}]}\n",
			i, scaleAppID(i), i%50)
	}
	sb.WriteString("backends:\n")
	for i := range backends {
		fmt.Fprintf(&sb, "  - {name: be-%04d, endpoint: %q, auth: {type: api-key, api_key: k}}\n", i, e.simURL)
	}
	sb.WriteString("pools:\n  - name: shared\n    backends:\n")
	for i := range backends {
		fmt.Fprintf(&sb, "      - {backend: be-%04d, priority: 1}\n", i)
	}
	sb.WriteString("models:\n  - name: gpt-4o\n    deployments:\n")
	for i := range backends {
		fmt.Fprintf(&sb, "      - {backend: be-%04d, name: gpt-4o}\n", i)
	}
	return []byte(sb.String())
}

func (e *scaleEnv) config(b *testing.B, backends, apps int) *config.Config {
	b.Helper()
	cfg, err := config.Parse(e.doc(backends, apps, b.TempDir()), noEnv)
	if err != nil {
		b.Fatal(err)
	}
	return cfg
}

// serve runs the benchmark's request through a gateway built for the sizes,
// on its handler in-process, as the last registered app; inMemory hands the
// upstream calls to the simulator's handler without a socket.
func (e *scaleEnv) serve(b *testing.B, backends, apps int, inMemory bool) {
	cfg := e.config(b, backends, apps)
	caller := fmt.Sprintf("app-%05d", apps-1)
	if err := e.issuer.Publish("api://tokengate-scale", map[string]string{caller: scaleAppID(apps - 1)}); err != nil {
		b.Fatal(err)
	}
	token, err := e.issuer.Mint(caller, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	gw, err := NewGateway(cfg, e.log)
	if err != nil {
		b.Fatal(err)
	}
	defer gw.Close(context.Background())
	if inMemory {
		gw.rt.Load().transport.RegisterProtocol("http", handlerTransport{e.sim})
	}

	w := &discardWriter{h: http.Header{}}
	once := func() {
		clear(w.h)
		w.status = 0
		req, _ := http.NewRequest(http.MethodPost, "http://gateway"+scalePath, strings.NewReader(scaleBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		gw.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
	// Warm up until every backend has served: the token is verified and
	// cached, connections are open and every backend's metric series exist
	// (their first request's cost is BenchmarkRequestFirstSeen's, in
	// internal/metrics), so the loop measures the steady state.
	served := map[string]bool{}
	for i := 0; len(served) < backends; i++ {
		if i == 100*backends {
			b.Fatalf("after %d requests only %d of %d backends served", i, len(served), backends)
		}
		once()
		served[w.h.Get("X-Tokengate-Backend")] = true
	}
	b.ReportAllocs()
	defer cpuPerOp(b)()
	for b.Loop() {
		once()
	}
}

// cpuPerOp starts counting the process's CPU time; the function it returns
// reports it per iteration as cpu-ns/op.
func cpuPerOp(b *testing.B) func() {
	read := func() int64 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return ru.Utime.Nano() + ru.Stime.Nano()
	}
	start := read()
	return func() {
		b.ReportMetric(float64(read()-start)/float64(b.N), "cpu-ns/op")
	}
}

// handlerTransport answers requests with a handler, in-process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	w := httptest.NewRecorder()
	t.h.ServeHTTP(w, r)
	if r.Body != nil {
		_ = r.Body.Close() // as a transport must: the gateway pools the buffer
	}
	resp := w.Result()
	resp.Request = r
	return resp, nil
}

// discardWriter is a ResponseWriter that keeps only the status, so the
// benchmark measures the pipeline and not a recorder's buffering.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }

func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}

func (w *discardWriter) Flush()                           {}
func (w *discardWriter) SetReadDeadline(time.Time) error  { return nil }
func (w *discardWriter) SetWriteDeadline(time.Time) error { return nil }
