package openai

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestEventReaderFramesWholeEvents(t *testing.T) {
	stream := "data: {\"a\":1}\n\n: comment\n\ndata: {\"b\":\n2}\r\n\r\nevent: x\ndata: y\n\ndata: [DONE]\n\n"
	want := []string{"data: {\"a\":1}\n\n", ": comment\n\n", "data: {\"b\":\n2}\r\n\r\n", "event: x\ndata: y\n\n", "data: [DONE]\n\n"}
	// One byte at a time from the source must still give whole events.
	r := NewEventReader(io.NopCloser(iotest.OneByteReader(strings.NewReader(stream))), nil)
	var got []string
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			got = append(got, string(buf[:n]))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("events:\n%q\nwant\n%q", got, want)
	}
}

func TestEventReaderSmallBufferAndTail(t *testing.T) {
	stream := "data: 0123456789\n\ndata: unterminated"
	r := NewEventReader(io.NopCloser(strings.NewReader(stream)), nil)
	got, err := io.ReadAll(iotest.OneByteReader(r))
	if err != nil || string(got) != stream {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestEventReaderEndsLostStreamsWithAnErrorEvent(t *testing.T) {
	boom := errors.New("connection reset by peer")
	src := io.MultiReader(strings.NewReader("data: 1\n\ndata: {\"trunc"), iotest.ErrReader(boom))
	r := NewEventReader(io.NopCloser(src), nil)
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "data: 1\n\n"+streamLost {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestEventReaderBoundsOneEvent(t *testing.T) {
	huge := strings.Repeat("x", 3*maxEvent)
	r := NewEventReader(io.NopCloser(strings.NewReader(huge)), nil)
	ev, err := r.Next()
	if err != nil || len(ev) < maxEvent || len(ev) > maxEvent+(8<<10) {
		t.Fatalf("first piece is %d bytes (%v), want about %d", len(ev), err, maxEvent)
	}
}

// FuzzEventReader checks the framing never loses, adds or reorders a byte.
func FuzzEventReader(f *testing.F) {
	f.Add([]byte("data: {\"x\":1}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("\r\n\r\n\n\n"))
	f.Add([]byte("data: a\r\ndata: b\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewEventReader(io.NopCloser(bytes.NewReader(data)), nil)
		var out []byte
		for {
			ev, err := r.Next()
			out = append(out, ev...)
			if err != nil {
				break
			}
			if i := bytes.Index(ev, []byte("\n\n")); i >= 0 && i+2 != len(ev) {
				t.Fatalf("event holds more than one event: %q", ev)
			}
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("framing changed the bytes: %q -> %q", data, out)
		}
	})
}

// TestEventReaderPassesArrivedEventsTogether: events that arrived together
// leave in one Read (one flush), only whole ones, and a dropped event
// never makes Read wait for more of the source.
func TestEventReaderPassesArrivedEventsTogether(t *testing.T) {
	events := []string{"data: 1\n\n", "data: 22\r\n\r\n", ": c\n\n", "data: 4444\n\n"}
	all := strings.Join(events, "")
	read := func(r *EventReader, size int) []string {
		var got []string
		buf := make([]byte, size)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				got = append(got, string(buf[:n]))
			}
			if err != nil {
				return got
			}
		}
	}
	if got := read(NewEventReader(io.NopCloser(strings.NewReader(all)), nil), 4096); len(got) != 1 || got[0] != all {
		t.Fatalf("one burst read as %q, want it whole in one Read", got)
	}
	// Room for two events at a time: whole events only.
	want := []string{events[0] + events[1], events[2] + events[3]}
	if got := read(NewEventReader(io.NopCloser(strings.NewReader(all)), nil), 25); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("reads %q, want %q", got, want)
	}

	pr, pw := io.Pipe()
	drop := func(ev []byte) []byte {
		if bytes.Contains(ev, []byte("drop")) {
			return nil
		}
		return ev
	}
	r := NewEventReader(pr, drop)
	go func() { _, _ = pw.Write([]byte("data: 1\n\ndata: drop\n\n")) }() // and no more for now
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		n, _ := r.Read(buf)
		got <- string(buf[:n])
	}()
	select {
	case s := <-got:
		if s != "data: 1\n\n" {
			t.Fatalf("Read = %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read waited for the source after a dropped event")
	}
	pw.Close()
}

func BenchmarkEventReader(b *testing.B) {
	chunk := `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":" hello"},"finish_reason":null}]}` + "\n\n"
	stream := []byte(strings.Repeat(chunk, 100))
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		r := NewEventReader(io.NopCloser(bytes.NewReader(stream)), nil)
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
	}
}
