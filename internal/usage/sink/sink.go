// Package sink owns the usage sinks that deliver records outside the
// database: JSON lines on stdout, JSON lines in rotated files, and Kafka
// topics (a Kafka cluster, or an Azure Event Hubs namespace through its
// Kafka endpoint). The SQL sinks live in package store.
//
// Every sink implements usage.Sink: Write returns nil only when the whole
// batch is durable at the destination (fsynced, or acknowledged by all
// in-sync replicas), and a retry after an error may resend records the
// destination already has. Delivery is therefore at least once; consumers
// dedup on the record's request_id (the Kafka message key).
//
// The usage recorder calls each sink from one goroutine. The sinks here also
// tolerate concurrent calls (they serialize them), but gain nothing from it.
package sink

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage"
)

// New builds the sink cfg describes: stdout, file, kafka or eventhubs. The
// sqlite and postgres sinks are built by package store; New reports an
// error for them and for unknown types. A nil log discards.
func New(cfg config.Sink, log *slog.Logger) (usage.Sink, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch cfg.Type {
	case config.SinkStdout:
		return NewStdout(cfg.Name, os.Stdout), nil
	case config.SinkFile:
		return NewFile(cfg)
	case config.SinkKafka, config.SinkEventHubs:
		return NewKafka(cfg, log)
	case config.SinkSQLite, config.SinkPostgres:
		return nil, fmt.Errorf("sink %q: type %s is built by package store, not sink", cfg.Name, cfg.Type)
	default:
		return nil, fmt.Errorf("sink %q: unknown type %q", cfg.Name, cfg.Type)
	}
}

// appendLine appends r's JSON and a newline through enc, an encoder on the
// sink's buffer (one per buffer: an Encoder is cheap to keep, not to make
// per record). The bytes are json.Marshal's, so every sink (and the SQL
// store) writes the same text for the same record.
func appendLine(enc *json.Encoder, r *usage.Record) error {
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode record %q: %w", r.RequestID, err)
	}
	return nil
}

// redacted replaces every secret in s with [REDACTED]. Errors that may
// carry text from a broker or a dialer go through it before they leave a
// sink, so that a credential can never reach a log through an error.
func redacted(s string, secrets ...string) string {
	for _, v := range secrets {
		if v != "" {
			s = strings.ReplaceAll(s, v, "[REDACTED]")
		}
	}
	return s
}
