package e2e

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	_ "modernc.org/sqlite"

	"github.com/tokengate/tokengate/internal/simulator"
	"github.com/tokengate/tokengate/internal/usage"
)

// usageGateway is a gateway over one simulator with a SQLite and a file
// sink, everything under dir.
type usageGateway struct {
	dir    string
	config string
	sim    *simulator.Instance
}

func newUsageGateway(t *testing.T, obs *observations, sim simulator.InstanceConfig, extraSinks string) *usageGateway {
	t.Helper()
	sim.Name, sim.APIKey = "sim", "sim-key"
	sim.Deployments = []simulator.DeploymentConfig{{Name: "gpt-4o-d", Model: "gpt-4o"}, {Name: "emb-d", Model: "text-embedding-3-small"}}
	inst := startSimulator(t, sim, obs)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
backends:
  - {name: sim, endpoint: %q, auth: {type: api-key, api_key: sim-key}}
models:
  - name: gpt-4o
    price: {input: 2.5, cached_input: 1.25, output: 10}
    deployments: [{backend: sim, name: gpt-4o-d}]
  - name: text-embedding-3-small
    price: {input: 0.02, output: 0}
    deployments: [{backend: sim, name: emb-d}]
usage:
  drain_timeout: 20s
  spool: {dir: %q, sync_interval: 100ms}
  sinks:
    - {type: sqlite, path: %q}
    - {type: file, path: %q}
%s`, inst.URL(), filepath.Join(dir, "spool"), filepath.Join(dir, "usage.db"), filepath.Join(dir, "usage.jsonl"), extraSinks)
	return &usageGateway{dir: dir, config: cfg, sim: inst}
}

// records reads the file sink (every line a record).
func (u *usageGateway) records(t *testing.T) []usage.Record {
	t.Helper()
	f, err := os.Open(filepath.Join(u.dir, "usage.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []usage.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4<<20), 4<<20)
	for sc.Scan() {
		var r usage.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("file sink line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// sqliteIDs reads every request id in the SQLite sink.
func (u *usageGateway) sqliteIDs(t *testing.T) map[string]int {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(u.dir, "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT request_id FROM usage_records`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]int{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id]++
	}
	return ids
}

func byID(recs []usage.Record) map[string]usage.Record {
	m := map[string]usage.Record{}
	for _, r := range recs {
		m[r.RequestID] = r
	}
	return m
}

