// Package e2e drives the built tokengate binary the way users do: real
// processes on loopback, the official OpenAI Go SDK as the client, and
// in-process simulators as the Azure OpenAI backends so tests can see what
// the backends received.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

// binary is the tokengate executable built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokengate-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "tokengate")
	build := exec.Command("go", "build", "-o", binary, "./cmd/tokengate")
	build.Dir = "../.."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tokengate:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// observations collects what simulators saw, safely across goroutines.
type observations struct {
	mu  sync.Mutex
	all []simulator.Observation
	ch  chan simulator.Observation
}

func newObservations() *observations {
	return &observations{ch: make(chan simulator.Observation, 1024)}
}

func (o *observations) observe(ob simulator.Observation) {
	o.mu.Lock()
	o.all = append(o.all, ob)
	o.mu.Unlock()
	select {
	case o.ch <- ob:
	default:
	}
}

func (o *observations) list() []simulator.Observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]simulator.Observation(nil), o.all...)
}

// startSimulator runs one simulated instance on a free loopback port.
func startSimulator(t *testing.T, cfg simulator.InstanceConfig, obs *observations) *simulator.Instance {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	var opts []simulator.Option
	if obs != nil {
		opts = append(opts, simulator.WithObserver(obs.observe))
	}
	inst, err := simulator.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Close(context.Background()) })
	return inst
}

// process is a running tokengate command.
type process struct {
	cmd    *exec.Cmd
	stdout *lines
	stderr *lines
	done   chan error
}

// lines captures a stream and lets tests wait for a line.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cond *sync.Cond
	eof  bool
}

func capture(r io.Reader) *lines {
	l := &lines{}
	l.cond = sync.NewCond(&l.mu)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.buf.WriteString(sc.Text() + "\n")
			l.cond.Broadcast()
			l.mu.Unlock()
		}
		l.mu.Lock()
		l.eof = true
		l.cond.Broadcast()
		l.mu.Unlock()
	}()
	return l
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// closed reports whether the stream has ended (the process exited).
func (l *lines) closed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.eof
}

// waitFor returns the first line containing substr, or fails after timeout.
func (l *lines) waitFor(t *testing.T, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.AfterFunc(timeout, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer deadline.Stop()
	start := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		for _, line := range strings.Split(l.buf.String(), "\n") {
			if strings.Contains(line, substr) {
				return line
			}
		}
		if l.eof || time.Since(start) >= timeout {
			t.Fatalf("no line with %q after %v; output so far:\n%s", substr, time.Since(start), l.buf.String())
		}
		l.cond.Wait()
	}
}

// start runs the tokengate binary with args; Cleanup interrupts it and
// requires a clean exit.
func start(t *testing.T, args ...string) *process {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = t.TempDir() // relative defaults (the usage spool) land here
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stdout: capture(outR), stderr: capture(errR), done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGINT and requires exit code 0 within 10 s.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("tokengate %v exited with %v; stderr:\n%s", p.cmd.Args[1:], err, p.stderr.String())
		}
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("tokengate did not exit within 10s of SIGINT")
	}
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serve writes config to a file, starts `tokengate serve` and waits until
// it is ready; it returns the gateway's base URL.
func serve(t *testing.T, config string) (string, *process) {
	t.Helper()
	base, _, p := serveWithAdmin(t, config)
	return base, p
}

// serveWithAdmin is serve that also returns the admin listener's base URL.
func serveWithAdmin(t *testing.T, config string) (base, admin string, p *process) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokengate.yaml")
	writeFile(t, path, config)
	addr, adminAddr := freeAddr(t), freeAddr(t)
	p = start(t, "serve", "--config", path, "--addr", addr, "--admin-addr", adminAddr)
	base = "http://" + addr
	waitReady(t, base, p)
	return base, "http://" + adminAddr, p
}

func waitReady(t *testing.T, base string, p *process) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if p.stderr.closed() {
			t.Fatalf("gateway at %s exited before it became ready; stderr:\n%s", base, p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gateway at %s never became ready; stderr:\n%s", base, p.stderr.String())
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// errorOf decodes an error response, failing unless it has the Azure shape.
func errorOf(t *testing.T, resp *http.Response) (code, message string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("%d: not the Azure error shape: %q", resp.StatusCode, b)
	}
	return e.Error.Code, e.Error.Message
}
