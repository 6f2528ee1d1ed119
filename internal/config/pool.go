package config

import "time"

// Pool is a named set of backends that serve requests together: the best
// priority first, weighted (or round-robin) inside a priority, with circuit
// breakers, retries and steering.
type Pool struct {
	// Name identifies the pool (apps[].pool, models[].pool). Required, unique.
	Name string `yaml:"name"`
	// Backends are the pool's members.
	Backends []PoolMember `yaml:"backends"`
	// Strategy picks among the available backends of the best priority:
	// "weighted" (default, weighted-random) or "round-robin".
	Strategy string `yaml:"strategy"`
	// Steering skips a backend whose last x-ratelimit-remaining-tokens is
	// below the request's estimated cost until its window resets, so
	// traffic spills over before the backend answers 429. Default true.
	Steering *bool `yaml:"steering"`
	// Breaker configures the circuit breaker of each backend deployment.
	Breaker Breaker `yaml:"breaker"`
	// Retry configures retries on another backend.
	Retry Retry `yaml:"retry"`
}

// SteeringEnabled reports the effective steering setting.
func (p Pool) SteeringEnabled() bool { return p.Steering == nil || *p.Steering }

// PoolMember is a backend's place in a pool.
type PoolMember struct {
	// Backend names an entry of backends. Required.
	Backend string `yaml:"backend"`
	// Priority: 1 is used first; higher numbers only when every backend of
	// the better priorities is unavailable. Default 1.
	Priority int `yaml:"priority"`
	// Weight shares traffic inside a priority. Default 1.
	Weight int `yaml:"weight"`
}

// Breaker is a circuit-breaker rule, like Azure API Management's backend
// circuit breaker.
type Breaker struct {
	// TripOn lists status codes and ranges that count as failures, e.g.
	// ["429", "500-599"] (the default). Connection errors and timeouts
	// always count.
	TripOn []string `yaml:"trip_on"`
	// Failures within Interval that trip the breaker. Default 1.
	Failures int `yaml:"failures"`
	// Interval over which failures are counted. Default 10s.
	Interval time.Duration `yaml:"interval"`
	// TripDuration is how long a tripped backend is skipped when the
	// response says nothing. Default 10s.
	TripDuration time.Duration `yaml:"trip_duration"`
	// AcceptRetryAfter makes a trip last exactly as long as the backend
	// asked (retry-after-ms, retry-after, x-ratelimit-reset-requests,
	// x-ratelimit-reset-tokens, in that order). Default true.
	AcceptRetryAfter *bool `yaml:"accept_retry_after"`
}

// Retry configures how a failed attempt is retried on another backend.
type Retry struct {
	// Attempts is the most backends one request tries (1 disables
	// retries). Default 3.
	Attempts int `yaml:"attempts"`
	// Budget bounds the time spent across attempts. Default 60s.
	Budget time.Duration `yaml:"budget"`
}
