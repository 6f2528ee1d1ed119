package config

import (
	"fmt"
	"slices"
	"time"
)

// Limits configures how per-app limits are enforced: where the counters
// live and what happens when that store fails. The limits themselves are
// set on apps (apps[].limits) and teams (teams[].limits).
type Limits struct {
	// Store is "memory" (default: one gateway) or "redis" (several replicas
	// share counters; they never over-admit).
	Store string `yaml:"store"`
	// Redis is the shared store for store: redis.
	Redis Redis `yaml:"redis"`
	// OnStoreError is what happens while Redis is unreachable: "open"
	// (default: each replica enforces limit / replicas locally) or
	// "closed" (503 until Redis is back).
	OnStoreError string `yaml:"on_store_error"`
	// Replicas is the expected number of gateway replicas, for fail-open
	// local enforcement. Default 1.
	Replicas int `yaml:"replicas"`
	// TimeZone names the IANA zone whose calendar hours, days and months
	// quotas and budgets reset on. Default UTC.
	TimeZone string `yaml:"time_zone"`
	// QuotaStatus is the status of a refusal for an exhausted quota or
	// budget: 429 (default) or 403 (as APIM's quota policy answers).
	QuotaStatus int `yaml:"quota_status"`
	// Window is the span of the rolling window rpm and tpm are counted
	// over: they are budgets per window. Default 1m, as Azure counts; a
	// shorter window only makes sense for tests and demos.
	Window time.Duration `yaml:"window"`
	// CompletionEstimate is the completion tokens reserved for a request
	// that names no max_tokens; settled to the actual count afterwards.
	// Default 1024.
	CompletionEstimate int64 `yaml:"completion_estimate"`
}

// Redis is a Redis server.
type Redis struct {
	// Addr is host:port. Required for store: redis.
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	// Password, normally "${REDIS_PASSWORD}".
	Password string `yaml:"password" secret:"true"`
	DB       int    `yaml:"db"`
	// TLS connects with TLS (Azure Cache for Redis: port 6380).
	TLS bool `yaml:"tls"`
	// KeyPrefix namespaces the gateway's keys. Default "tokengate:".
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds one store call on the request path; past it the store
	// counts as unreachable for that request. Default 250ms.
	Timeout time.Duration `yaml:"timeout"`
}

// Limit is one limit on an app or a team. Zero fields are not enforced.
type Limit struct {
	// Per is "" (the app or team as a whole) or "user": each caller (Entra
	// object id) of the app gets its own counters.
	Per string `yaml:"per"`
	// Model restricts the limit to one model alias (app limits only).
	Model string `yaml:"model"`
	// RPM is requests per minute.
	RPM int64 `yaml:"rpm"`
	// TPM is tokens (prompt + completion) per minute.
	TPM int64 `yaml:"tpm"`
	// TokensPerHour, TokensPerDay and TokensPerMonth are quotas that reset
	// at the start of each calendar hour, day and month in limits.time_zone.
	TokensPerHour  int64 `yaml:"tokens_per_hour"`
	TokensPerDay   int64 `yaml:"tokens_per_day"`
	TokensPerMonth int64 `yaml:"tokens_per_month"`
	// BudgetPerMonth caps the month's cost (the models' price table, in
	// their currency).
	BudgetPerMonth float64 `yaml:"budget_per_month"`
	// Shadow evaluates the limit and logs what it would have refused, but
	// refuses nothing: for rolling limits out safely.
	Shadow bool `yaml:"shadow"`
}

// Team groups apps (apps[].team) for limits.
type Team struct {
	// Name matches apps[].team. Required, unique.
	Name string `yaml:"name"`
	// Limits apply to the team's apps together.
	Limits []Limit `yaml:"limits"`
}

