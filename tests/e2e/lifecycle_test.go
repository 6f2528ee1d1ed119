package e2e

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

// lifecycleGateway is a `tokengate serve` whose config file, listeners
// included, the test owns: it can rewrite the file and signal the process.
// The listeners are in the file (not --addr flags) so a reload sees the
// same listen section as the start and reports nothing to restart.
type lifecycleGateway struct {
	path   string // the config file
	listen string // the file's listen section, kept on every rewrite
	addr   string // the client listener, host:port
	base   string // http://addr
	admin  string // the admin listener's base URL
	p      *process
}

// startLifecycle writes listen (with listenExtra, e.g. "shutdown_delay:
// 1s") and config to dir/tokengate.yaml, starts `tokengate serve` on it and
// waits until it is ready.
func startLifecycle(t *testing.T, dir, listenExtra, config string) *lifecycleGateway {
	t.Helper()
	g := &lifecycleGateway{path: filepath.Join(dir, "tokengate.yaml"), addr: freeAddr(t)}
	adminAddr := freeAddr(t)
	g.base, g.admin = "http://"+g.addr, "http://"+adminAddr
	g.listen = fmt.Sprintf("listen: {addr: %q, admin_addr: %q", g.addr, adminAddr)
	if listenExtra != "" {
		g.listen += ", " + listenExtra
	}
	g.listen += "}\n"
	writeFile(t, g.path, g.listen+config)
	g.p = start(t, "serve", "--config", g.path)
	waitReady(t, g.base, g.p)
	return g
}

// rewrite replaces the config file the way deploy tools do: a temporary
// file in the same directory renamed over it, so a reader (or the file
// watcher) never sees half a file.
func (g *lifecycleGateway) rewrite(t *testing.T, config string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(g.path), ".tokengate.yaml.tmp")
	writeFile(t, tmp, g.listen+config)
	if err := os.Rename(tmp, g.path); err != nil {
		t.Fatal(err)
	}
}

// exited waits for the process to end after a signal the test sent and
// returns its exit error; Cleanup's stop then sees it finished.
func (g *lifecycleGateway) exited(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-g.p.done:
		return err
	case <-time.After(within):
		_ = g.p.cmd.Process.Kill()
		<-g.p.done
		t.Fatalf("tokengate did not exit within %v; stderr:\n%s", within, g.p.stderr.String())
		return nil
	}
}

// liveStream is one streaming chat completion read to its end by a plain
// net/http client, in its own goroutine.
type liveStream struct {
	first chan struct{} // closed at the first SSE event (or when the request failed)
	done  chan struct{} // closed when the body ended; the fields below are set then

	id      string // X-Request-Id
	backend string // X-Tokengate-Backend
	status  int
	body    []byte
	err     error // the request's, or the body read's (io.EOF excluded)
	ended   time.Time
}

func openStream(client *http.Client, url, body string) *liveStream {
	s := &liveStream{first: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		first := sync.OnceFunc(func() { close(s.first) })
		defer first()
		defer func() { s.ended = time.Now() }()
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			s.err = err
			return
		}
		defer resp.Body.Close()
		s.id, s.backend, s.status = resp.Header.Get("X-Request-Id"), resp.Header.Get("X-Tokengate-Backend"), resp.StatusCode
		var buf bytes.Buffer
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadBytes('\n')
			buf.Write(line)
			if bytes.HasPrefix(line, []byte("data: ")) {
				first()
			}
			if err != nil {
				if err != io.EOF {
					s.err = err
				}
				break
			}
		}
		s.body = buf.Bytes()
	}()
	return s
}

// finished reports, without waiting, whether the stream has ended.
func (s *liveStream) finished() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// complete reports whether the stream ended normally with [DONE]. Call it
// after done.
func (s *liveStream) complete() bool {
	return s.err == nil && s.status == http.StatusOK && bytes.HasSuffix(s.body, []byte("data: [DONE]\n\n"))
}

func (s *liveStream) String() string {
	return fmt.Sprintf("request %s: status %d, error %v, %d bytes ending %q", s.id, s.status, s.err, len(s.body), s.body[max(0, len(s.body)-60):])
}

