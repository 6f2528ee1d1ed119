package loadtest

import (
	"github.com/tidwall/gjson"

	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokengate/tokengate/internal/openai"
)

// target is one kind of request, built once and sent many times: the
// request template (method, URL, headers; no body, no context) and the body.
// Templates are shared by concurrent sends and never modified.
type target struct {
	tmpl   *http.Request
	body   []byte
	stream bool
	app    int // index into Config.Apps, 0 without apps
	model  int // index into Config.Models
}

// targets are every (app, model, prompt size, stream) combination.
type targets struct {
	all                   []target
	nModels, nPrompts     int
	appW, modelW, promptW []float64 // cumulative weights
}

// get returns the target of app, model, prompt and stream.
func (t *targets) get(app, model, prompt int, stream bool) *target {
	i := ((app*t.nModels+model)*t.nPrompts+prompt)*2 + boolIndex(stream)
	return &t.all[i]
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

// buildTargets builds every target of c (defaults applied, valid).
func buildTargets(c Config) (*targets, error) {
	base := strings.TrimRight(c.URL, "/")
	apps := c.Apps
	if len(apps) == 0 {
		apps = []App{{Name: "", Weight: 1}}
	}
	t := &targets{nModels: len(c.Models), nPrompts: len(c.PromptTokens)}
	t.appW = cumulative(apps, func(a App) float64 { return a.Weight })
	t.modelW = cumulative(c.Models, func(m ModelShare) float64 { return m.Weight })
	t.promptW = cumulative(c.PromptTokens, func(p PromptShare) float64 { return p.Weight })

	prompts := make([]string, len(c.PromptTokens))
	for i, p := range c.PromptTokens {
		prompts[i] = promptText(p.Tokens)
	}
	for a, app := range apps {
		h := make(http.Header, 4+len(app.Headers)+len(c.Header))
		h.Set("Content-Type", "application/json")
		h.Set("Accept", "application/json, text/event-stream")
		h.Set("User-Agent", "tokengate-loadtest")
		host := ""
		set := func(name, value string) {
			if strings.EqualFold(name, "Host") {
				host = value // Go sends Request.Host, never a Host header
				return
			}
			h.Set(name, value)
		}
		for name, value := range app.Headers {
			set(name, value)
		}
		for _, hd := range c.Header {
			set(hd.Name, hd.Value)
		}
		for m, model := range c.Models {
			var raw string
			if c.API == "v1" {
				raw = base + "/v1/chat/completions"
			} else {
				raw = base + "/openai/deployments/" + url.PathEscape(model.Alias) +
					"/chat/completions?api-version=" + url.QueryEscape(c.APIVersion)
			}
			u, err := url.Parse(raw)
			if err != nil {
				return nil, err
			}
			for p := range c.PromptTokens {
				for _, stream := range []bool{false, true} {
					body, err := requestBody(c, model.Alias, prompts[p], stream)
					if err != nil {
						return nil, err
					}
					req, err := http.NewRequest(http.MethodPost, u.String(), nil)
					if err != nil {
						return nil, err
					}
					req.URL = u
					req.Header = h
					req.ContentLength = int64(len(body))
					if host != "" {
						req.Host = host
					}
					t.all = append(t.all, target{tmpl: req, body: body, stream: stream, app: a, model: m})
				}
			}
		}
	}
	return t, nil
}

func cumulative[T any](s []T, weight func(T) float64) []float64 {
	out := make([]float64, len(s))
	sum := 0.0
	for i, v := range s {
		sum += weight(v)
		out[i] = sum
	}
	return out
}

// pick returns the index whose cumulative weight range holds r*total, r in [0,1).
func pick(cum []float64, r float64) int {
	if len(cum) == 1 {
		return 0
	}
	x := r * cum[len(cum)-1]
	for i, c := range cum {
		if x < c {
			return i
		}
	}
	return len(cum) - 1
}

// promptWords are common English words the GPT tokenizers encode as one
// token each, with their leading space.
var promptWords = strings.Fields(`the of and to in is was for on that with as by at from
his her it an are be this which or had not but have were they one all their there
been has when who will more no if out so said what up its about into than them can
only other new some could time these two may then do first any my now such like our
over man me even most made after also did many before must through back years where
much your way well down should because each just those people how too little state
good very make world still own see men work long get here between both life being under`)

// promptText is about n tokens of text: n words.
func promptText(n int) string {
	var b strings.Builder
	b.Grow(n * 6)
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(promptWords[i%len(promptWords)])
	}
	return b.String()
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	Model         string         `json:"model,omitempty"`
	Messages      []message      `json:"messages"`
	MaxTokens     int            `json:"max_tokens"`
	Stream        bool           `json:"stream,omitempty"`
	StreamOptions *streamOptions `json:"stream_options,omitempty"`
}

