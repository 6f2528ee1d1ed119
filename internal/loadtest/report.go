package loadtest

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ReportVersion is the report's report_version: bumped only when a field
// changes meaning.
const ReportVersion = 1

// Report is what a run measured. Its JSON field names are stable; the
// package comment documents each. It never holds a header value.
type Report struct {
	ReportVersion int     `json:"report_version"`
	Mode          string  `json:"mode"`
	URL           string  `json:"url"`
	API           string  `json:"api"`
	Rate          float64 `json:"rate"`
	Concurrency   int     `json:"concurrency"`
	StreamShare   float64 `json:"stream_share"`
	DurationS     float64 `json:"duration_s"`
	WarmupS       float64 `json:"warmup_s"`
	ElapsedS      float64 `json:"elapsed_s"`
	Interrupted   bool    `json:"interrupted"`

	Scheduled     int64   `json:"scheduled"`
	Sent          int64   `json:"sent"`
	Unsent        int64   `json:"unsent"`
	Completed     int64   `json:"completed"`
	Succeeded     int64   `json:"succeeded"`
	Errors        int64   `json:"errors"`
	SentRate      float64 `json:"sent_rate"`
	AchievedRate  float64 `json:"achieved_rate"`
	SucceededRate float64 `json:"succeeded_rate"`
	PeakInFlight  int64   `json:"peak_in_flight"`

	Latency       Stats  `json:"latency_ms"`
	LatencyJSON   Stats  `json:"latency_json_ms"`
	LatencyStream Stats  `json:"latency_stream_ms"`
	TTFT          Stats  `json:"ttft_ms"`
	ScheduleLag   *Stats `json:"schedule_lag_ms,omitempty"`

	PromptTokens         int64   `json:"prompt_tokens"`
	CompletionTokens     int64   `json:"completion_tokens"`
	PromptTokensPerS     float64 `json:"prompt_tokens_per_s"`
	CompletionTokensPerS float64 `json:"completion_tokens_per_s"`
	MissingUsage         int64   `json:"missing_usage"`

	StatusCodes       map[string]int64 `json:"status_codes"`
	Throttled         int64            `json:"throttled"`
	TransportErrors   map[string]int64 `json:"transport_errors"`
	IncompleteStreams int64            `json:"incomplete_streams"`
	IncompleteBodies  int64            `json:"incomplete_bodies"`

	ByApp   []Breakdown `json:"by_app,omitempty"`
	ByModel []Breakdown `json:"by_model,omitempty"`
}