// openStreams opens n streams and waits until each has received its first
// event.
func openStreams(t *testing.T, client *http.Client, base string, n int) []*liveStream {
	t.Helper()
	body := `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Tell me a long story"}]}`
	ss := make([]*liveStream, n)
	for i := range ss {
		ss[i] = openStream(client, base+"/v1/chat/completions", body)
	}
	deadline := time.After(10 * time.Second)
	for i, s := range ss {
		select {
		case <-s.first:
		case <-deadline:
			t.Fatalf("stream %d had no first event after 10 s", i)
		}
		if s.status != http.StatusOK || s.id == "" {
			<-s.done
			t.Fatalf("stream %d did not start: %v", i, s)
		}
	}
	return ss
}

// streamClient keeps a connection per stream.
func streamClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// probeClient opens a new connection for every request, so a success
// proves the listener accepted one.
var probeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}

// readyz answers GET url/readyz's status, or 0 when the connection failed.
func readyz(url string) (int, error) {
	resp, err := probeClient.Get(url + "/readyz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// shutdownSim streams completionTokens tokens at 10 a second.
func shutdownSim(t *testing.T, completionTokens int) *simulator.Instance {
	return startSimulator(t, simulator.InstanceConfig{Name: "sim", CompletionTokens: completionTokens,
		Latency:     simulator.Latency{TokensPerSecond: 10},
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}}}, nil)
}

// shutdownConfig serves gpt-4o from simURL and records usage in
// dir/usage.db.
func shutdownConfig(simURL, dir string) string {
	return fmt.Sprintf(`log: {level: info}
identity: {anonymous: true}
backends:
  - {name: sim, endpoint: %q, auth: {type: none}}
models:
  - name: gpt-4o
    deployments: [{backend: sim}]
usage:
  spool: {dir: %q, sync_interval: 100ms}
  sinks:
    - {type: sqlite, path: %q}
`, simURL, filepath.Join(dir, "spool"), filepath.Join(dir, "usage.db"))
}

// usageRow is what the SQLite sink holds about one request.
type usageRow struct {
	status     int
	class      string
	completion int64
	source     string
}

