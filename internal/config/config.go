// Package config owns tokengate's configuration: one documented struct tree,
// its defaults, environment substitution, loading and validation.
//
// A Config is immutable once loaded; the runtime built from it is swapped as a
// whole when the file changes, never edited in place.
package config

import (
	"time"
)

// DefaultAPIVersion is the Azure OpenAI data-plane api-version sent upstream
// when neither the deployment nor the backend names one. 2024-10-21 is the
// latest GA version that every current Azure OpenAI resource serves.
const DefaultAPIVersion = "2024-10-21"

// CognitiveServicesScope is the Entra ID scope for Azure OpenAI data-plane calls.
const CognitiveServicesScope = "https://cognitiveservices.azure.com/.default"

// Config is the whole configuration tree. Field comments give each default.
type Config struct {
	// Listen configures the client-facing and admin listeners.
	Listen Listen `yaml:"listen"`
	// Upstream configures how the gateway talks to backends.
	Upstream Upstream `yaml:"upstream"`
	// Backends are the Azure OpenAI (or compatible) instances. At least one.
	Backends []Backend `yaml:"backends"`
	// Pools group backends for balancing. When empty, one pool "default"
	// holds every backend at priority 1.
	Pools []Pool `yaml:"pools"`
	// Models maps the aliases clients name to per-backend deployments.
	Models []Model `yaml:"models"`
	// Identity configures inbound authentication.
	Identity Identity `yaml:"identity"`
	// Apps registers the calling applications.
	Apps []App `yaml:"apps"`
	// Roles defines custom roles beside the built-in openai-user and
	// openai-contributor.
	Roles []Role `yaml:"roles"`
	// RoleAssignments grant roles by app id, app role or group.
	RoleAssignments []RoleAssignment `yaml:"role_assignments"`
	// Teams carry limits shared by their apps (apps[].team).
	Teams []Team `yaml:"teams"`
	// Limits configures where limit counters live and quota periods.
	Limits Limits `yaml:"limits"`
	// Usage configures usage records: spool, sinks, capture.
	Usage Usage `yaml:"usage"`
	// Admin protects the admin listener when it is exposed.
	Admin Admin `yaml:"admin"`
	// Telemetry configures OpenTelemetry trace export.
	Telemetry Telemetry `yaml:"telemetry"`
	// Reload configures hot reload of the config file.
	Reload Reload `yaml:"reload"`
	// Log configures the structured log.
	Log Log `yaml:"log"`
}

// Listen configures the HTTP listeners.
type Listen struct {
	// Addr is the client-facing address. Default 127.0.0.1:8080.
	Addr string `yaml:"addr"`
	// AdminAddr serves health, /metrics and /admin. Default
	// 127.0.0.1:8081; "off" disables it. Beyond loopback it needs admin.keys
	// or admin.role.
	AdminAddr string `yaml:"admin_addr"`
	// MaxBodyBytes caps a request body; larger bodies get 413 before any
	// upstream contact. Default 16 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ReadHeaderTimeout bounds reading request headers. Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request, body included. Default 60s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds each write to a client (a per-write deadline, so a
	// long stream is never cut while it makes progress). Default 30s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes idle keep-alive connections. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ShutdownTimeout is how long in-flight requests (streams included)
	// get to finish on shutdown, after the listener stops accepting.
	// Requests still running then are cut, recorded, and make the exit
	// status non-zero. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// ShutdownDelay is how long the listener keeps accepting after
	// /readyz has turned unready on SIGTERM, so load balancers stop sending
	// before connections are refused (e.g. 5s behind a Kubernetes Service).
	// Default 0.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
}

// Upstream configures the connection to backends, shared by all of them.
type Upstream struct {
	// DialTimeout bounds a TCP+TLS connection to a backend. Default 10s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ResponseHeaderTimeout bounds the wait for a backend's response headers
	// (a non-streaming completion sends them only when it is done), answered
	// with 504 when exceeded. Default 5m.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// MaxIdleConnsPerHost is the keep-alive pool per backend. Default 256.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host"`
	// IdleConnTimeout closes idle upstream connections. Default 90s.
	IdleConnTimeout time.Duration `yaml:"idle_conn_timeout"`
	// BackendHeader adds x-tokengate-backend (the backend's name, never
	// its URL) to responses. Default true.
	BackendHeader *bool `yaml:"backend_header"`
}

// Backend is one Azure OpenAI instance.
type Backend struct {
	// Name identifies the backend in logs, headers and metrics. Required,
	// unique; letters, digits, '-', '_' and '.'.
	Name string `yaml:"name"`
	// Endpoint is the instance's base URL, e.g.
	// https://contoso-eastus.openai.azure.com. Required; https, or http on a
	// loopback address (simulators, local proxies).
	Endpoint string `yaml:"endpoint"`
	// APIVersion sent upstream for this backend's deployments unless a
	// deployment overrides it. Default DefaultAPIVersion.
	APIVersion string `yaml:"api_version"`
	// Auth is the gateway's own credential for this backend.
	Auth BackendAuth `yaml:"auth"`
}

// Backend credential types.
const (
	AuthEntra  = "entra"   // Entra ID token from azidentity's default chain
	AuthAPIKey = "api-key" // a static key, normally "${ENV_VAR}"
	AuthNone   = "none"    // nothing (simulators, keyless local proxies)
	// AuthCaller forwards the caller's own Entra token so the instance's
	// RBAC applies; needs identity.pass_through.
	AuthCaller = "caller"
)