// Stats summarise a latency distribution in milliseconds. Percentiles come
// from an HDR histogram (within 0.1%); count, mean, min and max are exact.
type Stats struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	Min   float64 `json:"min"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// Breakdown counts the requests of one app or model.
type Breakdown struct {
	Name            string           `json:"name"`
	Sent            int64            `json:"sent"`
	Succeeded       int64            `json:"succeeded"`
	Errors          int64            `json:"errors"`
	Throttled       int64            `json:"throttled"`
	StatusCodes     map[string]int64 `json:"status_codes"`
	TransportErrors map[string]int64 `json:"transport_errors"`
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)) / float64(time.Millisecond)
}

func (d *dist) stats() Stats {
	if d.n == 0 {
		return Stats{}
	}
	v := d.h.ValueAtPercentiles([]float64{50, 90, 99, 99.9}) // one pass
	q := func(p float64) float64 {
		// The histogram rounds up within its precision; never past the max.
		return min(ms(time.Duration(v[p])*time.Microsecond), ms(d.max))
	}
	return Stats{
		Count: d.n,
		Mean:  ms(d.sum / time.Duration(d.n)),
		Min:   ms(d.min),
		P50:   q(50),
		P90:   q(90),
		P99:   q(99),
		P999:  q(99.9),
		Max:   ms(d.max),
	}
}

func statusMap(m map[int]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[statusKey(k)] = v
	}
	return out
}

func copyMap(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (t *tally) breakdown(name string) Breakdown {
	return Breakdown{
		Name: name, Sent: t.sent, Succeeded: t.succeeded, Errors: t.errors, Throttled: t.throttled,
		StatusCodes: statusMap(t.status), TransportErrors: copyMap(t.transport),
	}
}

// report builds the report once the run is over.
func (r *runner) report() *Report {
	c, rec := r.cfg, r.rec
	rec.mu.Lock()
	defer rec.mu.Unlock()

	stopAt := r.end
	if ns := r.stopped.Load(); ns != 0 && time.Unix(0, ns).Before(stopAt) {
		stopAt = time.Unix(0, ns)
	}
	elapsed := max(maxTime(rec.last, stopAt).Sub(rec.from), 0)
	perS := func(n int64) float64 {
		if elapsed <= 0 {
			return 0
		}
		return math.Round(float64(n)/elapsed.Seconds()*1000) / 1000
	}
	var transport int64
	for _, n := range rec.all.transport {
		transport += n
	}
	completed := rec.sent - transport - rec.incompleteStreams - rec.incompleteBodies

	rep := &Report{
		ReportVersion: ReportVersion,
		Mode:          c.mode(),
		URL:           redactedURL(c.URL),
		API:           c.API,
		Rate:          c.Rate,
		Concurrency:   c.Concurrency,
		StreamShare:   c.StreamShare,
		DurationS:     c.Duration.Seconds(),
		WarmupS:       c.Warmup.Seconds(),
		ElapsedS:      elapsed.Round(time.Millisecond).Seconds(),
		Interrupted:   r.stopped.Load() != 0,

		Scheduled:     r.scheduled,
		Sent:          rec.sent,
		Unsent:        r.unsent,
		Completed:     completed,
		Succeeded:     rec.all.succeeded,
		Errors:        rec.all.errors,
		SentRate:      math.Round(float64(rec.sent)/c.Duration.Seconds()*1000) / 1000,
		AchievedRate:  perS(completed),
		SucceededRate: perS(rec.all.succeeded),
		PeakInFlight:  rec.peak.Load(),

		Latency:       rec.latAll.stats(),
		LatencyJSON:   rec.lat[0].stats(),
		LatencyStream: rec.lat[1].stats(),
		TTFT:          rec.ttft.stats(),

		PromptTokens:         rec.prompt,
		CompletionTokens:     rec.completion,
		PromptTokensPerS:     perS(rec.prompt),
		CompletionTokensPerS: perS(rec.completion),
		MissingUsage:         rec.missingUsage,

		StatusCodes:       statusMap(rec.all.status),
		Throttled:         rec.all.throttled,
		TransportErrors:   copyMap(rec.all.transport),
		IncompleteStreams: rec.incompleteStreams,
		IncompleteBodies:  rec.incompleteBodies,
	}
	if c.Rate > 0 {
		lag := rec.lag.stats()
		rep.ScheduleLag = &lag
	}
	if len(c.Apps) > 1 {
		for i, a := range c.Apps {
			rep.ByApp = append(rep.ByApp, rec.apps[i].breakdown(a.Name))
		}
	}
	if len(c.Models) > 1 {
		for i, m := range c.Models {
			rep.ByModel = append(rep.ByModel, rec.models[i].breakdown(m.Alias))
		}
	}
	return rep
}

// WriteText writes the report for people.
func (rep *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	switch rep.Mode {
	case "open":
		p("open loop: %g requests/s", rep.Rate)
		if rep.Concurrency > 0 {
			p(", at most %d in flight", rep.Concurrency)
		}
	default:
		p("closed loop: %d workers", rep.Concurrency)
	}
	p(", %s for %s", rep.URL, secs(rep.DurationS))
	if rep.WarmupS > 0 {
		p(" after a %s warmup", secs(rep.WarmupS))
	}
	p(" (%s API, %.0f%% streaming)\n", rep.API, rep.StreamShare*100)
	if rep.Interrupted {
		p("INTERRUPTED: the figures cover what was measured until then\n")
	}
	p("\n")
	if rep.Mode == "open" {
		p("  requests   %d scheduled, %d sent (%.1f/s), %d unsent\n", rep.Scheduled, rep.Sent, rep.SentRate, rep.Unsent)
	} else {
		p("  requests   %d sent (%.1f/s)\n", rep.Sent, rep.SentRate)
	}
	p("  completed  %d in %s: %.1f/s (%d succeeded: %.1f/s)\n", rep.Completed, secs(rep.ElapsedS), rep.AchievedRate, rep.Succeeded, rep.SucceededRate)
	p("  errors     %d", rep.Errors)
	if rep.Errors > 0 {
		p(" (%d throttled, %d transport, %d incomplete streams, %d incomplete bodies)",
			rep.Throttled, sum(rep.TransportErrors), rep.IncompleteStreams, rep.IncompleteBodies)
	}
	p("\n  in flight  %d at most\n", rep.PeakInFlight)
	p("  status     %s\n", counts(rep.StatusCodes, "none"))
	if len(rep.TransportErrors) > 0 {
		p("  transport  %s\n", counts(rep.TransportErrors, ""))
	}
	p("  tokens     prompt %d (%.0f/s), completion %d (%.0f/s)", rep.PromptTokens, rep.PromptTokensPerS, rep.CompletionTokens, rep.CompletionTokensPerS)
	if rep.MissingUsage > 0 {
		p(", %d successes without usage", rep.MissingUsage)
	}
	p("\n")
	if rep.Latency.Count > 0 || rep.ScheduleLag != nil && rep.ScheduleLag.Count > 0 {
		p("\n  %-14s %8s %9s %9s %9s %9s %9s %9s\n", "latency (ms)", "count", "mean", "p50", "p90", "p99", "p99.9", "max")
	}
	row := func(name string, s Stats) {
		if s.Count == 0 {
			return
		}
		p("  %-14s %8d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", name, s.Count, s.Mean, s.P50, s.P90, s.P99, s.P999, s.Max)
	}
	row("all", rep.Latency)
	if rep.LatencyJSON.Count > 0 && rep.LatencyStream.Count > 0 {
		row("json", rep.LatencyJSON)
		row("stream", rep.LatencyStream)
	}
	row("ttft (stream)", rep.TTFT)
	if rep.ScheduleLag != nil {
		row("schedule lag", *rep.ScheduleLag)
	}
	if rep.Mode == "open" && rep.Latency.Count > 0 {
		p("  (open loop: latency and ttft count from the intended send time)\n")
	}
	for _, g := range []struct {
		title string
		rows  []Breakdown
	}{{"app", rep.ByApp}, {"model", rep.ByModel}} {
		if len(g.rows) == 0 {
			continue
		}
		p("\n  %-20s %8s %9s %8s %9s  %s\n", "by "+g.title, "sent", "succeeded", "errors", "throttled", "status")
		for _, br := range g.rows {
			p("  %-20s %8d %9d %8d %9d  %s\n", br.Name, br.Sent, br.Succeeded, br.Errors, br.Throttled, counts(br.StatusCodes, "none"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// counts is "k: n, k: n" sorted by key (numerically when keys are numbers).
func counts(m map[string]int64, empty string) string {
	if len(m) == 0 {
		return empty
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, errA := strconv.Atoi(keys[i])
		b, errB := strconv.Atoi(keys[j])
		if errA == nil && errB == nil {
			return a < b
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
