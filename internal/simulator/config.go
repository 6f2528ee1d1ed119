package simulator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the simulator's configuration file: a list of Azure OpenAI resources
// ("instances"), each served on its own listener.
type Config struct {
	// Instances are the simulated resources. At least one is required.
	Instances []InstanceConfig `yaml:"instances"`
}

// InstanceConfig describes one simulated Azure OpenAI resource.
type InstanceConfig struct {
	// Name identifies the instance in logs and observations, e.g. "ptu-eastus".
	// Required, unique within a Config.
	Name string `yaml:"name"`
	// Listen is the TCP address [Instance.Start] listens on. Default
	// "127.0.0.1:0" (loopback, a free port).
	Listen string `yaml:"listen"`
	// APIKey, when set, is accepted in the "api-key" header (compared in
	// constant time). On the v1 routes (/openai/v1/..., /v1/...) it is also
	// accepted as "Authorization: Bearer <key>", as Azure does there.
	APIKey string `yaml:"api_key"`
	// BearerToken, when set, is accepted as "Authorization: Bearer <token>" on
	// every route, standing in for a Microsoft Entra ID token. When both APIKey
	// and BearerToken are empty, requests are not authenticated.
	BearerToken string `yaml:"bearer_token"`
	// TLS, when set, serves https (with HTTP/2, as Azure does) using this
	// certificate and key, PEM files. Default: plain http.
	TLS *TLS `yaml:"tls"`
	// Latency shapes how long responses take.
	Latency Latency `yaml:"latency"`
	// Faults injects failures.
	Faults Faults `yaml:"faults"`
	// RateLimitWindow is the span of the rolling window over which every
	// deployment's RPM and TPM are enforced: each is a budget per window, so
	// with rate_limit_window "2s" and rpm 10 a deployment admits 10 requests per
	// 2 seconds. The limits keep their per-minute names because a minute is
	// what Azure uses; shorter windows let tests watch limits recover quickly.
	// Default 60s.
	RateLimitWindow time.Duration `yaml:"rate_limit_window"`
	// CompletionTokens is the natural length of a generated completion, used
	// when the request's max_tokens / max_completion_tokens is absent or larger.
	// Default 64.
	CompletionTokens int `yaml:"completion_tokens"`
	// Deployments are the model deployments of this resource. At least one is
	// required.
	Deployments []DeploymentConfig `yaml:"deployments"`
}

// TLS names an instance's certificate and private key (PEM files).
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Latency shapes response timing. Durations are Go duration strings in YAML
// ("200ms", "1.5s").
type Latency struct {
	// TimeToFirstToken is the delay before the first generated token (streaming)
	// or before generation starts (non-streaming). Default 0.
	TimeToFirstToken time.Duration `yaml:"time_to_first_token"`
	// TokensPerSecond paces generation after the first token; a non-streaming
	// response is held back for the whole generation time. 0 means unlimited.
	TokensPerSecond float64 `yaml:"tokens_per_second"`
	// Extra is added before any response, errors included. Default 0.
	Extra time.Duration `yaml:"extra"`
}

// Faults injects failures. Rates are fractions in [0, 1], drawn independently
// per request.
type Faults struct {
	// ErrorRate is the fraction of admitted requests answered 500 or 503 (half
	// each, at random) in Azure's error shape instead of a completion.
	ErrorRate float64 `yaml:"error_rate"`
	// ResetRate is the fraction of streaming responses whose connection is cut
	// mid-stream, after about half of the content: the client sees an abrupt
	// connection close (unexpected EOF), never [DONE].
	ResetRate float64 `yaml:"reset_rate"`
	// ExtraLatency is added before the response of a fraction
	// ExtraLatencyRate of requests, to simulate a slow backend.
	ExtraLatency time.Duration `yaml:"extra_latency"`
	// ExtraLatencyRate is the fraction of requests delayed by ExtraLatency.
	ExtraLatencyRate float64 `yaml:"extra_latency_rate"`
	// ThrottleRate is the fraction of valid requests to a deployment answered
	// 429 exactly as a rate limit would answer them (Azure's body, retry-after
	// and retry-after-ms, the deployment's x-ratelimit-* headers as they stand),
	// whatever the deployment's limits. It is drawn before the rate limiter, so
	// a throttled request is not charged to the RPM/TPM budget. Default 0.
	ThrottleRate float64 `yaml:"throttle_rate"`
	// ThrottleRetryAfter is the wait a ThrottleRate 429 asks for: retry-after
	// carries it in whole seconds rounded up, retry-after-ms in milliseconds
	// rounded up. Zero means 1s.
	ThrottleRetryAfter time.Duration `yaml:"throttle_retry_after"`
}

// DeploymentConfig is one model deployment.
type DeploymentConfig struct {
	// Name is the deployment name used in URLs (/openai/deployments/{name}/...)
	// and as "model" on the v1 routes, e.g. "gpt-4o-ptu". Required, unique within
	// the instance, and free of '/'.
	Name string `yaml:"name"`
	// Model is the underlying model, e.g. "gpt-4o", "gpt-4o-mini",
	// "text-embedding-3-small". It is reported as the responses' "model", picks
	// the tokenizer, and decides the operations the deployment supports:
	// models whose name contains "embedding" serve only embeddings, all others
	// only chat completions and completions. Required.
	Model string `yaml:"model"`
	// RPM is the requests-per-minute limit; 0 means unlimited.
	RPM int `yaml:"rpm"`
	// TPM is the tokens-per-minute limit; 0 means unlimited.
	TPM int `yaml:"tpm"`
}

// Defaults for unset fields.
const (
	DefaultListen           = "127.0.0.1:0"
	DefaultCompletionTokens = 64
	DefaultRateLimitWindow  = time.Minute
)