// BackendAuth is how the gateway authenticates to a backend. Client
// credentials are never forwarded.
type BackendAuth struct {
	// Type is "entra" (default), "api-key", "caller" or "none".
	Type string `yaml:"type"`
	// APIKey is required for type api-key; write it as "${SOME_ENV_VAR}" so
	// the secret stays out of the file.
	APIKey string `yaml:"api_key" secret:"true"`
	// Scope requested for type entra. Default CognitiveServicesScope.
	Scope string `yaml:"scope"`
}

// Model is an alias clients name (in the Azure path or the body's "model")
// and the deployments that serve it.
type Model struct {
	// Name is the alias, e.g. gpt-4o. Required, unique.
	Name string `yaml:"name"`
	// Pool pins the alias to a pool, overriding the app's pool.
	Pool string `yaml:"pool"`
	// Deployments lists where the alias is served. At least one.
	Deployments []Deployment `yaml:"deployments"`
	// Price is the alias's price per 1M tokens for chargebacks; without
	// one, the alias's records cost 0.
	Price *Price `yaml:"price"`
}

// Deployment is one backend's deployment serving a model alias.
type Deployment struct {
	// Backend names an entry of backends. Required.
	Backend string `yaml:"backend"`
	// Name is the deployment name on that backend. Default: the alias.
	Name string `yaml:"name"`
	// APIVersion overrides the backend's api-version for this deployment.
	APIVersion string `yaml:"api_version"`
}

// Log configures the structured log (log/slog).
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or text.
	Format string `yaml:"format"`
}

// Defaults returns a Config with every default set and no backends.
func Defaults() Config {
	return Config{
		Listen: Listen{
			Addr:              "127.0.0.1:8080",
			AdminAddr:         "127.0.0.1:8081",
			MaxBodyBytes:      16 << 20,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       60 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       120 * time.Second,
			ShutdownTimeout:   30 * time.Second,
		},
		Upstream: Upstream{
			DialTimeout:           10 * time.Second,
			ResponseHeaderTimeout: 5 * time.Minute,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
		},
		Identity: Identity{
			Leeway:             60 * time.Second,
			JWKSRefresh:        time.Hour,
			UnknownKIDCooldown: 5 * time.Minute,
			UnknownApps:        "refuse",
			TokenCacheSize:     10000,
		},
		Log: Log{Level: "info", Format: "json"},
	}
}

// fill sets the defaults that depend on other fields; it runs after decoding.
func (c *Config) fill() {
	if len(c.Pools) == 0 {
		p := Pool{Name: DefaultPool}
		for _, b := range c.Backends {
			p.Backends = append(p.Backends, PoolMember{Backend: b.Name})
		}
		c.Pools = []Pool{p}
	}
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.Strategy == "" {
			p.Strategy = "weighted"
		}
		for j := range p.Backends {
			if p.Backends[j].Priority == 0 {
				p.Backends[j].Priority = 1
			}
			if p.Backends[j].Weight == 0 {
				p.Backends[j].Weight = 1
			}
		}
		br := &p.Breaker
		if len(br.TripOn) == 0 {
			br.TripOn = []string{"429", "500-599"}
		}
		if br.Failures == 0 {
			br.Failures = 1
		}
		if br.Interval == 0 {
			br.Interval = 10 * time.Second
		}
		if br.TripDuration == 0 {
			br.TripDuration = 10 * time.Second
		}
		if p.Retry.Attempts == 0 {
			p.Retry.Attempts = 3
		}
		if p.Retry.Budget == 0 {
			p.Retry.Budget = 60 * time.Second
		}
	}
	for i := range c.Backends {
		b := &c.Backends[i]
		if b.APIVersion == "" {
			b.APIVersion = DefaultAPIVersion
		}
		if b.Auth.Type == "" {
			b.Auth.Type = AuthEntra
		}
		if b.Auth.Type == AuthEntra && b.Auth.Scope == "" {
			b.Auth.Scope = CognitiveServicesScope
		}
	}
	if e := c.Identity.Entra; e != nil {
		if e.AuthorityHost == "" {
			e.AuthorityHost = "https://login.microsoftonline.com"
		}
		if e.V1IssuerHost == "" {
			e.V1IssuerHost = "https://sts.windows.net"
		}
	}
	for i := range c.Identity.Issuers {
		if c.Identity.Issuers[i].AppClaim == "" {
			c.Identity.Issuers[i].AppClaim = "azp"
		}
	}
	c.Usage.fill()
	c.Limits.fill()
	c.fillOperations()
	for i := range c.Models {
		if p := c.Models[i].Price; p != nil {
			if p.CachedInput == nil {
				p.CachedInput = &p.Input
			}
			if p.Currency == "" {
				p.Currency = "USD"
			}
		}
	}
	for i := range c.Apps {
		if c.Apps[i].Capture == "" {
			c.Apps[i].Capture = "off"
		}
		if c.Apps[i].MaxTokens.Cap > 0 && c.Apps[i].MaxTokens.Mode == "" {
			c.Apps[i].MaxTokens.Mode = "reject"
		}
	}
	for i := range c.Models {
		m := &c.Models[i]
		for j := range m.Deployments {
			if m.Deployments[j].Name == "" {
				m.Deployments[j].Name = m.Name
			}
		}
	}
}

// DefaultPool names the pool built when the config lists none.
const DefaultPool = "default"

// Backend returns the backend called name, or nil.
func (c *Config) Backend(name string) *Backend {
	for i := range c.Backends {
		if c.Backends[i].Name == name {
			return &c.Backends[i]
		}
	}
	return nil
}
