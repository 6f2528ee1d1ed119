package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/simulator"
)

// BenchmarkProxy measures one request direct to the simulator and the same
// request through the gateway, in the same run, so their ratio is the
// gateway's overhead on this machine. Compare ns/op of the pairs:
//
//	go test -run '^$' -bench Proxy -benchmem ./internal/app
func BenchmarkProxy(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sim, err := simulator.New(simulator.InstanceConfig{
		Name: "bench", Listen: "127.0.0.1:0", APIKey: "k",
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}},
	}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	simURL, err := sim.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer sim.Close(context.Background())

	cfg, err := config.Parse([]byte(`
listen: {admin_addr: "off"}
identity: {anonymous: true}
backends: [{name: bench, endpoint: "`+simURL+`", auth: {type: api-key, api_key: k}}]
models: [{name: gpt-4o, deployments: [{backend: bench}]}]
`), func(string) (string, bool) { return "", false })
	if err != nil {
		b.Fatal(err)
	}
	cfg.Usage.Spool.Dir = b.TempDir()
	cfg.Usage.Sinks = []config.Sink{{Name: "sqlite", Type: config.SinkSQLite, Path: filepath.Join(b.TempDir(), "usage.db"), BatchSize: 500, Timeout: 10 * time.Second}}
	gw, err := NewGateway(cfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer gw.Close(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = gw.Serve(ctx, ln) }()
	gwURL := "http://" + ln.Addr().String()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	const path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
	chat := `{"messages":[{"role":"user","content":"` + strings.Repeat("Tell me about gateways. ", 40) + `"}],"max_tokens":16`
	for _, mode := range []struct{ name, body string }{
		{"json", chat + `}`},
		{"stream", chat + `,"stream":true}`},
	} {
		for _, target := range []struct{ name, base string }{{"direct", simURL}, {"gateway", gwURL}} {
			b.Run(mode.name+"/"+target.name, func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						req, _ := http.NewRequest(http.MethodPost, target.base+path, strings.NewReader(mode.body))
						req.Header.Set("Content-Type", "application/json")
						req.Header.Set("api-key", "k")
						resp, err := client.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Fatalf("status %d", resp.StatusCode)
						}
					}
				})
			})
		}
	}
}
