package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Query selects and groups records for a chargeback report.
type Query struct {
	// From and To bound the records' start time: From <= start < To. A zero
	// time leaves that side unbounded.
	From, To time.Time
	// GroupBy lists the keys rows are grouped by, in order: any of app,
	// team, cost_center, model, backend, deployment, operation, tenant,
	// day and month (of the start time, UTC). None: one row per currency.
	GroupBy []string
}

// Row is one group's totals. Rows are also grouped by currency: costs in
// different currencies are never summed.
type Row struct {
	// Keys maps each group-by key to the group's value, "" for records
	// without one.
	Keys map[string]string
	// Currency is the costs' ISO 4217 code, "" for records without a price.
	Currency string
	// Requests counts the records; Errors those with an error class
	// (refusals included).
	Requests, Errors int64

	PromptTokens, CompletionTokens, TotalTokens, CachedPromptTokens, ReasoningTokens int64

	Cost float64
}

// groupKeys are the valid group-by keys.
var groupKeys = []string{"app", "team", "cost_center", "model", "backend", "deployment", "operation", "tenant", "day", "month"}

// keyExpr is a group key's SQL expression.
func (d *dialect) keyExpr(key string) string {
	switch key {
	case "tenant":
		return "tenant_id"
	case "day":
		return d.day
	case "month":
		return d.month
	}
	return key // the column of the same name; the key was validated
}