func usageRows(t *testing.T, path string) map[string][]usageRow {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT request_id, status, error_class, completion_tokens, token_source FROM usage_records`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]usageRow{}
	for rows.Next() {
		var id string
		var r usageRow
		if err := rows.Scan(&id, &r.status, &r.class, &r.completion, &r.source); err != nil {
			t.Fatal(err)
		}
		out[id] = append(out[id], r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestShutdownUnderLoad: SIGTERM with 50 streams open. /readyz turns 503 at
// once on both listeners while the client listener keeps accepting for
// listen.shutdown_delay; then it refuses connections while the streams
// run on to [DONE]; the process exits 0 and every stream has its record.
func TestShutdownUnderLoad(t *testing.T) {
	const n = 50
	const delay = time.Second
	sim := shutdownSim(t, 30) // ~3 s a stream
	dir := t.TempDir()
	g := startLifecycle(t, dir, "shutdown_delay: 1s, shutdown_timeout: 20s", shutdownConfig(sim.URL(), dir))
	streams := openStreams(t, streamClient(t), g.base, n)

	sigterm := time.Now()
	if err := g.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Unready at once, on a connection the client listener accepted after
	// the signal.
	var unready time.Duration
	for {
		status, err := readyz(g.base)
		if err != nil {
			t.Fatalf("the client listener refused a connection %v after SIGTERM, within shutdown_delay: %v", time.Since(sigterm), err)
		}
		if status == http.StatusServiceUnavailable {
			unready = time.Since(sigterm)
			break
		}
		if time.Since(sigterm) > delay/2 {
			t.Fatalf("client /readyz still %d %v after SIGTERM", status, time.Since(sigterm))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status, err := readyz(g.admin); status != http.StatusServiceUnavailable {
		t.Fatalf("admin /readyz after client /readyz turned 503: %d %v", status, err)
	}
	for _, s := range streams {
		if s.finished() {
			t.Fatalf("a stream finished before /readyz turned unready (%v after SIGTERM): the test's streams are too short: %v", unready, s)
		}
	}

	// After shutdown_delay the listener closes, while the streams run on.
	var refused time.Duration
	for {
		c, err := net.DialTimeout("tcp", g.addr, time.Second)
		if err != nil {
			refused = time.Since(sigterm)
			break
		}
		c.Close()
		if time.Since(sigterm) > delay+5*time.Second {
			t.Fatalf("the client listener still accepts %v after SIGTERM", time.Since(sigterm))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if refused < delay {
		t.Fatalf("the client listener refused connections %v after SIGTERM, before shutdown_delay (%v) was over", refused, delay)
	}
	running := 0
	for _, s := range streams {
		if !s.finished() {
			running++
		}
	}
	if running == 0 {
		t.Fatalf("every stream had finished when the listener closed (%v after SIGTERM): the test's streams are too short", refused)
	}
	// The admin listener closes last: readable while requests drain.
	if status, err := readyz(g.admin); status != http.StatusServiceUnavailable {
		t.Fatalf("admin /readyz while %d streams drain: %d %v", running, status, err)
	}
	if resp, err := probeClient.Get(g.admin + "/metrics"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("admin /metrics while %d streams drain: %v %v", running, resp, err)
	} else {
		resp.Body.Close()
	}
	// A config reloader's SIGHUP landing during the drain must not kill
	// the process (its default action would).
	if err := g.p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}

	deadline := time.After(15 * time.Second)
	var cut []*liveStream
	for i, s := range streams {
		select {
		case <-s.done:
		case <-deadline:
			t.Fatalf("stream %d still running 15 s after SIGTERM", i)
		}
		if !s.complete() {
			cut = append(cut, s)
		}
	}
	if len(cut) > 0 {
		t.Errorf("%d of %d streams did not complete during the drain; the first: %v", len(cut), n, cut[0])
	}
	if err := g.exited(t, 15*time.Second); err != nil {
		t.Fatalf("tokengate exited with %v after a drain in which every stream finished; stderr:\n%s", err, g.p.stderr.String())
	}
	exit := time.Since(sigterm)
	if !strings.Contains(g.p.stderr.String(), "drained: every request finished") {
		t.Errorf("the log does not say the drain finished:\n%s", g.p.stderr.String())
	}

	rows := usageRows(t, filepath.Join(dir, "usage.db"))
	bad := 0
	for _, s := range streams {
		rs := rows[s.id]
		if len(rs) != 1 || rs[0].status != http.StatusOK || rs[0].class != "" || rs[0].completion <= 0 {
			if bad++; bad <= 3 {
				t.Errorf("request %s: usage records %+v, want one with status 200, no error class and completion tokens", s.id, rs)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d streams have no correct usage record", bad, n)
	}
	if len(rows) != n {
		t.Errorf("%d usage records, want %d (one per stream)", len(rows), n)
	}
	t.Logf("SIGTERM with %d streams open: unready after %v, refusing after %v (%d streams still running), exit 0 after %v",
		n, unready.Round(time.Millisecond), refused.Round(time.Millisecond), running, exit.Round(time.Millisecond))
}

// TestShutdownTimeoutCutsAndRecords: streams longer than
// listen.shutdown_timeout are cut; the process exits 1 and says so, and
// every cut stream still has its usage record, tokens included.
func TestShutdownTimeoutCutsAndRecords(t *testing.T) {
	const n = 50
	const timeout = time.Second
	sim := shutdownSim(t, 50) // ~5 s a stream
	dir := t.TempDir()
	g := startLifecycle(t, dir, "shutdown_timeout: 1s", shutdownConfig(sim.URL(), dir))
	streams := openStreams(t, streamClient(t), g.base, n)

	sigterm := time.Now()
	if err := g.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := g.exited(t, 15*time.Second)
	exit := time.Since(sigterm)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("tokengate exited with %v after cutting streams, want exit status 1; stderr:\n%s", err, g.p.stderr.String())
	}
	if exit < timeout {
		t.Fatalf("tokengate exited %v after SIGTERM, before shutdown_timeout (%v)", exit, timeout)
	}
	if !strings.Contains(g.p.stderr.String(), "were cut") {
		t.Errorf("the log does not say requests were cut:\n%s", g.p.stderr.String())
	}
	completed := 0
	for i, s := range streams {
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("stream %d still open after the gateway exited", i)
		}
		if s.complete() {
			completed++
		}
	}
	if completed > 0 {
		t.Errorf("%d streams completed although shutdown_timeout (%v) was shorter than they are", completed, timeout)
	}

	rows := usageRows(t, filepath.Join(dir, "usage.db"))
	classes := map[string]int{}
	bad := 0
	for _, s := range streams {
		rs := rows[s.id]
		if len(rs) == 1 {
			classes[fmt.Sprintf("%d %s", rs[0].status, rs[0].class)]++
		}
		// Cut mid-stream by the gateway: the response had started (200)
		// or counts as closed (499); the record says the gateway cut it,
		// and it generated tokens.
		if len(rs) != 1 || (rs[0].status != http.StatusOK && rs[0].status != 499) || rs[0].class != "unavailable" || rs[0].completion <= 0 {
			if bad++; bad <= 3 {
				t.Errorf("request %s: usage records %+v, want one with status 200 or 499, error class unavailable and completion tokens", s.id, rs)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d cut streams have no correct usage record", bad, n)
	}
	if len(rows) != n {
		t.Errorf("%d usage records, want %d", len(rows), n)
	}
	t.Logf("shutdown_timeout %v with %d streams of ~5 s: exit 1 after %v; records by status and class: %v",
		timeout, n, exit.Round(time.Millisecond), classes)
}

// reloadConfig is a pool of backends a and b (b at prioB, a at prioA)
// serving gpt-4o and gpt-4o-mini, anonymous callers with an rpm limit on
// gpt-4o, and a file watch as configured.
func reloadConfig(aURL, bURL string, prioA, prioB, weightB, rpm int, extra string) string {
	return fmt.Sprintf(`log: {level: info}
identity: {anonymous: true}
apps:
  - name: anonymous
    limits: [{model: gpt-4o, rpm: %d}]
backends:
  - {name: a, endpoint: %q, auth: {type: none}}
  - {name: b, endpoint: %q, auth: {type: none}}
pools:
  - name: main
    backends:
      - {backend: a, priority: %d}
      - {backend: b, priority: %d, weight: %d}
models:
  - name: gpt-4o
    deployments: [{backend: a}, {backend: b}]
  - name: gpt-4o-mini
    deployments: [{backend: a}, {backend: b}]
usage:
  spool: {dir: spool}
%s`, rpm, aURL, bURL, prioA, prioB, weightB, extra)
}

// reloadSim serves gpt-4o and gpt-4o-mini; streams of 40 tokens at
// tokensPerSecond (0: at once).
func reloadSim(t *testing.T, obs *observations, name string, tokensPerSecond float64, f simulator.Faults) *simulator.Instance {
	return startSimulator(t, simulator.InstanceConfig{Name: name, CompletionTokens: 40, Faults: f,
		Latency:     simulator.Latency{TokensPerSecond: tokensPerSecond},
		Deployments: []simulator.DeploymentConfig{{Name: "gpt-4o", Model: "gpt-4o"}, {Name: "gpt-4o-mini", Model: "gpt-4o-mini"}}}, obs)
}

// reloadState is GET /admin/config's reload section.
type reloadState struct {
	At              time.Time `json:"at"`
	OK              bool      `json:"ok"`
	Trigger         string    `json:"trigger"`
	Errors          []string  `json:"errors"`
	LoadedAt        time.Time `json:"loaded_at"`
	RestartRequired []string  `json:"restart_required"`
}

// adminConfig is GET /admin/config.
type adminConfig struct {
	File   string         `json:"file"`
	Reload reloadState    `json:"reload"`
	Config map[string]any `json:"config"`
}

func getAdminConfig(t *testing.T, admin string) adminConfig {
	t.Helper()
	var c adminConfig
	getJSON(t, admin+"/admin/config", &c)
	return c
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, b)
	}
}

// nextReload polls /admin/config until a reload attempt ends after prev
// and returns its outcome, failing unless it is wantOK.
func nextReload(t *testing.T, admin string, prev reloadState, wantOK bool) reloadState {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := getAdminConfig(t, admin)
		if c.Reload.At.After(prev.At) {
			if c.Reload.OK != wantOK {
				t.Fatalf("reload ok = %v, want %v: %+v", c.Reload.OK, wantOK, c.Reload)
			}
			if wantOK && !c.Reload.LoadedAt.After(prev.LoadedAt) {
				t.Fatalf("a successful reload did not move loaded_at: before %+v, after %+v", prev, c.Reload)
			}
			if !wantOK && !c.Reload.LoadedAt.Equal(prev.LoadedAt) {
				t.Fatalf("a rejected reload moved loaded_at: before %+v, after %+v", prev, c.Reload)
			}
			return c.Reload
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload within 10 s; last: %+v", c.Reload)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// metricValue reads one sample of GET /metrics; series is the name with
// its labels as exposed, e.g. `tokengate_config_reloads_total{result="failure"}`.
func metricValue(t *testing.T, admin, series string) float64 {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %q", series, line)
			}
			return v
		}
	}
	t.Fatalf("no %s in /metrics:\n%s", series, b)
	return 0
}

// limitState is one limit of an app as GET /admin/apps shows it.
type limitState struct {
	Kind      string `json:"kind"`
	Model     string `json:"model"`
	Limit     int64  `json:"limit"`
	Used      int64  `json:"used"`
	Remaining int64  `json:"remaining"`
}

// appLimits reads one app's limits from GET /admin/apps.
func appLimits(t *testing.T, admin, app string) []limitState {
	t.Helper()
	var out struct {
		Apps []struct {
			Name   string       `json:"name"`
			Limits []limitState `json:"limits"`
		} `json:"apps"`
	}
	getJSON(t, admin+"/admin/apps", &out)
	for _, a := range out.Apps {
		if a.Name == app {
			return a.Limits
		}
	}
	t.Fatalf("GET /admin/apps has no app %q: %+v", app, out.Apps)
	return nil
}

// shortChat sends one small non-streaming chat completion for model and
// expects want from backend (when backend is not "").
func shortChat(t *testing.T, base, model string, want int, backend string) limitReply {
	t.Helper()
	r := chatOnce(&http.Client{Timeout: 10 * time.Second}, base, model, 1)
	if r.status != want || (backend != "" && r.header.Get("X-Tokengate-Backend") != backend) {
		t.Fatalf("%s: %d from %q, want %d from %q: %.300s", model, r.status, r.header.Get("X-Tokengate-Backend"), want, backend, r.body)
	}
	return r
}

// TestReloadMidStream: a file rewrite (rename-replace) while a stream is
// open moves new requests to another backend and lowers an rpm limit; the
// stream finishes on the old config, the limit's count carries over, and a
// broken file changes nothing but says why.
func TestReloadMidStream(t *testing.T) {
	a := reloadSim(t, nil, "a", 10, simulator.Faults{}) // a stream lasts ~4 s
	b := reloadSim(t, nil, "b", 0, simulator.Faults{})
	dir := t.TempDir()
	cfg := func(prioA, prioB, rpm int) string { return reloadConfig(a.URL(), b.URL(), prioA, prioB, 1, rpm, "") }
	g := startLifecycle(t, dir, "", cfg(1, 2, 100))
	before := getAdminConfig(t, g.admin).Reload

	stream := openStream(streamClient(t), g.base+"/v1/chat/completions",
		`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Tell me a long story"}]}`)
	select {
	case <-stream.first:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream had no first event after 10 s")
	}
	if stream.status != http.StatusOK || stream.backend != "a" {
		<-stream.done
		t.Fatalf("stream before the reload: %v from %q, want 200 from a", stream, stream.backend)
	}
	for range 2 { // with the stream: 3 of gpt-4o's rpm used
		shortChat(t, g.base, "gpt-4o", http.StatusOK, "a")
	}

	// b first, and gpt-4o's rpm down from 100 to 4.
	g.rewrite(t, cfg(2, 1, 4))
	rl := nextReload(t, g.admin, before, true)
	applied := time.Now()
	if rl.Trigger != "file" || len(rl.RestartRequired) != 0 || len(rl.Errors) != 0 {
		t.Errorf("reload after the rewrite: %+v, want trigger file, nothing to restart, no errors", rl)
	}
	if stream.finished() {
		t.Fatalf("the stream finished before the reload was applied: the test's stream is too short: %v", stream)
	}
	// The count carried over: 3 used of 4 leaves one.
	if r := shortChat(t, g.base, "gpt-4o", http.StatusOK, "b"); r.header.Get("X-Ratelimit-Limit-Requests") != "4" {
		t.Errorf("after the reload x-ratelimit-limit-requests = %q, want 4", r.header.Get("X-Ratelimit-Limit-Requests"))
	}
	if r := shortChat(t, g.base, "gpt-4o", http.StatusTooManyRequests, ""); !strings.Contains(string(r.body), `"code":"rate_limit_exceeded"`) {
		t.Errorf("the 5th gpt-4o request in the minute: %s, want the gateway's rate_limit_exceeded", r.body)
	}
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "b") // not limited
	ls := appLimits(t, g.admin, "anonymous")
	if len(ls) != 1 || ls[0].Kind != "rpm" || ls[0].Model != "gpt-4o" || ls[0].Limit != 4 || ls[0].Used != 4 || ls[0].Remaining != 0 {
		t.Errorf("GET /admin/apps anonymous limits after the reload: %+v, want rpm 4 on gpt-4o with 4 used", ls)
	}

	select {
	case <-stream.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream opened before the reload did not finish within 10 s")
	}
	if !stream.complete() || stream.backend != "a" {
		t.Errorf("the stream opened before the reload: %v from %q, want [DONE] from a", stream, stream.backend)
	}
	t.Logf("the stream finished %v after the reload was applied", stream.ended.Sub(applied).Round(time.Millisecond))

	// A broken file: nothing changes, and it says why.
	failuresBefore := metricValue(t, g.admin, `tokengate_config_reloads_total{result="failure"}`)
	g.rewrite(t, strings.Replace(cfg(1, 2, 100), b.URL(), "ftp://x", 1))
	bad := nextReload(t, g.admin, rl, false)
	if bad.Trigger != "file" || !slices.ContainsFunc(bad.Errors, func(e string) bool { return strings.Contains(e, "backends[1].endpoint") }) {
		t.Errorf("rejected reload: %+v, want trigger file and a backends[1].endpoint problem", bad)
	}
	if v := metricValue(t, g.admin, "tokengate_config_last_reload_successful"); v != 0 {
		t.Errorf("tokengate_config_last_reload_successful = %g after a rejected reload, want 0", v)
	}
	if v := metricValue(t, g.admin, `tokengate_config_reloads_total{result="failure"}`); v < failuresBefore+1 {
		t.Errorf(`tokengate_config_reloads_total{result="failure"} = %g, want at least %g`, v, failuresBefore+1)
	}
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "b")        // still b first
	shortChat(t, g.base, "gpt-4o", http.StatusTooManyRequests, "") // still rpm 4, used up

	// Fixed: applied, and the metric recovers.
	g.rewrite(t, cfg(1, 2, 5))
	nextReload(t, g.admin, bad, true)
	if v := metricValue(t, g.admin, "tokengate_config_last_reload_successful"); v != 1 {
		t.Errorf("tokengate_config_last_reload_successful = %g after a good reload, want 1", v)
	}
	shortChat(t, g.base, "gpt-4o", http.StatusOK, "a") // the 5th of rpm 5
	shortChat(t, g.base, "gpt-4o", http.StatusTooManyRequests, "")
}

