package config

import (
	"fmt"
	"strconv"
	"strings"
)

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ From, To int }

// ParseStatusRange reads "429" or "500-599".
func ParseStatusRange(s string) (StatusRange, error) {
	from, to, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err1 := strconv.Atoi(from)
	b := a
	var err2 error
	if isRange {
		b, err2 = strconv.Atoi(to)
	}
	if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
		return StatusRange{}, fmt.Errorf("%q is not a status code or range like 429 or 500-599", s)
	}
	return StatusRange{a, b}, nil
}

// validatePools checks the pools section; backends holds the backends' names.
func (c *Config) validatePools(bad func(path, format string, args ...any), backends map[string]bool) {
	pools := map[string]bool{}
	for i, p := range c.Pools {
		path := fmt.Sprintf("pools[%d]", i)
		if p.Name == "" || pools[p.Name] {
			bad(path+".name", "required and unique")
		}
		pools[p.Name] = true
		if len(p.Backends) == 0 {
			bad(path+".backends", "at least one backend is required")
		}
		members := map[string]bool{}
		for j, m := range p.Backends {
			mp := fmt.Sprintf("%s.backends[%d]", path, j)
			switch {
			case !backends[m.Backend]:
				bad(mp+".backend", "no backend is named %q", m.Backend)
			case members[m.Backend]:
				bad(mp+".backend", "%q is in this pool twice", m.Backend)
			}
			members[m.Backend] = true
			if m.Priority < 1 {
				bad(mp+".priority", "must be 1 or more (1 is used first)")
			}
			if m.Weight < 1 {
				bad(mp+".weight", "must be 1 or more")
			}
		}
		switch p.Strategy {
		case "weighted", "round-robin":
		default:
			bad(path+".strategy", "must be weighted or round-robin, not %q", p.Strategy)
		}
		for j, r := range p.Breaker.TripOn {
			if _, err := ParseStatusRange(r); err != nil {
				bad(fmt.Sprintf("%s.breaker.trip_on[%d]", path, j), "%v", err)
			}
		}
		if p.Breaker.Failures < 1 || p.Breaker.Interval <= 0 || p.Breaker.TripDuration <= 0 {
			bad(path+".breaker", "failures must be 1 or more; interval and trip_duration positive")
		}
		if p.Retry.Attempts < 1 || p.Retry.Budget <= 0 {
			bad(path+".retry", "attempts must be 1 or more and budget positive")
		}
	}
	for i, m := range c.Models {
		if m.Pool != "" && !pools[m.Pool] {
			bad(fmt.Sprintf("models[%d].pool", i), "no pool is named %q", m.Pool)
		}
	}
	for i, a := range c.Apps {
		if a.Pool != "" && !pools[a.Pool] {
			bad(fmt.Sprintf("apps[%d].pool", i), "no pool is named %q", a.Pool)
		}
	}
}
