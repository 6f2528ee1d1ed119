package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage"
)

var _ usage.Sink = (*File)(nil)

// errClosed is returned by Write after Close.
var errClosed = errors.New("sink is closed")

// File appends records as JSON lines to a file and rotates it by size.
//
// Durability: Write fsyncs the file before it returns nil, and fsyncs the
// directory after creating or renaming a file, so an acknowledged batch
// survives a crash or power loss. A Write that fails truncates what it
// appended to the live file and closes it; the next Write reopens it. If the
// process died in the middle of a line, the next Write starts on a new line,
// so a torn line never swallows a good one.
//
// Rotation: before a record would take the live file past MaxBytes, the file
// is fsynced and renamed PATH.1, the older PATH.1 becomes PATH.2 and so on;
// PATH.MaxFiles is the oldest kept and what would become PATH.MaxFiles+1 is
// deleted. A file holds at least one record, so a record larger than
// MaxBytes gets a file to itself. Rotation renames and never copies, so no
// record is lost or duplicated by it; a record can appear twice only when a
// failed Write is retried (at least once, like every sink).
//
// Files are created with mode 0600 and directories with 0700: records may
// hold captured prompts. Only one File may write a given path. Write and
// Close are serialized; the recorder calls them from one goroutine.
type File struct {
	name     string
	path     string
	maxBytes int64
	maxFiles int

	mu     sync.Mutex // serializes Write and Close; guards the fields below
	f      *os.File   // the live file; nil after a failure or Close
	size   int64      // bytes in the live file
	buf    bytes.Buffer
	enc    *json.Encoder // writes to buf
	closed bool
}

// NewFile opens (creating it and its directory if needed) the file sink cfg
// describes: cfg.Path, rotated at cfg.MaxBytes, keeping cfg.MaxFiles rotated
// files. Both limits must be positive (config fills their defaults).
func NewFile(cfg config.Sink) (*File, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("file sink %q: path is required", cfg.Name)
	}
	if cfg.MaxBytes <= 0 || cfg.MaxFiles <= 0 {
		return nil, fmt.Errorf("file sink %q: max_bytes and max_files must be positive", cfg.Name)
	}
	s := &File{
		name:     cfg.Name,
		path:     filepath.Clean(cfg.Path),
		maxBytes: cfg.MaxBytes,
		maxFiles: cfg.MaxFiles,
	}
	s.enc = json.NewEncoder(&s.buf)
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return nil, fmt.Errorf("file sink %q: %w", s.name, err)
	}
	if err := s.open(); err != nil {
		return nil, fmt.Errorf("file sink %q: %w", s.name, err)
	}
	return s, nil
}

// Name returns the sink's name.
func (s *File) Name() string { return s.name }

// Write appends the batch, rotating as needed, and fsyncs. ctx is checked
// once: file writes cannot be interrupted.
func (s *File) Write(ctx context.Context, batch []usage.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("file sink %q: %w", s.name, errClosed)
	}
	if s.f == nil {
		if err := s.open(); err != nil {
			return fmt.Errorf("file sink %q: %w", s.name, err)
		}
	}
	if err := s.write(batch); err != nil {
		return fmt.Errorf("file sink %q: %w", s.name, err)
	}
	return nil
}

// write does Write's work with s.mu held and s.f open. On error it undoes
// what it appended to the live file and closes it.
func (s *File) write(batch []usage.Record) (err error) {
	start := s.size // where this batch begins in the live file
	defer func() {
		if err != nil && s.f != nil {
			// Best effort: without the partial batch the retry leaves no
			// torn line behind; if truncating fails too, open() starts the
			// retry on a new line. Closing also drops a descriptor whose
			// failed fsync may have discarded dirty pages.
			_ = s.f.Truncate(start)
			_ = s.f.Close()
			s.f = nil
		}
	}()
	s.buf.Reset()
	for i := range batch {
		pending := s.buf.Len()
		if err := appendLine(s.enc, &batch[i]); err != nil {
			return err
		}
		if s.size+int64(s.buf.Len()) <= s.maxBytes || s.size+int64(pending) == 0 {
			continue
		}
		// This record would take the file past maxBytes: finish the file
		// with what came before it, then start the next one with it.
		if err := s.append(s.buf.Next(pending)); err != nil {
			return err
		}
		if err := s.rotate(); err != nil {
			return err
		}
		start = 0
	}
	return s.append(s.buf.Bytes())
}

// append writes p to the live file and fsyncs it.
func (s *File) append(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := s.f.Write(p)
	s.size += int64(n)
	if err != nil {
		return err
	}
	return s.f.Sync()
}

// rotate closes the live file (already fsynced), shifts PATH.i to PATH.i+1,
// renames PATH to PATH.1 and opens a new PATH. Renaming onto PATH.maxFiles
// replaces the oldest file, so no moment exists where a kept file is gone.
func (s *File) rotate() error {
	err := s.f.Close()
	s.f = nil
	if err != nil {
		return err
	}
	s.removeExtra()
	for i := s.maxFiles; i >= 1; i-- {
		if err := os.Rename(s.rotated(i-1), s.rotated(i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return s.open()
}

// removeExtra deletes rotated files numbered past maxFiles, left over from
// a larger max_files. Best effort: they only take space.
func (s *File) removeExtra() {
	entries, err := os.ReadDir(filepath.Dir(s.path))
	if err != nil {
		return
	}
	prefix := filepath.Base(s.path) + "."
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(rest); err == nil && n > s.maxFiles && strconv.Itoa(n) == rest {
			_ = os.Remove(filepath.Join(filepath.Dir(s.path), e.Name()))
		}
	}
}

// rotated returns the name of the i-th rotated file; 0 is the live file.
func (s *File) rotated(i int) string {
	if i == 0 {
		return s.path
	}
	return s.path + "." + strconv.Itoa(i)
}

// open opens or creates the live file and makes its directory entry durable.
// If the file does not end in a newline (a crash tore the last line), it
// adds one so the next record starts a line of its own.
func (s *File) open() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil {
		s.f, s.size = f, fi.Size()
		err = s.endLine()
	}
	if err == nil {
		err = syncDir(filepath.Dir(s.path))
	}
	if err != nil {
		_ = f.Close()
		s.f = nil
		return err
	}
	return nil
}

// endLine appends a newline to the live file unless it is empty or ends
// with one.
func (s *File) endLine() error {
	if s.size == 0 {
		return nil
	}
	last := make([]byte, 1)
	if _, err := s.f.ReadAt(last, s.size-1); err != nil {
		return err
	}
	if last[0] == '\n' {
		return nil
	}
	return s.append([]byte{'\n'})
}

// Close fsyncs and closes the live file. Later Writes fail.
func (s *File) Close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.f == nil {
		return nil
	}
	f := s.f
	s.f = nil
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("file sink %q: %w", s.name, err)
	}
	return nil
}

// syncDir fsyncs a directory so that the creation or renaming of a file in
// it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
