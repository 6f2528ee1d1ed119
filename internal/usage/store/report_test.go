package store

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestParseGroupBy(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "", want: nil},
		{in: "app", want: []string{"app"}},
		{in: " App , model,app,, day ", want: []string{"app", "model", "day"}},
		{in: "tenant,cost_center,month", want: []string{"tenant", "cost_center", "month"}},
		{in: "app,user", wantErr: `unknown group-by key "user": use app, team, cost_center, model, backend, deployment, operation, tenant, day, month`},
		{in: "app;model", wantErr: `unknown group-by key "app;model"`},
	} {
		got, err := ParseGroupBy(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseGroupBy(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
		case err != nil || !reflect.DeepEqual(got, tc.want):
			t.Errorf("ParseGroupBy(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{in: "", want: time.Time{}},
		{in: "2026-03-01", want: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{in: "2026-03-01T09:30", want: time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)},
		{in: "2026-03-01T09:30:15Z", want: time.Date(2026, 3, 1, 9, 30, 15, 0, time.UTC)},
		{in: "2026-03-01T09:30:15.25+01:00", want: time.Date(2026, 3, 1, 8, 30, 15, 250e6, time.UTC)},
		{in: "2026-03-01 09:30", bad: true},
		{in: "2026-02-30", bad: true},
		{in: "01/03/2026", bad: true},
		{in: "yesterday", bad: true},
	} {
		got, err := ParseTime(tc.in)
		if tc.bad {
			if err == nil || !strings.Contains(err.Error(), "RFC 3339") {
				t.Errorf("ParseTime(%q) = %v, %v; want an error saying what to use", tc.in, got, err)
			}
			continue
		}
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestFoldUnpriced(t *testing.T) {
	k := func(app string) map[string]string { return map[string]string{"app": app} }
	rows := []Row{
		{Keys: k("a"), Currency: "USD", Requests: 2, Cost: 1},
		{Keys: k("a"), Currency: "", Requests: 3, Errors: 3},
		{Keys: k("b"), Currency: "USD", Requests: 1, Cost: 1},
		{Keys: k("b"), Currency: "EUR", Requests: 1, Cost: 1},
		{Keys: k("b"), Currency: "", Requests: 1, Errors: 1}, // two currencies: kept
		{Keys: k("c"), Currency: "", Requests: 4, Errors: 1}, // none: kept
		{Keys: k("d"), Currency: "USD", Requests: 1, Cost: 1},
		{Keys: k("d"), Currency: "", Requests: 1, Cost: 0.5}, // money without a currency: kept
	}
	got := foldUnpriced(rows, []string{"app"})
	sortRows(got, []string{"app"})
	want := []Row{
		{Keys: k("a"), Currency: "USD", Requests: 5, Errors: 3, Cost: 1},
		{Keys: k("b"), Currency: "EUR", Requests: 1, Cost: 1},
		{Keys: k("b"), Currency: "USD", Requests: 1, Cost: 1},
		{Keys: k("d"), Currency: "USD", Requests: 1, Cost: 1},
		{Keys: k("d"), Currency: "", Requests: 1, Cost: 0.5},
		{Keys: k("b"), Currency: "", Requests: 1, Errors: 1},
		{Keys: k("c"), Currency: "", Requests: 4, Errors: 1},
	}
	checkRows(t, got, want)
}

// reportRows cover what WriteReport must get right: quotes and Unicode in
// keys, empty keys and currencies, two currencies, float noise in a sum.
func reportRows() []Row {
	k := func(app, model string) map[string]string { return map[string]string{"app": app, "model": model} }
	return []Row{
		{Keys: k("chat", "gpt-4o"), Currency: "USD", Requests: 1200, Errors: 3, PromptTokens: 1500000, CompletionTokens: 250000,
			TotalTokens: 1750000, CachedPromptTokens: 400000, ReasoningTokens: 0, Cost: 12.3456789},
		{Keys: k(quoted, "gpt-4o"), Currency: "EUR", Requests: 3, PromptTokens: 900, CompletionTokens: 90, TotalTokens: 990, Cost: 2.5},
		{Keys: k("batch", "o3"), Currency: "USD", Requests: 2, Errors: 1, PromptTokens: 10, CompletionTokens: 90, TotalTokens: 100,
			ReasoningTokens: 60, Cost: 0.1 + 0.2},
		{Keys: k("chat", ""), Currency: "", Requests: 2, Errors: 2},
	}
}

func TestWriteReport(t *testing.T) {
	groupBy := []string{"app", "model"}
	for _, tc := range []struct {
		golden  string
		format  string
		groupBy []string
		rows    []Row
	}{
		{"report.table", "table", groupBy, reportRows()},
		{"report.csv", "csv", groupBy, reportRows()},
		{"report.json", "json", groupBy, reportRows()},
		{"ungrouped.table", "table", nil, []Row{
			{Keys: map[string]string{}, Currency: "USD", Requests: 10, TotalTokens: 1000, Cost: 3},
			{Keys: map[string]string{}, Currency: "EUR", Requests: 1, TotalTokens: 10, Cost: 0.5},
		}},
		{"empty.table", "table", groupBy, nil},
		{"empty.json", "json", groupBy, nil},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteReport(&buf, tc.rows, tc.groupBy, tc.format); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if buf.String() != string(want) {
				t.Errorf("%s output:\n%s\nwant (%s):\n%s", tc.format, buf.String(), path, want)
			}
		})
	}

	if err := WriteReport(&bytes.Buffer{}, nil, nil, "xml"); err == nil || !strings.Contains(err.Error(), "table, csv, json") {
		t.Errorf("unknown format: %v", err)
	}
}

// TestWriteReportJSON reads the JSON back as a consumer would.
func TestWriteReportJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteReport(&buf, reportRows(), []string{"app", "model"}, "json"); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	want := []map[string]any{
		{"app": "chat", "model": "gpt-4o", "requests": 1200.0, "errors": 3.0, "prompt_tokens": 1500000.0,
			"completion_tokens": 250000.0, "total_tokens": 1750000.0, "cached_prompt_tokens": 400000.0,
			"reasoning_tokens": 0.0, "cost": 12.3456789, "currency": "USD"},
		{"app": quoted, "model": "gpt-4o", "requests": 3.0, "errors": 0.0, "prompt_tokens": 900.0,
			"completion_tokens": 90.0, "total_tokens": 990.0, "cached_prompt_tokens": 0.0,
			"reasoning_tokens": 0.0, "cost": 2.5, "currency": "EUR"},
		{"app": "batch", "model": "o3", "requests": 2.0, "errors": 1.0, "prompt_tokens": 10.0,
			"completion_tokens": 90.0, "total_tokens": 100.0, "cached_prompt_tokens": 0.0,
			"reasoning_tokens": 60.0, "cost": 0.3, "currency": "USD"},
		{"app": "chat", "model": "", "requests": 2.0, "errors": 2.0, "prompt_tokens": 0.0,
			"completion_tokens": 0.0, "total_tokens": 0.0, "cached_prompt_tokens": 0.0,
			"reasoning_tokens": 0.0, "cost": 0.0, "currency": ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("JSON read back:\n%v\nwant:\n%v", got, want)
	}
}
