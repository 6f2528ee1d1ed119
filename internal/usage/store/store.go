// Package store is the SQL usage store: a usage.Sink that keeps every usage
// record in one table, usage_records, in SQLite (the embedded default, pure
// Go) or PostgreSQL, and the chargeback reports read from it.
//
// Records are deduplicated on request_id, so a batch the spool resends after
// an error never counts twice. The schema is created and migrated by Open
// (schema_migrations holds the applied versions); two processes opening the
// same database at once are serialized (SQLite's write lock, a PostgreSQL
// advisory lock).
//
// SQLite runs in WAL mode: reports, in this process or in another one that
// opened the same file, read while the gateway writes.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/usage"
)

// Store is a SQL usage store. It is safe for concurrent use: the sink's
// writes are serialized (SQLite has one writer connection), reports run on
// their own connections.
type Store struct {
	name   string
	log    *slog.Logger
	d      *dialect
	b      backend
	closed atomic.Bool
}

var _ usage.Sink = (*Store)(nil)

// backend is one database driver under the shared SQL.
type backend interface {
	execer
	// inTx runs fn in a transaction that no other process migrating the
	// same database runs at the same time.
	inTx(ctx context.Context, fn func(execer) error) error
	// write inserts batch in one transaction, skipping records whose
	// request_id is already stored, and returns how many were new.
	write(ctx context.Context, batch []usage.Record) (int64, error)
	// query runs a read-only query and calls each for every row.
	query(ctx context.Context, sql string, args []any, each func(scanner) error) error
	close() error
}

// execer runs statements, in or out of a transaction.
type execer interface {
	exec(ctx context.Context, sql string, args ...any) error
	queryInt(ctx context.Context, sql string, args ...any) (int, error)
}

// scanner is a result row of either driver.
type scanner interface {
	Scan(dest ...any) error
}

// Open opens the store db and brings its schema up to date. db is
// "sqlite:PATH" or a bare path ending in .db (SQLite; the file and its
// directory are created), or a "postgres://" or "postgresql://" URL. name
// is the sink's name, for logs. Close the store when done.
func Open(ctx context.Context, name, db string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{name: name, log: log.With(slog.String("sink", name))}
	var err error
	var where slog.Attr
	switch {
	case strings.HasPrefix(db, "postgres://"), strings.HasPrefix(db, "postgresql://"):
		s.d = postgresDialect
		s.b, err = openPostgres(ctx, db)
		where = slog.String("postgres", redact(db))
	case strings.HasPrefix(db, "sqlite:"), strings.HasSuffix(db, ".db"):
		path := strings.TrimPrefix(db, "sqlite:")
		s.d = sqliteDialect
		s.b, err = openSQLite(ctx, path)
		where = slog.String("sqlite", path)
	default:
		return nil, fmt.Errorf("usage store %q: %q is not sqlite:PATH, a path ending in .db, or a postgres:// URL", name, redact(db))
	}
	if err != nil {
		return nil, fmt.Errorf("usage store %q: %w", name, err)
	}
	from, err := s.migrate(ctx)
	if err != nil {
		_ = s.b.close()
		return nil, fmt.Errorf("usage store %q: schema: %w", name, err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "usage store open", where,
		slog.Int("schema_from", from), slog.Int("schema", len(s.d.migrations)))
	return s, nil
}

// redact hides a URL's password for logs and errors.
func redact(db string) string {
	u, err := url.Parse(db)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// migrate applies the migrations the database lacks and returns the version
// it found. The unlocked check first lets a reader whose role may not create
// tables (a report run against PostgreSQL) open an up-to-date database.
func (s *Store) migrate(ctx context.Context) (int, error) {
	latest := len(s.d.migrations)
	v, err := s.version(ctx, s.b)
	if err != nil || v == latest {
		return v, err
	}
	var from int
	err = s.b.inTx(ctx, func(tx execer) error {
		if err := tx.exec(ctx, createMigrations); err != nil {
			return err
		}
		// Again under the lock: another process may have migrated since.
		v, err := s.version(ctx, tx)
		if err != nil {
			return err
		}
		from = v
		if v > latest {
			return fmt.Errorf("the database is at version %d, newer than this tokengate knows (%d): upgrade tokengate", v, latest)
		}
		now := time.Now().UTC().Format(time.RFC3339)
		for i := v; i < latest; i++ {
			if err := tx.exec(ctx, s.d.migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
			ins := fmt.Sprintf("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)", s.d.bind(1), s.d.bind(2))
			if err := tx.exec(ctx, ins, i+1, now); err != nil {
				return err
			}
		}
		return nil
	})
	return from, err
}

// version is the schema's version, 0 before the first migration.
func (s *Store) version(ctx context.Context, ex execer) (int, error) {
	ok, err := ex.queryInt(ctx, s.d.hasMigrations)
	if err != nil || ok == 0 {
		return 0, err
	}
	return ex.queryInt(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
}

// Name is the sink's name.
func (s *Store) Name() string { return s.name }

// Write stores batch in one transaction: all of it or, on error, none.
// Records already stored (same request_id) are skipped, so a retried batch
// never duplicates. A record without a request_id fails the batch.
func (s *Store) Write(ctx context.Context, batch []usage.Record) error {
	if s.closed.Load() {
		return fmt.Errorf("usage store %q: %w", s.name, errClosed)
	}
	if len(batch) == 0 {
		return nil
	}
	n, err := s.b.write(ctx, batch)
	if err != nil {
		return fmt.Errorf("usage store %q: write %d records: %w", s.name, len(batch), err)
	}
	if dup := int64(len(batch)) - n; dup > 0 {
		s.log.LogAttrs(ctx, slog.LevelDebug, "usage records already stored, skipped",
			slog.Int("records", len(batch)), slog.Int64("duplicates", dup))
	}
	return nil
}

// Close closes the database. Writes and reports in flight fail.
func (s *Store) Close(ctx context.Context) error {
	s.closed.Store(true)
	done := make(chan error, 1)
	go func() { done <- s.b.close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("usage store %q: close: %w", s.name, ctx.Err())
	}
}

// errClosed is what Write returns after Close.
var errClosed = errors.New("usage store closed")
