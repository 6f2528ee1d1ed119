package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/metrics"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/ratelimit"
	"github.com/tokengate/tokengate/internal/tokens"
	"github.com/tokengate/tokengate/internal/upstream"
	"github.com/tokengate/tokengate/internal/usage"
	"github.com/tokengate/tokengate/internal/usage/sink"
	"github.com/tokengate/tokengate/internal/usage/store"
)

// newRecorder opens the configured sinks and the spool. It also returns
// the first SQL sink's store, which answers usage summaries.
func newRecorder(cfg config.Usage, log *slog.Logger) (*usage.Recorder, *store.Store, error) {
	var reports *store.Store
	var sinks []usage.Sink
	closeAll := func() {
		for _, s := range sinks {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.Close(ctx)
			cancel()
		}
	}
	for i, sc := range cfg.Sinks {
		var s usage.Sink
		var err error
		switch sc.Type {
		case config.SinkSQLite:
			ctx, cancel := context.WithTimeout(context.Background(), sc.Timeout)
			s, err = store.Open(ctx, sc.Name, "sqlite:"+sc.Path, log)
			cancel()
		case config.SinkPostgres:
			ctx, cancel := context.WithTimeout(context.Background(), sc.Timeout)
			s, err = store.Open(ctx, sc.Name, sc.DSN, log)
			cancel()
		default:
			s, err = sink.New(sc, log)
		}
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("usage.sinks[%d] (%s): %w", i, sc.Name, err)
		}
		if st, ok := s.(*store.Store); ok && reports == nil {
			reports = st
		}
		sinks = append(sinks, s)
	}
	rec, err := usage.NewRecorder(cfg, sinks, log)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return rec, reports, nil
}