// postReload is POST /admin/reload: its status and decoded body.
func postReload(t *testing.T, admin string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(admin+"/admin/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("POST /admin/reload: %d %v: %s", resp.StatusCode, err, b)
	}
	return resp.StatusCode, out
}

// TestReloadSignalAndAPI: with reload.watch off, SIGHUP and POST
// /admin/reload reload the file; a bad file is refused by both (422 with
// the problems from the API) and the last good config keeps serving.
func TestReloadSignalAndAPI(t *testing.T) {
	a := reloadSim(t, nil, "a", 0, simulator.Faults{})
	b := reloadSim(t, nil, "b", 0, simulator.Faults{})
	dir := t.TempDir()
	cfg := func(prioA, prioB int) string {
		return reloadConfig(a.URL(), b.URL(), prioA, prioB, 1, 1000, "reload: {watch: false}\n")
	}
	broken := strings.Replace(cfg(1, 2), b.URL(), "ftp://x", 1)
	g := startLifecycle(t, dir, "", cfg(1, 2))
	st := getAdminConfig(t, g.admin).Reload
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "a")
	hup := func() {
		t.Helper()
		if err := g.p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	g.rewrite(t, cfg(2, 1))
	hup()
	st = nextReload(t, g.admin, st, true)
	if st.Trigger != "sighup" {
		t.Errorf("reload trigger %q, want sighup", st.Trigger)
	}
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "b")

	g.rewrite(t, broken)
	hup()
	st = nextReload(t, g.admin, st, false)
	if st.Trigger != "sighup" || len(st.Errors) == 0 {
		t.Errorf("rejected reload: %+v, want trigger sighup with problems", st)
	}
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "b")

	status, body := postReload(t, g.admin)
	e, _ := body["error"].(map[string]any)
	problems, _ := e["problems"].([]any)
	if status != http.StatusUnprocessableEntity || e["code"] != "invalid_config" || e["message"] == "" ||
		!slices.ContainsFunc(problems, func(p any) bool { s, _ := p.(string); return strings.Contains(s, "backends[1].endpoint") }) {
		t.Errorf("POST /admin/reload with a broken file: %d %v, want 422 invalid_config listing backends[1].endpoint", status, body)
	}
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "b")

	g.rewrite(t, cfg(1, 2))
	status, body = postReload(t, g.admin)
	rl, _ := body["reload"].(map[string]any)
	if status != http.StatusOK || body["status"] != "reloaded" || rl["ok"] != true || rl["trigger"] != "api" {
		t.Errorf("POST /admin/reload with a good file: %d %v, want 200 reloaded", status, body)
	}
	shortChat(t, g.base, "gpt-4o-mini", http.StatusOK, "a")
}

