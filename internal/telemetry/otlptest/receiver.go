// Package otlptest is an in-process OTLP/HTTP trace collector for tests: a
// real HTTP server that accepts POST /v1/traces the way a collector does
// (protobuf or JSON, optionally gzip-compressed) and keeps the spans,
// flattened, for assertions. It is an ordinary package (not a _test file)
// so unit and end-to-end tests in any package can use it.
package otlptest

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Span is one received span, flattened: IDs as lowercase hex (ParentSpanID
// "" for a root), attributes as Go values (string, bool, int64, float64,
// []byte, []any, map[string]any).
type Span struct {
	Name         string
	TraceID      string
	SpanID       string
	ParentSpanID string
	TraceState   string
	Kind         trace.SpanKind
	Attributes   map[string]any
	StatusCode   codes.Code
	// StatusMessage is the status description (set with an Error status).
	StatusMessage string
	// ServiceName is the resource's service.name; Resource holds all of
	// the resource's attributes.
	ServiceName string
	Resource    map[string]any
	// Scope is the instrumentation scope's name.
	Scope string
	Start time.Time
	End   time.Time
}

// Attr returns the attribute key, or nil.
func (s Span) Attr(key string) any { return s.Attributes[key] }

// Receiver is a running OTLP/HTTP trace endpoint. Safe for concurrent use.
type Receiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	spans    []Span
	requests []Request
	fail     int
}

// Request describes one export request the receiver got.
type Request struct {
	// Header is the request's headers (Content-Type, Content-Encoding,
	// the exporter's configured headers, ...).
	Header http.Header
	// Spans is the number of spans it carried.
	Spans int
}

// NewReceiver starts a receiver, closed when the test ends. Requests other
// than POST /v1/traces get 404 or 405; bodies that do not decode get 400
// (and fail nothing: the test asserts on what arrived).
func NewReceiver(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/traces", r.handle)
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	return r
}

// URL is the receiver's base URL, for telemetry.traces.endpoint (the
// exporter appends /v1/traces).
func (r *Receiver) URL() string { return r.srv.URL }

// Spans returns a copy of the spans received so far, in arrival order.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// Requests returns the export requests received so far.
func (r *Receiver) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.requests)
}

// Reset forgets the spans and requests received so far.
func (r *Receiver) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans, r.requests = nil, nil
}

// Fail makes the receiver answer every export with status (e.g. 503) and
// keep nothing, until Fail(0).
func (r *Receiver) Fail(status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = status
}

// WaitFor polls the received spans until cond holds and returns them; the
// test fails (Fatalf, listing what did arrive) after timeout. cond is called
// with a copy it may keep.
func (r *Receiver) WaitFor(t testing.TB, cond func([]Span) bool, timeout time.Duration) []Span {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		spans := r.Spans()
		if cond(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, s := range spans {
				fmt.Fprintf(&b, "\n  %s %q trace=%s span=%s parent=%s", s.Kind, s.Name, s.TraceID, s.SpanID, s.ParentSpanID)
			}
			t.Fatalf("otlptest: condition not met after %v; %d spans received:%s", timeout, len(spans), b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Named returns the spans called name.
func Named(spans []Span, name string) []Span {
	var out []Span
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// maxBody bounds one export request, decompressed.
const maxBody = 64 << 20

func (r *Receiver) handle(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	r.mu.Lock()
	fail := r.fail
	r.mu.Unlock()
	if fail != 0 {
		http.Error(w, "failing on purpose", fail)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, req.Body, maxBody)
	switch enc := req.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			http.Error(w, "bad gzip: "+err.Error(), http.StatusBadRequest)
			return
		}
		defer zr.Close()
		body = io.LimitReader(zr, maxBody)
	default:
		http.Error(w, "unsupported Content-Encoding "+enc, http.StatusUnsupportedMediaType)
		return
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	var msg collectortracepb.ExportTraceServiceRequest
	switch ct {
	case "application/x-protobuf", "application/protobuf":
		err = proto.Unmarshal(data, &msg)
	case "application/json":
		err = unmarshalJSON(data, &msg)
	default:
		http.Error(w, "unsupported Content-Type "+ct, http.StatusUnsupportedMediaType)
		return
	}
	if err != nil {
		http.Error(w, "decoding ExportTraceServiceRequest: "+err.Error(), http.StatusBadRequest)
		return
	}
	spans := flatten(&msg)
	r.mu.Lock()
	r.spans = append(r.spans, spans...)
	r.requests = append(r.requests, Request{Header: req.Header.Clone(), Spans: len(spans)})
	r.mu.Unlock()

	resp := &collectortracepb.ExportTraceServiceResponse{}
	if ct == "application/json" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
		return
	}
	out, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// unmarshalJSON decodes OTLP/JSON, whose trace and span ids are hex
// strings where protojson expects base64.
func unmarshalJSON(data []byte, msg proto.Message) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	if err := hexIDsToBase64(v); err != nil {
		return err
	}
	fixed, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(fixed, msg)
}

func hexIDsToBase64(v any) error {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			switch k {
			case "traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id":
				if s, ok := val.(string); ok && s != "" {
					b, err := hex.DecodeString(s)
					if err != nil {
						return fmt.Errorf("%s %q: not hex: %w", k, s, err)
					}
					x[k] = base64.StdEncoding.EncodeToString(b)
				}
				continue
			}
			if err := hexIDsToBase64(val); err != nil {
				return err
			}
		}
	case []any:
		for _, val := range x {
			if err := hexIDsToBase64(val); err != nil {
				return err
			}
		}
	}
	return nil
}

func flatten(msg *collectortracepb.ExportTraceServiceRequest) []Span {
	var out []Span
	for _, rs := range msg.GetResourceSpans() {
		res := attrs(rs.GetResource().GetAttributes())
		service, _ := res["service.name"].(string)
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				out = append(out, Span{
					Name:          s.GetName(),
					TraceID:       hexID(s.GetTraceId()),
					SpanID:        hexID(s.GetSpanId()),
					ParentSpanID:  hexID(s.GetParentSpanId()),
					TraceState:    s.GetTraceState(),
					Kind:          trace.SpanKind(s.GetKind()), // OTLP and otel number span kinds alike
					Attributes:    attrs(s.GetAttributes()),
					StatusCode:    statusCode(s.GetStatus().GetCode()),
					StatusMessage: s.GetStatus().GetMessage(),
					ServiceName:   service,
					Resource:      res,
					Scope:         ss.GetScope().GetName(),
					Start:         unixNano(s.GetStartTimeUnixNano()),
					End:           unixNano(s.GetEndTimeUnixNano()),
				})
			}
		}
	}
	return out
}

func hexID(b []byte) string {
	if len(b) == 0 || !slices.ContainsFunc(b, func(c byte) bool { return c != 0 }) {
		return ""
	}
	return hex.EncodeToString(b)
}

func unixNano(n uint64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(n))
}

func statusCode(c tracepb.Status_StatusCode) codes.Code {
	switch c {
	case tracepb.Status_STATUS_CODE_OK:
		return codes.Ok
	case tracepb.Status_STATUS_CODE_ERROR:
		return codes.Error
	}
	return codes.Unset
}

func attrs(kvs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = value(kv.GetValue())
	}
	return m
}

func value(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return x.BytesValue
	case *commonpb.AnyValue_ArrayValue:
		vals := x.ArrayValue.GetValues()
		out := make([]any, len(vals))
		for i, e := range vals {
			out[i] = value(e)
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		return attrs(x.KvlistValue.GetValues())
	}
	return nil
}
