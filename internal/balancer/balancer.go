// Package balancer owns backend selection: which deployment of which
// backend serves each attempt of a request. A pool groups backends by
// priority (1 first); inside the best priority with an available backend the
// pick is weighted-random or round-robin. A backend deployment is
// unavailable while its circuit breaker is open (tripped by 429s, 5xx and
// connection failures, for as long as the backend's retry-after asks) or,
// with steering, while its last x-ratelimit-remaining-tokens reading is
// below the request's estimated cost.
//
// State is shared across goroutines with atomics; the pick takes no lock,
// and while the backends are healthy it does not scan them either: it
// draws one by weight (a binary search), so its cost hardly grows with the
// pool. Only when the draws land on unavailable backends does it walk the
// priority's members.
package balancer

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/upstream"
)

// Balancer builds per-request Selections. It is immutable after New (its
// States change) and safe for concurrent use.
type Balancer struct {
	pools       map[string]*pool
	first       *pool
	models      map[string]string // alias -> pinned pool ("" = none)
	states      []*State          // every backend deployment, for Snapshot
	stateOf     map[stateKey]*State
	passThrough upstream.Target
	now         func() time.Time
	log         *slog.Logger
	prev        *Balancer // WithPrevious: whose States carry over
}

type pool struct {
	name       string
	roundRobin bool
	steering   bool
	rule       rule
	retry      config.Retry
	aliases    map[string][]group
}

// group is the members of one priority that serve an alias.
type group struct {
	priority int
	members  []*member
	// upTo[i] is the weight of members[:i+1], so a draw in [0, total)
	// finds its member by binary search instead of a walk.
	upTo  []int
	total int
	rr    *atomic.Uint64 // round-robin: the group's next draw
}

// add appends m to the group.
func (g *group) add(m *member) {
	g.members = append(g.members, m)
	g.total += m.weight
	g.upTo = append(g.upTo, g.total)
}

// at is the member a draw n in [0, total) lands on.
func (g *group) at(n int) *member {
	i, _ := slices.BinarySearch(g.upTo, n+1) // the first i with upTo[i] > n
	return g.members[i]
}

// stateKey names a backend deployment.
type stateKey struct{ backend, deployment string }

type member struct {
	target upstream.Target
	weight int
	state  *State
}

// Option configures a Balancer.
type Option func(*Balancer)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(b *Balancer) { b.now = now } }

// WithPrevious carries prev's state over to the new Balancer (a config
// reload): each backend deployment that still exists keeps its breaker,
// trips, rate-limit readings and in-flight count, shared with prev so
// requests still running on prev report into the same State.
func WithPrevious(prev *Balancer) Option { return func(b *Balancer) { b.prev = prev } }

