package openai

import (
	"bufio"
	"bytes"
	"io"
)

// maxEvent bounds how much of one event is held before it is passed on
// anyway, so a backend that never ends an event cannot grow memory.
const maxEvent = 1 << 20

// EventReader frames a text/event-stream body into whole events (an event
// ends with a blank line): each Read returns one event, followed by the
// further whole events that have already arrived and fit. A proxy that
// flushes after every write thus flushes each event as soon as it arrives,
// a burst of events that arrived together with one write, and never splits
// an event across flushes unless it is larger than the read buffer. The
// bytes are exactly those of the source. An EventReader is not safe for
// concurrent use.
type EventReader struct {
	src    io.ReadCloser
	br     *bufio.Reader
	filter func([]byte) []byte
	event  []byte
	off    int
	err    error
}

// streamLost is sent in place of the rest of a stream whose backend
// connection failed mid-way: a well-formed event the OpenAI SDKs raise as an
// error, so the client sees the stream end with an error instead of a hang
// or a truncated event.
const streamLost = `data: {"error":{"code":"upstream_stream_lost","message":"the backend connection was lost mid-stream; the response is incomplete (it was not retried because part of it had been sent)"}}` + "\n\n"

// NewEventReader frames src. Closing the EventReader closes src. When
// filter is not nil, each whole event passes through it: it returns the
// bytes to pass on (the event itself, a rewritten event, or nothing to drop
// it); it may not retain its argument.
func NewEventReader(src io.ReadCloser, filter func(event []byte) []byte) *EventReader {
	// A small buffer: a stream holds it for as long as it runs; longer
	// lines are read in pieces.
	return &EventReader{src: src, br: bufio.NewReaderSize(src, 2<<10), filter: filter}
}

// Read implements io.Reader.
func (e *EventReader) Read(p []byte) (int, error) {
	if e.off < len(e.event) {
		n := copy(p, e.event[e.off:])
		e.off += n
		return n, nil
	}
	if e.err != nil {
		return 0, e.err
	}
	ev, err := e.Next()
	if len(ev) == 0 {
		return 0, err
	}
	n := copy(p, ev)
	e.off = n
	// Events that arrived with this one go out in the same write.
	for e.off == len(e.event) && e.err == nil && e.arrived(len(p)-n) {
		ev, _ := e.next() // buffered: does not wait for the source
		ev = e.pass(ev)
		m := copy(p[n:], ev)
		e.off = m
		n += m
	}
	return n, nil
}

// arrived reports whether a whole event of at most room bytes is already
// buffered, so Next returns it without waiting for the source.
func (e *EventReader) arrived(room int) bool {
	buffered, _ := e.br.Peek(e.br.Buffered())
	end := bytes.Index(buffered, eventEnd)
	if crlf := bytes.Index(buffered, eventEndCRLF); crlf >= 0 && (end < 0 || crlf < end) {
		end = crlf + 1
	}
	return end >= 0 && end+len(eventEnd) <= room
}

var (
	eventEnd     = []byte("\n\n")
	eventEndCRLF = []byte("\n\r\n")
)

// Next returns the next whole event, including its terminating blank line,
// valid until the next call. At the end of the stream it returns whatever
// trailing bytes remain with io.EOF. When the source fails mid-stream, the
// unterminated event is replaced by an error event, then io.EOF.
func (e *EventReader) Next() ([]byte, error) {
	for {
		ev, err := e.next()
		if ev = e.pass(ev); len(ev) > 0 || err != nil {
			return ev, err
		}
	}
}

// pass runs one framed event through the filter and keeps what passes in
// e.event; it returns nothing for a dropped event.
func (e *EventReader) pass(ev []byte) []byte {
	if e.filter == nil || len(ev) == 0 {
		return ev
	}
	e.event = append(e.event[:0], e.filter(ev)...)
	return e.event
}

func (e *EventReader) next() ([]byte, error) {
	e.event, e.off = e.event[:0], 0
	for len(e.event) < maxEvent {
		line, err := e.br.ReadSlice('\n')
		e.event = append(e.event, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			e.err = err
			break
		}
		if err != nil {
			// Drop the unterminated event and end with an error event.
			e.event = append(e.event[:0], streamLost...)
			e.err = io.EOF
			break
		}
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			break
		}
	}
	// Leave e.off at 0: Read copies out of e.event after Next returns.
	return e.event, e.err
}

// Close closes the source.
func (e *EventReader) Close() error { return e.src.Close() }
