package store

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tokengate/tokengate/internal/usage"
)

// columns are usage_records' columns in the order flatten produces values.
// The schema is the usage.Record schema flattened: caller.* without the
// prefix, tokens.* as *_tokens, latency.* as latency_*, cost.* as cost_*.
var columns = []string{
	"request_id", "record_schema", "client_request_id", "start_time", "end_time",
	"tenant_id", "app_id", "app", "team", "cost_center", "object_id", "auth_method",
	"client_ip", "user_agent",
	"operation", "model", "pool", "backend", "deployment", "attempts",
	"status", "error_class", "error_code", "reason", "stream",
	"prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens", "reasoning_tokens", "token_source",
	"latency_total_ms", "latency_first_token_ms", "latency_upstream_ms",
	"cost_amount", "cost_currency",
	"capture",
}

// dialect is what differs between SQLite and PostgreSQL in the SQL both
// share.
type dialect struct {
	// bind is the n-th (1-based) query parameter.
	bind func(n int) string
	// timeArg is a time as the driver should bind it against start_time.
	timeArg func(time.Time) any
	// day and month are start_time's UTC day ("2006-01-02") and month
	// ("2006-01").
	day, month string
	// hasMigrations returns 1 when schema_migrations exists, else 0.
	hasMigrations string
	// migrations, in order: migration i takes the schema to version i+1.
	// Never edit one that has shipped; append.
	migrations []string
}

// tableV1 is usage_records in both dialects; the placeholders are the types
// that differ.
const tableV1 = `CREATE TABLE usage_records (
	request_id TEXT PRIMARY KEY,
	record_schema INTEGER NOT NULL,
	client_request_id TEXT NOT NULL DEFAULT '',
	start_time {time} NOT NULL,
	end_time {time} NOT NULL,
	tenant_id TEXT NOT NULL DEFAULT '',
	app_id TEXT NOT NULL DEFAULT '',
	app TEXT NOT NULL DEFAULT '',
	team TEXT NOT NULL DEFAULT '',
	cost_center TEXT NOT NULL DEFAULT '',
	object_id TEXT NOT NULL DEFAULT '',
	auth_method TEXT NOT NULL DEFAULT '',
	client_ip TEXT NOT NULL DEFAULT '',
	user_agent TEXT NOT NULL DEFAULT '',
	operation TEXT NOT NULL DEFAULT '',
	model TEXT NOT NULL DEFAULT '',
	pool TEXT NOT NULL DEFAULT '',
	backend TEXT NOT NULL DEFAULT '',
	deployment TEXT NOT NULL DEFAULT '',
	attempts TEXT,
	status INTEGER NOT NULL DEFAULT 0,
	error_class TEXT NOT NULL DEFAULT '',
	error_code TEXT NOT NULL DEFAULT '',
	reason TEXT NOT NULL DEFAULT '',
	stream BOOLEAN NOT NULL DEFAULT FALSE,
	prompt_tokens BIGINT NOT NULL DEFAULT 0,
	completion_tokens BIGINT NOT NULL DEFAULT 0,
	total_tokens BIGINT NOT NULL DEFAULT 0,
	cached_prompt_tokens BIGINT NOT NULL DEFAULT 0,
	reasoning_tokens BIGINT NOT NULL DEFAULT 0,
	token_source TEXT NOT NULL DEFAULT '',
	latency_total_ms {float} NOT NULL DEFAULT 0,
	latency_first_token_ms {float} NOT NULL DEFAULT 0,
	latency_upstream_ms {float} NOT NULL DEFAULT 0,
	cost_amount {float} NOT NULL DEFAULT 0,
	cost_currency TEXT NOT NULL DEFAULT '',
	capture TEXT
);
CREATE INDEX usage_records_start ON usage_records (start_time);
CREATE INDEX usage_records_app_start ON usage_records (app, start_time)`

