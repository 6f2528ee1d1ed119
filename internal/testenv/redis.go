package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RedisServer is a private redis-server for one test: 127.0.0.1 on a free
// port, no persistence (a restart starts empty), in a temporary directory.
// Stop and Start simulate an outage and the recovery, on the same address.
// Its methods are meant for the goroutine running the test that created it
// (or its subtests).
type RedisServer struct {
	t    testing.TB
	bin  string
	port int

	mu sync.Mutex
	// keepAlive is the write end of the supervisor's stdin: closing it
	// (Stop, or the test binary exiting however it exits) kills the server.
	keepAlive *os.File
	exited    chan struct{}
}

// Redis starts a private redis-server, stopped when t's test ends.
//
// The binary is redis-server on PATH or /usr/bin/redis-server. Without it
// the test is skipped with instructions, except when CI is set: CI must
// never skip silently, so the test fails.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil && isExec("/usr/bin/redis-server") {
		bin, err = "/usr/bin/redis-server", nil
	}
	if err != nil {
		msg := "testenv: redis-server not found: install it (apt-get install redis-server)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg + " (CI is set: not skipping)")
		}
		t.Skip(msg)
	}
	s := &RedisServer{t: t, bin: bin}
	// A port taken between probing and binding fails the start; try anew.
	for range 3 {
		if s.port, err = freePort(); err != nil {
			break
		}
		if err = s.start(); err == nil || !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: starting redis-server: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port; it stays the same across Stop and Start.
func (s *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Stop kills the server (as a crash would: no shutdown handshake) and
// returns once it is gone. Stopping a stopped server does nothing.
func (s *RedisServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keepAlive == nil {
		return
	}
	_ = s.keepAlive.Close()
	s.keepAlive = nil
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.t.Errorf("testenv: redis-server on %s did not stop within 10s", s.Addr())
	}
}

// Start restarts a stopped server on the same port, empty, and returns
// once it answers. Starting a running server does nothing.
func (s *RedisServer) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("testenv: restarting redis-server on %s: %v", s.Addr(), err)
	}
}

// superviseRedis runs redis-server $1 in directory $2 on port $3 and kills
// it when stdin reaches end of file, which happens when the test binary
// closes the pipe (Stop) or exits in any way, even SIGKILL: the kernel
// closes the write end, which only the test binary holds. (Pdeathsig is no
// substitute: it fires when the thread that started the child exits, and
// Go retires threads at will.) The directory is removed when the server is
// gone.
const superviseRedis = `
bin=$1 dir=$2 port=$3
"$bin" --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
	--daemonize no --protected-mode no --logfile "$dir/log" </dev/null >/dev/null 2>&1 &
pid=$!
# The shell reports the killed job on stderr: once the test binary is gone
# that write must not kill the shell (SIGPIPE) before it cleans up.
trap '' PIPE
# A background job's stdin is /dev/null unless redirected: pass it as fd 3.
exec 3<&0
{
	read -r _ <&3
	kill -KILL "$pid"
} </dev/null >/dev/null 2>&1 &
reader=$!
wait "$pid"
status=$?
kill "$reader" 2>/dev/null
[ "$status" -eq 0 ] || [ "$status" -eq 137 ] || cat "$dir/log" >&2
rm -rf "$dir"
`

// start runs a server on s.port unless one runs, and waits until it
// answers PING.
func (s *RedisServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keepAlive != nil {
		return nil
	}
	dir, err := os.MkdirTemp("", "tokengate-redis-")
	if err != nil {
		return err
	}
	stdin, keepAlive, err := os.Pipe()
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	stderr := new(bytes.Buffer)
	sup := exec.Command("/bin/sh", "-c", superviseRedis, "sh", s.bin, dir, strconv.Itoa(s.port))
	sup.Stdin, sup.Stderr = stdin, stderr
	// Its own process group: a terminal's Ctrl-C goes to the test binary,
	// whose exit then stops the server through the pipe.
	sup.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = sup.Start()
	_ = stdin.Close() // the supervisor's copy is the one that matters
	if err != nil {
		_ = keepAlive.Close()
		_ = os.RemoveAll(dir)
		return err
	}
	exited := make(chan struct{})
	go func() { _ = sup.Wait(); close(exited) }()
	if err := waitRedis(s.Addr(), exited); err != nil {
		_ = keepAlive.Close()
		<-exited
		return fmt.Errorf("%w\n%s", err, stderr.String())
	}
	s.keepAlive, s.exited = keepAlive, exited
	return nil
}

// waitRedis polls addr until redis-server answers PING.
func waitRedis(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(addr)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("redis-server exited")
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server not ready after 10s: %w", err)
		}
	}
}

// ping sends one PING in the protocol's inline form.
func ping(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