// accountable refuses new requests while their usage could not be
// recorded (the spool is full and usage.spool.when_full is refuse).
func (rt *runtime) accountable(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rt.usage.Full() {
			w.Header().Set("Retry-After", "10")
			openai.WriteError(w, openai.Errorf(http.StatusServiceUnavailable, "usage_spool_full",
				"the gateway cannot record usage right now (its usage sinks are behind); retry later"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// meter prepares the call's metering: for a stream whose client did not ask
// for usage, a body variant that asks for it (the meter strips it again).
func (x *exchange) meter(call *upstream.Call) {
	call.Meter = &x.metered
	op := x.route.Op
	if call.Body != nil && x.body.Stream && !x.body.IncludeUsage &&
		(op == openai.OpChatCompletions || op == openai.OpCompletions) {
		call.UsageBody = openai.SetIncludeUsage(call.Body)
	}
}

// settle fills the exchange's tokens and cost once the response is done,
// while the request body is still held: the backend's usage when it gave
// one, otherwise the offline tokenizer's count of the prompt and of the
// completion that reached the client (the limit step then settles its
// reservation to them). It also captures content when the app asks.
func (rt *runtime) settle(x *exchange, reqBody []byte) {
	rt.countTokens(x, reqBody)
	x.charge = rt.prices.Cost(x.alias, x.tokens)
	rt.capture(x, reqBody)
}

// countTokens fills x.tokens: the backend's usage, or the estimate.
func (rt *runtime) countTokens(x *exchange, reqBody []byte) {
	m := &x.metered
	t := &x.tokens
	switch {
	case m.HasUsage:
		t.Prompt, t.Completion, t.Total = m.Usage.Prompt, m.Usage.Completion, m.Usage.Total
		t.CachedPrompt, t.Reasoning = m.Usage.CachedPrompt, m.Usage.Reasoning
		t.Source = usage.SourceBackend
	case m.Status >= 200 && m.Status < 300 && reqBody != nil:
		c := tokens.ForModel(x.alias)
		t.Prompt = int64(promptTokens(c, reqBody))
		t.Completion = int64(c.Count(string(m.Text())))
		if m.Stream && !m.Complete {
			// The stream was cut while the backend was generating: it had
			// produced at least the token in flight, which the gateway never
			// read (Azure bills what was generated before the cancel).
			t.Completion++
		}
		t.Total = t.Prompt + t.Completion
		t.Source = usage.SourceEstimated
	default:
		t.Source = usage.SourceNone
	}
}

// capture keeps the prompt and completion as the app's capture mode asks.
func (rt *runtime) capture(x *exchange, reqBody []byte) {
	m := &x.metered
	if x.caller == nil || x.caller.App == nil || x.caller.App.Capture == usage.CaptureOff || x.caller.App.Capture == "" {
		return
	}
	cp := &usage.Capture{Mode: x.caller.App.Capture, CompletionBytes: len(m.Text())}
	prompt := promptJSON(reqBody)
	cp.PromptBytes = len(prompt)
	cp.Messages = int(gjson.GetBytes(reqBody, "messages.#").Int())
	if cp.Mode == usage.CaptureFull {
		cp.Prompt = rt.redactor.Redact(string(prompt))
		cp.Completion = rt.redactor.Redact(string(m.Text()))
	}
	x.capture = cp
}

// promptJSON is the raw prompt of a request body: messages, prompt or input.
func promptJSON(body []byte) []byte {
	for _, f := range [...]string{"messages", "prompt", "input"} {
		if v := gjson.GetBytes(body, f); v.Exists() {
			return []byte(v.Raw)
		}
	}
	return nil
}

// promptTokens counts a request's prompt with the offline tokenizer: chat
// messages by OpenAI's formula, a prompt or input string (or array of
// strings) by its text.
func promptTokens(c *tokens.Counter, body []byte) int {
	if v := gjson.GetBytes(body, "messages"); v.IsArray() {
		return c.CountChatJSON([]byte(v.Raw))
	}
	n := 0
	for _, f := range [...]string{"prompt", "input"} {
		v := gjson.GetBytes(body, f)
		switch {
		case v.Type == gjson.String:
			n += c.Count(v.Str)
		case v.IsArray():
			v.ForEach(func(_, e gjson.Result) bool {
				if e.Type == gjson.String {
					n += c.Count(e.Str)
				} else if e.IsObject() { // Responses API input items
					n += c.Count(e.Get("content").String())
				}
				return true
			})
		}
	}
	return n
}

// record writes the request's usage record and returns it (read-only: it
// is spooled already).
func (rt *runtime) record(r *http.Request, x *exchange, w *recorder) *usage.Record {
	end := time.Now()
	m := &x.metered
	rec := &usage.Record{
		RequestID:       x.id,
		ClientRequestID: x.clientID,
		Start:           x.start.UTC(),
		End:             end.UTC(),
		ClientIP:        rt.clientIP(r),
		UserAgent:       truncate(r.UserAgent(), 256),
		Operation:       string(x.route.Op),
		Model:           x.alias,
		Status:          w.status,
		Stream:          m.Stream || x.body.Stream,
		Tokens:          x.tokens,
		Capture:         x.capture,
	}
	if rec.Tokens.Source == "" {
		rec.Tokens.Source = usage.SourceNone
	}
	if c := x.caller; c != nil {
		rec.Caller = usage.Caller{TenantID: c.TenantID, AppID: c.AppID, App: c.AppName(), ObjectID: c.ObjectID, AuthMethod: string(c.Method)}
		if c.App != nil {
			rec.Caller.Team, rec.Caller.CostCenter = c.App.Team, c.App.CostCenter
		}
	}
	if s := x.selection; s != nil {
		rec.Pool = s.Pool()
		for _, a := range s.Attempts() {
			rec.Attempts = append(rec.Attempts, usage.Attempt{Backend: a.Backend, Deployment: a.Deployment, Status: a.Status, Error: truncate(a.Error, 256)})
		}
		if n := len(rec.Attempts); n > 0 {
			rec.Backend, rec.Deployment = rec.Attempts[n-1].Backend, rec.Attempts[n-1].Deployment
		}
	}
	// The client went away before it had the whole answer: nothing was
	// written yet, or the backend's body was still being copied.
	disconnected := r.Context().Err() != nil && (w.status == 0 || (x.call != nil && !m.Complete))
	if w.status == 0 {
		rec.Status = openai.StatusClientClosed
	}
	rec.ErrorClass, rec.ErrorCode, rec.Reason = classify(rec.Status, w.err, m, disconnected)
	if disconnected && rt.cutting.Load() {
		rec.ErrorClass, rec.ErrorCode = usage.ErrorUnavailable, "shutdown"
		rec.Reason = "cut by the gateway's shutdown: still running after listen.shutdown_timeout"
	}
	rec.Latency.TotalMS = ms(end.Sub(x.start))
	if !m.FirstContent.IsZero() {
		rec.Latency.FirstTokenMS = ms(m.FirstContent.Sub(x.start))
	}
	if x.call != nil && !x.call.Sent.IsZero() {
		done := m.Done
		if done.IsZero() {
			done = end
		}
		rec.Latency.UpstreamMS = ms(done.Sub(x.call.Sent))
	}
	rec.Cost = x.charge
	rt.usage.Record(rec)
	return rec
}

// labels are rec's metric labels, bounded by this runtime's config: an
// unregistered caller is "unknown" and an alias no model is configured
// under is "other", so clients cannot mint series.
func (rt *runtime) labels(rec *usage.Record) metrics.Labels {
	l := metrics.Labels{App: rec.Caller.App, Team: rec.Caller.Team, Operation: rec.Operation, Backend: rec.Backend, Pool: rec.Pool}
	if l.App == "" {
		l.App = "unknown"
	}
	if rec.Model != "" {
		l.Model = "other"
		if rt.models[rec.Model] {
			l.Model = rec.Model
		}
	}
	return l
}

// classify names what went wrong, if anything: the error class, the code
// the client saw and a reason.
func classify(status int, e *openai.Error, m *openai.Meter, disconnected bool) (class, code, reason string) {
	if e != nil {
		code, reason = e.Code, truncate(e.Message, 300)
	} else if m.ErrorCode != "" {
		code = m.ErrorCode
	}
	switch {
	case disconnected || status == openai.StatusClientClosed:
		return usage.ErrorDisconnected, code, reason
	case m.StreamError:
		return usage.ErrorStreamLost, code, reason
	case status < 400:
		return "", code, reason
	case status == http.StatusUnauthorized:
		return usage.ErrorAuth, code, reason
	case status == http.StatusForbidden:
		return usage.ErrorPolicy, code, reason
	case e != nil && (e.Code == ratelimit.CodeRateLimited || e.Code == ratelimit.CodeQuotaExceeded):
		return usage.ErrorLimit, code, reason
	case status == http.StatusTooManyRequests:
		return usage.ErrorThrottled, code, reason
	case status == http.StatusServiceUnavailable && e != nil && (e.Code == "usage_spool_full" || e.Code == ratelimit.CodeUnavailable):
		return usage.ErrorUnavailable, code, reason
	case status < 500:
		if e != nil && policyCodes[e.Code] {
			return usage.ErrorPolicy, code, reason
		}
		return usage.ErrorClient, code, reason
	}
	return usage.ErrorUpstream, code, reason
}

// policyCodes are the 4xx codes of per-app rules (not malformed requests).
var policyCodes = map[string]bool{"streaming_disabled": true, "max_tokens_exceeded": true, "model_not_allowed": true}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// clientRequestID is the client's own request id, if it sent one.
func clientRequestID(h http.Header) string {
	v := h.Get("X-Ms-Client-Request-Id")
	if v == "" || len(v) > maxRequestIDLen || !printableToken(v) {
		return ""
	}
	return v
}

// clientIP is the connection's peer, or, when the peer is a trusted proxy,
// the rightmost X-Forwarded-For address that is not itself trusted.
func (rt *runtime) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || len(rt.trusted) == 0 || !rt.isTrusted(peer.Unmap()) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	ip := peer.Unmap()
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a malformed hop: stop at the last address we can vouch for
		}
		ip = a.Unmap()
		if !rt.isTrusted(ip) {
			break
		}
	}
	return ip.String()
}

func (rt *runtime) isTrusted(a netip.Addr) bool {
	for _, p := range rt.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
