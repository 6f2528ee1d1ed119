package loadtest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/simulator"
)

// The JSON field names are a contract with scripts and the benchmark
// harness: changing one must fail here.
func TestReportJSONFields(t *testing.T) {
	srv := cannedServer(t, nil)
	rep := run(t, Config{
		URL: srv.URL, Rate: 50, Duration: 200 * time.Millisecond, StreamShare: 0.5,
		Models: []ModelShare{{Alias: "a"}, {Alias: "b"}}, Apps: []App{{Name: "x"}, {Name: "y"}},
	})
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"report_version", "mode", "url", "api", "rate", "concurrency", "stream_share", "duration_s", "warmup_s",
		"elapsed_s", "interrupted", "scheduled", "sent", "unsent", "completed", "succeeded", "errors",
		"sent_rate", "achieved_rate", "succeeded_rate", "peak_in_flight", "latency_ms", "latency_json_ms", "latency_stream_ms",
		"ttft_ms", "schedule_lag_ms", "prompt_tokens", "completion_tokens", "prompt_tokens_per_s",
		"completion_tokens_per_s", "missing_usage", "status_codes", "throttled", "transport_errors",
		"incomplete_streams", "incomplete_bodies", "by_app", "by_model",
	}
	var got []string
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("report fields\n got %v\nwant %v", got, want)
	}
	var stats map[string]float64
	if err := json.Unmarshal(m["latency_ms"], &stats); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(func(yield func(string) bool) {
		for k := range stats {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(keys, []string{"count", "max", "mean", "min", "p50", "p90", "p99", "p99_9"}) {
		t.Errorf("latency fields %v", keys)
	}
	var byApp []map[string]json.RawMessage
	if err := json.Unmarshal(m["by_app"], &byApp); err != nil || len(byApp) != 2 {
		t.Fatalf("by_app %s: %v", m["by_app"], err)
	}
	for _, k := range []string{"name", "sent", "succeeded", "errors", "throttled", "status_codes", "transport_errors"} {
		if _, ok := byApp[0][k]; !ok {
			t.Errorf("by_app lacks %q", k)
		}
	}
	// Round trip.
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, rep) {
		t.Errorf("round trip\n got %+v\nwant %+v", back, *rep)
	}
	if rep.StatusCodes["200"] != rep.Sent || rep.ReportVersion != 1 {
		t.Errorf("status codes %v version %d", rep.StatusCodes, rep.ReportVersion)
	}
	// Closed loop: no schedule lag.
	rep = run(t, Config{URL: srv.URL, Concurrency: 1, Duration: 100 * time.Millisecond})
	if data, _ := json.Marshal(rep); bytes.Contains(data, []byte("schedule_lag_ms")) || bytes.Contains(data, []byte("by_app")) {
		t.Errorf("closed loop report %s", data)
	}
}

// Header values (credentials) never reach the report, text or JSON, nor
// does a password in the URL.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "s3cr3t-VALUE"
	var seen []string
	srv := cannedServer(t, func(r *http.Request) { seen = append(seen, r.Header.Get("Authorization")) })
	cfg := Config{
		URL: strings.Replace(srv.URL, "http://", "http://user:"+secret+"@", 1), Concurrency: 1, Duration: 100 * time.Millisecond,
		Header: []Header{{Name: "Authorization", Value: "Bearer " + secret}},
		Apps:   []App{{Name: "a", Headers: map[string]string{"api-key": secret}}, {Name: "b", Headers: map[string]string{"api-key": secret + "2"}}},
	}
	rep := run(t, cfg)
	if len(seen) == 0 || seen[0] != "Bearer "+secret {
		t.Fatalf("server saw Authorization %q", seen)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(rep)
	for name, out := range map[string]string{"text": text.String(), "json": string(data)} {
		if strings.Contains(out, secret) || strings.Contains(out, "user:") {
			t.Errorf("%s report shows a secret:\n%s", name, out)
		}
	}
	if !strings.Contains(text.String(), "http://127.0.0.1") {
		t.Errorf("text report lacks the target:\n%s", text.String())
	}
}

func TestWriteText(t *testing.T) {
	s := startSim(t, simulator.InstanceConfig{Faults: simulator.Faults{ThrottleRate: 0.5}})
	rep := run(t, Config{URL: s.url, Rate: 100, Concurrency: 10, Duration: 300 * time.Millisecond, StreamShare: 0.5, MaxTokens: 4,
		Models: []ModelShare{{Alias: "gpt-4o"}, {Alias: "gpt-4o-mini"}}})
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"open loop: 100 requests/s, at most 10 in flight", "30 scheduled, 30 sent (100.0/s), 0 unsent", "status     200: ", "429: ",
		"latency (ms)", "all ", "json ", "stream ", "ttft (stream)", "schedule lag", "by model", "gpt-4o-mini",
		"intended send time", "throttled",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	t.Log("\n" + out)
}
