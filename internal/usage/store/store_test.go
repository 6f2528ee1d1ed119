package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/testenv"
	"github.com/tokengate/tokengate/internal/usage"
)

// databases are the backends the suite runs against: each func returns a
// fresh, empty database.
var databases = []struct {
	name  string
	fresh func(t testing.TB) string
}{
	{"sqlite", func(t testing.TB) string { return "sqlite:" + filepath.Join(t.TempDir(), "usage.db") }},
	{"postgres", testenv.Postgres},
}

func open(t testing.TB, db string) *Store {
	t.Helper()
	s, err := Open(t.Context(), "test", db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return s
}

var t0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// rec is a successful, priced record.
func rec(id, app, model string, start time.Time, prompt, completion int64, cost float64, currency string) usage.Record {
	return usage.Record{
		Schema: usage.SchemaVersion, RequestID: id,
		Start: start, End: start.Add(1500 * time.Millisecond),
		Caller:    usage.Caller{TenantID: "tenant-1", App: app, Team: "alpha", CostCenter: "cc-100", AuthMethod: "gateway-key"},
		Operation: "chat/completions", Model: model, Pool: "default", Backend: "east", Deployment: model + "-east",
		Attempts: []usage.Attempt{{Backend: "east", Deployment: model + "-east", Status: 200}},
		Status:   200, Stream: true,
		Tokens:  usage.Tokens{Prompt: prompt, Completion: completion, Total: prompt + completion, Source: usage.SourceBackend},
		Latency: usage.Latency{TotalMS: 1500, FirstTokenMS: 120.5, UpstreamMS: 1400},
		Cost:    usage.Cost{Amount: cost, Currency: currency},
	}
}

// quoted is an app name that breaks naive SQL, CSV and JSON.
const quoted = `O'Brien "bot", R&D <日本語> ✓`

// fixture is the suite's records. r5 is a refusal: no tokens, no price.
func fixture() []usage.Record {
	r1 := rec("r1", "chat", "gpt-4o", t0.Add(time.Hour), 100, 50, 1.5, "USD")
	r1.Tokens.CachedPrompt = 20
	r1.Capture = &usage.Capture{Mode: usage.CaptureMetadata, PromptBytes: 400, CompletionBytes: 200, Messages: 2}
	r2 := rec("r2", "chat", "gpt-4o-mini", t0.Add(2*time.Hour), 200, 100, 0.25, "USD")
	r2.Backend, r2.Deployment = "west", "mini-west"
	r3 := rec("r3", quoted, "gpt-4o", t0.Add(24*time.Hour), 300, 30, 2, "EUR")
	r3.Caller.Team, r3.Caller.CostCenter, r3.Caller.TenantID = "beta", "cc-200", "tenant-2"
	r4 := rec("r4", "chat", "o3", t0.AddDate(0, 1, 0), 10, 90, 1, "USD")
	r4.Tokens.Reasoning = 60
	r4.Operation = "responses"
	r5 := usage.Record{
		Schema: usage.SchemaVersion, RequestID: "r5", Start: t0.Add(3 * time.Hour), End: t0.Add(3 * time.Hour),
		Caller: usage.Caller{TenantID: "tenant-1", App: "chat", Team: "alpha", CostCenter: "cc-100"}, Operation: "chat/completions",
		Model: "gpt-4o", Status: 429, ErrorClass: usage.ErrorLimit, ErrorCode: "rate_limited", Reason: "app chat: 10 requests/min",
		Tokens: usage.Tokens{Source: usage.SourceNone},
	}
	r6 := rec("r6", "batch", "gpt-4o", t0.Add(25*time.Hour), 10, 0, 0.01, "USD")
	r6.Status, r6.ErrorClass, r6.Stream = 502, usage.ErrorUpstream, false
	r6.Caller.Team = "beta"
	r6.Attempts = append(r6.Attempts, usage.Attempt{Backend: "west", Status: 0, Error: "connection reset"})
	return []usage.Record{r1, r2, r3, r4, r5, r6}
}

func TestStore(t *testing.T) {
	for _, db := range databases {
		t.Run(db.name, func(t *testing.T) {
			t.Run("write and report", func(t *testing.T) { testWriteReport(t, db.fresh(t)) })
			t.Run("atomic batch", func(t *testing.T) { testAtomic(t, db.fresh(t)) })
			t.Run("migrations", func(t *testing.T) { testMigrations(t, db.fresh) })
			t.Run("concurrent write and report", func(t *testing.T) { testConcurrent(t, db.fresh(t)) })
		})
	}
}

func testWriteReport(t *testing.T, db string) {
	s := open(t, db)
	ctx := t.Context()
	recs := fixture()
	// Overlapping batches, then the second again (a retry): each record
	// counts once.
	for _, batch := range [][]usage.Record{recs[:4], recs[2:], recs[2:]} {
		if err := s.Write(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Write(ctx, nil); err != nil {
		t.Fatal(err)
	}

	row := func(keys map[string]string, cur string, req, errs, p, c, cached, reason int64, cost float64) Row {
		return Row{Keys: keys, Currency: cur, Requests: req, Errors: errs, PromptTokens: p, CompletionTokens: c,
			TotalTokens: p + c, CachedPromptTokens: cached, ReasoningTokens: reason, Cost: cost}
	}
	app := func(a string) map[string]string { return map[string]string{"app": a} }
	for _, tc := range []struct {
		name string
		q    Query
		want []Row
	}{{
		name: "no grouping: one row per currency; two currencies, so the refusal keeps its row",
		q:    Query{},
		want: []Row{
			row(map[string]string{}, "USD", 4, 1, 320, 240, 20, 60, 2.76),
			row(map[string]string{}, "EUR", 1, 0, 300, 30, 0, 0, 2),
			row(map[string]string{}, "", 1, 1, 0, 0, 0, 0, 0),
		},
	}, {
		name: "by app: cost order, refusal counted as request and error",
		q:    Query{GroupBy: []string{"app"}},
		want: []Row{
			row(app("chat"), "USD", 4, 1, 310, 240, 20, 60, 2.75),
			row(app(quoted), "EUR", 1, 0, 300, 30, 0, 0, 2),
			row(app("batch"), "USD", 1, 1, 10, 0, 0, 0, 0.01),
		},
	}, {
		name: "from inclusive, to exclusive",
		q:    Query{From: t0.Add(time.Hour), To: t0.Add(2 * time.Hour), GroupBy: []string{"app"}},
		want: []Row{row(app("chat"), "USD", 1, 0, 100, 50, 20, 0, 1.5)},
	}, {
		name: "refusal alone keeps its currency-less row",
		q:    Query{From: t0.Add(3 * time.Hour), To: t0.Add(4 * time.Hour), GroupBy: []string{"app"}},
		want: []Row{row(app("chat"), "", 1, 1, 0, 0, 0, 0, 0)},
	}, {
		name: "only from",
		q:    Query{From: t0.Add(24 * time.Hour), GroupBy: []string{"month"}},
		want: []Row{
			row(map[string]string{"month": "2026-03"}, "EUR", 1, 0, 300, 30, 0, 0, 2),
			row(map[string]string{"month": "2026-04"}, "USD", 1, 0, 10, 90, 0, 60, 1),
			row(map[string]string{"month": "2026-03"}, "USD", 1, 1, 10, 0, 0, 0, 0.01),
		},
	}, {
		name: "by day and model",
		q:    Query{To: t0.Add(48 * time.Hour), GroupBy: []string{"day", "model"}},
		want: []Row{
			row(map[string]string{"day": "2026-03-02", "model": "gpt-4o"}, "EUR", 1, 0, 300, 30, 0, 0, 2),
			row(map[string]string{"day": "2026-03-01", "model": "gpt-4o"}, "USD", 2, 1, 100, 50, 20, 0, 1.5),
			row(map[string]string{"day": "2026-03-01", "model": "gpt-4o-mini"}, "USD", 1, 0, 200, 100, 0, 0, 0.25),
			row(map[string]string{"day": "2026-03-02", "model": "gpt-4o"}, "USD", 1, 1, 10, 0, 0, 0, 0.01),
		},
	}, {
		name: "empty range",
		q:    Query{From: t0.AddDate(1, 0, 0), GroupBy: []string{"app"}},
		want: nil,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Report(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			checkRows(t, got, tc.want)
		})
	}

	// Every key alone and in pairs, against totals computed here.
	for i, a := range groupKeys {
		for _, b := range append([]string{""}, groupKeys[i+1:]...) {
			keys := []string{a}
			if b != "" {
				keys = append(keys, b)
			}
			t.Run("group by "+strings.Join(keys, ","), func(t *testing.T) {
				q := Query{GroupBy: keys}
				got, err := s.Report(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				checkRows(t, got, expect(recs, q))
			})
		}
	}

	for _, q := range []Query{
		{GroupBy: []string{"user"}},
		{GroupBy: []string{"app", "app"}},
		{From: t0, To: t0},
	} {
		if _, err := s.Report(ctx, q); err == nil {
			t.Errorf("Report(%+v): no error", q)
		}
	}
}

// expect computes q's report from recs in Go: the reference for the SQL.
func expect(recs []usage.Record, q Query) []Row {
	byGroup := map[string]*Row{}
	var order []string
	for _, r := range recs {
		if (!q.From.IsZero() && r.Start.Before(q.From)) || (!q.To.IsZero() && !r.Start.Before(q.To)) {
			continue
		}
		keys := map[string]string{}
		for _, k := range q.GroupBy {
			keys[k] = map[string]string{
				"app": r.Caller.App, "team": r.Caller.Team, "cost_center": r.Caller.CostCenter, "model": r.Model,
				"backend": r.Backend, "deployment": r.Deployment, "operation": r.Operation, "tenant": r.Caller.TenantID,
				"day": r.Start.UTC().Format("2006-01-02"), "month": r.Start.UTC().Format("2006-01"),
			}[k]
		}
		id := fmt.Sprint(keys, r.Cost.Currency)
		g := byGroup[id]
		if g == nil {
			g = &Row{Keys: keys, Currency: r.Cost.Currency}
			byGroup[id] = g
			order = append(order, id)
		}
		g.Requests++
		if r.ErrorClass != "" {
			g.Errors++
		}
		g.PromptTokens += r.Tokens.Prompt
		g.CompletionTokens += r.Tokens.Completion
		g.TotalTokens += r.Tokens.Total
		g.CachedPromptTokens += r.Tokens.CachedPrompt
		g.ReasoningTokens += r.Tokens.Reasoning
		g.Cost += r.Cost.Amount
	}
	var rows []Row
	for _, id := range order {
		rows = append(rows, *byGroup[id])
	}
	rows = foldUnpriced(rows, q.GroupBy)
	sortRows(rows, q.GroupBy)
	return rows
}

func checkRows(t *testing.T, got, want []Row) {
	t.Helper()
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		g, w := got[i], want[i]
		same = math.Abs(g.Cost-w.Cost) < 1e-9
		g.Cost, w.Cost = 0, 0
		same = same && reflect.DeepEqual(g, w)
	}
	if !same {
		t.Errorf("rows:\n%s\nwant:\n%s", dump(got), dump(want))
	}
}

func dump(rows []Row) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "  %+v\n", r)
	}
	return b.String()
}

