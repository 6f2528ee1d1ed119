package openai

import (
	"bytes"
	"io"
	"time"

	"github.com/tidwall/gjson"
)

// Usage is the token usage a backend reported.
type Usage struct {
	Prompt       int64
	Completion   int64
	Total        int64
	CachedPrompt int64
	Reasoning    int64
}

// ParseUsage reads a usage object in the Chat Completions / Completions /
// Embeddings shape (prompt_tokens, completion_tokens, ...) or the Responses
// API shape (input_tokens, output_tokens, ...). ok is false when u is not
// an object.
func ParseUsage(u gjson.Result) (Usage, bool) {
	if !u.IsObject() {
		return Usage{}, false
	}
	var x Usage
	if v := u.Get("input_tokens"); v.Exists() {
		x.Prompt = v.Int()
		x.Completion = u.Get("output_tokens").Int()
		x.CachedPrompt = u.Get("input_tokens_details.cached_tokens").Int()
		x.Reasoning = u.Get("output_tokens_details.reasoning_tokens").Int()
	} else {
		x.Prompt = u.Get("prompt_tokens").Int()
		x.Completion = u.Get("completion_tokens").Int()
		x.CachedPrompt = u.Get("prompt_tokens_details.cached_tokens").Int()
		x.Reasoning = u.Get("completion_tokens_details.reasoning_tokens").Int()
	}
	x.Total = u.Get("total_tokens").Int()
	if x.Total == 0 {
		x.Total = x.Prompt + x.Completion
	}
	return x, true
}

// SetIncludeUsage returns body with stream_options.include_usage set to
// true, adding stream_options when absent. body must be a JSON object that
// Peek accepted (so each member is named at most once).
func SetIncludeUsage(body []byte) []byte {
	open := skipSpace(body, 0)
	obj := body[open:]
	start, end := -1, -1
	_ = eachMember(obj, func(key []byte, s, e int) error {
		if _, ok := matchField(key, []string{"stream_options"}); ok {
			start, end = open+s, open+e
		}
		return nil
	})
	const whole = `{"include_usage":true}`
	out := make([]byte, 0, len(body)+40)
	switch {
	case start < 0:
		out = append(out, body[:open+1]...)
		out = append(out, `"stream_options":`+whole...)
		if rest := skipSpace(body, open+1); rest < len(body) && body[rest] != '}' {
			out = append(out, ',')
		}
		return append(out, body[open+1:]...)
	case body[start] != '{':
		out = append(out, body[:start]...)
		out = append(out, whole...)
		return append(out, body[end:]...)
	}
	// Replace include_usage inside the object, or add it first.
	inner := body[start:end]
	is, ie := -1, -1
	_ = eachMember(inner, func(key []byte, s, e int) error {
		if _, ok := matchField(key, streamOptionFields); ok {
			is, ie = start+s, start+e
		}
		return nil
	})
	if is >= 0 {
		out = append(out, body[:is]...)
		out = append(out, "true"...)
		return append(out, body[ie:]...)
	}
	out = append(out, body[:start+1]...)
	out = append(out, `"include_usage":true`...)
	if rest := skipSpace(body, start+1); body[rest] != '}' {
		out = append(out, ',')
	}
	return append(out, body[start+1:]...)
}

// maxCompletionText bounds the completion text a Meter keeps for
// estimation and capture.
const maxCompletionText = 1 << 20

// maxJSONCopy bounds the copy of a JSON response a Meter keeps; past it only
// the tail (where backends put "usage") is kept.
const (
	maxJSONCopy = 4 << 20
	jsonTail    = 64 << 10
)

// Meter watches one response on its way to the client and collects what the
// usage record needs. Streams are metered one event at a time as they pass
// (never buffered); JSON bodies are copied (bounded) as they pass and read
// once at the end, never re-encoded. A Meter belongs to one request; it is
// read after the response is done.
type Meter struct {
	// StripUsage says the gateway asked for stream usage the client did
	// not: the usage-only chunk is removed and "usage":null is cut from
	// the other chunks, so the client gets the bytes it asked for.
	StripUsage bool

	// Status is the status of the backend response being metered.
	Status int
	// Usage is the backend's usage, when HasUsage.
	Usage    Usage
	HasUsage bool
	// Stream says the response was an event stream.
	Stream bool
	// FirstContent is when the first generated content passed (streams).
	FirstContent time.Time
	// Done is when the response body ended or was closed.
	Done time.Time
	// StreamError says the stream ended with an error event (backend
	// lost, or an error the backend sent mid-stream).
	StreamError bool
	// Complete says the body was read to its end (for a stream: without
	// an error event).
	Complete bool
	// ErrorCode is a JSON error response's error.code.
	ErrorCode string

	scratch   []byte // the rewritten event
	text      []byte // completion text seen, bounded
	truncated bool   // text reached its bound
	json      []byte // the JSON response (bounded copy)
	tail      bool   // json holds only the last jsonTail bytes
}

