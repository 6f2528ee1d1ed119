package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Validate reports every problem in c at once, each prefixed with the path of
// the field (e.g. "backends[1].endpoint: must be an https URL or a loopback
// http URL"), joined with errors.Join. It expects defaults to be filled.
func (c *Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}

	if err := checkAddr(c.Listen.Addr); err != nil {
		bad("listen.addr", "%v", err)
	}
	if c.Listen.AdminAddr != "off" {
		if err := checkAddr(c.Listen.AdminAddr); err != nil {
			bad("listen.admin_addr", "%v (or \"off\")", err)
		} else if c.Listen.AdminAddr == c.Listen.Addr && !strings.HasSuffix(c.Listen.Addr, ":0") {
			bad("listen.admin_addr", "must differ from listen.addr")
		}
	}
	if c.Listen.MaxBodyBytes <= 0 {
		bad("listen.max_body_bytes", "must be positive")
	}
	for path, d := range map[string]int64{
		"listen.read_header_timeout":       int64(c.Listen.ReadHeaderTimeout),
		"listen.read_timeout":              int64(c.Listen.ReadTimeout),
		"listen.write_timeout":             int64(c.Listen.WriteTimeout),
		"listen.idle_timeout":              int64(c.Listen.IdleTimeout),
		"listen.shutdown_timeout":          int64(c.Listen.ShutdownTimeout),
		"upstream.dial_timeout":            int64(c.Upstream.DialTimeout),
		"upstream.response_header_timeout": int64(c.Upstream.ResponseHeaderTimeout),
		"upstream.idle_conn_timeout":       int64(c.Upstream.IdleConnTimeout),
	} {
		if d <= 0 {
			bad(path, "must be a positive duration such as 30s")
		}
	}
	if c.Upstream.MaxIdleConnsPerHost <= 0 {
		bad("upstream.max_idle_conns_per_host", "must be positive")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format", "must be json or text, not %q", c.Log.Format)
	}

	if len(c.Backends) == 0 {
		bad("backends", "at least one backend is required")
	}
	names := map[string]bool{}
	for i, b := range c.Backends {
		p := fmt.Sprintf("backends[%d]", i)
		switch {
		case b.Name == "":
			bad(p+".name", "required")
		case !validName(b.Name):
			bad(p+".name", "%q: use letters, digits, '-', '_' and '.'", b.Name)
		case names[b.Name]:
			bad(p+".name", "%q is used by another backend", b.Name)
		}
		if b.Name != "" {
			names[b.Name] = true
		}
		if err := checkEndpoint(b.Endpoint); err != nil {
			bad(p+".endpoint", "%v", err)
		}
		switch b.Auth.Type {
		case AuthEntra:
			if b.Auth.APIKey != "" {
				bad(p+".auth.api_key", "only for auth type api-key")
			}
		case AuthAPIKey:
			if b.Auth.APIKey == "" {
				bad(p+".auth.api_key", "required for auth type api-key; write it as ${ENV_VAR}")
			}
		case AuthNone, AuthCaller:
			if b.Auth.APIKey != "" {
				bad(p+".auth.api_key", "only for auth type api-key")
			}
			if b.Auth.Type == AuthCaller && !c.Identity.PassThrough.Enabled {
				bad(p+".auth.type", "caller needs identity.pass_through.enabled so callers' Azure OpenAI tokens are accepted")
			}
		default:
			bad(p+".auth.type", "must be entra, api-key, caller or none, not %q", b.Auth.Type)
		}
	}

	if len(c.Models) == 0 {
		bad("models", "at least one model alias is required")
	}
	aliases := map[string]bool{}
	for i, m := range c.Models {
		p := fmt.Sprintf("models[%d]", i)
		switch {
		case m.Name == "":
			bad(p+".name", "required")
		case strings.ContainsAny(m.Name, "/?#%"):
			bad(p+".name", "%q must not contain '/', '?', '#' or '%%'", m.Name)
		case aliases[m.Name]:
			bad(p+".name", "%q is defined twice", m.Name)
		}
		aliases[m.Name] = true
		if len(m.Deployments) == 0 {
			bad(p+".deployments", "at least one deployment is required")
		}
		served := map[string]bool{}
		for j, d := range m.Deployments {
			dp := fmt.Sprintf("%s.deployments[%d]", p, j)
			switch {
			case d.Backend == "":
				bad(dp+".backend", "required")
			case !names[d.Backend]:
				bad(dp+".backend", "no backend is named %q", d.Backend)
			case served[d.Backend]:
				bad(dp+".backend", "%q serves this alias twice", d.Backend)
			}
			served[d.Backend] = true
			if strings.ContainsAny(d.Name, "/?#%") {
				bad(dp+".name", "%q must not contain '/', '?', '#' or '%%'", d.Name)
			}
		}
	}
	c.validatePools(bad, names)
	c.validateIdentity(bad)
	c.validateUsage(bad)
	c.validateLimits(bad)
	c.validateOperations(bad)
	return errors.Join(errs...)
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '-' || c == '_' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') {
			continue
		}
		return false
	}
	return s != ""
}

func checkAddr(addr string) error {
	if addr == "" {
		return errors.New("required, e.g. 127.0.0.1:8080 or :8080")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	return nil
}

// checkEndpoint allows https anywhere and plain http only on loopback, so a
// credential is never sent in the clear across a network.
func checkEndpoint(s string) error {
	const msg = "must be an https URL or a loopback http URL"
	if s == "" {
		return errors.New("required; " + msg)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL; %s", msg)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		// Never echo the URL: what makes it invalid may be a secret.
		return fmt.Errorf("%s://%s... %s without credentials, query or fragment", u.Scheme, u.Hostname(), msg)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
	}
	return fmt.Errorf("%q %s", s, msg)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
