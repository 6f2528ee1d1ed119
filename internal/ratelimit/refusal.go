package ratelimit

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tokengate/tokengate/internal/openai"
)

// RefusedBy returns the id of the limit that refused the request
// ("app/batch-app/limits[0].rpm") for an error Admit returned, or for the
// *openai.Error it is: when several limits refuse, the one with the
// longest wait, which Retry-After reports. It returns "" for any other
// error, including CodeUnavailable (no limit refused: the store is down).
func RefusedBy(err error) string {
	var r *refusedBy
	if errors.As(err, &r) {
		return r.limit
	}
	return ""
}

// refusedBy is the cause (openai.Error.Err: logged, never shown to the
// client) of a refusal, naming the limit.
type refusedBy struct{ limit string }

func (e *refusedBy) Error() string { return "refused by limit " + e.limit }

// refusal is the error for a request c refused, wait ms before c would
// admit it (the longest wait of the limits that refused it: the request
// needs them all). The x-ratelimit-* headers show the state it was refused
// in.
func (l *Limiter) refusal(cs []check, c *check, s *Subject, wait int64) error {
	h := make(http.Header, 8)
	setRateHeaders(h, cs)
	secs := setRetryAfter(h, time.Duration(wait)*time.Millisecond)
	who := c.rule.who
	if c.rule.perUser {
		who += ", user " + s.User
	}
	if c.rule.kind.rate() {
		need := ""
		if c.rule.kind == kindTPM {
			need = fmt.Sprintf(" (this request reserves %d: its prompt and max_tokens)", c.n)
		}
		return &openai.Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited, Header: h,
			Message: fmt.Sprintf("%s: %s exceeded%s; retry after %s", who, c.rule.what, need, seconds(secs)),
			Err:     &refusedBy{c.rule.id}}
	}
	resets := time.UnixMilli(c.periodEnd).In(l.loc).Format(time.RFC3339)
	msg := fmt.Sprintf("%s: %s exhausted (this request reserves %d tokens); it resets at %s", who, c.rule.what, c.n, resets)
	if c.rule.kind == kindBudget {
		msg = fmt.Sprintf("%s: %s spent; it resets at %s", who, c.rule.what, resets)
	}
	return &openai.Error{Status: l.quotaStatus, Code: CodeQuotaExceeded, Header: h, Message: msg, Err: &refusedBy{c.rule.id}}
}

// neverFits is the error for a request larger than a limit's whole
// capacity. It has no Retry-After: no wait would let it through.
func (l *Limiter) neverFits(r *rule, s *Subject, tokens int64) error {
	who := r.who
	if r.perUser {
		who += ", user " + s.User
	}
	msg := fmt.Sprintf("%s: this request reserves %d tokens (its prompt and max_tokens), more than the whole %s, "+
		"so it can never be admitted; lower max_tokens or shorten the prompt", who, tokens, r.what)
	if r.kind.rate() {
		return &openai.Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited, Message: msg, Err: &refusedBy{r.id}}
	}
	return &openai.Error{Status: l.quotaStatus, Code: CodeQuotaExceeded, Message: msg, Err: &refusedBy{r.id}}
}

// setRetryAfter sets Retry-After (whole seconds) and retry-after-ms to d,
// each rounded up and at least 1, and returns the seconds.
func setRetryAfter(h http.Header, d time.Duration) int64 {
	secs := max(ceilDiv(d, time.Second), 1)
	h.Set("Retry-After", strconv.FormatInt(secs, 10))
	h.Set("Retry-After-Ms", strconv.FormatInt(max(ceilDiv(d, time.Millisecond), 1), 10))
	return secs
}

// ceilDiv is d/unit rounded up, for d >= 0.
func ceilDiv(d, unit time.Duration) int64 {
	n := int64(d / unit)
	if d%unit > 0 {
		n++
	}
	return n
}

func seconds(n int64) string {
	if n == 1 {
		return "1 second"
	}
	return strconv.FormatInt(n, 10) + " seconds"
}

// periods are the calendar periods of one moment, cached for the hour it
// belongs to: day and month boundaries are hour boundaries too.
type periods struct {
	hour, day, month [2]int64 // start, end in Unix ms
}

// periodsAt returns the periods now falls in, in the configured zone.
func (l *Limiter) periodsAt(now time.Time) *periods {
	ms := now.UnixMilli()
	if p := l.periods.Load(); p != nil && ms >= p.hour[0] && ms < p.hour[1] {
		return p
	}
	t := now.In(l.loc)
	// The hour by subtracting the minutes, not time.Date: during the hour
	// a DST change repeats, Date may pick the wrong one of the two.
	h := t.Truncate(time.Second).Add(-time.Duration(t.Minute()*60+t.Second()) * time.Second)
	y, m, d := t.Date()
	p := &periods{
		hour:  [2]int64{h.UnixMilli(), h.Add(time.Hour).UnixMilli()},
		day:   [2]int64{time.Date(y, m, d, 0, 0, 0, 0, l.loc).UnixMilli(), time.Date(y, m, d+1, 0, 0, 0, 0, l.loc).UnixMilli()},
		month: [2]int64{time.Date(y, m, 1, 0, 0, 0, 0, l.loc).UnixMilli(), time.Date(y, m+1, 1, 0, 0, 0, 0, l.loc).UnixMilli()},
	}
	l.periods.Store(p)
	return p
}

// bounds returns the start and end of k's period.
func (p *periods) bounds(k kind) (int64, int64) {
	switch k {
	case kindHour:
		return p.hour[0], p.hour[1]
	case kindDay:
		return p.day[0], p.day[1]
	default:
		return p.month[0], p.month[1]
	}
}
