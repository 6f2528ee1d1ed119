package upstream

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// Backend is one configured instance, ready to receive requests. It is
// immutable and safe for concurrent use.
type Backend struct {
	// Name is the configured name: shown in logs and headers, never the URL.
	Name string
	// URL is the instance's base URL.
	URL *url.URL
	// Credential is the gateway's own credential for this instance.
	Credential Credential
	// PassCaller forwards the caller's own Azure OpenAI token instead
	// (auth type "caller"), so the instance's RBAC decides.
	PassCaller bool
}

// NewBackend builds a Backend from validated config.
func NewBackend(cfg config.Backend) (*Backend, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", cfg.Name, err)
	}
	u.Path = ""
	cred, err := NewCredential(cfg.Auth)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", cfg.Name, err)
	}
	return &Backend{Name: cfg.Name, URL: u, Credential: cred, PassCaller: cfg.Auth.Type == config.AuthCaller}, nil
}

// Target is where one request goes: a backend and, for model-routed
// operations, the deployment and api-version to use there.
type Target struct {
	Backend *Backend
	// Deployment is the backend's deployment name; empty for pass-through
	// operations, which keep the client's path.
	Deployment string
	// APIVersion replaces the client's api-version for routed operations.
	APIVersion string
}

// NewTransport returns the keep-alive transport shared by all backends. It
// never decompresses (bodies pass through as the backend sent them) and
// keeps a large idle pool per host so a busy gateway does not redial.
func NewTransport(cfg config.Upstream) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          0, // no global cap; the per-host cap applies
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}
