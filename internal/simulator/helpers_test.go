package simulator

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const testAPIVersion = "2024-10-21"

// testConfig is an unauthenticated instance with a deployment of each kind.
func testConfig() InstanceConfig {
	return InstanceConfig{
		Name: "test",
		Deployments: []DeploymentConfig{
			{Name: "gpt-4o", Model: "gpt-4o"},
			{Name: "gpt-35", Model: "gpt-35-turbo"},
			{Name: "emb", Model: "text-embedding-3-small"},
			{Name: "emb-large", Model: "text-embedding-3-large"},
			{Name: "ada", Model: "text-embedding-ada-002"},
		},
	}
}

// newServer builds an Instance from cfg and serves it with httptest.
func newServer(t testing.TB, cfg InstanceConfig, opts ...Option) (*Instance, *httptest.Server) {
	t.Helper()
	in, err := New(cfg, nil, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(in)
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := in.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return in, srv
}

// deploymentURL is the classic Azure route of op on dep.
func deploymentURL(base, dep, op string) string {
	return base + "/openai/deployments/" + dep + "/" + op + "?api-version=" + testAPIVersion
}

// post sends body and returns the response with its body read.
func post(t testing.TB, url, body string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, b
}

// decode unmarshals JSON or fails the test.
func decode[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T: %v\nbody: %s", v, err, b)
	}
	return v
}

// errorBody is both of Azure's error shapes.
type errorBody struct {
	Error struct {
		Code    *string `json:"code"`
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
	} `json:"error"`
}

// sseEvents reads a text/event-stream body to its end and returns the data of
// each event, and the error that ended the read (nil on a clean EOF).
func sseEvents(r io.Reader) ([]string, error) {
	var events []string
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			events = append(events, data)
		}
	}
	return events, sc.Err()
}

// observations collects what an instance's observer reports.
type observations struct {
	mu  sync.Mutex
	all []Observation
	ch  chan Observation
}

func newObservations() *observations { return &observations{ch: make(chan Observation, 1024)} }

func (o *observations) option() Option {
	return WithObserver(func(obs Observation) {
		o.mu.Lock()
		o.all = append(o.all, obs)
		o.mu.Unlock()
		o.ch <- obs
	})
}

// next waits for the next observation.
func (o *observations) next(t testing.TB, within time.Duration) Observation {
	t.Helper()
	select {
	case obs := <-o.ch:
		return obs
	case <-time.After(within):
		t.Fatalf("no observation within %s", within)
		return Observation{}
	}
}

// fakeClock is a hand-moved clock for WithClock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
