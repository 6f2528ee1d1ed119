package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/tokengate/tokengate/internal/usage"
)

var _ usage.Sink = (*Stdout)(nil)

// Stdout writes records as JSON lines (one record per line) to a writer,
// normally os.Stdout for a log collector to pick up. Each batch is one Write
// call on the writer, so batches from concurrent callers never interleave
// within a line. Stdout cannot tell whether the bytes it wrote are durable:
// a nil error means the writer accepted them.
type Stdout struct {
	name string
	mu   sync.Mutex // serializes Write; guards w and buf
	w    io.Writer
	buf  bytes.Buffer
	enc  *json.Encoder // writes to buf
}

// NewStdout returns a sink named name that writes to w.
func NewStdout(name string, w io.Writer) *Stdout {
	s := &Stdout{name: name, w: w}
	s.enc = json.NewEncoder(&s.buf)
	return s
}

// Name returns the sink's name.
func (s *Stdout) Name() string { return s.name }

// Write encodes the batch and writes it in one call.
func (s *Stdout) Write(ctx context.Context, batch []usage.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Reset()
	for i := range batch {
		if err := appendLine(s.enc, &batch[i]); err != nil {
			return fmt.Errorf("stdout sink %q: %w", s.name, err)
		}
	}
	if s.buf.Len() == 0 {
		return nil
	}
	if _, err := s.w.Write(s.buf.Bytes()); err != nil {
		return fmt.Errorf("stdout sink %q: %w", s.name, err)
	}
	return nil
}

// Close does nothing: the writer belongs to the caller.
func (s *Stdout) Close(context.Context) error { return nil }
