package balancer

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RetryAfter reads how long a throttling (429) backend asked to be left
// alone, from, in this order: retry-after-ms (milliseconds), retry-after
// (seconds or an HTTP date), x-ratelimit-reset-requests and
// x-ratelimit-reset-tokens (Go-style durations such as "1s", "6m0s",
// "20ms"). Garbage and non-positive values are ignored; ok is false when no
// header gives a usable value.
//
// The x-ratelimit-reset-* headers say when a quota window is full again and
// come with every response of a rate-limited deployment, so they size a trip
// only for a 429; for other failures use ExplicitRetryAfter.
func RetryAfter(h http.Header, now time.Time) (d time.Duration, ok bool) {
	if d, ok := ExplicitRetryAfter(h, now); ok {
		return d, true
	}
	for _, k := range [...]string{"X-Ratelimit-Reset-Requests", "X-Ratelimit-Reset-Tokens"} {
		if d, ok := resetDuration(h.Get(k)); ok {
			return d, true
		}
	}
	return 0, false
}

// ExplicitRetryAfter reads only retry-after-ms and retry-after: what any
// failing response (a 503, say) asks for.
func ExplicitRetryAfter(h http.Header, now time.Time) (d time.Duration, ok bool) {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && ms > 0 && ms < 1e10 {
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if s, err := strconv.ParseFloat(v, 64); err == nil {
			if s > 0 && s < 1e7 {
				return time.Duration(s * float64(time.Second)), true
			}
		} else if t, err := http.ParseTime(v); err == nil && t.After(now) {
			return t.Sub(now), true
		}
	}
	return 0, false
}

// resetDuration parses x-ratelimit-reset-* values: "1s", "6m0s", "20ms",
// or a bare number of seconds.
func resetDuration(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d, d > 0 && d < 24*time.Hour
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 && s < 86400 {
		return time.Duration(s * float64(time.Second)), true
	}
	return 0, false
}
