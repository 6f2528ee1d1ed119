package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestPostgres(t *testing.T) {
	start := time.Now()
	var dsns []string
	t.Run("first", func(t *testing.T) {
		dsn := Postgres(t)
		t.Logf("server and database ready in %v", time.Since(start))
		dsns = append(dsns, dsn)
		mustExec(t, dsn, "CREATE TABLE t (x int)")
	})
	t.Run("second", func(t *testing.T) {
		start := time.Now()
		dsn := Postgres(t)
		t.Logf("database ready in %v", time.Since(start))
		dsns = append(dsns, dsn)
		// Fresh and empty: the first database's table is not here.
		mustExec(t, dsn, "CREATE TABLE t (x int)")
	})
	if len(dsns) != 2 || dsns[0] == dsns[1] {
		t.Fatalf("want two distinct databases, got %q", dsns)
	}
	// Dropped when their tests ended.
	ctx := context.Background()
	if _, err := pgx.Connect(ctx, dsns[0]); err == nil {
		t.Errorf("database %s still exists after its test", dsns[0])
	}
}

func mustExec(t *testing.T, dsn, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresEnv uses the private server as if EnvPostgres named it.
func TestPostgresEnv(t *testing.T) {
	Postgres(t) // starts the private server, or skips
	t.Setenv(EnvPostgres, private().dsn)
	dsn := Postgres(t)
	if dsn == private().dsn {
		t.Fatal("the admin database itself was returned")
	}
	mustExec(t, dsn, "CREATE TABLE t (x int)")
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:p@h:5432/postgres?sslmode=disable", "postgres://u:p@h:5432/db1?sslmode=disable"},
		{"postgresql://h/", "postgresql://h/db1"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname=db1"},
	} {
		got, err := withDatabase(tc.in, "db1")
		if err != nil || got != tc.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
