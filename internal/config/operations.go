package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Admin protects the admin listener (/metrics and /admin/*). On a loopback
// admin_addr (the default) it is open to local callers; on any other
// address every request but /healthz and /readyz must present an admin key
// or an Entra ID / OIDC token carrying Role, and config validation insists
// that one of them is configured.
type Admin struct {
	// Role is the app role (the token's roles claim) that grants admin
	// access to bearer tokens the identity section accepts. Default: none
	// (tokens are not accepted on the admin listener).
	Role string `yaml:"role"`
	// Keys are admin keys, sent as "Authorization: Bearer <key>". Write
	// them as "${ENV_VAR}"; each must be at least 32 characters. Compared in
	// constant time.
	Keys []string `yaml:"keys" secret:"true"`
	// Profiling serves Go's pprof profiles under /debug/pprof/ on the admin
	// listener (behind admin auth when it is exposed). Default false. Read
	// at start: a reload does not add or remove it.
	Profiling bool `yaml:"profiling"`
}

// Telemetry configures OpenTelemetry export.
type Telemetry struct {
	// Traces configures trace export over OTLP/HTTP. Off unless an
	// endpoint is set.
	Traces Traces `yaml:"traces"`
}

// Traces configures the OTLP/HTTP trace exporter. Spans follow the
// OpenTelemetry GenAI semantic conventions; W3C trace context is read from
// clients and propagated to backends.
type Traces struct {
	// Endpoint is the collector's OTLP/HTTP base URL, e.g.
	// http://127.0.0.1:4318 (spans are posted to Endpoint + /v1/traces).
	// Empty (default): no traces. https, or http on loopback.
	Endpoint string `yaml:"endpoint"`
	// Headers are sent with every export (e.g. an API key for a hosted
	// collector); write secrets as "${ENV_VAR}".
	Headers map[string]string `yaml:"headers" secret:"true"`
	// SampleRatio is the share of new traces recorded, 0 to 1. Default 1.
	// A client's sampled flag in traceparent is honoured.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name resource attribute. Default tokengate.
	ServiceName string `yaml:"service_name"`
	// Timeout bounds one export. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// Enabled reports whether traces are exported.
func (t Traces) Enabled() bool { return t.Endpoint != "" }

// Reload configures hot reload of the config file.
type Reload struct {
	// Watch reloads when the config file changes (an atomic rename-replace
	// included), as SIGHUP and POST /admin/reload do. Default true.
	Watch *bool `yaml:"watch"`
}

// WatchEnabled reports whether the file is watched.
func (r Reload) WatchEnabled() bool { return r.Watch == nil || *r.Watch }

func (c *Config) fillOperations() {
	t := &c.Telemetry.Traces
	if t.SampleRatio == nil {
		one := 1.0
		t.SampleRatio = &one
	}
	if t.ServiceName == "" {
		t.ServiceName = "tokengate"
	}
	if t.Timeout == 0 {
		t.Timeout = 10 * time.Second
	}
}

// AdminExposed reports whether the admin listener is bound beyond loopback.
func (c *Config) AdminExposed() bool {
	if c.Listen.AdminAddr == "off" {
		return false
	}
	host, _, err := net.SplitHostPort(c.Listen.AdminAddr)
	return err != nil || !isLoopback(host)
}

func (c *Config) validateOperations(bad func(path, format string, args ...any)) {
	if c.Listen.ShutdownDelay < 0 {
		bad("listen.shutdown_delay", "must not be negative")
	}
	for i, k := range c.Admin.Keys {
		if len(k) < 32 {
			bad(fmt.Sprintf("admin.keys[%d]", i), "must be at least 32 characters (e.g. from: openssl rand -hex 32)")
		}
	}
	if c.Admin.Role != "" && c.Identity.Entra == nil && len(c.Identity.Issuers) == 0 {
		bad("admin.role", "needs identity.entra or identity.issuers to verify admin tokens")
	}
	if c.AdminExposed() && len(c.Admin.Keys) == 0 && c.Admin.Role == "" {
		bad("listen.admin_addr", "%q is not a loopback address: set admin.keys or admin.role so /metrics and /admin are protected", c.Listen.AdminAddr)
	}
	t := c.Telemetry.Traces
	if t.Endpoint != "" {
		if err := checkEndpoint(t.Endpoint); err != nil {
			bad("telemetry.traces.endpoint", "%v", err)
		} else if u, _ := url.Parse(t.Endpoint); strings.HasSuffix(u.Path, "/v1/traces") {
			bad("telemetry.traces.endpoint", "give the collector's base URL; /v1/traces is added")
		}
	}
	if r := t.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		bad("telemetry.traces.sample_ratio", "must be between 0 and 1")
	}
	if t.Timeout < 0 {
		bad("telemetry.traces.timeout", "must be a positive duration such as 10s")
	}
}
