// Package usage owns usage records: what one client request cost, who made
// it and how it went; the durable on-disk spool they go to first; the sinks
// that deliver them (SQLite, PostgreSQL, Kafka / Event Hubs, stdout, files);
// chargeback pricing and reports.
//
// A record is money: it is written for every request that reached the
// pipeline (refusals included), spooled off the request path, and delivered
// at least once to every sink, with RequestID as the key sinks dedup on.
package usage

import (
	"context"
	"time"
)

// SchemaVersion is the Record schema's version, carried in every record.
// Field names are stable; a change that renames or retypes a field bumps it.
const SchemaVersion = 1

// Record is one client request's usage. The JSON field names are the schema
// documented in docs/usage.md.
type Record struct {
	// Schema is SchemaVersion.
	Schema int `json:"schema"`
	// RequestID is the gateway's id for the request (the X-Request-Id the
	// client saw); unique per request and the sinks' dedup key.
	RequestID string `json:"request_id"`
	// ClientRequestID is the client's own x-ms-client-request-id, if any.
	ClientRequestID string `json:"client_request_id,omitempty"`
	// Start is when the gateway received the request; End when the last
	// byte went to the client (or the client went away).
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`

	Caller Caller `json:"caller"`
	// ClientIP is the caller's address: the connection's peer, or the
	// X-Forwarded-For hop left of the trusted proxies.
	ClientIP  string `json:"client_ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`

	// Operation is the API operation (chat/completions, embeddings, ...).
	Operation string `json:"operation"`
	// Model is the alias the client named.
	Model string `json:"model,omitempty"`
	// Pool, Backend and Deployment served the final attempt.
	Pool       string `json:"pool,omitempty"`
	Backend    string `json:"backend,omitempty"`
	Deployment string `json:"deployment,omitempty"`
	// Attempts lists every upstream attempt in order.
	Attempts []Attempt `json:"attempts,omitempty"`

	// Status is the HTTP status the client got (499: it hung up first).
	Status int `json:"status"`
	// ErrorClass is empty for a success, otherwise one of the ErrorClass
	// constants; ErrorCode is the error code the client saw, Reason a
	// human-readable cause (e.g. which policy refused the request).
	ErrorClass string `json:"error_class,omitempty"`
	ErrorCode  string `json:"error_code,omitempty"`
	Reason     string `json:"reason,omitempty"`
	// Stream says the response was an event stream.
	Stream bool `json:"stream"`

	Tokens  Tokens  `json:"tokens"`
	Latency Latency `json:"latency"`
	Cost    Cost    `json:"cost"`

	// Capture holds prompt and completion text when the app's capture mode
	// asks for it, redacted before it was recorded.
	Capture *Capture `json:"capture,omitempty"`
}

// Caller is who made the request.
type Caller struct {
	TenantID   string `json:"tenant_id,omitempty"`
	AppID      string `json:"app_id,omitempty"`
	App        string `json:"app,omitempty"`
	Team       string `json:"team,omitempty"`
	CostCenter string `json:"cost_center,omitempty"`
	ObjectID   string `json:"object_id,omitempty"`
	// AuthMethod is "entra", "oidc", "gateway-key", "anonymous", or "" when
	// the request was refused before the caller was known.
	AuthMethod string `json:"auth_method,omitempty"`
}

// Attempt is one upstream try.
type Attempt struct {
	Backend    string `json:"backend"`
	Deployment string `json:"deployment,omitempty"`
	// Status is the backend's status, 0 when no response came.
	Status int `json:"status"`
	// Error says why an attempt without a response failed.
	Error string `json:"error,omitempty"`
}

// Token sources.
const (
	// SourceBackend: the backend's usage object.
	SourceBackend = "backend"
	// SourceEstimated: counted by the gateway's offline tokenizer because
	// the backend gave none (client hung up, backend reset, old api-version).
	SourceEstimated = "estimated"
	// SourceNone: nothing was generated (refused or failed before a backend
	// answered).
	SourceNone = "none"
)

// Tokens are the request's token counts.
type Tokens struct {
	Prompt       int64 `json:"prompt"`
	Completion   int64 `json:"completion"`
	Total        int64 `json:"total"`
	CachedPrompt int64 `json:"cached_prompt"`
	Reasoning    int64 `json:"reasoning"`
	// Source is SourceBackend, SourceEstimated or SourceNone.
	Source string `json:"source"`
}

// Latency in milliseconds.
type Latency struct {
	// TotalMS is End minus Start.
	TotalMS float64 `json:"total_ms"`
	// FirstTokenMS is the time to the first content event of a stream (0
	// when not streamed or nothing came).
	FirstTokenMS float64 `json:"first_token_ms,omitempty"`
	// UpstreamMS is the time spent waiting on backends: from the first
	// attempt's send to the end of the final response.
	UpstreamMS float64 `json:"upstream_ms"`
}

// Cost is the request's price from the model's price table.
type Cost struct {
	Amount   float64 `json:"amount"`
	Currency string  `json:"currency,omitempty"`
}

// Capture modes (apps[].capture).
const (
	CaptureOff      = "off"
	CaptureMetadata = "metadata"
	CaptureFull     = "full"
)

// Capture is the recorded request and response content.
type Capture struct {
	// Mode is CaptureMetadata or CaptureFull.
	Mode string `json:"mode"`
	// Prompt and Completion hold the text (full mode only), redacted.
	Prompt     string `json:"prompt,omitempty"`
	Completion string `json:"completion,omitempty"`
	// PromptBytes and CompletionBytes are the sizes before redaction.
	PromptBytes     int `json:"prompt_bytes"`
	CompletionBytes int `json:"completion_bytes"`
	// Messages is the number of chat messages in the request.
	Messages int `json:"messages,omitempty"`
}

// Error classes.
const (
	ErrorClient       = "client_error"        // 4xx caused by the request
	ErrorAuth         = "unauthenticated"     // 401
	ErrorPolicy       = "refused_policy"      // 403 / policy 400s
	ErrorLimit        = "refused_limit"       // the gateway's own limits
	ErrorThrottled    = "throttled"           // backends answered 429
	ErrorUpstream     = "upstream_error"      // 5xx, resets, timeouts
	ErrorDisconnected = "client_disconnected" // the client hung up
	ErrorStreamLost   = "stream_lost"         // the backend dropped a stream
	ErrorUnavailable  = "unavailable"         // the gateway refused (spool full, limit store down) or cut it at shutdown
)

// Sink delivers records somewhere. Write is called by one goroutine per
// sink, with batches in spool order; it returns nil only when the whole
// batch is accepted durably (a retry after an error may resend records the
// sink already has: sinks that can, dedup on RequestID). Close flushes and
// releases the sink within ctx.
type Sink interface {
	Name() string
	Write(ctx context.Context, batch []Record) error
	Close(ctx context.Context) error
}
