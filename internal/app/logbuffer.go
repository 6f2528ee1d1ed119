package app

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Log lines wait in a logBuffer for at most logFlushDelay, or until
// logBufferSize bytes are waiting.
const (
	logFlushDelay = 100 * time.Millisecond
	logBufferSize = 32 << 10
)

// logBuffer batches log lines on their way to w. The access log writes a
// line per request, and a write syscall per line was a measurable share of
// a busy gateway's CPU; batched, a line waits at most logFlushDelay.
// Warnings and errors are written at once (with what came before them):
// see bufferedLogger. Safe for concurrent use.
type logBuffer struct {
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	timer *time.Timer // the pending flush; nil while buf is empty
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) >= logBufferSize {
		return len(p), b.flushLocked()
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(logFlushDelay, func() { _ = b.Flush() })
	}
	return len(p), nil
}

// Flush writes what is waiting.
func (b *logBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *logBuffer) flushLocked() error {
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > 4*logBufferSize {
		b.buf = nil // one huge line does not pin its buffer
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// bufferedLogger returns a logger that writes through a logBuffer made by
// handler(buffer), flushing at once on warnings and errors, and the
// function that flushes it (call it before the process exits).
func bufferedLogger(w io.Writer, handler func(io.Writer) slog.Handler) (*slog.Logger, func()) {
	b := &logBuffer{w: w}
	return slog.New(flushingHandler{Handler: handler(b), buf: b}), func() { _ = b.Flush() }
}

// flushingHandler flushes its buffer after each record at warning level or
// above, so problems reach the log without delay.
type flushingHandler struct {
	slog.Handler
	buf *logBuffer
}

func (h flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		_ = h.buf.Flush()
	}
	return err
}

func (h flushingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushingHandler{Handler: h.Handler.WithAttrs(attrs), buf: h.buf}
}

func (h flushingHandler) WithGroup(name string) slog.Handler {
	return flushingHandler{Handler: h.Handler.WithGroup(name), buf: h.buf}
}