// Text returns the completion text that reached the client (bounded).
func (m *Meter) Text() []byte { return m.text }

// Wrap meters resp's body: event streams through an EventReader whose
// events pass m, JSON through a copying reader.
func (m *Meter) Wrap(body io.ReadCloser, contentType string) io.ReadCloser {
	switch {
	case hasPrefixFold(contentType, "text/event-stream"):
		m.Stream = true
		return &doneTap{ReadCloser: NewEventReader(body, m.event), m: m}
	case hasPrefixFold(contentType, "application/json"):
		return &jsonTap{src: body, m: m}
	}
	return &doneTap{ReadCloser: body, m: m}
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && bytes.EqualFold([]byte(s[:len(prefix)]), []byte(prefix))
}

var (
	dataPrefix = []byte("data:")
	usageKey   = []byte(`"usage"`)
)

// event meters one stream event and returns what the client gets: the
// event, the event without its usage member, or nothing.
func (m *Meter) event(ev []byte) []byte {
	i := dataLine(ev)
	if i < 0 {
		return ev
	}
	off := i + len(dataPrefix) // where data starts in ev
	data := ev[off:]
	if n := bytes.IndexByte(data, '\n'); n >= 0 {
		data = data[:n]
	}
	trimmed := bytes.TrimLeft(data, " \t\r")
	off += len(data) - len(trimmed)
	data = bytes.TrimRight(trimmed, " \t\r")
	if len(data) == 0 || data[0] != '{' {
		return ev
	}
	// One pass over the top-level members: chunks are small but many.
	var u, ch gjson.Result
	uKey := -1 // where the usage member's key starts in data
	var typ string
	var response gjson.Result
	gjson.ParseBytes(data).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "choices":
			ch = v
		case "usage":
			u, uKey = v, k.Index
		case "error":
			m.StreamError = true
		case "type":
			typ = v.Str
		case "delta":
			if typ == "response.output_text.delta" || typ == "response.function_call_arguments.delta" {
				m.addText(v.Str)
				m.firstContent()
			}
		case "response":
			response = v
		}
		return true
	})
	if ch.IsArray() {
		m.collect(ch)
	}
	if !u.Exists() {
		if r := response.Get("usage"); r.IsObject() { // Responses API: response.completed
			m.Usage, m.HasUsage = ParseUsage(r)
		}
		return ev
	}
	if x, ok := ParseUsage(u); ok {
		m.Usage, m.HasUsage = x, true
	}
	if !m.StripUsage {
		return ev
	}
	if u.IsObject() && ch.IsArray() && emptyArray(ch.Raw) {
		return nil // the usage-only chunk the gateway asked for
	}
	m.scratch = cutMember(m.scratch[:0], ev, off+uKey, off+u.Index+len(u.Raw))
	return m.scratch
}

// dataLine returns the index of the event's first line that starts with
// "data:" (not a comment that mentions it), or -1.
func dataLine(ev []byte) int {
	for off := 0; off < len(ev); {
		if bytes.HasPrefix(ev[off:], dataPrefix) {
			return off
		}
		n := bytes.IndexByte(ev[off:], '\n')
		if n < 0 {
			return -1
		}
		off += n + 1
	}
	return -1
}

func emptyArray(raw string) bool {
	for _, c := range raw[1:] {
		switch c {
		case ' ', '\t', '\n', '\r':
		case ']':
			return true
		default:
			return false
		}
	}
	return false
}

func (m *Meter) firstContent() {
	if m.FirstContent.IsZero() {
		m.FirstContent = time.Now()
	}
}

// cutMember appends to dst ev without the member ev[start:end] (its key
// through its value) and its separating comma.
func cutMember(dst, ev []byte, start, end int) []byte {
	if start < 0 || end > len(ev) || start >= end {
		return append(dst, ev...)
	}
	if p := lastNonSpace(ev[:start]); p >= 0 && ev[p] == ',' {
		start = p
	} else if q := skipSpace(ev, end); q < len(ev) && ev[q] == ',' {
		end = q + 1
	}
	dst = append(dst, ev[:start]...)
	return append(dst, ev[end:]...)
}

