package testenv

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestRedis(t *testing.T) {
	start := time.Now()
	s := Redis(t)
	t.Logf("redis-server ready in %v", time.Since(start))
	addr := s.Addr()
	if got := command(t, addr, "SET k v"); got != "+OK" {
		t.Fatalf("SET: %q", got)
	}

	s.Stop()
	if err := ping(addr); err == nil {
		t.Fatal("the server answers after Stop")
	}
	s.Stop() // stopping twice is harmless

	s.Start()
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	// No persistence: the restarted server is empty.
	if got := command(t, addr, "GET k"); got != "$-1" {
		t.Fatalf("GET after restart: %q, want nil", got)
	}
	s.Start() // starting a running server is harmless
}

// TestRedisDiesWithTestBinary kills a test binary that started a server
// and expects the server to go away with it.
func TestRedisDiesWithTestBinary(t *testing.T) {
	if os.Getenv("TOKENGATE_TESTENV_REDIS_CHILD") != "" {
		s := Redis(t)
		os.Stdout.WriteString("ADDR " + s.Addr() + "\n")
		time.Sleep(time.Minute) // until killed
		return
	}
	if _, err := exec.LookPath("redis-server"); err != nil && !isExec("/usr/bin/redis-server") {
		Redis(t) // skips, or fails in CI
	}
	child := exec.Command(os.Args[0], "-test.run=^TestRedisDiesWithTestBinary$")
	child.Env = append(os.Environ(), "TOKENGATE_TESTENV_REDIS_CHILD=1")
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	addr := ""
	sc := bufio.NewScanner(out)
	for addr == "" && sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
		}
	}
	if addr == "" {
		_ = child.Process.Kill()
		_ = child.Wait()
		t.Fatal("the child test printed no address")
	}
	if err := ping(addr); err != nil {
		t.Fatalf("the child's server: %v", err)
	}
	_ = child.Process.Kill() // SIGKILL: no cleanup runs in the child
	_ = child.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for ping(addr) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s outlived the killed test binary", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// command sends one inline command and returns the first line of the reply.
func command(t *testing.T, addr, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(line, "\r\n")
}