// sqliteTime is how SQLite stores times: UTC, fixed width, so that text
// order is time order and range queries and substr-based day/month keys
// work; microseconds, like PostgreSQL's timestamptz.
const sqliteTime = "2006-01-02T15:04:05.000000Z"

var sqliteDialect = &dialect{
	bind:          func(int) string { return "?" },
	timeArg:       func(t time.Time) any { return t.UTC().Format(sqliteTime) },
	day:           "substr(start_time, 1, 10)",
	month:         "substr(start_time, 1, 7)",
	hasMigrations: "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
	migrations: []string{
		strings.NewReplacer("{time}", "TEXT", "{float}", "REAL").Replace(tableV1),
	},
}

var postgresDialect = &dialect{
	bind:    func(n int) string { return fmt.Sprintf("$%d", n) },
	timeArg: func(t time.Time) any { return t },
	day:     "to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
	month:   "to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM')",
	// to_regclass follows search_path, as the unqualified names do.
	hasMigrations: "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0 ELSE 1 END",
	migrations: []string{
		strings.NewReplacer("{time}", "TIMESTAMPTZ", "{float}", "DOUBLE PRECISION").Replace(tableV1),
	},
}

// createMigrations is the version table in both dialects.
const createMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version INTEGER PRIMARY KEY,
	applied_at TEXT NOT NULL
)`

// insertSQL is the dedup-on-request_id insert of one record.
func (d *dialect) insertSQL() string {
	var b strings.Builder
	b.WriteString("INSERT INTO usage_records (")
	b.WriteString(strings.Join(columns, ", "))
	b.WriteString(") VALUES (")
	for i := range columns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d.bind(i + 1))
	}
	b.WriteString(") ON CONFLICT (request_id) DO NOTHING")
	return b.String()
}

// flatten returns r's values in columns order, appended to dst.
func (d *dialect) flatten(dst []any, r *usage.Record) ([]any, error) {
	if r.RequestID == "" {
		// The dedup key: without it every such record would collapse into
		// one, and records are money.
		return nil, fmt.Errorf("record without request_id (start %s, app %q)", r.Start.Format(time.RFC3339), r.Caller.App)
	}
	var attempts, capture any
	if len(r.Attempts) > 0 {
		b, err := json.Marshal(r.Attempts)
		if err != nil {
			return nil, err
		}
		attempts = string(b)
	}
	if r.Capture != nil {
		b, err := json.Marshal(r.Capture)
		if err != nil {
			return nil, err
		}
		capture = string(b)
	}
	c := &r.Caller
	return append(dst,
		text(r.RequestID), r.Schema, text(r.ClientRequestID), d.timeArg(r.Start), d.timeArg(r.End),
		text(c.TenantID), text(c.AppID), text(c.App), text(c.Team), text(c.CostCenter), text(c.ObjectID), text(c.AuthMethod),
		text(r.ClientIP), text(r.UserAgent),
		text(r.Operation), text(r.Model), text(r.Pool), text(r.Backend), text(r.Deployment), attempts,
		r.Status, text(r.ErrorClass), text(r.ErrorCode), text(r.Reason), r.Stream,
		r.Tokens.Prompt, r.Tokens.Completion, r.Tokens.Total, r.Tokens.CachedPrompt, r.Tokens.Reasoning, text(r.Tokens.Source),
		finite(r.Latency.TotalMS), finite(r.Latency.FirstTokenMS), finite(r.Latency.UpstreamMS),
		finite(r.Cost.Amount), text(r.Cost.Currency),
		capture,
	), nil
}

// text makes s storable: PostgreSQL refuses NUL bytes and invalid UTF-8 in
// text, and a client can put both in a model name ("gpt\u0000" is valid
// JSON). One refused record would fail its batch on every retry, stopping
// the sink; a replacement character loses nothing that mattered.
func text(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c >= utf8.RuneSelf {
			return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
		}
	}
	return s
}

// finite maps NaN and infinities, which SQLite stores as NULL (refused by
// the NOT NULL columns), to 0.
func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}
