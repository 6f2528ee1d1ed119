package app

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/testenv"
)

func TestBufferedLogger(t *testing.T) {
	out := &testenv.Buffer{}
	log, flush := bufferedLogger(out, func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) })

	log.Info("request", slog.Int("n", 1))
	if s := out.String(); s != "" {
		t.Fatalf("an info line was written at once: %q", s)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "n=1") {
		if time.Now().After(deadline) {
			t.Fatal("an info line was never flushed")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A warning goes out at once, after the lines before it.
	log.Info("request", slog.Int("n", 2))
	log.With(slog.String("component", "x")).Warn("trouble")
	s := out.String()
	if i, j := strings.Index(s, "n=2"), strings.Index(s, "trouble"); i < 0 || j < i {
		t.Fatalf("the warning and the line before it were not written in order at once: %q", s)
	}

	// A full buffer is written without waiting.
	line := strings.Repeat("x", 1024)
	for range logBufferSize/1024 + 1 {
		log.Info(line)
	}
	if n := strings.Count(out.String(), line); n == 0 {
		t.Fatal("a full buffer waited for the timer")
	}
	log.Info("last")
	flush()
	if !strings.Contains(out.String(), "msg=last") {
		t.Fatal("flush did not write the last line")
	}
}

// BenchmarkAccessLogLine is the cost of one access log line through the
// gateway's buffered logger (compare with the write syscall per line it
// replaced: BenchmarkAccessLogLine/unbuffered).
func BenchmarkAccessLogLine(b *testing.B) {
	attrs := []slog.Attr{slog.String("request_id", newRequestID()), slog.String("method", "POST"),
		slog.String("path", "/openai/deployments/gpt-4o/chat/completions"), slog.Int("status", 200),
		slog.Duration("duration", 3*time.Millisecond), slog.Int64("bytes", 812), slog.String("app", "chat-app")}
	devnull, err := openDevNull()
	if err != nil {
		b.Skip(err)
	}
	defer devnull.Close()
	opts := &slog.HandlerOptions{}
	b.Run("buffered", func(b *testing.B) {
		log, flush := bufferedLogger(devnull, func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, opts) })
		defer flush()
		b.ReportAllocs()
		for b.Loop() {
			log.LogAttrs(b.Context(), slog.LevelInfo, "request", attrs...)
		}
	})
	b.Run("unbuffered", func(b *testing.B) {
		log := slog.New(slog.NewTextHandler(devnull, opts))
		b.ReportAllocs()
		for b.Loop() {
			log.LogAttrs(b.Context(), slog.LevelInfo, "request", attrs...)
		}
	})
}

func openDevNull() (*os.File, error) { return os.OpenFile(os.DevNull, os.O_WRONLY, 0) }
