package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers driver "sqlite"

	"github.com/tokengate/tokengate/internal/usage"
)

// sqliteDB keeps two pools on one file. SQLite allows one writer at a time
// per file, so the writer pool has one connection and begins IMMEDIATE
// transactions (the write lock up front, waiting busy_timeout for another
// process's, rather than failing at the first insert when a read
// transaction cannot be upgraded). WAL lets the readers run beside it.
type sqliteDB struct {
	w, r   *sql.DB
	insert string
}

// busyTimeout is how long a connection waits for another's lock, in ms:
// long enough for any batch (500 records take milliseconds) or a second
// process's migration.
const busyTimeout = "10000"

func openSQLite(ctx context.Context, path string) (*sqliteDB, error) {
	switch {
	case path == "" || strings.HasPrefix(path, ":memory:") || strings.HasPrefix(path, "file:"):
		return nil, fmt.Errorf("sqlite path %q: need a file name (reports read the file from another process)", path)
	case strings.Contains(path, "?"):
		return nil, fmt.Errorf("sqlite path %q: must not contain '?'", path)
	}
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, err
		}
	}
	// synchronous=FULL: the sink acknowledges a batch to the spool only
	// when it is durable, so a commit must survive power loss and OS
	// crashes too (NORMAL in WAL mode survives only a process crash). It is
	// one fsync per batch; on 500-record batches it measured no slower.
	w, err := sql.Open("sqlite", path+"?_busy_timeout="+busyTimeout+
		"&_journal_mode=WAL&_synchronous=FULL&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	w.SetMaxOpenConns(1)
	// Open is lazy: connect now so a bad path fails here, and so the file
	// is in WAL mode before a reader opens it.
	// Switching a new database to WAL needs it to itself, and SQLite
	// answers a concurrent switch with SQLITE_BUSY at once, without its busy
	// handler: another process opening the same fresh file retries.
	for attempt := 0; ; attempt++ {
		err = w.PingContext(ctx)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "SQLITE_BUSY") || attempt == 50 || ctx.Err() != nil {
			_ = w.Close()
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	r, err := sql.Open("sqlite", path+"?_busy_timeout="+busyTimeout+"&_query_only=1")
	if err != nil {
		_ = w.Close()
		return nil, err
	}
	// Each connection has its own page cache and libc state: bound them.
	r.SetMaxOpenConns(4)
	return &sqliteDB{w: w, r: r, insert: sqliteDialect.insertSQL()}, nil
}

func (db *sqliteDB) exec(ctx context.Context, q string, args ...any) error {
	_, err := db.w.ExecContext(ctx, q, args...)
	return err
}

func (db *sqliteDB) queryInt(ctx context.Context, q string, args ...any) (int, error) {
	var n int
	err := db.r.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, err
}

func (db *sqliteDB) inTx(ctx context.Context, fn func(execer) error) error {
	tx, err := db.w.BeginTx(ctx, nil) // IMMEDIATE: holds the write lock
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(sqliteTx{tx}); err != nil {
		return err
	}
	return tx.Commit()
}

func (db *sqliteDB) write(ctx context.Context, batch []usage.Record) (int64, error) {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, db.insert)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	var inserted int64
	args := make([]any, 0, len(columns))
	for i := range batch {
		if args, err = sqliteDialect.flatten(args[:0], &batch[i]); err != nil {
			return 0, fmt.Errorf("record %d: %w", i, err)
		}
		res, err := st.ExecContext(ctx, args...)
		if err != nil {
			return 0, fmt.Errorf("record %d (%s): %w", i, batch[i].RequestID, err)
		}
		n, _ := res.RowsAffected()
		inserted += n
	}
	return inserted, tx.Commit()
}

func (db *sqliteDB) query(ctx context.Context, q string, args []any, each func(scanner) error) error {
	rows, err := db.r.QueryContext(ctx, q, args...)
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
}

func (db *sqliteDB) close() error {
	return errors.Join(db.r.Close(), db.w.Close())
}

// sqliteTx is an execer in a transaction.
type sqliteTx struct{ tx *sql.Tx }

func (t sqliteTx) exec(ctx context.Context, q string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, q, args...)
	return err
}

func (t sqliteTx) queryInt(ctx context.Context, q string, args ...any) (int, error) {
	var n int
	err := t.tx.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, err
}
