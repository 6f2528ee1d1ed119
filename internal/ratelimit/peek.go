package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// LimitState is one limit of an app and what it has counted, as Peek
// reads it (GET /admin/apps).
type LimitState struct {
	// ID names the limit as logs, ShadowRefused and RefusedBy do:
	// "app/batch-app/limits[0].rpm", "team/research/limits[1].tpm".
	ID string `json:"id"`
	// Scope is "app" or "team" (a limit of the app's team, shared by its
	// apps).
	Scope string `json:"scope"`
	// Kind is the config field: rpm, tpm, tokens_per_hour, tokens_per_day,
	// tokens_per_month or budget_per_month.
	Kind string `json:"kind"`
	// Limit is the configured number, for every kind but budget_per_month.
	Limit int64 `json:"limit,omitempty"`
	// Budget is the configured budget_per_month.
	Budget float64 `json:"budget,omitempty"`
	// Model is the model alias the limit is restricted to; "" for all.
	Model string `json:"model,omitempty"`
	// PerUser is true for per: user limits. Each caller has a counter of
	// their own, which Peek does not list: Used is 0 and Remaining the
	// whole limit, what a caller who has sent nothing has.
	PerUser bool `json:"per_user,omitempty"`
	// Shadow is true for limits that are judged and logged but refuse
	// nothing. Their usage is what they would have admitted.
	Shadow bool `json:"shadow,omitempty"`
	// Used is the requests (rpm) or tokens counted in the current window
	// (rates) or calendar period (quotas), reservations in flight
	// included; 0 for budgets.
	Used int64 `json:"used"`
	// Spent is the cost counted this month, for budgets.
	Spent float64 `json:"spent,omitempty"`
	// Remaining is Limit - Used, at least 0 (an excess settled after
	// admission can push Used over Limit); 0 for budgets: compare Spent
	// with Budget.
	Remaining int64 `json:"remaining"`
	// ResetsAt is, for quotas and budgets, when the period ends (in
	// limits.time_zone); for rates, when the window is whole again (its
	// newest counted bucket leaves), nil when it counts nothing.
	ResetsAt *time.Time `json:"resets_at,omitempty"`
}

// reading is what a store reads for one rule.
type reading struct {
	used  int64
	spent float64
	whole int64 // rates: Unix ms the window is whole again; 0: empty
}

// Peek returns a's limits (its own, then its team's, in config order) and
// what their counters hold now, taking nothing. It returns nil for a nil
// app or one no limit applies to; an app this Limiter's config does not
// register is read from its own limits, as Admit would.
//
// With store: memory it never fails. With store: redis it reads every
// counter in one round trip within limits.redis.timeout, on the server's
// clock as admission does, and counts as a call to Redis: a failure counts
// in StoreErrors and may open the circuit, a success closes it. While the
// circuit is open it tries only when the once-per-second probe is due;
// otherwise, and when the call fails, it returns an error wrapping
// ErrStoreUnavailable (the local fallback's counters are not shown: they
// are one replica's share, not the app's usage).
//
// Safe for concurrent use with Admit and Settle.
func (l *Limiter) Peek(ctx context.Context, a *config.App) ([]LimitState, error) {
	rules := l.rulesFor(a)
	if len(rules) == 0 {
		return nil, nil
	}
	now := l.now()
	per := l.periodsAt(now)
	rs := make([]reading, len(rules))
	if l.redis == nil {
		l.mem.peek(now, rules, per, rs)
	} else if err := l.peekRedis(ctx, now, rules, per, rs); err != nil {
		return nil, err
	}
	out := make([]LimitState, len(rules))
	for i := range rules {
		out[i] = l.state(&rules[i], per, rs[i])
	}
	return out, nil
}

func (l *Limiter) peekRedis(ctx context.Context, now time.Time, rules []rule, per *periods, rs []reading) error {
	if !slices.ContainsFunc(rules, func(r rule) bool { return !r.perUser }) {
		return nil // nothing to read: the config says it all
	}
	if !l.redis.circuit.allow() {
		return fmt.Errorf("ratelimit: reading counters: %w (probing it once per %v)", ErrStoreUnavailable, l.redis.circuit.every)
	}
	err := l.redis.peek(ctx, now, rules, per, rs)
	if err == nil {
		l.redis.circuit.ok(l.log)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // the caller left: not the store's fault
	}
	l.redis.circuit.failed(l.log, err, l.fallback)
	return fmt.Errorf("ratelimit: reading counters: %w: %w", ErrStoreUnavailable, err)
}

// state is r's LimitState given what its counter holds.
func (l *Limiter) state(r *rule, per *periods, rd reading) LimitState {
	s := LimitState{
		ID:      r.id,
		Scope:   r.scope,
		Kind:    r.kind.field(),
		Limit:   r.limit,
		Budget:  r.budget,
		Model:   r.model,
		PerUser: r.perUser,
		Shadow:  r.shadow,
		Used:    rd.used,
		Spent:   rd.spent,
	}
	if r.kind != kindBudget {
		s.Remaining = max(r.limit-rd.used, 0)
	}
	var resets int64
	if r.kind.rate() {
		resets = rd.whole
	} else {
		_, resets = per.bounds(r.kind)
	}
	if resets != 0 {
		t := time.UnixMilli(resets).In(l.loc)
		s.ResetsAt = &t
	}
	return s
}