// testAtomic: a batch that fails writes nothing, and a retry after the
// failure is complete and single.
func testAtomic(t *testing.T, db string) {
	s := open(t, db)
	ctx := t.Context()
	recs := fixture()
	bad := append(recs[:2:2], usage.Record{Start: t0})
	if err := s.Write(ctx, bad); err == nil || !strings.Contains(err.Error(), "request_id") {
		t.Fatalf("Write with a record without request_id: %v", err)
	}
	checkTotal(t, s, 0)
	if err := s.Write(ctx, recs); err != nil {
		t.Fatal(err)
	}
	checkTotal(t, s, len(recs))
	// Values PostgreSQL would refuse, which would fail the batch on every
	// retry, are made storable.
	dirty := rec("dirty", "chat", "gpt\x00-4o", t0.AddDate(0, 2, 0), 1, 1, math.NaN(), "USD")
	dirty.UserAgent, dirty.Reason = "\xff\xfecurl", "bad \xc3("
	dirty.Latency.TotalMS = math.Inf(1)
	if err := s.Write(ctx, []usage.Record{dirty}); err != nil {
		t.Fatal(err)
	}
	rows, err := s.Report(ctx, Query{From: dirty.Start, GroupBy: []string{"model"}})
	if err != nil {
		t.Fatal(err)
	}
	checkRows(t, rows, []Row{{Keys: map[string]string{"model": "gpt\uFFFD-4o"}, Currency: "USD", Requests: 1,
		PromptTokens: 1, CompletionTokens: 1, TotalTokens: 2}})

	// The flattened columns come back as written.
	var attempts, capture string
	var status, total int64
	var stream bool
	var upstream float64
	err = s.b.query(ctx, "SELECT attempts, capture, status, total_tokens, stream, latency_upstream_ms FROM usage_records WHERE request_id = "+s.d.bind(1),
		[]any{"r1"}, func(sc scanner) error { return sc.Scan(&attempts, &capture, &status, &total, &stream, &upstream) })
	if err != nil {
		t.Fatal(err)
	}
	if attempts != `[{"backend":"east","deployment":"gpt-4o-east","status":200}]` ||
		capture != `{"mode":"metadata","prompt_bytes":400,"completion_bytes":200,"messages":2}` ||
		status != 200 || total != 150 || !stream || upstream != 1400 {
		t.Errorf("r1 stored as attempts %s, capture %s, status %d, total %d, stream %v, upstream %v", attempts, capture, status, total, stream, upstream)
	}
}

