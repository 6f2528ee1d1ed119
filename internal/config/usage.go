package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Usage configures usage records: the on-disk spool they go to first, the
// sinks that deliver them, and what of the content is captured.
type Usage struct {
	// Spool is the durable queue between the request path and the sinks.
	Spool Spool `yaml:"spool"`
	// Sinks receive every record, each from its own cursor in the spool.
	// When empty, records stay spooled (within the spool's bound) until a
	// sink is configured, and the gateway says so at start.
	Sinks []Sink `yaml:"sinks"`
	// DrainTimeout is how long sinks get on shutdown to deliver what the
	// spool holds. Default 10s. What they do not deliver stays spooled and
	// is delivered after the next start.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Redact lists regular expressions (RE2) whose matches are replaced by
	// "[REDACTED]" in captured text before it is recorded. Always applied:
	// the built-in patterns for bearer tokens and api keys come first.
	Redact []string `yaml:"redact"`
	// TrustedProxies are the addresses or CIDR prefixes of proxies whose
	// X-Forwarded-For the gateway believes when it records the client IP.
	// Default: none (the connection's peer is the client).
	TrustedProxies []string `yaml:"trusted_proxies"`
}

// Spool configures the on-disk usage spool.
type Spool struct {
	// Dir holds the segment files and the sinks' cursors. Default
	// "tokengate-spool" (relative to the working directory; the demo uses
	// its data directory).
	Dir string `yaml:"dir"`
	// SyncInterval is the longest a record waits in memory before it is
	// fsynced: what a crash (kill -9, power loss) can lose. Default 1s.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// SyncEvery fsyncs after this many records even before SyncInterval.
	// Default 1000.
	SyncEvery int `yaml:"sync_every"`
	// SegmentBytes is the size at which a segment file is closed and a new
	// one started. Default 16 MiB.
	SegmentBytes int64 `yaml:"segment_bytes"`
	// MaxBytes bounds the spool on disk. Default 1 GiB.
	MaxBytes int64 `yaml:"max_bytes"`
	// WarnRatio is the share of MaxBytes at which the gateway logs a warning
	// and raises the spool-near-full metric. Default 0.8.
	WarnRatio float64 `yaml:"warn_ratio"`
	// WhenFull is what happens when the spool is full: "refuse" (default:
	// new requests get 503 until sinks catch up) or "serve" (keep serving;
	// each record that could not be spooled is counted and logged).
	WhenFull string `yaml:"when_full"`
}

// Sink types.
const (
	SinkStdout    = "stdout"
	SinkFile      = "file"
	SinkSQLite    = "sqlite"
	SinkPostgres  = "postgres"
	SinkKafka     = "kafka"
	SinkEventHubs = "eventhubs"
)

