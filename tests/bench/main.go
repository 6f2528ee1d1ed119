// Command bench is tokengate's overhead benchmark (`make bench`). In one
// run on loopback it measures the same load against a simulated Azure
// OpenAI instance directly, through nginx as a plain reverse proxy (when
// nginx is installed), through tokengate with a minimal pipeline and
// through tokengate with the demo's full pipeline, for JSON and streaming
// completions, closed loop at a fixed concurrency and open loop at fixed
// rates. Load comes from `tokengate loadtest`. It prints each path's
// throughput and added latency relative to direct and writes everything
// to a JSON file. docs/performance.md explains the method.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokengate/tokengate/examples"
	"github.com/tokengate/tokengate/internal/devissuer"
	"github.com/tokengate/tokengate/internal/loadtest"
	"github.com/tokengate/tokengate/internal/testenv"
)

type options struct {
	duration    time.Duration
	warmup      time.Duration
	concurrency int
	rates       []int
	streams     int
	streamsFor  time.Duration
	out         string
	nginx       bool
	hold        bool
	onlyStreams bool
	promptToks  int
	maxTokens   int
}

func main() {
	var o options
	var rates string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measurement")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured load before each measurement")
	flag.IntVar(&o.concurrency, "concurrency", 32, "closed-loop clients")
	flag.StringVar(&rates, "rates", "500,1000", "open-loop arrival rates (requests/s), comma-separated")
	flag.BoolVar(&o.onlyStreams, "only-streams", false, "run only the concurrent-streams memory measurement")
	flag.IntVar(&o.streams, "streams", 10000, "concurrent slow streams held through the full pipeline for the memory measurement (0 skips it)")
	flag.DurationVar(&o.streamsFor, "streams-duration", 20*time.Second, "how long the slow streams are held")
	flag.StringVar(&o.out, "out", "bench-results.json", "JSON results file")
	flag.BoolVar(&o.nginx, "nginx", true, "include nginx as a plain-proxy baseline when it is installed")
	flag.BoolVar(&o.hold, "hold", false, "start every path, print how to reach it, and wait for Ctrl-C (for profiling: the gateways serve pprof on their admin address)")
	flag.IntVar(&o.promptToks, "prompt-tokens", 100, "prompt size of each request")
	flag.IntVar(&o.maxTokens, "max-tokens", 16, "max_tokens of each request (the simulator generates that many)")
	flag.Parse()
	for _, r := range strings.Split(rates, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		n, err := strconv.Atoi(r)
		if err != nil || n <= 0 {
			fatalf("-rates: %q is not a positive integer", r)
		}
		o.rates = append(o.rates, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// target is one path the load goes through.
type target struct {
	Name    string   `json:"name"`
	URL     string   `json:"url"`
	Model   string   `json:"model"`
	headers []string // loadtest --header values (secrets: never printed)
	proc    *exec.Cmd
	admin   string // a gateway's admin base URL
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "tokengate-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	startProc := func(name string, env []string, args ...string) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Dir = dir // relative paths (the minimal gateway's spool) land in the scratch directory
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		procs = append(procs, cmd)
		return cmd, nil
	}

	bin := filepath.Join(dir, "tokengate")
	fmt.Fprintln(os.Stderr, "building tokengate ...")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tokengate")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build (run from the repository root): %w", err)
	}

	// The backends: a fast simulated instance (no added latency) and a
	// slow one over https (HTTP/2, as Azure serves) for the memory run.
	certFile, keyFile, _, err := testenv.LoopbackCert(dir)
	if err != nil {
		return err
	}
	fastAddr, slowAddr := freeAddr(), freeAddr()
	deployments := `[{name: gpt-4o, model: gpt-4o}, {name: gpt-4o-ptu, model: gpt-4o}, {name: gpt-4o-eus2, model: gpt-4o}, {name: gpt-4o-swc, model: gpt-4o}]`
	simCfg := fmt.Sprintf(`instances:
  - {name: fast, listen: %q, api_key: sim-key, completion_tokens: %d, deployments: %s}
  - name: slow
    listen: %q
    api_key: sim-key
    tls: {cert_file: %q, key_file: %q}
    completion_tokens: 1000
    latency: {tokens_per_second: 2}
    deployments: %s
`, fastAddr, o.maxTokens, deployments, slowAddr, certFile, keyFile, deployments)
	simPath := filepath.Join(dir, "simulator.yaml")
	if err := os.WriteFile(simPath, []byte(simCfg), 0o600); err != nil {
		return err
	}
	if _, err := startProc("simulator", nil, bin, "simulate", "--config", simPath); err != nil {
		return err
	}
	fast, slow := "http://"+fastAddr, "https://"+slowAddr

	// The demo's identity issuer, in this process: the full pipeline
	// verifies its tokens (keys fetched once at start).
	if err := os.Mkdir(filepath.Join(dir, "issuer"), 0o700); err != nil {
		return err
	}
	issuer, err := devissuer.Start(filepath.Join(dir, "issuer"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	defer issuer.Close(context.Background())

	targets := []*target{{Name: "direct", URL: fast, Model: "gpt-4o", headers: []string{"api-key: sim-key"}}}
	if path, err := exec.LookPath("nginx"); err == nil && o.nginx {
		addr := freeAddr()
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConfig(dir, addr, fastAddr)), 0o600); err != nil {
			return err
		}
		p, err := startProc("nginx", nil, path, "-e", filepath.Join(dir, "nginx-error.log"), "-c", conf)
		if err != nil {
			return err
		}
		targets = append(targets, &target{Name: "nginx", URL: "http://" + addr, Model: "gpt-4o", headers: []string{"api-key: sim-key"}, proc: p})
	} else {
		fmt.Fprintln(os.Stderr, "nginx not found (apt-get install nginx-light) or -nginx=false: no plain-proxy baseline")
	}

	minimal, err := startGateway(dir, "minimal", bin, startProc, minimalConfig(fast), nil)
	if err != nil {
		return err
	}
	targets = append(targets, minimal)

	full, err := startFull(dir, "full", bin, startProc, issuer, fast, nil)
	if err != nil {
		return err
	}
	targets = append(targets, full)

	for _, t := range targets {
		if err := waitUp(ctx, t); err != nil {
			return err
		}
	}

	if o.hold {
		for _, t := range targets {
			fmt.Printf("%-8s %s  model %s  admin %s\n", t.Name, t.URL, t.Model, t.admin)
			for _, h := range t.headers {
				fmt.Printf("         --header %q\n", h)
			}
		}
		fmt.Println("holding; Ctrl-C stops")
		<-ctx.Done()
		return nil
	}
	res := results{Machine: machine(), Started: time.Now().UTC(), Options: o.summary()}
	fmt.Fprintf(os.Stderr, "machine: %s\n", res.Machine)
	modes := []string{"json", "stream"}
	if o.onlyStreams {
		modes = nil
	}
	for _, mode := range modes {
		share := "0"
		if mode == "stream" {
			share = "1"
		}
		scen := scenario{Name: mode + " closed c=" + strconv.Itoa(o.concurrency), Mode: mode, Loop: "closed", Concurrency: o.concurrency}
		for _, t := range targets {
			rep, err := runLoad(ctx, bin, t, o, "--concurrency", strconv.Itoa(o.concurrency), "--stream-share", share)
			if err != nil {
				return fmt.Errorf("%s via %s: %w", scen.Name, t.Name, err)
			}
			scen.Runs = append(scen.Runs, run1{Target: t.Name, Report: rep})
		}
		res.add(scen)
		for _, rate := range o.rates {
			scen := scenario{Name: fmt.Sprintf("%s open %d/s", mode, rate), Mode: mode, Loop: "open", Rate: rate}
			for _, t := range targets {
				rep, err := runLoad(ctx, bin, t, o, "--rate", strconv.Itoa(rate), "--concurrency", "5000", "--stream-share", share)
				if err != nil {
					return fmt.Errorf("%s via %s: %w", scen.Name, t.Name, err)
				}
				scen.Runs = append(scen.Runs, run1{Target: t.Name, Report: rep})
			}
			res.add(scen)
		}
	}

	if o.streams > 0 {
		held, err := holdStreams(ctx, dir, bin, startProc, issuer, slow, certFile, o)
		if err != nil {
			return fmt.Errorf("streams: %w", err)
		}
		res.Streams = held
	}
	res.Finished = time.Now().UTC()
	res.print(os.Stdout)
	data, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(o.out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "results written to %s\n", o.out)
	return nil
}

