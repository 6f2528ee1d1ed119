// Package testenv gives tests real servers to talk to: today a PostgreSQL
// database per call, on a private server started once per test binary or on
// the server TOKENGATE_TEST_POSTGRES names.
//
// It is imported by _test.go files and the benchmark harness (tests/bench)
// only.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPostgres names an existing server to use instead of a private one, as a
// connection string whose role may create databases, e.g.
// "postgres://postgres:secret@127.0.0.1:5432/postgres?sslmode=disable".
const EnvPostgres = "TOKENGATE_TEST_POSTGRES"

// Postgres returns the connection string of a fresh, empty database, dropped
// when t's test ends.
//
// The server is the one EnvPostgres names, or else a private one this test
// binary starts on first use from the PostgreSQL installed on the machine
// (initdb into a temporary directory, 127.0.0.1 on a free port, fsync off).
// The private server stops and its directory is removed when the test
// binary exits, however it exits: see supervise.
//
// Without PostgreSQL installed the test is skipped with instructions, except
// when CI is set: CI must never skip silently, so the test fails.
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(EnvPostgres)
	if admin == "" {
		srv := private()
		if errors.Is(srv.err, errNoPostgres) {
			msg := fmt.Sprintf("testenv: %v: install PostgreSQL (apt-get install postgresql) or set %s to a server's connection string", srv.err, EnvPostgres)
			if os.Getenv("CI") != "" {
				t.Fatal(msg + " (CI is set: not skipping)")
			}
			t.Skip(msg)
		}
		if srv.err != nil {
			t.Fatalf("testenv: starting PostgreSQL: %v", srv.err)
		}
		admin = srv.dsn
	}

	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "tokengate_test_" + hex.EncodeToString(b[:])
	if err := adminExec(admin, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		// FORCE (PostgreSQL 13+) ends sessions a failed test left open.
		if err := adminExec(admin, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	dsn, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("testenv: %s: %v", EnvPostgres, err)
	}
	return dsn
}

// adminExec runs one statement on its own connection to the admin database.
func adminExec(dsn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// withDatabase returns dsn pointing at database name instead, for both forms
// of connection string.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	return dsn + " dbname=" + name, nil
}

var errNoPostgres = errors.New("PostgreSQL server binaries (initdb, postgres) not found")

// server is the private server, started at most once per test binary.
type server struct {
	dsn string
	err error
	// keepAlive is the write end of the supervisor's stdin. It must stay
	// reachable for the life of the process: when it closes (the process
	// exits, or a collected *os.File is finalized) the server stops.
	keepAlive *os.File
}

var private = sync.OnceValue(func() *server {
	bin, err := findBin()
	if err != nil {
		return &server{err: err}
	}
	// A port taken between probing and binding fails the start; try anew.
	var srv *server
	for range 3 {
		srv = startPrivate(bin)
		if srv.err == nil || !strings.Contains(srv.err.Error(), "Address already in use") {
			break
		}
	}
	return srv
})

// findBin returns the directory holding initdb and postgres: the newest
// /usr/lib/postgresql/N/bin (Debian, Ubuntu), /usr/pgsql-N/bin (RHEL), or
// the one on PATH.
func findBin() (string, error) {
	var dirs []string
	for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"} {
		m, _ := filepath.Glob(pattern)
		slices.SortFunc(m, func(a, b string) int { return majorOf(b) - majorOf(a) })
		dirs = append(dirs, m...)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errNoPostgres
}

// majorOf is the version number in ".../postgresql/15/bin", 0 if none.
func majorOf(dir string) int {
	base := filepath.Base(filepath.Dir(dir))
	n, _ := strconv.Atoi(strings.TrimPrefix(base, "pgsql-"))
	return n
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// supervise initializes and runs a server in directory $2 from the
// binaries in $1, listening on port $3, and removes the directory when the
// server stops. The server stops when stdin reaches end of file, which
// happens when the test binary exits in any way (even SIGKILL: the kernel
// closes the pipe's write end, which only the test binary holds). Running
// initdb here too means a test binary killed at any point leaves nothing
// behind. When postgres fails, its log goes to stderr. The supervisor's own
// process group keeps a terminal's Ctrl-C from killing it before it cleans
// up.
const supervise = `
bin=$1 dir=$2 port=$3
if ! "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C \
	--no-sync --no-instructions >"$dir/log" 2>&1; then
	cat "$dir/log" >&2
	rm -rf "$dir"
	exit 1
fi
"$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses=127.0.0.1 -c port="$port" \
	-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
	</dev/null >>"$dir/log" 2>&1 &
pid=$!
# A background job's stdin is /dev/null unless redirected: pass it as fd 3.
# A background job also starts with SIGINT ignored, so one sent before
# postgres installs its handler is lost: repeat until it is gone.
exec 3<&0
{
	read -r _ <&3
	while kill -INT "$pid"; do sleep 0.5; done
} </dev/null >/dev/null 2>&1 &
reader=$!
wait "$pid"
status=$?
kill "$reader" 2>/dev/null
[ "$status" -eq 0 ] || cat "$dir/log" >&2
rm -rf "$dir"
`

// startPrivate starts a server from the binaries in bin.
func startPrivate(bin string) *server {
	// PostgreSQL refuses to run as root: run it as the postgres user, in a
	// directory it owns under the world-traversable /tmp.
	var cred *syscall.Credential
	base := ""
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return &server{err: fmt.Errorf("running as root, PostgreSQL must run as the postgres user: %w", err)}
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		base = "/tmp"
	}
	port, err := freePort()
	if err != nil {
		return &server{err: err}
	}
	dir, err := os.MkdirTemp(base, "tokengate-pg-")
	if err != nil {
		return &server{err: err}
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return &server{err: err}
		}
	}
	stdin, keepAlive, err := os.Pipe()
	if err != nil {
		_ = os.RemoveAll(dir)
		return &server{err: err}
	}
	var stderr bytes.Buffer
	sup := exec.Command("/bin/sh", "-c", supervise, "sh", bin, dir, strconv.Itoa(port))
	sup.Dir = dir // the postgres user may not be able to read ours
	sup.Stdin, sup.Stderr = stdin, &stderr
	sup.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	err = sup.Start()
	_ = stdin.Close() // the supervisor's copy is the one that matters
	if err != nil {
		_ = keepAlive.Close()
		_ = os.RemoveAll(dir)
		return &server{err: err}
	}
	exited := make(chan struct{})
	go func() { _ = sup.Wait(); close(exited) }()

	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	if err := waitReady(dsn, exited); err != nil {
		_ = keepAlive.Close() // stops the server if it runs
		<-exited
		return &server{err: fmt.Errorf("%w\n%s", err, stderr.String())}
	}
	return &server{dsn: dsn, keepAlive: keepAlive}
}

// waitReady polls until the server accepts a connection.
func waitReady(dsn string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, dsn)
		cancel()
		if err == nil {
			return conn.Close(context.Background())
		}
		select {
		case <-exited:
			return errors.New("initdb or postgres failed")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready after 30s: %w", err)
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