func checkTotal(t *testing.T, s *Store, want int) {
	t.Helper()
	rows, err := s.Report(t.Context(), Query{})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, r := range rows {
		n += r.Requests
	}
	if n != int64(want) {
		t.Errorf("%d records stored, want %d", n, want)
	}
}

// testMigrations: two processes opening a fresh database at once both
// succeed; reopening changes nothing; a newer schema is refused.
func testMigrations(t *testing.T, fresh func(testing.TB) string) {
	db := fresh(t)
	ctx := t.Context()
	var wg sync.WaitGroup
	stores := make([]*Store, 4)
	errs := make([]error, len(stores))
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = Open(ctx, "test", db, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		_ = s.Close(ctx)
	}

	s := open(t, db)
	if n, err := s.b.queryInt(ctx, "SELECT COUNT(*) FROM schema_migrations"); err != nil || n != len(s.d.migrations) {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, len(s.d.migrations))
	}
	if err := s.b.exec(ctx, "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 'later')"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, "test", db, nil); err == nil || !strings.Contains(err.Error(), "upgrade tokengate") {
		t.Errorf("Open of a newer schema: %v", err)
	}
}

// testConcurrent: reports, from this store and from a second one on the
// same database (as the report command is), run while batches are written.
func testConcurrent(t *testing.T, db string) {
	w := open(t, db)
	r := open(t, db)
	ctx := t.Context()
	const batches, size = 20, 100
	done := make(chan error, 1)
	go func() {
		for i := range batches {
			if err := w.Write(ctx, benchBatch(i, size)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var last int64
	reports := 0
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		for _, s := range []*Store{w, r} {
			rows, err := s.Report(ctx, Query{GroupBy: []string{"app", "day"}})
			if err != nil {
				t.Fatal(err)
			}
			var n int64
			for _, row := range rows {
				n += row.Requests
			}
			if n < last || n%size != 0 {
				t.Fatalf("a report saw %d records after %d: batches are not atomic", n, last)
			}
			last = n
			reports++
		}
	}
	checkTotal(t, r, batches*size)
	t.Logf("%d reports during %d writes", reports, batches)
}

func TestOpenErrors(t *testing.T) {
	ctx := t.Context()
	for _, db := range []string{"mysql://x", "usage.sqlite", "sqlite:", "sqlite::memory:", "sqlite:a.db?mode=ro", "postgres://u:secret@127.0.0.1:1/db?connect_timeout=2"} {
		_, err := Open(ctx, "x", db, nil)
		if err == nil {
			t.Errorf("Open(%q): no error", db)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q): error shows the password: %v", db, err)
		}
	}
}

// TestPostgresReconnect: connections the server dropped are replaced; a
// closed store refuses work.
func TestPostgresReconnect(t *testing.T) {
	db := testenv.Postgres(t)
	s := open(t, db)
	ctx := t.Context()
	recs := fixture()
	if err := s.Write(ctx, recs[:2]); err != nil {
		t.Fatal(err)
	}
	// A second store's connection ends every other session, as a server
	// restart or failover would.
	admin := open(t, db)
	if err := admin.b.exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"); err != nil {
		t.Fatal(err)
	}
	// The write meets the dead connection and goes through on a new one.
	if err := s.Write(ctx, recs[2:]); err != nil {
		t.Fatalf("write after the drop: %v", err)
	}
	checkTotal(t, s, len(recs))

	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, recs); !errors.Is(err, errClosed) {
		t.Errorf("Write after Close: %v, want errClosed", err)
	}
}