func lastNonSpace(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return -1
}

// collect notes the generated content of a chunk's choices: chat deltas
// (content, refusal, tool call names and arguments) and legacy completions
// text.
func (m *Meter) collect(choices gjson.Result) {
	seen := false
	choices.ForEach(func(_, c gjson.Result) bool {
		c.ForEach(func(k, v gjson.Result) bool {
			switch k.Str {
			case "delta":
				v.ForEach(func(k, v gjson.Result) bool {
					switch k.Str {
					case "content", "refusal":
						if v.Type == gjson.String && v.Str != "" {
							m.addText(v.Str)
							seen = true
						}
					case "tool_calls":
						v.ForEach(func(_, t gjson.Result) bool {
							f := t.Get("function")
							m.addText(f.Get("name").Str)
							m.addText(f.Get("arguments").Str)
							seen = true
							return true
						})
					}
					return true
				})
			case "text":
				if v.Type == gjson.String && v.Str != "" {
					m.addText(v.Str)
					seen = true
				}
			}
			return true
		})
		return true
	})
	if seen {
		m.firstContent()
	}
}

func (m *Meter) addText(s string) {
	if len(m.text)+len(s) > maxCompletionText {
		m.truncated = true
		return
	}
	m.text = append(m.text, s...)
}

// finishJSON reads usage and completion text from the copied JSON body.
func (m *Meter) finishJSON() {
	if len(m.json) == 0 {
		return
	}
	if m.tail {
		// Only the tail is held: parse the last "usage" object in it.
		if i := bytes.LastIndex(m.json, usageKey); i >= 0 {
			rest := m.json[i+len(usageKey):]
			if j := bytes.IndexByte(rest, '{'); j >= 0 {
				m.Usage, m.HasUsage = ParseUsage(gjson.ParseBytes(rest[j:]))
			}
		}
		return
	}
	// One pass over the top-level members.
	var choices, output gjson.Result
	gjson.ParseBytes(m.json).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "error":
			if c := v.Get("code"); c.Type == gjson.String {
				m.ErrorCode = c.Str
			}
		case "usage":
			m.Usage, m.HasUsage = ParseUsage(v)
		case "choices":
			choices = v
		case "output":
			output = v
		}
		return true
	})
	choices.ForEach(func(_, c gjson.Result) bool {
		if s := c.Get("message.content"); s.Type == gjson.String {
			m.addText(s.Str)
		}
		c.Get("message.tool_calls").ForEach(func(_, t gjson.Result) bool {
			m.addText(t.Get("function.name").Str)
			m.addText(t.Get("function.arguments").Str)
			return true
		})
		if s := c.Get("text"); s.Type == gjson.String {
			m.addText(s.Str)
		}
		return true
	})
	output.ForEach(func(_, o gjson.Result) bool { // Responses API
		o.Get("content").ForEach(func(_, c gjson.Result) bool {
			m.addText(c.Get("text").Str)
			return true
		})
		return true
	})
}

// jsonTap copies a JSON body as it passes to the client.
type jsonTap struct {
	src io.ReadCloser
	m   *Meter
}

func (t *jsonTap) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	m := t.m
	if n > 0 {
		if !m.tail && len(m.json)+n > maxJSONCopy {
			m.tail = true
		}
		m.json = append(m.json, p[:n]...)
		if m.tail && len(m.json) > 2*jsonTail {
			m.json = append(m.json[:0], m.json[len(m.json)-jsonTail:]...)
		}
	}
	if err == io.EOF && !m.Complete {
		m.Complete = true
		m.Done = time.Now()
		m.finishJSON()
	}
	return n, err
}

func (t *jsonTap) Close() error {
	if m := t.m; m.Done.IsZero() {
		m.Done = time.Now()
		// The client went away while the body was being written: the copy
		// may still hold the whole body, usage included.
		m.finishJSON()
	}
	return t.src.Close()
}

// doneTap notes when a body that is not metered ends.
type doneTap struct {
	io.ReadCloser
	m *Meter
}

func (t *doneTap) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err == io.EOF && t.m.Done.IsZero() {
		// A stream that ended with an error event (the backend was lost,
		// or the client hung up and the upstream read was cancelled) is
		// not complete.
		t.m.Complete = !t.m.StreamError
		t.m.Done = time.Now()
	}
	return n, err
}

func (t *doneTap) Close() error {
	if t.m.Done.IsZero() {
		t.m.Done = time.Now()
	}
	return t.ReadCloser.Close()
}