func (l *Limits) fill() {
	if l.Store == "" {
		l.Store = "memory"
	}
	if l.OnStoreError == "" {
		l.OnStoreError = "open"
	}
	if l.Replicas == 0 {
		l.Replicas = 1
	}
	if l.TimeZone == "" {
		l.TimeZone = "UTC"
	}
	if l.QuotaStatus == 0 {
		l.QuotaStatus = 429
	}
	if l.CompletionEstimate == 0 {
		l.CompletionEstimate = 1024
	}
	if l.Window == 0 {
		l.Window = time.Minute
	}
	if l.Redis.KeyPrefix == "" {
		l.Redis.KeyPrefix = "tokengate:"
	}
	if l.Redis.Timeout == 0 {
		l.Redis.Timeout = 250 * time.Millisecond
	}
}

// Location is the time zone quotas reset in (validated).
func (l *Limits) Location() *time.Location {
	loc, err := time.LoadLocation(l.TimeZone)
	if err != nil {
		return time.UTC
	}
	return loc
}

func (c *Config) validateLimits(bad func(path, format string, args ...any)) {
	l := &c.Limits
	switch l.Store {
	case "memory":
	case "redis":
		if l.Redis.Addr == "" {
			bad("limits.redis.addr", "required with store: redis (host:port)")
		}
	default:
		bad("limits.store", "must be memory or redis, not %q", l.Store)
	}
	if l.OnStoreError != "open" && l.OnStoreError != "closed" {
		bad("limits.on_store_error", "must be open or closed, not %q", l.OnStoreError)
	}
	if l.Replicas < 1 {
		bad("limits.replicas", "must be at least 1")
	}
	if _, err := time.LoadLocation(l.TimeZone); err != nil {
		bad("limits.time_zone", "%q is not an IANA time zone (e.g. Europe/Paris)", l.TimeZone)
	}
	if l.QuotaStatus != 429 && l.QuotaStatus != 403 {
		bad("limits.quota_status", "must be 429 or 403")
	}
	if l.Window < time.Second || l.Window > time.Hour {
		bad("limits.window", "must be between 1s and 1h (default 1m)")
	}
	if l.CompletionEstimate < 0 {
		bad("limits.completion_estimate", "must not be negative")
	}
	if l.Redis.Timeout <= 0 {
		bad("limits.redis.timeout", "must be a positive duration such as 250ms")
	}
	teams := map[string]bool{}
	for i, t := range c.Teams {
		p := fmt.Sprintf("teams[%d]", i)
		switch {
		case t.Name == "":
			bad(p+".name", "required")
		case teams[t.Name]:
			bad(p+".name", "%q is used by another team", t.Name)
		}
		teams[t.Name] = true
		for j, lim := range t.Limits {
			c.validateLimit(bad, fmt.Sprintf("%s.limits[%d]", p, j), lim, false)
		}
	}
	for i, a := range c.Apps {
		for j, lim := range a.Limits {
			c.validateLimit(bad, fmt.Sprintf("apps[%d].limits[%d]", i, j), lim, true)
		}
	}
}

func (c *Config) validateLimit(bad func(path, format string, args ...any), p string, l Limit, app bool) {
	if l.Per != "" && l.Per != "user" {
		bad(p+".per", "must be user or empty, not %q", l.Per)
	}
	if l.Model != "" {
		if !app {
			bad(p+".model", "model limits belong on an app")
		} else if !slices.ContainsFunc(c.Models, func(m Model) bool { return m.Name == l.Model }) {
			bad(p+".model", "%q is not a models[] alias", l.Model)
		}
	}
	for name, v := range map[string]int64{"rpm": l.RPM, "tpm": l.TPM, "tokens_per_hour": l.TokensPerHour,
		"tokens_per_day": l.TokensPerDay, "tokens_per_month": l.TokensPerMonth} {
		if v < 0 {
			bad(p+"."+name, "must not be negative")
		}
	}
	if l.BudgetPerMonth < 0 {
		bad(p+".budget_per_month", "must not be negative")
	}
	if l.RPM == 0 && l.TPM == 0 && l.TokensPerHour == 0 && l.TokensPerDay == 0 && l.TokensPerMonth == 0 && l.BudgetPerMonth == 0 {
		bad(p, "sets no limit: give rpm, tpm, tokens_per_hour/day/month or budget_per_month")
	}
}
