package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

// lbAlias is the model alias every balancing test asks for; every instance
// serves it from a deployment of the same name.
const lbAlias = "gpt-4o"

// lbBackend is one simulated instance in a balancing test's pool.
type lbBackend struct {
	name     string
	priority int
	inst     *simulator.Instance
}

// lbSim starts one instance serving lbAlias with the given limits per
// window (0 = unlimited), faults and latency.
func lbSim(t *testing.T, obs *observations, name string, window time.Duration, rpm, tpm int, f simulator.Faults, l simulator.Latency) *simulator.Instance {
	t.Helper()
	return startSimulator(t, simulator.InstanceConfig{
		Name: name, RateLimitWindow: window, Faults: f, Latency: l,
		Deployments: []simulator.DeploymentConfig{{Name: lbAlias, Model: "gpt-4o", RPM: rpm, TPM: tpm}},
	}, obs)
}

// lbConfig is a gateway config with one pool, "main", holding bs and
// serving lbAlias from each of them; poolExtra is YAML added to the pool
// (e.g. "breaker: {trip_duration: 500ms}").
func lbConfig(bs []lbBackend, poolExtra string) string {
	var b strings.Builder
	b.WriteString("log: {level: warn}\nidentity: {anonymous: true}\nbackends:\n")
	for _, be := range bs {
		fmt.Fprintf(&b, "  - {name: %s, endpoint: %q, auth: {type: none}}\n", be.name, be.inst.URL())
	}
	b.WriteString("pools:\n  - name: main\n")
	if poolExtra != "" {
		fmt.Fprintf(&b, "    %s\n", poolExtra)
	}
	b.WriteString("    backends:\n")
	for _, be := range bs {
		fmt.Fprintf(&b, "      - {backend: %s, priority: %d}\n", be.name, be.priority)
	}
	fmt.Fprintf(&b, "models:\n  - name: %s\n    deployments:\n", lbAlias)
	for _, be := range bs {
		fmt.Fprintf(&b, "      - {backend: %s}\n", be.name)
	}
	return b.String()
}

// lbReply is what a client got for one request.
type lbReply struct {
	id         string // the x-ms-client-request-id sent, which the gateway forwards
	status     int    // 0 on a transport error
	backend    string // x-tokengate-backend
	header     http.Header
	body       []byte
	err        error
	start, end time.Time
}

func (r lbReply) failed() bool { return r.err != nil || r.status != http.StatusOK }

func (r lbReply) String() string {
	if r.err != nil {
		return fmt.Sprintf("%s: %v", r.id, r.err)
	}
	return fmt.Sprintf("%s: %d from %q: %.200s", r.id, r.status, r.backend, r.body)
}

// lbHTTP is a plain client with a bound on every request, so a hang fails
// the test instead of stalling it.
func lbHTTP(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// lbChatBody is a short chat completion; the simulator charges its prompt
// tokens plus maxTokens.
func lbChatBody(maxTokens int, stream bool) []byte {
	return fmt.Appendf(nil, `{"messages":[{"role":"user","content":"Say hello to the load balancer."}],"max_tokens":%d,"stream":%t}`,
		maxTokens, stream)
}

// lbChat sends one chat completion for alias on the Azure route, with id
// as its request id, and reads the whole answer.
func lbChat(client *http.Client, base, alias, id string, body []byte) lbReply {
	r := lbReply{id: id, start: time.Now()}
	defer func() { r.end = time.Now() }()
	req, err := http.NewRequest(http.MethodPost,
		base+"/openai/deployments/"+alias+"/chat/completions?api-version=2024-10-21", strings.NewReader(string(body)))
	if err != nil {
		r.err = err
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Ms-Client-Request-Id", id)
	resp, err := client.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	r.status, r.header, r.backend = resp.StatusCode, resp.Header, resp.Header.Get("X-Tokengate-Backend")
	r.body, r.err = io.ReadAll(resp.Body)
	return r
}

// lbLoad runs workers that each send a request, pause, and repeat until the
// deadline; it returns every reply. Request ids are prefix-worker-n.
func lbLoad(client *http.Client, base, prefix string, workers int, until time.Time, pause time.Duration, body []byte) []lbReply {
	var (
		mu  sync.Mutex
		all []lbReply
		wg  sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for n := 0; time.Now().Before(until); n++ {
				r := lbChat(client, base, lbAlias, fmt.Sprintf("%s-%d-%d", prefix, w, n), body)
				mu.Lock()
				all = append(all, r)
				mu.Unlock()
				time.Sleep(pause)
			}
		})
	}
	wg.Wait()
	return all
}

