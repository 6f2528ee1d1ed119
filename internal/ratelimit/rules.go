package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// kind is what a rule counts and over which span.
type kind uint8

const (
	kindRPM    kind = iota // requests in the rolling window
	kindTPM                // tokens in the rolling window
	kindHour               // tokens in the calendar hour
	kindDay                // tokens in the calendar day
	kindMonth              // tokens in the calendar month
	kindBudget             // cost in the calendar month
)

func (k kind) rate() bool   { return k == kindRPM || k == kindTPM }
func (k kind) tokens() bool { return k != kindRPM && k != kindBudget }

// field is the config field a kind comes from, used in limit ids.
func (k kind) field() string {
	return [...]string{"rpm", "tpm", "tokens_per_hour", "tokens_per_day", "tokens_per_month", "budget_per_month"}[k]
}

// rule is one enforced number of one config.Limit, compiled once in New.
// A Limit with rpm and tpm becomes two rules with their own counters.
type rule struct {
	// id names the limit in ShadowRefused and logs:
	// "app/batch-app/limits[0].rpm", "team/research/limits[1].tpm".
	id    string
	scope string // "app" or "team"
	// who starts refusal messages: "app batch-app", "team research, model
	// gpt-4o"; the user is added at refusal time for per-user rules.
	who string
	// what describes the limit: "10 requests per minute".
	what    string
	kind    kind
	limit   int64   // every kind but kindBudget
	budget  float64 // kindBudget
	perUser bool
	model   string // "" for every model
	shadow  bool
	// key names the counter, without the store's prefix; for per-user
	// rules the caller's id goes between keyHead and keyTail. Keys are
	// built from what a rule counts (scope, model, kind), not from its
	// position in the file, so reordering limits or a rolling deploy of a
	// new config keeps the counters.
	key, keyHead, keyTail string
}

// compileRules turns the limits of one app and of its team into rules.
func compileRules(a *config.App, teams map[string][]rule, window time.Duration) []rule {
	var rs []rule
	seen := map[string]int{}
	for i, lim := range a.Limits {
		rs = appendLimit(rs, seen, "app", a.Name, i, lim, window)
	}
	return append(rs, teams[a.Team]...)
}

// compileTeams compiles every team's limits once: the rules (and so the
// counters) are shared by the team's apps.
func compileTeams(ts []config.Team, window time.Duration) map[string][]rule {
	m := make(map[string][]rule, len(ts))
	for _, t := range ts {
		var rs []rule
		seen := map[string]int{}
		for i, lim := range t.Limits {
			rs = appendLimit(rs, seen, "team", t.Name, i, lim, window)
		}
		if len(rs) > 0 {
			m[t.Name] = rs
		}
	}
	return m
}

func appendLimit(rs []rule, seen map[string]int, scope, name string, i int, lim config.Limit, window time.Duration) []rule {
	for k, n := range [...]int64{lim.RPM, lim.TPM, lim.TokensPerHour, lim.TokensPerDay, lim.TokensPerMonth} {
		if n > 0 {
			rs = append(rs, newRule(seen, scope, name, i, lim, kind(k), n, 0, window))
		}
	}
	if lim.BudgetPerMonth > 0 {
		rs = append(rs, newRule(seen, scope, name, i, lim, kindBudget, 0, lim.BudgetPerMonth, window))
	}
	return rs
}

func newRule(seen map[string]int, scope, name string, i int, lim config.Limit, k kind, n int64, budget float64, window time.Duration) rule {
	r := rule{
		id:      fmt.Sprintf("%s/%s/limits[%d].%s", scope, name, i, k.field()),
		scope:   scope,
		who:     scope + " " + name,
		kind:    k,
		limit:   n,
		budget:  budget,
		perUser: lim.Per == "user",
		model:   lim.Model,
		shadow:  lim.Shadow,
	}
	if r.model != "" {
		r.who += ", model " + r.model
	}
	switch k {
	case kindRPM:
		r.what = fmt.Sprintf("%d requests per %s", n, windowName(window))
	case kindTPM:
		r.what = fmt.Sprintf("%d tokens per %s", n, windowName(window))
	case kindHour, kindDay, kindMonth:
		r.what = fmt.Sprintf("quota of %d tokens per %s", n, strings.TrimPrefix(k.field(), "tokens_per_"))
	case kindBudget:
		r.what = "budget of " + strconv.FormatFloat(budget, 'f', -1, 64) + " per month"
	}

	head := scope[:1] + ":" + name + ":"
	if r.model != "" {
		head += "m:" + r.model + ":"
	}
	tail := k.field()
	if r.shadow {
		// A shadow limit counts only what it would have admitted, so it
		// cannot share an enforced limit's counter.
		tail += "~shadow"
	}
	if r.perUser {
		head += "u:"
	}
	// Two limits counting the same thing with different numbers (a rare
	// but valid config) each get their own counter.
	same := head + tail
	if c := seen[same]; c > 0 {
		tail += "#" + strconv.Itoa(c+1)
	}
	seen[same]++
	if r.perUser {
		r.keyHead, r.keyTail = head, ":"+tail
	} else {
		r.keyHead = head + tail
	}
	r.key = r.keyHead + r.keyTail
	return r
}

// windowName is "minute" for the default window, else the span ("10s").
func windowName(w time.Duration) string {
	if w == time.Minute {
		return "minute"
	}
	return w.String()
}

// applies reports whether r counts a request of s.
func (r *rule) applies(s *Subject) bool {
	switch {
	case r.perUser && s.User == "":
		return false
	case r.model != "" && r.model != s.Model:
		return false
	case s.Model == "" && r.kind != kindRPM:
		// Operations without a model (listing deployments, files) use no
		// tokens and cost nothing: only request limits count them.
		return false
	}
	return true
}
