package sink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage"
)

// lineLen is the length of testRecord's JSON line (all have the same).
func lineLen(t *testing.T) int64 {
	r := testRecord(0)
	return int64(len(mustJSON(t, &r)) + 1)
}

func newFileSink(t *testing.T, path string, maxBytes int64, maxFiles int) *File {
	t.Helper()
	s, err := NewFile(config.Sink{Name: "file", Type: config.SinkFile, Path: path, MaxBytes: maxBytes, MaxFiles: maxFiles})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// keptFiles lists PATH.maxFiles ... PATH.1, PATH (oldest first) that exist.
func keptFiles(t *testing.T, path string, upTo int) []string {
	t.Helper()
	var out []string
	for i := upTo; i >= 0; i-- {
		p := path
		if i > 0 {
			p = fmt.Sprintf("%s.%d", path, i)
		}
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func TestFileWritesJSONLinesPrivately(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nested", "usage", "usage.jsonl")
	s := newFileSink(t, path, 1<<20, 3)
	batch := testRecords(0, 3)
	batch[2].Capture = &usage.Capture{Mode: usage.CaptureFull, Prompt: "secret plans", PromptBytes: 12}
	if err := s.Write(context.Background(), batch[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), batch[2:]); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range batch {
		want = append(append(want, mustJSON(t, &batch[i])...), '\n')
	}
	if string(data) != string(want) {
		t.Errorf("file content:\n%s\nwant:\n%s", data, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("file mode %o, want 600", m)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if m := di.Mode().Perm(); m != 0o700 {
		t.Errorf("directory mode %o, want 700", m)
	}
}

func TestFileAppendsToExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.jsonl")
	first := newFileSink(t, path, 1<<20, 3)
	if err := first.Write(context.Background(), testRecords(0, 2)); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := newFileSink(t, path, 1<<20, 3)
	if err := second.Write(context.Background(), testRecords(2, 2)); err != nil {
		t.Fatal(err)
	}
	got := readLines(t, path)
	if len(got) != 4 || got[0].RequestID != "req-000000" || got[3].RequestID != "req-000003" {
		t.Errorf("got %d records %v", len(got), got)
	}
}

func TestFileRotationKeepsEveryRecordOnce(t *testing.T) {
	l := lineLen(t)
	for _, tc := range []struct {
		name     string
		batches  []int // batch sizes, written in order
		maxBytes int64
	}{
		{"one record per batch", []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 3*l + l/2},
		{"batches cross files", []int{5, 7, 1, 9, 2}, 3*l + l/2},
		{"exact fit", []int{4, 4, 4}, 2 * l},
		{"record larger than max_bytes", []int{3, 2}, l / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "usage.jsonl")
			const maxFiles = 100 // enough to keep everything
			s := newFileSink(t, path, tc.maxBytes, maxFiles)
			n := 0
			for _, size := range tc.batches {
				if err := s.Write(context.Background(), testRecords(n, size)); err != nil {
					t.Fatal(err)
				}
				n += size
			}
			var got []usage.Record
			files := keptFiles(t, path, maxFiles)
			for _, f := range files {
				fi, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				recs := readLines(t, f)
				if fi.Size() > tc.maxBytes && len(recs) > 1 {
					t.Errorf("%s: %d bytes in %d records, over max_bytes %d", f, fi.Size(), len(recs), tc.maxBytes)
				}
				if m := fi.Mode().Perm(); m != 0o600 {
					t.Errorf("%s: mode %o, want 600", f, m)
				}
				got = append(got, recs...)
			}
			if len(got) != n {
				t.Fatalf("%d records in %d files, want %d", len(got), len(files), n)
			}
			for i, r := range got {
				if want := fmt.Sprintf("req-%06d", i); r.RequestID != want {
					t.Fatalf("record %d is %s, want %s (lost, duplicated or out of order)", i, r.RequestID, want)
				}
			}
			perFile := max(tc.maxBytes/l, 1)
			if want := int((int64(n) + perFile - 1) / perFile); len(files) != want {
				t.Errorf("%d files, want %d (%d records, %d per file)", len(files), want, n, perFile)
			}
		})
	}
}

func TestFileRotationRespectsMaxFiles(t *testing.T) {
	l := lineLen(t)
	path := filepath.Join(t.TempDir(), "usage.jsonl")
	// A leftover from a larger max_files is removed at the next rotation.
	if err := os.WriteFile(path+".7", []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const maxFiles = 2
	s := newFileSink(t, path, 2*l, maxFiles) // two records per file
	for i := range 20 {
		if err := s.Write(context.Background(), testRecords(i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	files := keptFiles(t, path, 10)
	want := []string{path + ".2", path + ".1", path}
	if strings.Join(files, ",") != strings.Join(want, ",") {
		t.Fatalf("files %v, want %v", files, want)
	}
	// The newest 6 records survive, in order, each once.
	var got []string
	for _, f := range files {
		for _, r := range readLines(t, f) {
			got = append(got, r.RequestID)
		}
	}
	if strings.Join(got, ",") != "req-000014,req-000015,req-000016,req-000017,req-000018,req-000019" {
		t.Errorf("kept records %v", got)
	}
}

func TestFileOversizedExistingFileRotatesFirst(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.jsonl")
	old := strings.Repeat(`{"request_id":"old"}`+"\n", 100)
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newFileSink(t, path, 1000, 3)
	if err := s.Write(context.Background(), testRecords(0, 1)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path + ".1"); string(b) != old {
		t.Errorf("old content not rotated to .1 intact")
	}
	if got := readLines(t, path); len(got) != 1 || got[0].RequestID != "req-000000" {
		t.Errorf("live file holds %v", got)
	}
}

func TestFileTornLastLine(t *testing.T) {
	// A crash in the middle of a line: the retried record must start a new
	// line rather than be glued to the torn one.
	path := filepath.Join(t.TempDir(), "usage.jsonl")
	r0 := testRecord(0)
	torn := append(append(mustJSON(t, &r0), '\n'), []byte(`{"schema":1,"request_id":"req-0000`)...)
	if err := os.WriteFile(path, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	s := newFileSink(t, path, 1<<20, 3)
	if err := s.Write(context.Background(), testRecords(1, 1)); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	r1 := testRecord(1)
	if len(lines) != 3 || lines[2] != string(mustJSON(t, &r1)) {
		t.Errorf("lines after a torn line: %q", lines)
	}
}

func TestFileErrors(t *testing.T) {
	t.Run("config", func(t *testing.T) {
		for _, cfg := range []config.Sink{
			{Name: "f", Path: "", MaxBytes: 1, MaxFiles: 1},
			{Name: "f", Path: filepath.Join(t.TempDir(), "u"), MaxBytes: 0, MaxFiles: 1},
			{Name: "f", Path: filepath.Join(t.TempDir(), "u"), MaxBytes: 1, MaxFiles: 0},
		} {
			if _, err := NewFile(cfg); err == nil {
				t.Errorf("NewFile(%+v) succeeded", cfg)
			}
		}
	})
	t.Run("directory in the way", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFile(config.Sink{Name: "f", Path: filepath.Join(dir, "file", "u.jsonl"), MaxBytes: 1, MaxFiles: 1}); err == nil {
			t.Error("NewFile under a regular file succeeded")
		}
	})
	t.Run("write after close", func(t *testing.T) {
		s := newFileSink(t, filepath.Join(t.TempDir(), "u.jsonl"), 1<<20, 1)
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Write(context.Background(), testRecords(0, 1)); !errors.Is(err, errClosed) {
			t.Errorf("Write after Close: %v", err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	t.Run("canceled context", func(t *testing.T) {
		s := newFileSink(t, filepath.Join(t.TempDir(), "u.jsonl"), 1<<20, 1)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Write(ctx, testRecords(0, 1)); !errors.Is(err, context.Canceled) {
			t.Errorf("Write: %v", err)
		}
	})
	t.Run("reopens after a failure", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "u.jsonl")
		s := newFileSink(t, path, 1<<20, 1)
		// Simulate a failed Write: the descriptor is gone.
		s.mu.Lock()
		_ = s.f.Close()
		s.f = nil
		s.mu.Unlock()
		if err := s.Write(context.Background(), testRecords(0, 2)); err != nil {
			t.Fatal(err)
		}
		if got := readLines(t, path); len(got) != 2 {
			t.Errorf("%d records after reopening", len(got))
		}
	})
}
