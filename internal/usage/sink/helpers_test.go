package sink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/usage"
)

// testRecord is a plausible record whose RequestID is req-NNNNNN.
func testRecord(i int) usage.Record {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)
	return usage.Record{
		Schema:     usage.SchemaVersion,
		RequestID:  fmt.Sprintf("req-%06d", i),
		Start:      start,
		End:        start.Add(1500 * time.Millisecond),
		Caller:     usage.Caller{TenantID: "t-1", App: "billing", Team: "finance", CostCenter: "cc-42", AuthMethod: "entra"},
		ClientIP:   "10.1.2.3",
		Operation:  "chat/completions",
		Model:      "gpt-4o",
		Pool:       "default",
		Backend:    "eastus",
		Deployment: "gpt-4o-2024-08-06",
		Attempts:   []usage.Attempt{{Backend: "eastus", Deployment: "gpt-4o-2024-08-06", Status: 200}},
		Status:     200,
		Tokens:     usage.Tokens{Prompt: 120, Completion: 30, Total: 150, Source: usage.SourceBackend},
		Latency:    usage.Latency{TotalMS: 1500, UpstreamMS: 1400},
		Cost:       usage.Cost{Amount: 0.00045, Currency: "USD"},
	}
}

// testRecords returns records from..from+n-1.
func testRecords(from, n int) []usage.Record {
	rs := make([]usage.Record, n)
	for i := range rs {
		rs[i] = testRecord(from + i)
	}
	return rs
}

// mustJSON is json.Marshal of r, the value every sink must write.
func mustJSON(t testing.TB, r *usage.Record) []byte {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readLines decodes a JSON-lines file; every line must be a record.
func readLines(t *testing.T, path string) []usage.Record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []usage.Record
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var r usage.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
