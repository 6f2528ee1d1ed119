package openai

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/tidwall/gjson"
)

// The fixtures in testdata/streams come in pairs, following Azure OpenAI's
// stream format: NAME.sse is what the backend sends without
// stream_options.include_usage, NAME.usage.sse what it sends with it
// ("usage":null on every chunk but the prompt filter results, and a final
// usage-only chunk).
func TestMeterGoldenStreams(t *testing.T) {
	names, err := filepath.Glob("testdata/streams/*.usage.sse")
	if err != nil || len(names) < 4 {
		t.Fatalf("fixtures: %v %v", names, err)
	}
	for _, withUsage := range names {
		name := strings.TrimSuffix(filepath.Base(withUsage), ".usage.sse")
		plain, err := os.ReadFile(strings.TrimSuffix(withUsage, ".usage.sse") + ".sse")
		if err != nil {
			t.Fatal(err)
		}
		full, err := os.ReadFile(withUsage)
		if err != nil {
			t.Fatal(err)
		}
		want := lastUsage(t, full)
		t.Run(name+"/injected", func(t *testing.T) {
			// The gateway asked for usage; the client did not: it must get
			// exactly the stream it would have got, and the record the
			// backend's usage.
			m := &Meter{StripUsage: true}
			got := readAll(t, m.Wrap(io.NopCloser(iotest.HalfReader(bytes.NewReader(full))), "text/event-stream"))
			if !bytes.Equal(got, plain) {
				t.Fatalf("client bytes differ from the stream without usage:\n got: %q\nwant: %q", got, plain)
			}
			if !m.HasUsage || m.Usage != want {
				t.Fatalf("usage = %+v (has %v), want %+v", m.Usage, m.HasUsage, want)
			}
			if !m.Complete || m.StreamError || m.FirstContent.IsZero() || len(m.Text()) == 0 {
				t.Fatalf("meter state: complete=%v error=%v first=%v text=%q", m.Complete, m.StreamError, m.FirstContent, m.Text())
			}
		})
		t.Run(name+"/client-asked", func(t *testing.T) {
			m := &Meter{}
			got := readAll(t, m.Wrap(io.NopCloser(bytes.NewReader(full)), "text/event-stream; charset=utf-8"))
			if !bytes.Equal(got, full) {
				t.Fatalf("client bytes changed:\n got: %q\nwant: %q", got, full)
			}
			if !m.HasUsage || m.Usage != want {
				t.Fatalf("usage = %+v, want %+v", m.Usage, want)
			}
		})
		t.Run(name+"/no-usage", func(t *testing.T) {
			m := &Meter{}
			got := readAll(t, m.Wrap(io.NopCloser(bytes.NewReader(plain)), "text/event-stream"))
			if !bytes.Equal(got, plain) {
				t.Fatal("client bytes changed")
			}
			if m.HasUsage {
				t.Fatal("usage found in a stream without any")
			}
			if len(m.Text()) == 0 {
				t.Fatal("no completion text collected for estimation")
			}
		})
	}
}

func lastUsage(t *testing.T, stream []byte) Usage {
	t.Helper()
	var u Usage
	for _, line := range bytes.Split(stream, []byte("\n")) {
		if r := gjson.GetBytes(bytes.TrimPrefix(line, []byte("data: ")), "usage"); r.IsObject() {
			u, _ = ParseUsage(r)
		}
	}
	if u.Total == 0 {
		t.Fatal("fixture has no usage")
	}
	return u
}

