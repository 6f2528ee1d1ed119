package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"time"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/balancer"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/ratelimit"
	"github.com/tokengate/tokengate/internal/upstream"
	"github.com/tokengate/tokengate/internal/usage"
)

// exchange is the per-request state the pipeline's steps share: each step
// fills in what it learns, and the access log and the usage record read it
// when the request ends.
type exchange struct {
	id    string
	start time.Time
	// clientID is the client's own x-ms-client-request-id, if sane.
	clientID string
	caller   *auth.Caller
	route    openai.Route
	body     openai.Body
	alias    string
	// selection is the balancer's record of the attempts.
	selection *balancer.Selection
	// call is the forwarded call (nil when refused before forwarding).
	call *upstream.Call
	// metered is what the response said about usage; tokens and capture
	// are settled from it when the response is done.
	metered openai.Meter
	tokens  usage.Tokens
	charge  usage.Cost // the request's price
	capture *usage.Capture
	// reservation is what the limits reserved at admission, settled to
	// tokens and cost at the end.
	reservation *ratelimit.Reservation
}

// cost estimates the request's tokens for steering: about four bytes per
// prompt token plus the completion maximum for every choice.
func (x *exchange) cost(bodyLen int) int64 {
	completion := x.body.MaxCompletionTokens
	if completion == 0 {
		completion = x.body.MaxTokens
	}
	return int64(bodyLen/4) + completion*max(x.body.N, 1)
}

// maxTokens is the completion maximum the request asked for (after any
// cap the gateway applied), 0 if none.
func (x *exchange) maxTokens() int64 {
	if x.body.MaxCompletionTokens > 0 {
		return x.body.MaxCompletionTokens
	}
	return x.body.MaxTokens
}

type exchangeKey struct{}

func exchangeOf(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// maxRequestIDLen bounds a client-supplied request id; longer or odd ones
// are not used so logs and upstream headers stay clean.
const maxRequestIDLen = 128

// newRequestID returns a new random request id (a UUID v4 in form). The
// gateway never adopts a client's id as its own: the request id is the
// usage record's dedup key, and a client that reused one would otherwise
// make its requests vanish from chargebacks. The client's
// x-ms-client-request-id is kept beside it (clientRequestID).
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

func printableToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// recorder wraps the client's ResponseWriter: it remembers the status and
// bytes written for the access log, and gives each write its own deadline so
// a long stream is never cut by a whole-response timeout while a stalled
// client still is. Flush and Unwrap keep http.ResponseController working.
type recorder struct {
	http.ResponseWriter
	rc           *http.ResponseController
	writeTimeout time.Duration
	armed        time.Time // when the write deadline was last set
	status       int
	bytes        int64
	err          *openai.Error // the gateway's own error answer, if any
}

// NoteError keeps the error openai.WriteError is answering with.
func (w *recorder) NoteError(e *openai.Error) {
	if w.err == nil {
		w.err = e
	}
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.arm()
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *recorder) FlushError() error {
	w.arm()
	return w.rc.Flush()
}

// arm gives the next write (or flush) the write timeout. The connection's
// deadline is moved only when a tenth of the timeout has passed since it
// was last set, so a stream's events (a write and a flush each) do not
// each re-arm a runtime timer; every write still gets at least 90% of
// the timeout.
func (w *recorder) arm() {
	now := time.Now()
	if now.Sub(w.armed) < w.writeTimeout/10 {
		return
	}
	w.armed = now
	_ = w.rc.SetWriteDeadline(now.Add(w.writeTimeout))
}

func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// accessLog writes the one line per request.
func accessLog(log *slog.Logger, r *http.Request, x *exchange, w *recorder) {
	status := w.status
	if status == 0 && r.Context().Err() != nil {
		status = openai.StatusClientClosed
	}
	attrs := []slog.Attr{
		slog.String("request_id", x.id),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Duration("duration", time.Since(x.start)),
		slog.Int64("bytes", w.bytes),
	}
	if x.caller != nil {
		attrs = append(attrs, slog.String("app", x.caller.AppName()), slog.String("auth", string(x.caller.Method)))
	}
	if x.route.Op != "" {
		attrs = append(attrs, slog.String("operation", string(x.route.Op)))
	}
	if x.alias != "" {
		attrs = append(attrs, slog.String("model", x.alias))
	}
	if x.selection != nil {
		if a := x.selection.Attempts(); len(a) > 0 {
			attrs = append(attrs, slog.String("backend", a[len(a)-1].Backend), slog.Int("attempts", len(a)))
			if x.selection.Spilled() {
				attrs = append(attrs, slog.Bool("spilled", true))
			}
		}
	}
	if x.body.Stream {
		attrs = append(attrs, slog.Bool("stream", true))
	}
	log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}
