package sink

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/tokengate/tokengate/internal/usage"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// countingWriter records each Write call.
type countingWriter struct {
	calls int
	buf   bytes.Buffer
	err   error
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.calls++
	if w.err != nil {
		return 0, w.err
	}
	return w.buf.Write(p)
}

func TestStdoutGolden(t *testing.T) {
	batch := testRecords(1, 2)
	// Text that JSON escapes, and a capture, so the golden pins both.
	batch[1].Capture = &usage.Capture{
		Mode:            usage.CaptureFull,
		Prompt:          "Say \"hi\" <b>&</b>\nthen stop",
		Completion:      "hi ✓",
		PromptBytes:     30,
		CompletionBytes: 6,
		Messages:        2,
	}
	batch[1].Status = 429
	batch[1].ErrorClass = usage.ErrorThrottled
	batch[1].ErrorCode = "429"

	w := &countingWriter{}
	s := NewStdout("console", w)
	if s.Name() != "console" {
		t.Errorf("Name() = %q", s.Name())
	}
	if err := s.Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if w.calls != 1 {
		t.Errorf("batch written in %d Write calls, want 1", w.calls)
	}
	golden := filepath.Join("testdata", "stdout.golden")
	if *update {
		if err := os.WriteFile(golden, w.buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.buf.Bytes(), want) {
		t.Errorf("stdout bytes differ from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", golden, w.buf.Bytes(), want)
	}
	// Each line is json.Marshal of the record: the same bytes as Kafka's value.
	lines := bytes.Split(bytes.TrimSuffix(w.buf.Bytes(), []byte("\n")), []byte("\n"))
	if len(lines) != len(batch) {
		t.Fatalf("%d lines, want %d", len(lines), len(batch))
	}
	for i := range batch {
		if !bytes.Equal(lines[i], mustJSON(t, &batch[i])) {
			t.Errorf("line %d is not json.Marshal of the record", i)
		}
	}
}

func TestStdoutEmptyBatchWritesNothing(t *testing.T) {
	w := &countingWriter{}
	if err := NewStdout("s", w).Write(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if w.calls != 0 {
		t.Errorf("%d Write calls for an empty batch", w.calls)
	}
}

func TestStdoutErrors(t *testing.T) {
	boom := errors.New("pipe closed")
	s := NewStdout("s", &countingWriter{err: boom})
	if err := s.Write(context.Background(), testRecords(0, 1)); !errors.Is(err, boom) {
		t.Errorf("writer error: got %v, want %v", err, boom)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := NewStdout("s", &countingWriter{}).Write(ctx, testRecords(0, 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled context: got %v", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
}
