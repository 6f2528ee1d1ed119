package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tokengate/tokengate/internal/usage"
)

// pgDB is the PostgreSQL backend.
type pgDB struct {
	pool *pgxpool.Pool
}

// A batch is copied into a temporary table, then inserted from there: COPY
// moves rows faster than anything else, but cannot skip the duplicates. On
// 500-record batches this wrote 25-36k rows/s where a pipelined INSERT per
// record (pgx.Batch) wrote 16-20k and one INSERT from unnest'ed column
// arrays 29-30k.
//
// The temporary table is created, if missing, in each batch's transaction
// rather than once per connection, so nothing depends on session state; the
// explicit column lists keep a table created before another process
// migrated the schema usable.
var (
	createStaging = `CREATE TEMP TABLE IF NOT EXISTS usage_records_in
	(LIKE usage_records INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`
	staging      = pgx.Identifier{"pg_temp", "usage_records_in"}
	insertStaged = "INSERT INTO usage_records (" + strings.Join(columns, ", ") + ")\nSELECT " +
		strings.Join(columns, ", ") + " FROM pg_temp.usage_records_in\nON CONFLICT (request_id) DO NOTHING"
)

// pgPoolSize bounds the connections: one for the sink's writes, the rest
// for reports.
const pgPoolSize = 4

// migrationLock is the key of the advisory lock taken while migrating
// ("tokengat" in ASCII); advisory locks are per database.
const migrationLock int64 = 0x746f6b656e676174

func openPostgres(ctx context.Context, dsn string) (*pgDB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err // pgx redacts the password in its parse errors
	}
	cfg.MaxConns = pgPoolSize
	// An idle connection the server dropped (a restart, a NAT timeout) is
	// found by the pool's health check rather than by the next write.
	cfg.HealthCheckPeriod = 30 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// Connect now: a wrong DSN should fail Open, not the first write.
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return &pgDB{pool: pool}, nil
}

// with runs fn on a pooled connection.
func (db *pgDB) with(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release() // the pool drops it if it is broken or left in a transaction
	return fn(c.Conn())
}

func (db *pgDB) exec(ctx context.Context, q string, args ...any) error {
	return db.with(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, q, args...)
		return err
	})
}

func (db *pgDB) queryInt(ctx context.Context, q string, args ...any) (n int, err error) {
	err = db.with(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, q, args...).Scan(&n)
	})
	return n, err
}

func (db *pgDB) inTx(ctx context.Context, fn func(execer) error) error {
	return db.with(ctx, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			// Held to commit: a second process starting at the same time
			// waits here, then finds the schema migrated.
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
				return err
			}
			return fn(pgTx{tx})
		})
	})
}

func (db *pgDB) write(ctx context.Context, batch []usage.Record) (n int64, err error) {
	rows := make([][]any, len(batch))
	for i := range batch {
		if rows[i], err = postgresDialect.flatten(make([]any, 0, len(columns)), &batch[i]); err != nil {
			return 0, fmt.Errorf("record %d: %w", i, err)
		}
	}
	for attempt := 0; ; attempt++ {
		var broken bool
		err = db.with(ctx, func(c *pgx.Conn) error {
			err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, createStaging); err != nil {
					return err
				}
				if _, err := tx.CopyFrom(ctx, staging, columns, pgx.CopyFromRows(rows)); err != nil {
					return err
				}
				tag, err := tx.Exec(ctx, insertStaged)
				n = tag.RowsAffected()
				return err
			})
			broken = err != nil && c.IsClosed()
			return err
		})
		// A pooled connection the server dropped (a restart, a failover,
		// an idle timeout) is noticed only when used. The batch is
		// idempotent, even if its commit went through unseen, so it is
		// resent once on a new connection rather than failed to the spool.
		if !broken || attempt > 0 || ctx.Err() != nil {
			return n, err
		}
	}
}

func (db *pgDB) query(ctx context.Context, q string, args []any, each func(scanner) error) error {
	return db.with(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := each(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}

func (db *pgDB) close() error {
	db.pool.Close()
	return nil
}

// pgTx is an execer in a transaction.
type pgTx struct{ tx pgx.Tx }

func (t pgTx) exec(ctx context.Context, q string, args ...any) error {
	_, err := t.tx.Exec(ctx, q, args...)
	return err
}

func (t pgTx) queryInt(ctx context.Context, q string, args ...any) (n int, err error) {
	err = t.tx.QueryRow(ctx, q, args...).Scan(&n)
	return n, err
}