type starter func(name string, env []string, args ...string) (*exec.Cmd, error)

// startGateway serves config with tokengate serve.
func startGateway(dir, name, bin string, start starter, config string, env []string) (*target, error) {
	addr, admin := freeAddr(), freeAddr()
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	p, err := start(name, env, bin, "serve", "--config", path, "--addr", addr, "--admin-addr", admin, "--insecure-dev-issuer")
	if err != nil {
		return nil, err
	}
	return &target{Name: name, URL: "http://" + addr, Model: "gpt-4o", proc: p, admin: "http://" + admin}, nil
}

// minimalConfig is the gateway with as little as it can do: anonymous
// callers, one backend, no limits, and no sink (records are only spooled).
func minimalConfig(backend string) string {
	return fmt.Sprintf(`log: {level: warn}
identity: {anonymous: true}
backends: [{name: fast, endpoint: %q, auth: {type: api-key, api_key: sim-key}}]
models: [{name: gpt-4o, deployments: [{backend: fast}]}]
usage: {spool: {dir: minimal-spool}}
admin: {profiling: true}
`, backend)
}

// startFull serves the demo's own config (examples/demo.yaml: Entra-style
// tokens from the development issuer, two apps, three backends in a
// priority pool, prices, the usage spool and a SQLite sink) with every
// backend on the given simulator, plus request and token limits on
// chat-app's team so the limiter runs on every request. The target sends
// a chat-app token.
func startFull(dir, name, bin string, start starter, issuer *devissuer.Issuer, backend string, env []string) (*target, error) {
	st := issuer.State()
	if err := issuer.Publish("api://tokengate-demo", map[string]string{
		"chat-app": "0c7f6a1e-5b3d-4e2a-9f10-2a3b4c5d6e7f", "batch-app": "5d2e8b4a-1c6f-4e3d-8a9b-7f0e1d2c3b4a",
	}); err != nil {
		return nil, err
	}
	token, err := issuer.Mint("chat-app", time.Now())
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, name+"-data")
	env = append(env, "DEV_TENANT="+st.Tenant, "DEV_ISSUER_URL="+st.URL, "DATA_DIR="+data,
		"PTU_EASTUS_URL="+backend, "PAYGO_EASTUS2_URL="+backend, "PAYGO_SWEDENCENTRAL_URL="+backend,
		"PTU_EASTUS_KEY=sim-key", "PAYGO_EASTUS2_KEY=sim-key", "PAYGO_SWEDENCENTRAL_KEY=sim-key")
	config := string(examples.Demo) + `
# Added by the benchmark: limits high enough never to refuse, so the
# limiter counts every request and token without shaping the load.
teams:
  - name: web
    limits: [{rpm: 100000000, tpm: 100000000000}]
admin: {profiling: true}
`
	t, err := startGateway(dir, name, bin, start, config, env)
	if err != nil {
		return nil, err
	}
	t.headers = []string{"Authorization: Bearer " + token}
	return t, nil
}

