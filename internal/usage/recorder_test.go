package usage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// flakySink fails its first failures writes, then keeps every record.
type flakySink struct {
	name     string
	mu       sync.Mutex
	failures int
	got      []string
	closed   bool
}

func (s *flakySink) Name() string { return s.name }

func (s *flakySink) Write(_ context.Context, batch []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures > 0 {
		s.failures--
		return errors.New("sink down")
	}
	for _, r := range batch {
		s.got = append(s.got, r.RequestID)
	}
	return nil
}

func (s *flakySink) Close(context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

func (s *flakySink) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func testUsageConfig(dir string) config.Usage {
	c := config.Usage{Spool: config.Spool{Dir: dir, SyncInterval: 50 * time.Millisecond, SyncEvery: 100,
		SegmentBytes: 64 << 10, MaxBytes: 1 << 20, WarnRatio: 0.8, WhenFull: "refuse"}, DrainTimeout: 5 * time.Second}
	return c
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Every record reaches every sink once and in order, even one that fails
// for a while; Close drains and closes the sinks.
func TestRecorderDeliversDespiteFailures(t *testing.T) {
	good, flaky := &flakySink{name: "good"}, &flakySink{name: "flaky", failures: 3}
	r, err := NewRecorder(testUsageConfig(t.TempDir()), []Sink{good, flaky}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := range n {
		r.Record(&Record{RequestID: fmt.Sprintf("req-%05d", i)})
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*flakySink{good, flaky} {
		ids := s.ids()
		if len(ids) != n || !s.closed {
			t.Fatalf("%s: %d records, closed %v", s.name, len(ids), s.closed)
		}
		for i, id := range ids {
			if id != fmt.Sprintf("req-%05d", i) {
				t.Fatalf("%s: record %d is %s", s.name, i, id)
			}
		}
	}
	if st := r.Status(); st.Sinks[1].Errors != 3 || st.Sinks[1].LastError == "" {
		t.Fatalf("status %+v", st)
	}
}

// A sink that stays down keeps its records in the spool across a restart;
// Close says so.
func TestRecorderKeepsUndeliveredAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testUsageConfig(dir)
	cfg.DrainTimeout = 300 * time.Millisecond
	down := &flakySink{name: "db", failures: 1 << 30}
	r, err := NewRecorder(cfg, []Sink{down}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		r.Record(&Record{RequestID: fmt.Sprintf("r%d", i)})
	}
	if err := r.Close(context.Background()); err == nil {
		t.Fatal("Close reported success with a sink that never took anything")
	}
	up := &flakySink{name: "db"}
	r2, err := NewRecorder(cfg, []Sink{up}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := up.ids(); len(got) != 50 || got[0] != "r0" || got[49] != "r49" {
		t.Fatalf("after restart the sink got %d records: %v", len(got), got)
	}
}

// A full spool refuses (when so configured) and counts what it could not
// take; it never drops silently.
func TestRecorderFull(t *testing.T) {
	cfg := testUsageConfig(t.TempDir())
	cfg.Spool.MaxBytes = 128 << 10
	cfg.DrainTimeout = 100 * time.Millisecond
	down := &flakySink{name: "db", failures: 1 << 30}
	r, err := NewRecorder(cfg, []Sink{down}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	big := string(make([]byte, 2000))
	for i := 0; i < 200 && !r.Full(); i++ {
		r.Record(&Record{RequestID: fmt.Sprint(i), Reason: big})
		time.Sleep(time.Millisecond)
	}
	if !r.Full() || r.Unspooled() == 0 {
		t.Fatalf("full %v unspooled %d", r.Full(), r.Unspooled())
	}
	if err := r.Close(context.Background()); err == nil {
		t.Fatal("Close hid records that could not be spooled")
	}
}

func TestPricesCost(t *testing.T) {
	cached := 1.25
	p := NewPrices([]config.Model{
		{Name: "gpt-4o", Price: &config.Price{Input: 2.5, CachedInput: &cached, Output: 10, Currency: "USD"}},
		{Name: "free"},
	})
	got := p.Cost("gpt-4o", Tokens{Prompt: 1_000_000, CachedPrompt: 400_000, Completion: 100_000})
	want := 0.6*2.5 + 0.4*1.25 + 0.1*10
	if d := got.Amount - want; d > 1e-9 || d < -1e-9 || got.Currency != "USD" {
		t.Fatalf("cost %+v, want %g USD", got, want)
	}
	if c := p.Cost("free", Tokens{Prompt: 10}); c.Amount != 0 || c.Currency != "" {
		t.Fatalf("unpriced model cost %+v", c)
	}
}

func TestRedact(t *testing.T) {
	r, err := NewRedactor([]string{`\b\d{3}-\d{2}-\d{4}\b`})
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"my ssn is 123-45-6789":                       "my ssn is [REDACTED]",
		"use Authorization: Bearer abcdefghijklmnop1": "use Authorization: [REDACTED]",
		"key sk-abcdefghijklmnopqrstuvwx here":        "key [REDACTED] here",
		"Endpoint=sb://x/;SharedAccessKey=c2VjcmV0;":  "Endpoint=sb://x/;[REDACTED];",
		"azure key 0123456789abcdef0123456789abcdef.": "azure key [REDACTED].",
		"nothing to hide":                             "nothing to hide",
	} {
		if got := r.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if _, err := NewRedactor([]string{"("}); err == nil {
		t.Fatal("bad pattern accepted")
	}
}