// LoadConfig reads, parses and validates a YAML configuration file. Unknown
// keys are errors. The returned Config has defaults applied. A validation error
// lists every problem, one per line, each prefixed by the field's path, e.g.
// "instances[1].deployments[0].name: required".
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("simulator: read config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("simulator: config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig is [LoadConfig] for YAML already in memory.
func ParseConfig(data []byte) (Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("empty configuration: want an instances list")
		}
		return Config{}, fmt.Errorf("parse: %w", err)
	}
	for i := range cfg.Instances {
		cfg.Instances[i] = cfg.Instances[i].withDefaults()
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate reports every problem of the configuration at once, joined with
// errors.Join, each prefixed by its field path.
func (c Config) Validate() error {
	var errs []error
	if len(c.Instances) == 0 {
		errs = append(errs, errors.New("instances: at least one instance is required"))
	}
	seen := make(map[string]int, len(c.Instances))
	for i, inst := range c.Instances {
		prefix := fmt.Sprintf("instances[%d].", i)
		errs = append(errs, inst.validate(prefix)...)
		if inst.Name == "" {
			continue
		}
		if j, dup := seen[inst.Name]; dup {
			errs = append(errs, fmt.Errorf("%sname: %q is already used by instances[%d]", prefix, inst.Name, j))
		} else {
			seen[inst.Name] = i
		}
	}
	return errors.Join(errs...)
}

// Validate reports every problem of one instance's configuration, with paths
// relative to the instance ("deployments[0].name: required").
func (c InstanceConfig) Validate() error {
	return errors.Join(c.validate("")...)
}

func (c InstanceConfig) validate(prefix string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, field, fmt.Sprintf(format, args...)))
	}
	if strings.TrimSpace(c.Name) == "" {
		add("name", "required")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			add("listen", "must be host:port, e.g. 127.0.0.1:8081 (%v)", err)
		}
	}
	if c.TLS != nil && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		add("tls", "needs both cert_file and key_file")
	}
	if c.CompletionTokens < 0 {
		add("completion_tokens", "must not be negative, got %d", c.CompletionTokens)
	}
	if c.RateLimitWindow < 0 {
		add("rate_limit_window", "must not be negative (0 means %s), got %s", DefaultRateLimitWindow, c.RateLimitWindow)
	}
	errs = append(errs, c.Latency.validate(prefix+"latency.")...)
	errs = append(errs, c.Faults.validate(prefix+"faults.")...)
	if len(c.Deployments) == 0 {
		add("deployments", "at least one deployment is required")
	}
	seen := make(map[string]int, len(c.Deployments))
	for i, d := range c.Deployments {
		p := fmt.Sprintf("deployments[%d].", i)
		switch {
		case strings.TrimSpace(d.Name) == "":
			add(p+"name", "required")
		case strings.ContainsAny(d.Name, "/?#"):
			add(p+"name", "%q must not contain '/', '?' or '#': it is a URL path segment", d.Name)
		default:
			if j, dup := seen[d.Name]; dup {
				add(p+"name", "%q is already used by deployments[%d]", d.Name, j)
			} else {
				seen[d.Name] = i
			}
		}
		if strings.TrimSpace(d.Model) == "" {
			add(p+"model", "required (e.g. gpt-4o, text-embedding-3-small)")
		}
		if d.RPM < 0 {
			add(p+"rpm", "must not be negative (0 means unlimited), got %d", d.RPM)
		}
		if d.TPM < 0 {
			add(p+"tpm", "must not be negative (0 means unlimited), got %d", d.TPM)
		}
	}
	return errs
}

// Validate reports every problem of l, joined with errors.Join.
func (l Latency) Validate() error { return errors.Join(l.validate("")...) }

func (l Latency) validate(prefix string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, field, fmt.Sprintf(format, args...)))
	}
	if l.TimeToFirstToken < 0 {
		add("time_to_first_token", "must not be negative, got %s", l.TimeToFirstToken)
	}
	if !(l.TokensPerSecond >= 0) { // also rejects NaN
		add("tokens_per_second", "must not be negative (0 means unlimited), got %g", l.TokensPerSecond)
	}
	if l.Extra < 0 {
		add("extra", "must not be negative, got %s", l.Extra)
	}
	return errs
}

// Validate reports every problem of f, joined with errors.Join.
func (f Faults) Validate() error { return errors.Join(f.validate("")...) }

func (f Faults) validate(prefix string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, field, fmt.Sprintf(format, args...)))
	}
	rate := func(field string, v float64) {
		if !(v >= 0 && v <= 1) { // also rejects NaN
			add(field, "must be a fraction between 0 and 1, got %g", v)
		}
	}
	rate("error_rate", f.ErrorRate)
	rate("reset_rate", f.ResetRate)
	rate("extra_latency_rate", f.ExtraLatencyRate)
	rate("throttle_rate", f.ThrottleRate)
	if f.ExtraLatency < 0 {
		add("extra_latency", "must not be negative, got %s", f.ExtraLatency)
	}
	if f.ThrottleRetryAfter < 0 {
		add("throttle_retry_after", "must not be negative (0 means 1s), got %s", f.ThrottleRetryAfter)
	}
	return errs
}

// withDefaults returns c with unset fields set to their defaults.
func (c InstanceConfig) withDefaults() InstanceConfig {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.CompletionTokens == 0 {
		c.CompletionTokens = DefaultCompletionTokens
	}
	if c.RateLimitWindow == 0 {
		c.RateLimitWindow = DefaultRateLimitWindow
	}
	c.Deployments = append([]DeploymentConfig(nil), c.Deployments...)
	return c
}