func requestBody(c Config, alias, prompt string, stream bool) ([]byte, error) {
	r := chatRequest{Messages: []message{{Role: "user", Content: prompt}}, MaxTokens: c.MaxTokens}
	if c.API == "v1" {
		r.Model = alias
	}
	if stream {
		r.Stream = true
		r.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	return json.Marshal(r)
}

// newTransport returns the one transport of a run: HTTP/1.1, a connection
// per request in flight kept for reuse, no compression (the tool would pay
// for it, and the gateway's cost is measured without it), no proxy.
func newTransport(c Config) *http.Transport {
	idle := c.Concurrency
	if idle == 0 {
		idle = 1 << 16 // open loop without limit: whatever is in flight
	}
	return &http.Transport{
		DialContext: (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		// An explicit TLS config without NextProtos keeps HTTP/1.1.
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// Per connection, held as long as it lives: 10,000 streams hold
		// 10,000 of each. A request's headers and a default prompt fit in
		// the write buffer; larger bodies just take a few more writes.
		ReadBufferSize:  4 << 10,
		WriteBufferSize: 2 << 10,
	}
}

// bodyReader is the reader of a request's body; Close is a no-op.
type bodyReader struct{ bytes.Reader }

func (*bodyReader) Close() error { return nil }

// scratch is a worker's reusable memory. Not safe for concurrent use.
type scratch struct {
	buf  []byte        // a JSON response body
	br   *bufio.Reader // reads streams; made on first use
	line []byte        // an SSE line longer than br's buffer
}

// outcome is what became of one request.
type outcome struct {
	status     int       // 0 when no response arrived (or it was cut by the run)
	responded  bool      // a response arrived, even if cut by the run later
	errKind    string    // transport error kind when status is 0
	incomplete bool      // 2xx whose body (or stream) was cut
	content    time.Time // first chunk with content (streams)
	end        time.Time
	usage      bool
	prompt     int64
	completion int64
}

func (o *outcome) ok() bool { return o.status/100 == 2 && !o.incomplete }

// do sends the request of t and reads its response to the end. ctx bounds it.
func do(ctx context.Context, rt http.RoundTripper, t *target, s *scratch, o *outcome) {
	req := t.tmpl.WithContext(ctx)
	body := &bodyReader{}
	body.Reset(t.body)
	req.Body = body
	resp, err := rt.RoundTrip(req)
	if err != nil {
		o.errKind = errorKind(ctx, err)
		o.end = time.Now()
		return
	}
	defer func() {
		if o.incomplete && errors.Is(ctx.Err(), context.Canceled) {
			// Cut by the run (Ctrl-C), not by the server.
			o.status, o.errKind, o.incomplete = 0, "canceled", false
		}
	}()
	o.status, o.responded = resp.StatusCode, true
	switch {
	case resp.StatusCode/100 != 2:
		_, _ = s.readAll(resp.Body) // the connection is reused only after the whole body
	case t.stream && isEventStream(resp.Header.Get("Content-Type")):
		s.readStream(resp.Body, o)
	default:
		b, err := s.readAll(resp.Body)
		if err != nil {
			o.incomplete = true
			break
		}
		o.prompt, o.completion, o.usage = parseUsage(b)
		if t.stream {
			// Asked for a stream, got JSON: count its content as one chunk.
			o.content = time.Now()
		}
	}
	resp.Body.Close()
	if o.end.IsZero() {
		o.end = time.Now()
	}
}

func isEventStream(ct string) bool {
	return len(ct) >= len("text/event-stream") && strings.EqualFold(ct[:len("text/event-stream")], "text/event-stream")
}

// readAll reads r to its end into s.buf.
func (s *scratch) readAll(r io.Reader) ([]byte, error) {
	b := s.buf[:0]
	if cap(b) == 0 {
		b = make([]byte, 0, 4<<10)
	}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if cap(b) <= 1<<20 {
				s.buf = b // keep the buffer unless a huge body grew it
			}
			if errors.Is(err, io.EOF) {
				return b, nil
			}
			return b, err
		}
	}
}

