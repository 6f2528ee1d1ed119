package config

import (
	"strings"
	"testing"
	"time"
)

func TestUsageDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`
  - name: priced
    price: {input: 1, output: 2}
    deployments: [{backend: east}]
usage:
  sinks: [{type: sqlite, path: u.db}, {type: file, path: u.jsonl}]
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Usage
	if u.Spool.Dir != "tokengate-spool" || u.Spool.SyncInterval != time.Second || u.Spool.SyncEvery != 1000 ||
		u.Spool.MaxBytes != 1<<30 || u.Spool.WhenFull != "refuse" || u.DrainTimeout != 10*time.Second {
		t.Errorf("spool defaults: %+v", u)
	}
	if s := u.Sinks[1]; s.Name != "file" || s.BatchSize != 500 || s.Timeout != 10*time.Second || s.MaxBytes != 100<<20 || s.MaxFiles != 10 {
		t.Errorf("sink defaults: %+v", s)
	}
	if p := cfg.Models[1].Price; p.Currency != "USD" || *p.CachedInput != 1 {
		t.Errorf("price defaults: %+v", p)
	}
	if cfg.Models[0].Price != nil {
		t.Error("a model without a price got one")
	}
}

func TestUsageValidation(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"usage: {spool: {when_full: drop}}", "usage.spool.when_full: must be refuse or serve"},
		{"usage: {spool: {segment_bytes: 1000}}", "usage.spool.segment_bytes"},
		{"usage: {spool: {max_bytes: 100000}}", "usage.spool.max_bytes: must be at least twice"},
		{"usage: {spool: {warn_ratio: 2}}", "usage.spool.warn_ratio"},
		{"usage: {redact: ['(']}", "usage.redact[0]"},
		{"usage: {trusted_proxies: [10.0.0.0/33]}", "usage.trusted_proxies[0]"},
		{"usage: {sinks: [{type: mongodb}]}", "usage.sinks[0].type: must be stdout, file, sqlite, postgres, kafka or eventhubs"},
		{"usage: {sinks: [{type: sqlite}]}", "usage.sinks[0].path: required"},
		{"usage: {sinks: [{type: stdout}, {type: stdout}]}", "usage.sinks[1].name: \"stdout\" is used by another sink"},
		{"usage: {sinks: [{type: postgres}]}", "usage.sinks[0].dsn: required"},
		{"usage: {sinks: [{type: kafka, topic: t}]}", "usage.sinks[0].brokers"},
		{"usage: {sinks: [{type: kafka, brokers: [b:9092], topic: t, sasl: {mechanism: scram}}]}", "usage.sinks[0].sasl.mechanism"},
		{"usage: {sinks: [{type: eventhubs, topic: t, connection_string: secret}]}", "usage.sinks[0].connection_string: must be the namespace's connection string"},
		{"apps: [{name: a, app_ids: [x], capture: everything}]", "apps[0].capture: must be off, metadata or full"},
	} {
		_, err := Parse([]byte(minimal+tc.yaml+"\n"), env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.yaml, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error quotes the connection string: %v", tc.yaml, err)
		}
	}
	if _, err := Parse([]byte(minimal+"  - name: p\n    price: {input: -1, currency: EURO}\n    deployments: [{backend: east}]\n"), env(nil)); err == nil ||
		!strings.Contains(err.Error(), "models[1].price: prices must not be negative") || !strings.Contains(err.Error(), "models[1].price.currency") {
		t.Errorf("bad price: %v", err)
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{"10.1.2.3": "10.1.2.3/32", "10.1.2.3/8": "10.0.0.0/8", "::ffff:10.0.0.1": "10.0.0.1/32", "fd00::/8": "fd00::/8"} {
		p, err := ParsePrefix(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	if _, err := ParsePrefix("localhost"); err == nil {
		t.Error("a host name was accepted")
	}
}
