// Package balancer owns backend selection: which deployment of which backend
// serves a request for a model alias. Backends are grouped by priority (1
// first); within the best group the pick is weighted-random.
//
// Circuit breakers, Retry-After bookkeeping and steering plug in here: they
// make a backend unavailable, and Pick then falls through to the next group.
package balancer

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/upstream"
)

// Balancer picks targets. It is immutable after New and safe for concurrent use.
type Balancer struct {
	models map[string][]group
	// passThrough serves operations not tied to a model (files, batches...):
	// always the same backend, so stateful resources stay on one instance.
	passThrough *upstream.Backend
}

// group is the targets of one priority, with their cumulative weights.
type group struct {
	priority int
	targets  []upstream.Target
	cum      []int // cum[i] = sum of weights of targets[0..i]
}

// New builds a Balancer from validated config and the backends built from it.
func New(cfg *config.Config, backends map[string]*upstream.Backend) (*Balancer, error) {
	b := &Balancer{models: make(map[string][]group, len(cfg.Models))}
	for _, m := range cfg.Models {
		var groups []group
		for _, d := range m.Deployments {
			be, ok := backends[d.Backend]
			if !ok {
				return nil, fmt.Errorf("model %s: unknown backend %q", m.Name, d.Backend)
			}
			apiVersion := d.APIVersion
			if apiVersion == "" {
				apiVersion = cfg.Backend(d.Backend).APIVersion
			}
			t := upstream.Target{Backend: be, Deployment: d.Name, APIVersion: apiVersion}
			i := slices.IndexFunc(groups, func(g group) bool { return g.priority == be.Priority })
			if i < 0 {
				groups = append(groups, group{priority: be.Priority})
				i = len(groups) - 1
			}
			g := &groups[i]
			total := be.Weight
			if n := len(g.cum); n > 0 {
				total += g.cum[n-1]
			}
			g.targets = append(g.targets, t)
			g.cum = append(g.cum, total)
		}
		slices.SortFunc(groups, func(a, b group) int { return cmp.Compare(a.priority, b.priority) })
		b.models[m.Name] = groups
	}
	for _, bc := range cfg.Backends {
		be := backends[bc.Name]
		if b.passThrough == nil || be.Priority < b.passThrough.Priority {
			b.passThrough = be
		}
	}
	if b.passThrough == nil {
		return nil, fmt.Errorf("no backends")
	}
	return b, nil
}

// Pick chooses the target for a model alias. An alias no backend serves is
// a 404 *openai.Error naming it.
func (b *Balancer) Pick(alias string) (upstream.Target, error) {
	groups, ok := b.models[alias]
	if !ok || len(groups) == 0 {
		return upstream.Target{}, openai.Errorf(http.StatusNotFound, "DeploymentNotFound",
			"the model %q is not served by this gateway; ask its operator which model aliases are configured", alias)
	}
	g := groups[0]
	if len(g.targets) == 1 {
		return g.targets[0], nil
	}
	n := rand.IntN(g.cum[len(g.cum)-1])
	i, _ := slices.BinarySearch(g.cum, n+1)
	return g.targets[i], nil
}

// PassThrough returns the backend for operations not tied to a model alias.
func (b *Balancer) PassThrough() upstream.Target {
	return upstream.Target{Backend: b.passThrough}
}