// lbFailures returns the replies that are not 200.
func lbFailures(rs []lbReply) []lbReply {
	var bad []lbReply
	for _, r := range rs {
		if r.failed() {
			bad = append(bad, r)
		}
	}
	return bad
}

// settle waits until no observation has arrived for 150 ms (at most 3 s)
// and returns them all: the observer runs after the last byte is written,
// so it can trail what the client saw.
func (o *observations) settle() []simulator.Observation {
	n, quiet := -1, time.Now()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		if l := len(o.list()); l != n {
			n, quiet = l, time.Now()
		} else if time.Since(quiet) >= 150*time.Millisecond {
			break
		}
	}
	return o.list()
}

// lbAt returns the observations of one instance, in order of arrival.
func lbAt(list []simulator.Observation, instance string) []simulator.Observation {
	var out []simulator.Observation
	for _, ob := range list {
		if ob.Instance == instance {
			out = append(out, ob)
		}
	}
	slices.SortFunc(out, func(a, b simulator.Observation) int { return a.Start.Compare(b.Start) })
	return out
}

// lbByRequest groups observations by the request id the gateway forwarded,
// each group in order of arrival.
func lbByRequest(list []simulator.Observation) map[string][]simulator.Observation {
	m := map[string][]simulator.Observation{}
	for _, ob := range list {
		id := ob.Header.Get("X-Ms-Client-Request-Id")
		m[id] = append(m[id], ob)
	}
	for _, g := range m {
		slices.SortFunc(g, func(a, b simulator.Observation) int { return a.Start.Compare(b.Start) })
	}
	return m
}

func lbStatuses(list []simulator.Observation) map[int]int {
	m := map[int]int{}
	for _, ob := range list {
		m[ob.Status]++
	}
	return m
}

// lbSnapshot is one entry of GET /admin/backends.
type lbSnapshot struct {
	Backend           string     `json:"backend"`
	Deployment        string     `json:"deployment"`
	State             string     `json:"state"`
	OpenUntil         *time.Time `json:"open_until"`
	Trips             int64      `json:"trips"`
	InFlight          *int64     `json:"in_flight"`
	RemainingTokens   *int64     `json:"remaining_tokens"`
	RemainingRequests *int64     `json:"remaining_requests"`
}

// lbAdmin reads GET /admin/backends from the admin listener.
func lbAdmin(t *testing.T, admin string) []lbSnapshot {
	t.Helper()
	resp, err := http.Get(admin + "/admin/backends")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /admin/backends: %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	var out struct{ Backends []lbSnapshot }
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("GET /admin/backends: %v: %s", err, b)
	}
	return out.Backends
}

// lbIdle fails unless every backend deployment shows nothing in flight:
// each attempt, retried or not, released its count.
func lbIdle(t *testing.T, admin string) {
	t.Helper()
	for _, s := range lbAdmin(t, admin) {
		if s.InFlight == nil || *s.InFlight != 0 {
			t.Errorf("with no request running, /admin/backends shows %s/%s with in_flight %v", s.Backend, s.Deployment, s.InFlight)
		}
	}
}

func lbFind(t *testing.T, snaps []lbSnapshot, backend, deployment string) lbSnapshot {
	t.Helper()
	for _, s := range snaps {
		if s.Backend == backend && s.Deployment == deployment {
			return s
		}
	}
	t.Fatalf("/admin/backends has no %s/%s: %+v", backend, deployment, snaps)
	return lbSnapshot{}
}

// TestBalancingPTUFillsFirstThenSpillsAndReturns: a PTU instance at a low
// TPM takes a steady sequential load until its budget is spent, the
// pay-as-you-go pair takes the overflow (steering spills before the PTU
// refuses anything), and the PTU takes traffic again once its window resets.