// ParseGroupBy parses a comma-separated list of group keys such as
// "app,model": trimmed, lower-cased, empty items and repeats dropped,
// each validated.
func ParseGroupBy(s string) ([]string, error) {
	var keys []string
	for k := range strings.SplitSeq(s, ",") {
		k = strings.ToLower(strings.TrimSpace(k))
		if k == "" || slices.Contains(keys, k) {
			continue
		}
		if err := checkKey(k); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func checkKey(k string) error {
	if !slices.Contains(groupKeys, k) {
		return fmt.Errorf("unknown group-by key %q: use %s", k, strings.Join(groupKeys, ", "))
	}
	return nil
}

// ParseTime parses a report bound: RFC 3339 ("2025-03-01T09:30:00+01:00"),
// a date ("2025-03-01", midnight UTC) or a minute ("2025-03-01T09:30",
// UTC). "" is the zero time: unbounded.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, time.DateOnly, "2006-01-02T15:04"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("invalid time %q: use RFC 3339 (2025-03-01T09:30:00Z), a date (2025-03-01) or a UTC minute (2025-03-01T09:30)", s)
}

// Report totals the records q selects, one row per group and currency,
// ordered by cost (highest first), then by the keys in q.GroupBy order,
// then by currency.
//
// A group's zero-cost records without a currency (refusals, models without
// a price) are counted in the group's row for its one currency, if it has
// exactly one: they add requests and errors but no money. With several
// currencies they keep a row of their own.
func (s *Store) Report(ctx context.Context, q Query) ([]Row, error) {
	seen := map[string]bool{}
	for _, k := range q.GroupBy {
		if err := checkKey(k); err != nil {
			return nil, err
		}
		if seen[k] {
			return nil, fmt.Errorf("group-by key %q given twice", k)
		}
		seen[k] = true
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.From.Before(q.To) {
		return nil, errors.New("the report's start must be before its end")
	}
	sql, args := s.d.reportSQL(q)
	var rows []Row
	err := s.b.query(ctx, sql, args, func(sc scanner) error {
		keys := make([]string, len(q.GroupBy))
		var r Row
		dest := make([]any, 0, len(keys)+9)
		for i := range keys {
			dest = append(dest, &keys[i])
		}
		dest = append(dest, &r.Currency, &r.Requests, &r.Errors, &r.PromptTokens, &r.CompletionTokens,
			&r.TotalTokens, &r.CachedPromptTokens, &r.ReasoningTokens, &r.Cost)
		if err := sc.Scan(dest...); err != nil {
			return err
		}
		r.Keys = make(map[string]string, len(keys))
		for i, k := range q.GroupBy {
			r.Keys[k] = keys[i]
		}
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage store %q: report: %w", s.name, err)
	}
	rows = foldUnpriced(rows, q.GroupBy)
	sortRows(rows, q.GroupBy)
	return rows, nil
}

// reportSQL is the report query and its arguments.
func (d *dialect) reportSQL(q Query) (string, []any) {
	var keys []string
	for _, k := range q.GroupBy {
		keys = append(keys, d.keyExpr(k))
	}
	group := strings.Join(append(keys, "cost_currency"), ", ")
	var where []string
	var args []any
	if !q.From.IsZero() {
		args = append(args, d.timeArg(q.From))
		where = append(where, "start_time >= "+d.bind(len(args)))
	}
	if !q.To.IsZero() {
		args = append(args, d.timeArg(q.To))
		where = append(where, "start_time < "+d.bind(len(args)))
	}
	sql := "SELECT " + group + `,
	COUNT(*),
	SUM(CASE WHEN error_class <> '' THEN 1 ELSE 0 END),
	CAST(SUM(prompt_tokens) AS BIGINT),
	CAST(SUM(completion_tokens) AS BIGINT),
	CAST(SUM(total_tokens) AS BIGINT),
	CAST(SUM(cached_prompt_tokens) AS BIGINT),
	CAST(SUM(reasoning_tokens) AS BIGINT),
	SUM(cost_amount)
FROM usage_records`
	if len(where) > 0 {
		sql += "\nWHERE " + strings.Join(where, " AND ")
	}
	return sql + "\nGROUP BY " + group, args
}

// foldUnpriced merges each group's zero-cost, currency-less row into the
// group's only priced row; see Report.
func foldUnpriced(rows []Row, groupBy []string) []Row {
	type group struct{ unpriced, priced []int }
	groups := map[string]*group{}
	for i, r := range rows {
		id := groupID(r, groupBy)
		g := groups[id]
		if g == nil {
			g = &group{}
			groups[id] = g
		}
		if r.Currency == "" {
			g.unpriced = append(g.unpriced, i)
		} else {
			g.priced = append(g.priced, i)
		}
	}
	drop := map[int]bool{}
	for _, g := range groups {
		if len(g.unpriced) != 1 || len(g.priced) != 1 || rows[g.unpriced[0]].Cost != 0 {
			continue
		}
		rows[g.priced[0]].add(rows[g.unpriced[0]]) // its cost is 0
		drop[g.unpriced[0]] = true
	}
	out := rows[:0]
	for i, r := range rows {
		if !drop[i] {
			out = append(out, r)
		}
	}
	return out
}

func groupID(r Row, groupBy []string) string {
	var b strings.Builder
	for _, k := range groupBy {
		b.WriteString(r.Keys[k])
		b.WriteByte(0)
	}
	return b.String()
}

// sortRows orders rows as Report documents. Sorting here rather than in SQL
// keeps the order byte-wise and the same on every database, whatever its
// collation.
func sortRows(rows []Row, groupBy []string) {
	slices.SortFunc(rows, func(a, b Row) int {
		if c := cmp.Compare(b.Cost, a.Cost); c != 0 {
			return c
		}
		for _, k := range groupBy {
			if c := strings.Compare(a.Keys[k], b.Keys[k]); c != 0 {
				return c
			}
		}
		return strings.Compare(a.Currency, b.Currency)
	})
}

// add sums o's counts and cost into r.
func (r *Row) add(o Row) {
	r.Requests += o.Requests
	r.Errors += o.Errors
	r.PromptTokens += o.PromptTokens
	r.CompletionTokens += o.CompletionTokens
	r.TotalTokens += o.TotalTokens
	r.CachedPromptTokens += o.CachedPromptTokens
	r.ReasoningTokens += o.ReasoningTokens
	r.Cost += o.Cost
}
