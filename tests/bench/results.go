package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tokengate/tokengate/internal/loadtest"
)

type results struct {
	Machine   string     `json:"machine"`
	Started   time.Time  `json:"started"`
	Finished  time.Time  `json:"finished"`
	Options   string     `json:"options"`
	Scenarios []scenario `json:"scenarios"`
	// Streams is the memory run: concurrent slow streams held through
	// the full pipeline.
	Streams *streamsResult `json:"streams,omitempty"`
}

// scenario is one load shape run against every target in turn.
type scenario struct {
	Name        string `json:"name"`
	Mode        string `json:"mode"` // json or stream
	Loop        string `json:"loop"` // closed or open
	Concurrency int    `json:"concurrency,omitempty"`
	Rate        int    `json:"rate,omitempty"`
	Runs        []run1 `json:"runs"`
}

// run1 is one target's run of a scenario, with its comparisons to
// direct (and nginx) from the same scenario.
type run1 struct {
	Target string          `json:"target"`
	Report json.RawMessage `json:"report"`
	// Throughput is achieved requests/s; VsDirect and VsNginx are its
	// ratios to those paths' in the same scenario.
	Throughput float64 `json:"throughput"`
	VsDirect   float64 `json:"throughput_vs_direct"`
	VsNginx    float64 `json:"throughput_vs_nginx,omitempty"`
	// AddedP50 and AddedP99 are the latency percentiles minus direct's, ms.
	AddedP50 float64 `json:"added_p50_ms"`
	AddedP99 float64 `json:"added_p99_ms"`
	Errors   int64   `json:"errors"`
	rep      loadtest.Report
}

func (o options) summary() string {
	return fmt.Sprintf("duration %s, warmup %s, closed loop %d clients, open loop %v req/s, prompt %d tokens, max_tokens %d, %d slow streams",
		o.duration, o.warmup, o.concurrency, o.rates, o.promptToks, o.maxTokens, o.streams)
}

// add computes the scenario's comparisons and keeps it.
func (res *results) add(s scenario) {
	var direct, nginx *loadtest.Report
	for i := range s.Runs {
		r := &s.Runs[i]
		_ = json.Unmarshal(r.Report, &r.rep)
		switch r.Target {
		case "direct":
			direct = &r.rep
		case "nginx":
			nginx = &r.rep
		}
	}
	for i := range s.Runs {
		r := &s.Runs[i]
		r.Throughput, r.Errors = r.rep.AchievedRate, r.rep.Errors
		if direct != nil && direct.AchievedRate > 0 {
			r.VsDirect = r.rep.AchievedRate / direct.AchievedRate
			r.AddedP50 = r.rep.Latency.P50 - direct.Latency.P50
			r.AddedP99 = r.rep.Latency.P99 - direct.Latency.P99
		}
		if nginx != nil && nginx.AchievedRate > 0 {
			r.VsNginx = r.rep.AchievedRate / nginx.AchievedRate
		}
	}
	res.Scenarios = append(res.Scenarios, s)
}

// print writes the comparison table.
func (res *results) print(w io.Writer) {
	fmt.Fprintf(w, "\n%s\n%s\n\n", res.Machine, res.Options)
	fmt.Fprintf(w, "%-22s %-8s %10s %9s %9s %9s %9s %11s %11s %7s\n",
		"scenario", "path", "req/s", "vs direct", "vs nginx", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "errors")
	for _, s := range res.Scenarios {
		for _, r := range s.Runs {
			vsNginx := "-"
			if r.VsNginx > 0 {
				vsNginx = fmt.Sprintf("%.2fx", r.VsNginx)
			}
			fmt.Fprintf(w, "%-22s %-8s %10.0f %8.2fx %9s %9.3f %9.3f %11.3f %11.3f %7d\n",
				s.Name, r.Target, r.Throughput, r.VsDirect, vsNginx, r.rep.Latency.P50, r.rep.Latency.P99, r.AddedP50, r.AddedP99, r.Errors)
		}
		fmt.Fprintln(w, strings.Repeat("-", 112))
	}
	if s := res.Streams; s != nil {
		fmt.Fprintf(w, "%d concurrent streams through the full pipeline: peak %d open, gateway RSS %.0f MiB at that peak (max %.0f MiB, idle %.0f MiB; Go heap in use %.0f MiB, stacks %.0f MiB)\n",
			s.Streams, s.PeakOpen, s.RSSAtPeakOpenMiB, s.PeakRSSMiB, s.BaselineRSSMiB, s.HeapInuseMiB, s.StackInuseMiB)
	}
}