// Sink is one destination of usage records.
type Sink struct {
	// Name identifies the sink's cursor, logs and metrics. Default: its
	// type. Unique; letters, digits, '-', '_' and '.'.
	Name string `yaml:"name"`
	// Type is stdout, file, sqlite, postgres, kafka or eventhubs.
	Type string `yaml:"type"`
	// Path is the file (type file: JSON lines, rotated) or the database
	// (type sqlite).
	Path string `yaml:"path"`
	// MaxBytes rotates a file sink's file at this size. Default 100 MiB.
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxFiles is how many rotated files a file sink keeps. Default 10.
	MaxFiles int `yaml:"max_files"`
	// DSN is a PostgreSQL connection string (type postgres), e.g.
	// "postgres://user:${PGPASSWORD}@host:5432/db?sslmode=require".
	DSN string `yaml:"dsn" secret:"true"`
	// Brokers are the Kafka bootstrap brokers (type kafka).
	Brokers []string `yaml:"brokers"`
	// Topic is the Kafka topic, or the event hub's name (type eventhubs).
	Topic string `yaml:"topic"`
	// TLS turns on TLS to the brokers (type kafka; always on for eventhubs).
	TLS bool `yaml:"tls"`
	// SASL authenticates to the brokers (type kafka).
	SASL SASL `yaml:"sasl"`
	// ConnectionString is the Event Hubs namespace's connection string
	// (type eventhubs), normally "${EVENTHUBS_CONNECTION_STRING}"; the
	// broker is the namespace's Kafka endpoint on port 9093.
	ConnectionString string `yaml:"connection_string" secret:"true"`
	// BatchSize is the most records written in one call. Default 500.
	BatchSize int `yaml:"batch_size"`
	// Timeout bounds one delivery (a dead broker or database is noticed
	// after this long and retried). Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// SASL is Kafka SASL authentication.
type SASL struct {
	// Mechanism is "plain" (the only one supported), or empty for none.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password" secret:"true"`
}

// Price is a model alias's price per one million tokens.
type Price struct {
	// Input is the price of 1M prompt tokens.
	Input float64 `yaml:"input"`
	// CachedInput is the price of 1M cached prompt tokens. Default: Input.
	CachedInput *float64 `yaml:"cached_input"`
	// Output is the price of 1M completion tokens.
	Output float64 `yaml:"output"`
	// Currency is an ISO 4217 code. Default USD.
	Currency string `yaml:"currency"`
}

func (u *Usage) fill() {
	s := &u.Spool
	if s.Dir == "" {
		s.Dir = "tokengate-spool"
	}
	if s.SyncInterval == 0 {
		s.SyncInterval = time.Second
	}
	if s.SyncEvery == 0 {
		s.SyncEvery = 1000
	}
	if s.SegmentBytes == 0 {
		s.SegmentBytes = 16 << 20
	}
	if s.MaxBytes == 0 {
		s.MaxBytes = 1 << 30
	}
	if s.WarnRatio == 0 {
		s.WarnRatio = 0.8
	}
	if s.WhenFull == "" {
		s.WhenFull = "refuse"
	}
	if u.DrainTimeout == 0 {
		u.DrainTimeout = 10 * time.Second
	}
	for i := range u.Sinks {
		k := &u.Sinks[i]
		if k.Name == "" {
			k.Name = k.Type
		}
		if k.BatchSize == 0 {
			k.BatchSize = 500
		}
		if k.Timeout == 0 {
			k.Timeout = 10 * time.Second
		}
		if k.Type == SinkFile {
			if k.MaxBytes == 0 {
				k.MaxBytes = 100 << 20
			}
			if k.MaxFiles == 0 {
				k.MaxFiles = 10
			}
		}
	}
}

func (c *Config) validateUsage(bad func(path, format string, args ...any)) {
	u := &c.Usage
	s := u.Spool
	if s.SyncInterval <= 0 {
		bad("usage.spool.sync_interval", "must be a positive duration such as 1s")
	}
	if s.SyncEvery <= 0 {
		bad("usage.spool.sync_every", "must be positive")
	}
	if s.SegmentBytes < 64<<10 {
		bad("usage.spool.segment_bytes", "must be at least 65536")
	}
	if s.MaxBytes < 2*s.SegmentBytes {
		bad("usage.spool.max_bytes", "must be at least twice segment_bytes (%d)", s.SegmentBytes)
	}
	if s.WarnRatio <= 0 || s.WarnRatio > 1 {
		bad("usage.spool.warn_ratio", "must be in (0, 1]")
	}
	if s.WhenFull != "refuse" && s.WhenFull != "serve" {
		bad("usage.spool.when_full", "must be refuse or serve, not %q", s.WhenFull)
	}
	if u.DrainTimeout <= 0 {
		bad("usage.drain_timeout", "must be a positive duration such as 10s")
	}
	for i, re := range u.Redact {
		if _, err := regexp.Compile(re); err != nil {
			bad(fmt.Sprintf("usage.redact[%d]", i), "%v", err)
		}
	}
	for i, p := range u.TrustedProxies {
		if _, err := ParsePrefix(p); err != nil {
			bad(fmt.Sprintf("usage.trusted_proxies[%d]", i), "%v", err)
		}
	}
	names := map[string]bool{}
	for i, k := range u.Sinks {
		p := fmt.Sprintf("usage.sinks[%d]", i)
		switch {
		case !validName(k.Name):
			bad(p+".name", "%q: use letters, digits, '-', '_' and '.'", k.Name)
		case names[k.Name]:
			bad(p+".name", "%q is used by another sink (give each sink of the same type a name)", k.Name)
		}
		names[k.Name] = true
		if k.BatchSize <= 0 {
			bad(p+".batch_size", "must be positive")
		}
		if k.Timeout <= 0 {
			bad(p+".timeout", "must be a positive duration such as 10s")
		}
		switch k.Type {
		case SinkStdout:
		case SinkFile:
			if k.Path == "" {
				bad(p+".path", "required for a file sink")
			}
			if k.MaxBytes <= 0 || k.MaxFiles <= 0 {
				bad(p, "max_bytes and max_files must be positive")
			}
		case SinkSQLite:
			if k.Path == "" {
				bad(p+".path", "required for a sqlite sink (the database file)")
			}
		case SinkPostgres:
			if k.DSN == "" {
				bad(p+".dsn", "required for a postgres sink, e.g. postgres://user:${PGPASSWORD}@host:5432/db")
			}
		case SinkKafka:
			if len(k.Brokers) == 0 {
				bad(p+".brokers", "at least one broker is required")
			}
			if k.Topic == "" {
				bad(p+".topic", "required")
			}
			switch strings.ToLower(k.SASL.Mechanism) {
			case "":
			case "plain":
				if k.SASL.Username == "" {
					bad(p+".sasl.username", "required with sasl.mechanism plain")
				}
			default:
				bad(p+".sasl.mechanism", "must be plain or empty, not %q", k.SASL.Mechanism)
			}
		case SinkEventHubs:
			if k.Topic == "" {
				bad(p+".topic", "required: the event hub's name")
			}
			if !strings.Contains(k.ConnectionString, "Endpoint=sb://") {
				bad(p+".connection_string", "must be the namespace's connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...), normally \"${EVENTHUBS_CONNECTION_STRING}\"")
			}
		default:
			bad(p+".type", "must be stdout, file, sqlite, postgres, kafka or eventhubs, not %q", k.Type)
		}
	}
	for i, m := range c.Models {
		if m.Price == nil {
			continue
		}
		p := fmt.Sprintf("models[%d].price", i)
		if m.Price.Input < 0 || m.Price.Output < 0 || (m.Price.CachedInput != nil && *m.Price.CachedInput < 0) {
			bad(p, "prices must not be negative")
		}
		if len(m.Price.Currency) != 3 {
			bad(p+".currency", "must be an ISO 4217 code such as USD, not %q", m.Price.Currency)
		}
	}
	for i, a := range c.Apps {
		switch a.Capture {
		case "off", "metadata", "full":
		default:
			bad(fmt.Sprintf("apps[%d].capture", i), "must be off, metadata or full, not %q", a.Capture)
		}
	}
}

// ParsePrefix parses an address ("10.0.0.1") or a CIDR prefix
// ("10.0.0.0/8") into a prefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}
