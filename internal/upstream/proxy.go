package upstream

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"

	"github.com/tokengate/tokengate/internal/openai"
)

// Call is one request to forward.
type Call struct {
	Target
	// Route is what the client's path said.
	Route openai.Route
	// RequestID is sent upstream as x-ms-client-request-id.
	RequestID string
	// CallerToken is the caller's own Azure OpenAI token, forwarded only to
	// backends with PassCaller; empty when the caller has none.
	CallerToken string
}

// clientCredentialHeaders are never forwarded: the gateway authenticates to
// backends with its own credential.
var clientCredentialHeaders = []string{"Api-Key", "Authorization", "Ocp-Apim-Subscription-Key"}

// clientCredentialParams are removed from the query for the same reason.
var clientCredentialParams = []string{"api-key", "subscription-key"}

// Proxy forwards calls to backends and streams responses back: JSON bodies
// are copied through, event streams are flushed once per event. A client
// that hangs up cancels the upstream request. Safe for concurrent use.
type Proxy struct {
	rp  *httputil.ReverseProxy
	log *slog.Logger
}

type callKey struct{}

type call struct {
	Call
	cred http.Header
}

// NewProxy builds a Proxy over transport.
func NewProxy(transport http.RoundTripper, logger *slog.Logger) *Proxy {
	p := &Proxy{log: logger}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      transport,
		ModifyResponse: modifyResponse,
		ErrorHandler:   p.errorHandler,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BufferPool:     bufferPool{},
	}
	return p
}

// Forward sends r to c's backend and copies the response to w. Errors before
// the response starts are written to w in the Azure error shape.
func (p *Proxy) Forward(w http.ResponseWriter, r *http.Request, c Call) {
	cred := make(http.Header, 1)
	if c.Backend.PassCaller {
		if c.CallerToken == "" {
			openai.WriteError(w, openai.Errorf(http.StatusForbidden, "PermissionDenied",
				"backend %s accepts only the caller's own Azure OpenAI token: authenticate with a token for https://cognitiveservices.azure.com (az account get-access-token --resource https://cognitiveservices.azure.com)",
				c.Backend.Name))
			return
		}
		cred.Set("Authorization", "Bearer "+c.CallerToken)
	} else if err := c.Backend.Credential.Authorize(r.Context(), cred); err != nil {
		p.log.Error("backend credential failed", slog.String("request_id", c.RequestID),
			slog.String("backend", c.Backend.Name), slog.Any("error", err))
		openai.WriteError(w, &openai.Error{Status: http.StatusBadGateway, Code: "upstream_credential",
			Message: "the gateway could not obtain its credential for backend " + c.Backend.Name + "; its operator should check the gateway log",
			Err:     err})
		return
	}
	ctx := context.WithValue(r.Context(), callKey{}, &call{Call: c, cred: cred})
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}

func rewrite(pr *httputil.ProxyRequest) {
	c := pr.In.Context().Value(callKey{}).(*call)
	out, b := pr.Out, c.Backend
	out.URL.Scheme, out.URL.Host, out.Host = b.URL.Scheme, b.URL.Host, b.URL.Host

	query := out.URL.RawQuery
	if query != "" || c.Deployment != "" {
		q := out.URL.Query()
		for _, k := range clientCredentialParams {
			q.Del(k)
		}
		if c.Deployment != "" {
			q.Set("api-version", c.APIVersion)
		}
		out.URL.RawQuery = q.Encode()
	}
	switch {
	case c.Deployment != "":
		out.URL.Path = "/openai/deployments/" + c.Deployment + "/" + c.Route.Suffix
		out.URL.RawPath = ""
	case strings.HasPrefix(out.URL.Path, "/v1/"):
		// OpenAI-style pass-through: Azure serves it under /openai/v1/.
		out.URL.Path = "/openai" + out.URL.Path
		if out.URL.RawPath != "" {
			out.URL.RawPath = "/openai" + out.URL.RawPath
		}
	}

	h := out.Header
	for _, k := range clientCredentialHeaders {
		h.Del(k)
	}
	// Bodies pass through as the backend sends them; asking for identity
	// keeps streams flushable and usage readable.
	h.Del("Accept-Encoding")
	for k, v := range c.cred {
		h[k] = v
	}
	h.Set("X-Ms-Client-Request-Id", c.RequestID)
}

func modifyResponse(resp *http.Response) error {
	// The client sees the gateway's request id; Azure's own stays in
	// apim-request-id.
	resp.Header.Del("X-Request-Id")
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body = openai.NewEventReader(resp.Body)
	}
	return nil
}

func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	c := r.Context().Value(callKey{}).(*call)
	e := openai.AsError(err)
	if e.Status != openai.StatusClientClosed {
		p.log.Warn("upstream request failed", slog.String("request_id", c.RequestID),
			slog.String("backend", c.Backend.Name), slog.Int("status", e.Status), slog.Any("error", err))
	}
	openai.WriteError(w, e)
}

// bufferPool recycles ReverseProxy's copy buffers.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