func nginxConfig(dir, listen, backend string) string {
	return fmt.Sprintf(`# Generated by tests/bench: a plain reverse proxy with upstream keep-alive
# and no response buffering (so event streams pass as they come).
daemon off;
worker_processes auto;
pid %[1]s/nginx.pid;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path %[1]s/nginx-body;
  proxy_temp_path %[1]s/nginx-proxy;
  fastcgi_temp_path %[1]s/nginx-fastcgi;
  uwsgi_temp_path %[1]s/nginx-uwsgi;
  scgi_temp_path %[1]s/nginx-scgi;
  upstream simulator { server %[3]s; keepalive 256; }
  server {
    listen %[2]s;
    location / {
      proxy_pass http://simulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, listen, backend)
}

// waitUp waits until t answers: /readyz for gateways, a TCP connect for
// the others.
func waitUp(ctx context.Context, t *target) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if t.admin != "" {
			resp, err := http.Get(t.admin + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		} else if c, err := net.Dial("tcp", strings.TrimPrefix(t.URL, "http://")); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not come up at %s (see its log)", t.Name, t.URL)
}

// runLoad runs `tokengate loadtest --json` against t and returns its
// report.
func runLoad(ctx context.Context, bin string, t *target, o options, args ...string) (json.RawMessage, error) {
	argv := []string{"loadtest", "--json", "--url", t.URL, "--model", t.Model,
		"--duration", o.duration.String(), "--warmup", o.warmup.String(),
		"--prompt-tokens", strconv.Itoa(o.promptToks), "--max-tokens", strconv.Itoa(o.maxTokens)}
	for _, h := range t.headers {
		argv = append(argv, "--header", h)
	}
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, bin, argv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w: %s", err, stderr.String())
	}
	var rep loadtest.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("loadtest output: %w", err)
	}
	fmt.Fprintf(os.Stderr, "  %-8s %-22s %8.0f req/s  p50 %7.3f ms  p99 %7.3f ms  ok %d  errors %d\n",
		t.Name, strings.Join(args, " "), rep.AchievedRate, rep.Latency.P50, rep.Latency.P99, rep.Succeeded, rep.Errors)
	return out, nil
}

// holdStreams opens o.streams concurrent slow streams through the full
// pipeline (backends over https/HTTP/2, as Azure serves) and samples the
// gateway's resident memory while they are open.
func holdStreams(ctx context.Context, dir, bin string, start starter, issuer *devissuer.Issuer, slow, certFile string, o options) (*streamsResult, error) {
	t, err := startFull(dir, "streams", bin, start, issuer, slow, []string{"SSL_CERT_FILE=" + certFile})
	if err != nil {
		return nil, err
	}
	if err := waitUp(ctx, t); err != nil {
		return nil, err
	}
	base := rss(t.proc.Process.Pid)
	// Each stream lasts streamsFor (the slow simulator sends 2 tokens a
	// second); the clients start over the first half of it, so all of
	// them are open together for the second half, and none starts again.
	ramp := o.streamsFor / 2
	tokens := int(2 * o.streamsFor.Seconds())
	argv := []string{"loadtest", "--json", "--url", t.URL, "--model", t.Model, "--stream-share", "1",
		"--concurrency", strconv.Itoa(o.streams), "--ramp", ramp.String(), "--duration", o.streamsFor.String(),
		"--max-tokens", strconv.Itoa(tokens), "--prompt-tokens", strconv.Itoa(o.promptToks), "--timeout", (3 * o.streamsFor).String()}
	for _, h := range t.headers {
		argv = append(argv, "--header", h)
	}
	fmt.Fprintf(os.Stderr, "holding %d slow streams through the full pipeline for %s ...\n", o.streams, o.streamsFor)
	cmd := exec.CommandContext(ctx, bin, argv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() { out, err := cmd.Output(); done <- result{out, err} }()
	res := &streamsResult{Streams: o.streams, BaselineRSSMiB: mib(base)}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if r.err != nil {
				return nil, fmt.Errorf("loadtest: %w: %s", r.err, stderr.String())
			}
			res.Report = r.out
			fmt.Fprintf(os.Stderr, "  peak %d open streams, gateway RSS peak %.0f MiB (%.0f MiB at the peak of open streams)\n",
				res.PeakOpen, res.PeakRSSMiB, res.RSSAtPeakOpenMiB)
			return res, nil
		case <-tick.C:
			r := mib(rss(t.proc.Process.Pid))
			open := inFlight(t.admin)
			res.PeakRSSMiB = max(res.PeakRSSMiB, r)
			if open >= res.PeakOpen {
				res.PeakOpen, res.RSSAtPeakOpenMiB = open, r
			}
			if res.HeapInuseMiB == 0 && open >= o.streams*99/100 {
				res.HeapInuseMiB, res.StackInuseMiB = memStats(t.admin)
			}
		}
	}
}

type streamsResult struct {
	Streams          int     `json:"streams"`
	PeakOpen         int     `json:"peak_open"`
	BaselineRSSMiB   float64 `json:"baseline_rss_mib"`
	PeakRSSMiB       float64 `json:"peak_rss_mib"`
	RSSAtPeakOpenMiB float64 `json:"rss_at_peak_open_mib"`
	// HeapInuseMiB and StackInuseMiB are the Go runtime's own view when
	// 99% of the streams were first open together.
	HeapInuseMiB  float64         `json:"heap_inuse_mib"`
	StackInuseMiB float64         `json:"stack_inuse_mib"`
	Report        json.RawMessage `json:"report"`
}

// rss is a process's resident set size in bytes (0 when unknown).
func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// memStats reads HeapInuse and StackInuse from a gateway's pprof (the
// benchmark's configs turn admin.profiling on), in MiB.
func memStats(admin string) (heap, stack float64) {
	resp, err := http.Get(admin + "/debug/pprof/heap?debug=1")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			heap = mib(n)
		}
		if v, ok := strings.CutPrefix(line, "# Stack = "); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			stack = mib(n)
		}
	}
	return heap, stack
}

// inFlight reads tokengate_requests_in_flight from a gateway's metrics.
func inFlight(admin string) int {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "tokengate_requests_in_flight "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return int(v)
		}
	}
	return 0
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf("%v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// machine describes where the numbers came from.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	rev := "unknown"
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		rev = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d cores (%s), %s %s/%s, tokengate %s", runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH, rev)
}