func readAll(t *testing.T, r io.ReadCloser) []byte {
	t.Helper()
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMeterToolCallText(t *testing.T) {
	full, err := os.ReadFile("testdata/streams/tool-calls.usage.sse")
	if err != nil {
		t.Fatal(err)
	}
	m := &Meter{StripUsage: true}
	readAll(t, m.Wrap(io.NopCloser(bytes.NewReader(full)), "text/event-stream"))
	if got, want := string(m.Text()), `get_weather{"location":"Paris, FR"}`; got != want {
		t.Fatalf("text = %q, want %q", got, want)
	}
}

func TestMeterStreamLost(t *testing.T) {
	full, _ := os.ReadFile("testdata/streams/chat.usage.sse")
	cut := full[:len(full)/2]
	m := &Meter{StripUsage: true}
	src := io.NopCloser(io.MultiReader(bytes.NewReader(cut), iotest.ErrReader(io.ErrUnexpectedEOF)))
	got := readAll(t, m.Wrap(src, "text/event-stream"))
	if !m.StreamError || m.HasUsage {
		t.Fatalf("stream error %v, usage %v", m.StreamError, m.HasUsage)
	}
	if !bytes.HasSuffix(got, []byte(streamLost)) || bytes.Contains(got, []byte(`"usage":null`)) {
		t.Fatalf("client got %q", got)
	}
}

func TestMeterUsageOnContentChunk(t *testing.T) {
	// Some backends put usage on the last content chunk instead of an
	// empty-choices one: the chunk stays, only its usage member goes.
	ev := `data: {"choices":[{"delta":{"content":"hi"},"index":0}],"id":"x","usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}` + "\n\n"
	m := &Meter{StripUsage: true}
	got := readAll(t, m.Wrap(io.NopCloser(strings.NewReader(ev+"data: [DONE]\n\n")), "text/event-stream"))
	want := `data: {"choices":[{"delta":{"content":"hi"},"index":0}],"id":"x"}` + "\n\ndata: [DONE]\n\n"
	if string(got) != want {
		t.Fatalf("got %q", got)
	}
	if m.Usage != (Usage{Prompt: 3, Completion: 1, Total: 4}) {
		t.Fatalf("usage %+v", m.Usage)
	}
}

func TestMeterJSON(t *testing.T) {
	body := `{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"Hello there","role":"assistant"}}],"id":"chatcmpl-1","model":"gpt-4o","object":"chat.completion","usage":{"completion_tokens":2,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4},"total_tokens":12}}`
	m := &Meter{}
	got := readAll(t, m.Wrap(io.NopCloser(iotest.OneByteReader(strings.NewReader(body))), "application/json"))
	if string(got) != body {
		t.Fatal("body changed")
	}
	if m.Usage != (Usage{Prompt: 10, Completion: 2, Total: 12, CachedPrompt: 4}) || string(m.Text()) != "Hello there" {
		t.Fatalf("usage %+v text %q", m.Usage, m.Text())
	}

	// Responses API names.
	m = &Meter{}
	readAll(t, m.Wrap(io.NopCloser(strings.NewReader(`{"output":[{"content":[{"text":"ok","type":"output_text"}]}],"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":1},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":12}}`)), "application/json"))
	if m.Usage != (Usage{Prompt: 5, Completion: 7, Total: 12, CachedPrompt: 1, Reasoning: 3}) || string(m.Text()) != "ok" {
		t.Fatalf("responses usage %+v text %q", m.Usage, m.Text())
	}

	// A body past the copy bound: usage still read from the tail.
	big := `{"data":[{"embedding":[` + strings.Repeat("0.0123456,", maxJSONCopy/10+1000) + `0.1]}],"usage":{"prompt_tokens":8,"total_tokens":8}}`
	m = &Meter{}
	readAll(t, m.Wrap(io.NopCloser(strings.NewReader(big)), "application/json"))
	if !m.HasUsage || m.Usage.Prompt != 8 || len(m.json) > 2*jsonTail+64<<10 {
		t.Fatalf("big body: usage %+v held %d bytes", m.Usage, len(m.json))
	}

	// An error answer: its code, no usage.
	m = &Meter{}
	readAll(t, m.Wrap(io.NopCloser(strings.NewReader(`{"error":{"code":"content_filter","message":"x"}}`)), "application/json"))
	if m.HasUsage || m.ErrorCode != "content_filter" {
		t.Fatalf("error body: %+v", m)
	}

	// Hung up before the end: no usage, not complete.
	m = &Meter{}
	r := m.Wrap(io.NopCloser(strings.NewReader(body)), "application/json")
	_, _ = r.Read(make([]byte, 10))
	r.Close()
	if m.Complete || m.HasUsage || m.Done.IsZero() {
		t.Fatalf("partial body: %+v", m)
	}
}

func TestSetIncludeUsage(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"stream":true}`, `{"stream_options":{"include_usage":true},"stream":true}`},
		{` { } `, ` {"stream_options":{"include_usage":true} } `},
		{`{"stream_options":null,"stream":true}`, `{"stream_options":{"include_usage":true},"stream":true}`},
		{`{"stream_options":{},"stream":true}`, `{"stream_options":{"include_usage":true},"stream":true}`},
		{`{"stream_options":{"include_usage":false}}`, `{"stream_options":{"include_usage":true}}`},
		{`{"stream_options":{"x":1, "include_usage" : null }}`, `{"stream_options":{"x":1, "include_usage" : true }}`},
		{`{"stream_options":{"x":1}}`, `{"stream_options":{"include_usage":true,"x":1}}`},
		{`{"Stream_Options":{"Include_Usage":false}}`, `{"Stream_Options":{"Include_Usage":true}}`},
	} {
		got := SetIncludeUsage([]byte(tc.in))
		if string(got) != tc.want {
			t.Errorf("SetIncludeUsage(%s) = %s, want %s", tc.in, got, tc.want)
		}
		b, err := Peek(got)
		if err != nil || !b.IncludeUsage {
			t.Errorf("Peek(%s) = %+v, %v", got, b, err)
		}
	}
}

func FuzzMeter(f *testing.F) {
	for _, n := range []string{"chat.usage.sse", "tool-calls.usage.sse"} {
		b, _ := os.ReadFile("testdata/streams/" + n)
		f.Add(b, true)
	}
	f.Add([]byte("data: {\"usage\":null,\"choices\":[]}\n\n"), true)
	f.Add([]byte("data: {\"choices\":[],\"usage\":{}}\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, stream []byte, strip bool) {
		m := &Meter{StripUsage: strip}
		got, err := io.ReadAll(m.Wrap(io.NopCloser(bytes.NewReader(stream)), "text/event-stream"))
		if err != nil {
			t.Fatal(err)
		}
		if !strip && !bytes.Equal(got, stream) && len(stream) < maxEvent {
			t.Fatalf("unstripped stream changed")
		}
		if len(got) > len(stream)+len(streamLost) {
			t.Fatalf("stream grew: %d > %d", len(got), len(stream))
		}
	})
}

// BenchmarkMeterChunk is the per-event cost of metering a stream (the
// client's stream is never buffered: each event passes as it comes).
func BenchmarkMeterChunk(b *testing.B) {
	full, err := os.ReadFile("testdata/streams/chat.usage.sse")
	if err != nil {
		b.Fatal(err)
	}
	events := bytes.Count(full, []byte("\n\n"))
	b.ReportAllocs()
	b.SetBytes(int64(len(full)))
	for b.Loop() {
		m := &Meter{StripUsage: true}
		r := m.Wrap(io.NopCloser(bytes.NewReader(full)), "text/event-stream")
		_, _ = io.Copy(io.Discard, r)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
}

// BenchmarkFrameChunk is the same stream framed without metering, the
// baseline for BenchmarkMeterChunk.
func BenchmarkFrameChunk(b *testing.B) {
	full, _ := os.ReadFile("testdata/streams/chat.usage.sse")
	events := bytes.Count(full, []byte("\n\n"))
	b.ReportAllocs()
	b.SetBytes(int64(len(full)))
	for b.Loop() {
		_, _ = io.Copy(io.Discard, NewEventReader(io.NopCloser(bytes.NewReader(full)), nil))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
}

func TestMeterHostileEvents(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// An escaped key must be cut where it is, not at an earlier "usage" string.
		{`data: {"choices":[{"delta":{"content":"\"usage\""},"index":0}],"usag\u0065":null}` + "\n\n",
			`data: {"choices":[{"delta":{"content":"\"usage\""},"index":0}]}` + "\n\n"},
		// A comment that mentions data: is not the data line.
		{": data: {\"usage\":null}\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"total_tokens\":2}}\n\n", ""},
	} {
		m := &Meter{StripUsage: true}
		got := readAll(t, m.Wrap(io.NopCloser(strings.NewReader(tc.in)), "text/event-stream"))
		if string(got) != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

// BenchmarkMeterJSON is the cost of metering a non-streaming chat
// completion as Azure shapes it (content filter results included).
func BenchmarkMeterJSON(b *testing.B) {
	body := []byte(`{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello! How can I help you with your gateway today?","refusal":null,"role":"assistant"}}],"created":1763800000,"id":"chatcmpl-AZ9kQ2","model":"gpt-4o-2024-08-06","object":"chat.completion","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}],"system_fingerprint":"fp_b705f0c291","usage":{"completion_tokens":12,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":20,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":32}}`)
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		m := &Meter{}
		r := m.Wrap(io.NopCloser(bytes.NewReader(body)), "application/json")
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
		if m.Usage.Total != 32 || string(m.Text()) != "Hello! How can I help you with your gateway today?" {
			b.Fatalf("usage %+v text %q", m.Usage, m.Text())
		}
	}
}