// TestUsageExact runs a user's calls through the binary and checks each
// record against what the backend actually generated.
func TestUsageExact(t *testing.T) {
	obs := newObservations()
	ug := newUsageGateway(t, obs, simulator.InstanceConfig{
		Latency: simulator.Latency{TokensPerSecond: 200}, CompletionTokens: 40,
	}, "")
	base, admin, p := serveWithAdmin(t, ug.config)
	client := v1Client(base)
	ctx := context.Background()
	seen := map[string]string{} // request id -> what it was
	var raw *http.Response

	// Non-streaming, through the SDK.
	_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Count to ten")},
	}, option.WithResponseInto(&raw))
	if err != nil {
		t.Fatal(err)
	}
	seen[raw.Header.Get("X-Request-Id")] = "chat"

	// Streaming without include_usage: the client must see no usage at all.
	resp, body := rawStream(t, base, `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Tell a story"}]}`)
	seen[resp.Header.Get("X-Request-Id")] = "stream"
	if bytes.Contains(body, []byte(`"usage"`)) {
		t.Fatalf("usage leaked into a stream the client did not ask usage for:\n%s", body)
	}
	if !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
		t.Fatalf("stream did not end with [DONE]: %q", body[max(0, len(body)-200):])
	}

	// Streaming with include_usage, through the SDK: the client gets it.
	s := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}, option.WithResponseInto(&raw))
	var sdkUsage int64
	for s.Next() {
		if u := s.Current().Usage; u.TotalTokens > 0 {
			sdkUsage = u.TotalTokens
		}
	}
	if s.Err() != nil || sdkUsage == 0 {
		t.Fatalf("stream with include_usage: err %v, usage %d", s.Err(), sdkUsage)
	}
	seen[raw.Header.Get("X-Request-Id")] = "stream+usage"

	// Embeddings.
	_, err = client.Embeddings.New(ctx, openai.EmbeddingNewParams{
		Model: "text-embedding-3-small", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hello world")},
	}, option.WithResponseInto(&raw))
	if err != nil {
		t.Fatal(err)
	}
	seen[raw.Header.Get("X-Request-Id")] = "embeddings"

	// A client that hangs up mid-stream: estimated from what it received.
	hang := hangUpMidStream(t, base)
	seen[hang] = "hangup"

	// A refused request: recorded with its reason and no tokens.
	resp = postJSON(t, base+"/v1/chat/completions", `{"messages":[]}`)
	seen[resp.Header.Get("X-Request-Id")] = "refused"
	if resp.StatusCode != 400 {
		t.Fatalf("refused: status %d", resp.StatusCode)
	}

	// The admin listener shows the spool and each sink's progress.
	var st struct {
		Sinks []struct {
			Name      string
			Delivered int
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(admin + "/admin/usage/spool")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || len(st.Sinks) != 2 {
			t.Fatalf("/admin/usage/spool: %v %+v", err, st)
		}
		if st.Sinks[0].Delivered == len(seen) && st.Sinks[1].Delivered == len(seen) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sinks delivered %+v, want %d each", st.Sinks, len(seen))
		}
	}

	p.stop(t) // drains: every record delivered
	recs := byID(ug.records(t))
	ids := ug.sqliteIDs(t)
	simByID := map[string]simulator.Observation{}
	for _, ob := range obs.settle() {
		simByID[ob.Header.Get("X-Ms-Client-Request-Id")] = ob
	}
	for id, what := range seen {
		r, ok := recs[id]
		if !ok || ids[id] != 1 {
			t.Fatalf("%s (%s): record in file %v, in sqlite %d times", what, id, ok, ids[id])
		}
		ob := simByID[id]
		switch what {
		case "refused":
			if r.Status != 400 || r.ErrorClass != usage.ErrorClient || r.ErrorCode != "missing_model" || r.Tokens.Total != 0 || r.Tokens.Source != usage.SourceNone {
				t.Errorf("refused record: %+v", r)
			}
			continue
		case "hangup":
			if r.Tokens.Source != usage.SourceEstimated || r.ErrorClass != usage.ErrorDisconnected || r.Tokens.Completion == 0 ||
				r.Tokens.Completion > int64(ob.CompletionTokens)+2 || r.Tokens.Prompt == 0 {
				t.Errorf("hang-up record: tokens %+v class %q; backend sent %d completion tokens", r.Tokens, r.ErrorClass, ob.CompletionTokens)
			}
			continue
		}
		if r.Tokens.Source != usage.SourceBackend || r.Tokens.Prompt != int64(ob.PromptTokens) || r.Tokens.Completion != int64(ob.CompletionTokens) ||
			r.Tokens.Total != r.Tokens.Prompt+r.Tokens.Completion {
			t.Errorf("%s: record tokens %+v, backend counted prompt %d completion %d", what, r.Tokens, ob.PromptTokens, ob.CompletionTokens)
		}
		if r.Status != 200 || r.ErrorClass != "" || r.Backend != "sim" || r.Caller.App != "anonymous" || r.Latency.TotalMS <= 0 || r.Latency.UpstreamMS <= 0 {
			t.Errorf("%s: record %+v", what, r)
		}
		if what == "stream" || what == "stream+usage" {
			if !r.Stream || r.Latency.FirstTokenMS <= 0 || r.Latency.FirstTokenMS > r.Latency.TotalMS {
				t.Errorf("%s: stream %v first token %.2f ms total %.2f ms", what, r.Stream, r.Latency.FirstTokenMS, r.Latency.TotalMS)
			}
		}
		wantCost := (float64(r.Tokens.Prompt)*2.5 + float64(r.Tokens.Completion)*10) / 1e6
		if r.Model == "text-embedding-3-small" {
			wantCost = float64(r.Tokens.Prompt) * 0.02 / 1e6
		}
		if diff := r.Cost.Amount - wantCost; diff > 1e-12 || diff < -1e-12 || r.Cost.Currency != "USD" {
			t.Errorf("%s: cost %+v, want %g USD", what, r.Cost, wantCost)
		}
	}

	// The chargeback report reads the same numbers.
	out, err := exec.Command(binary, "usage", "report", "--db", "sqlite:"+filepath.Join(ug.dir, "usage.db"),
		"--group-by", "model", "--format", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("usage report: %v\n%s", err, out)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out)
	}
	var reqs, total float64
	for _, row := range rows {
		reqs += row["requests"].(float64)
		total += row["total_tokens"].(float64)
	}
	var want int64
	for _, r := range recs {
		want += r.Tokens.Total
	}
	if int(reqs) != len(recs) || int64(total) != want {
		t.Fatalf("report: %v requests, %v tokens; records: %d, %d\n%s", reqs, total, len(recs), want, out)
	}
}

func postJSON(t *testing.T, url, body string) *http.Response {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func rawStream(t *testing.T, base, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %d %v %s", resp.StatusCode, err, b)
	}
	return resp, b
}

// hangUpMidStream starts a stream, reads a few content events and hangs up;
// it returns the request id.
func hangUpMidStream(t *testing.T, base string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"A long story please"}]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	content := 0
	for content < 5 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended early: %v", err)
		}
		if strings.Contains(line, `"content":"`) && !strings.Contains(line, `"content":""`) {
			content++
		}
	}
	cancel()
	resp.Body.Close()
	return resp.Header.Get("X-Request-Id")
}