// New builds a Balancer from validated config and the backends built from it.
func New(cfg *config.Config, backends map[string]*upstream.Backend, log *slog.Logger, opts ...Option) (*Balancer, error) {
	b := &Balancer{pools: map[string]*pool{}, models: map[string]string{}, now: time.Now, log: log}
	for _, o := range opts {
		o(b)
	}
	// prev is only read here: keeping it would chain every Balancer
	// since the start (and their backends) in memory.
	prev := b.prev
	b.prev = nil
	b.stateOf = map[stateKey]*State{}
	stateOf := func(backend, deployment string) *State {
		k := stateKey{backend, deployment}
		if s, ok := b.stateOf[k]; ok {
			return s
		}
		s := prev.state(k)
		if s == nil {
			s = newState(backend, deployment)
		}
		b.stateOf[k] = s
		b.states = append(b.states, s)
		return s
	}
	apiVersions := make(map[string]string, len(cfg.Backends))
	for _, bc := range cfg.Backends {
		apiVersions[bc.Name] = bc.APIVersion
	}
	// Each model's deployment on each backend (the first, if several).
	deployments := make([]map[string]*config.Deployment, len(cfg.Models))
	for i, m := range cfg.Models {
		deployments[i] = make(map[string]*config.Deployment, len(m.Deployments))
		for j := range m.Deployments {
			d := &m.Deployments[j]
			if _, dup := deployments[i][d.Backend]; !dup {
				deployments[i][d.Backend] = d
			}
		}
	}
	for _, pc := range cfg.Pools {
		p := &pool{name: pc.Name, roundRobin: pc.Strategy == "round-robin", steering: pc.SteeringEnabled(),
			retry: pc.Retry, aliases: map[string][]group{}}
		p.rule = rule{failures: pc.Breaker.Failures, interval: pc.Breaker.Interval, tripDuration: pc.Breaker.TripDuration,
			acceptRetryAfter: pc.Breaker.AcceptRetryAfter == nil || *pc.Breaker.AcceptRetryAfter}
		for _, t := range pc.Breaker.TripOn {
			sr, err := config.ParseStatusRange(t)
			if err != nil {
				return nil, fmt.Errorf("pool %s: %w", pc.Name, err)
			}
			p.rule.tripOn = append(p.rule.tripOn, sr)
		}
		for mi, m := range cfg.Models {
			var groups []group
			byPriority := map[int]int{} // priority -> index in groups
			for _, pm := range pc.Backends {
				d := deployments[mi][pm.Backend]
				if d == nil {
					continue
				}
				be, ok := backends[d.Backend]
				if !ok {
					return nil, fmt.Errorf("model %s: unknown backend %q", m.Name, d.Backend)
				}
				apiVersion := d.APIVersion
				if apiVersion == "" {
					apiVersion = apiVersions[d.Backend]
				}
				mem := &member{target: upstream.Target{Backend: be, Deployment: d.Name, APIVersion: apiVersion},
					weight: pm.Weight, state: stateOf(d.Backend, d.Name)}
				gi, ok := byPriority[pm.Priority]
				if !ok {
					gi = len(groups)
					byPriority[pm.Priority] = gi
					groups = append(groups, group{priority: pm.Priority, rr: new(atomic.Uint64)})
				}
				groups[gi].add(mem)
			}
			if len(groups) > 0 {
				slices.SortFunc(groups, func(a, b group) int { return cmp.Compare(a.priority, b.priority) })
				p.aliases[m.Name] = groups
			}
		}
		b.pools[pc.Name] = p
		if b.first == nil {
			b.first = p
			// Pass-through operations go to the first pool's best backend,
			// always the same one, so stateful resources stay on one instance.
			best := slices.MinFunc(pc.Backends, func(a, b config.PoolMember) int { return cmp.Compare(a.Priority, b.Priority) })
			b.passThrough = upstream.Target{Backend: backends[best.Backend]}
		}
	}
	for _, m := range cfg.Models {
		b.models[m.Name] = m.Pool
	}
	if b.first == nil {
		return nil, fmt.Errorf("no pools")
	}
	return b, nil
}

// state returns b's State of a backend deployment, or nil (also for a nil b).
func (b *Balancer) state(k stateKey) *State {
	if b == nil {
		return nil
	}
	return b.stateOf[k]
}

// PoolFor names the pool serving alias for an app whose pool is appPool
// (""): the model's pin, else the app's pool, else the first pool.
func (b *Balancer) PoolFor(alias, appPool string) string {
	if pin := b.models[alias]; pin != "" {
		return pin
	}
	if appPool != "" {
		return appPool
	}
	return b.first.name
}

// Select starts the attempts of one request for alias in the named pool.
// cost is the request's estimated tokens (prompt estimate + max_tokens),
// used for steering; retries is false when the body cannot be re-sent.
// An alias the pool does not serve is a 404 *openai.Error naming both.
func (b *Balancer) Select(poolName, alias string, cost int64, retries bool) (*Selection, error) {
	p, ok := b.pools[poolName]
	if !ok {
		p = b.first
	}
	groups, ok := p.aliases[alias]
	if !ok {
		if _, known := b.models[alias]; known {
			return nil, openai.Errorf(http.StatusNotFound, "DeploymentNotFound",
				"the model %q is not served by pool %q; ask the gateway's operator to add a deployment of it to that pool", alias, p.name)
		}
		return nil, openai.Errorf(http.StatusNotFound, "DeploymentNotFound",
			"the model %q is not served by this gateway; ask its operator which model aliases are configured", alias)
	}
	maxAttempts := p.retry.Attempts
	if !retries {
		maxAttempts = 1
	}
	return &Selection{b: b, pool: p, alias: alias, groups: groups, cost: cost, maxAttempts: maxAttempts,
		deadline: b.now().Add(p.retry.Budget)}, nil
}

// PassThrough starts the single attempt of an operation not tied to a model.
func (b *Balancer) PassThrough() *Selection {
	return &Selection{b: b, pool: b.first, fixed: &b.passThrough, maxAttempts: 1}
}

// Snapshot lists every backend deployment's state, sorted by backend and
// deployment.
func (b *Balancer) Snapshot() []Snapshot {
	now := b.now()
	out := make([]Snapshot, 0, len(b.states))
	for _, s := range b.states {
		out = append(out, s.snapshot(now))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Backend != out[j].Backend {
			return out[i].Backend < out[j].Backend
		}
		return out[i].Deployment < out[j].Deployment
	})
	return out
}