var (
	dataPrefix = []byte("data:")
	doneEvent  = []byte("[DONE]")
	keyContent = []byte(`"content":`)
	keyTokens  = []byte(`_tokens"`) // prompt_tokens, input_tokens, ...
)

// readStream reads server-sent events line by line until the body ends,
// noting the first content chunk, the last usage and [DONE]. A stream that
// ends without [DONE] is incomplete.
func (s *scratch) readStream(r io.Reader, o *outcome) {
	if s.br == nil {
		// Small: it sits on the transport's own 4 KiB buffer, there may be
		// 10,000 of them, and events (~600 bytes from Azure) fit; longer
		// lines are gathered in s.line.
		s.br = bufio.NewReaderSize(r, 2<<10)
	} else {
		s.br.Reset(r)
	}
	done := false
	for {
		line, err := s.br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: collect it (rare, allocates).
			s.line = append(s.line[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = s.br.ReadSlice('\n')
				s.line = append(s.line, line...)
			}
			line = s.line
		}
		if len(line) > 0 && !done && s.event(line, o) {
			// The stream is over for its reader; what follows (the end of
			// the chunked body) is read only so the connection is reused.
			done = true
			o.end = time.Now()
		}
		if err != nil {
			break
		}
	}
	s.br.Reset(nil) // drop the body
	if cap(s.line) > 1<<20 {
		s.line = nil
	}
	o.incomplete = !done
}

// event handles one SSE line and reports whether it is data: [DONE].
func (s *scratch) event(line []byte, o *outcome) bool {
	if !bytes.HasPrefix(line, dataPrefix) {
		return false
	}
	data := bytes.TrimSpace(line[len(dataPrefix):])
	if len(data) == 0 || data[0] != '{' {
		return bytes.Equal(data, doneEvent)
	}
	if o.content.IsZero() && hasContent(data) {
		o.content = time.Now()
	}
	if p, c, ok := parseUsage(data); ok {
		o.prompt, o.completion, o.usage = p, c, true
	}
	return false
}

// hasContent reports whether a chunk carries a non-empty "content" string.
func hasContent(b []byte) bool {
	for {
		i := bytes.Index(b, keyContent)
		if i < 0 {
			return false
		}
		b = b[i+len(keyContent):]
		j := skipSpace(b, 0)
		if j+1 < len(b) && b[j] == '"' && b[j+1] != '"' {
			return true
		}
	}
}

// parseUsage reads the token counts of b's "usage" object with the
// gateway's own parser (openai.ParseUsage). Chunks without token counts
// (Azure sends "usage":null on every chunk but the last) are skipped
// without parsing. ok is false when there is no usage object.
func parseUsage(b []byte) (prompt, completion int64, ok bool) {
	if !bytes.Contains(b, keyTokens) {
		return 0, 0, false
	}
	u, ok := openai.ParseUsage(gjson.GetBytes(b, "usage"))
	return u.Prompt, u.Completion, ok
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// errorKind names why a request got no response.
func errorKind(ctx context.Context, err error) string {
	var dnsErr *net.DNSError
	var tlsErr *tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "server closed idle connection"): // net/http's unexported error
		return "connection_closed"
	case errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE):
		return "too_many_open_files"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "address_not_available"
	case errors.As(err, &dnsErr):
		return "dns"
	case errors.As(err, &tlsErr) || errors.As(err, &certErr):
		return "tls"
	}
	return "other"
}

// statusKey is the report's key of an HTTP status.
func statusKey(code int) string { return strconv.Itoa(code) }
