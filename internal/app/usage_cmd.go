package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage/store"
)

// runUsage runs "tokengate usage report": requests, tokens by kind and cost
// from a SQLite or PostgreSQL usage store, grouped for chargebacks.
func runUsage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "report" {
		return usageError("tokengate usage report --db sqlite:PATH|postgres://... [--from T] [--to T] [--group-by app,model] [--format table|csv|json]")
	}
	fs := newFlags("usage report", stderr)
	db := fs.String("db", "", "the usage store: sqlite:PATH or postgres://...")
	cfgPath := fs.String("config", "", "read the store from this config's first sqlite or postgres sink instead of --db")
	from := fs.String("from", "", "start of the period, inclusive (RFC 3339 or YYYY-MM-DD, UTC)")
	to := fs.String("to", "", "end of the period, exclusive (RFC 3339 or YYYY-MM-DD, UTC)")
	groupBy := fs.String("group-by", "app", "comma-separated: app, team, cost_center, model, backend, deployment, operation, tenant, day, month")
	format := fs.String("format", "table", "table, csv or json")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if (*db == "") == (*cfgPath == "") {
		return usageError("name the usage store with exactly one of --db sqlite:PATH|postgres://... or --config FILE")
	}
	switch *format {
	case "table", "csv", "json":
	default:
		return usageError("--format must be table, csv or json, not %q", *format)
	}
	var q store.Query
	var err error
	if q.GroupBy, err = store.ParseGroupBy(*groupBy); err != nil {
		return usageError("--group-by: %v", err)
	}
	if *from != "" {
		if q.From, err = store.ParseTime(*from); err != nil {
			return usageError("--from: %v", err)
		}
	}
	if *to != "" {
		if q.To, err = store.ParseTime(*to); err != nil {
			return usageError("--to: %v", err)
		}
	}
	if *cfgPath != "" {
		if *db, err = storeFromConfig(*cfgPath); err != nil {
			return err
		}
	} else if path, ok := sqlitePath(*db); ok {
		// Reading must not create an empty database by mistake.
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("usage store %s: %w", *db, err)
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.Open(ctx, "report", *db, log)
	if err != nil {
		return err
	}
	defer st.Close(context.WithoutCancel(ctx))
	rows, err := st.Report(ctx, q)
	if err != nil {
		return err
	}
	return store.WriteReport(stdout, rows, q.GroupBy, *format)
}

// storeFromConfig names the first SQL sink of a config file.
func storeFromConfig(path string) (string, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return "", err
	}
	for _, s := range cfg.Usage.Sinks {
		switch s.Type {
		case config.SinkSQLite:
			return "sqlite:" + s.Path, nil
		case config.SinkPostgres:
			return s.DSN, nil
		}
	}
	return "", fmt.Errorf("%s has no sqlite or postgres usage sink to report from", path)
}

func sqlitePath(db string) (string, bool) {
	if len(db) > len("sqlite:") && db[:len("sqlite:")] == "sqlite:" {
		return db[len("sqlite:"):], true
	}
	return "", false
}