// TestReloadKeepsOpenBreaker: a backend tripped by a 429 asking for 30 s
// stays open, trip counted, across a reload that changes only another
// backend, and is not tried again.
func TestReloadKeepsOpenBreaker(t *testing.T) {
	obs := newObservations()
	a := reloadSim(t, obs, "a", 0, simulator.Faults{ThrottleRate: 1, ThrottleRetryAfter: 30 * time.Second})
	b := reloadSim(t, obs, "b", 0, simulator.Faults{})
	dir := t.TempDir()
	g := startLifecycle(t, dir, "", reloadConfig(a.URL(), b.URL(), 1, 2, 1, 1000, ""))
	before := getAdminConfig(t, g.admin).Reload

	shortChat(t, g.base, "gpt-4o", http.StatusOK, "b") // a answered 429: retried on b
	tripped := lbFind(t, lbAdmin(t, g.admin), "a", "gpt-4o")
	if tripped.State != "open" || tripped.Trips != 1 || tripped.OpenUntil == nil || time.Until(*tripped.OpenUntil) < 20*time.Second {
		t.Fatalf("a after its 429 with retry-after 30: %+v, want open for ~30 s with 1 trip", tripped)
	}

	g.rewrite(t, reloadConfig(a.URL(), b.URL(), 1, 2, 5, 1000, ""))
	nextReload(t, g.admin, before, true)
	after := lbFind(t, lbAdmin(t, g.admin), "a", "gpt-4o")
	if after.State != "open" || after.Trips != 1 || after.OpenUntil == nil || !after.OpenUntil.Equal(*tripped.OpenUntil) {
		t.Errorf("a after a reload that changed only b's weight: %+v, want still open until %v with 1 trip", after, tripped.OpenUntil)
	}
	shortChat(t, g.base, "gpt-4o", http.StatusOK, "b")
	if got := lbAt(obs.settle(), "a"); len(got) != 1 {
		t.Errorf("a was tried %d times; want once (its breaker is open)", len(got))
	}
}
