// Package metrics owns the gateway's Prometheus metrics: what is counted per
// request (requests, errors, tokens, cost, latencies, backend attempts,
// retries, spill-overs), per limit decision and per config reload, plus what
// is read from the running gateway at scrape time (circuit breakers, backend
// rate-limit readings, in-flight requests, the usage spool and its sinks).
//
// Every metric lives in the Metrics value's own prometheus.Registry, never
// the process-global one, so tests and several gateways in one process do
// not collide. Label values are bounded by the caller (config names,
// "unknown", "other"); this package never derives a label from raw client
// input. All names are prefixed tokengate_ and are a contract with the
// dashboards and alerts built on them: renaming one is a breaking change.
package metrics

import (
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes every metric name.
const namespace = "tokengate"

// Metrics is the gateway's metric set. Build it with New. All methods are
// safe for concurrent use; Request and LimitDecision are on the request path
// and do not allocate once a label combination has been seen.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	requests        *prometheus.CounterVec
	requestErrors   *prometheus.CounterVec
	tokens          *prometheus.CounterVec
	cost            *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	ttft            *prometheus.HistogramVec
	upstream        *prometheus.HistogramVec
	overhead        *prometheus.HistogramVec
	attempts        *prometheus.CounterVec
	throttled       *prometheus.CounterVec
	retries         *prometheus.CounterVec
	spillovers      *prometheus.CounterVec
	limitDecisions  *prometheus.CounterVec
	reloadSuccess   prometheus.Counter
	reloadFailure   prometheus.Counter
	reloadOK        prometheus.Gauge
	reloadTimestamp prometheus.Gauge
	reloadMu        sync.Mutex // keeps Reload's counter and gauges consistent

	// Resolved children, so the hot path skips the vectors' label hashing
	// and their variadic-slice allocation.
	series      cache[Labels, *series]
	errorsByKey cache[errorKey, prometheus.Counter]
	attemptsBy  cache[attemptKey, prometheus.Counter]
	throttledBy cache[string, prometheus.Counter]
	decisions   cache[decisionKey, prometheus.Counter]
}

// New builds the metrics in a registry of their own: the per-request,
// limit-decision and config-reload metrics (fed by Request, LimitDecision
// and Reload), the Go runtime and process collectors (go_*, process_*),
// tokengate_build_info, and — when src is not nil — the backend, in-flight,
// limit-store and usage-spool metrics read from src at each scrape (with a
// nil src they are absent). version is the gateway's release version; the
// VCS revision and Go version come from the binary's build info ("unknown"
// when absent). The reload gauges start as if a config load succeeded at
// New, which it has if the gateway got far enough to call New. New does not
// start goroutines; there is nothing to close.
func New(version string, src Source) *Metrics {
	// Histogram buckets, in seconds. LLM calls span four orders of
	// magnitude (an embedding in 20ms, a long reasoning completion in
	// minutes); the gateway's own overhead should stay under a millisecond.
	durationBuckets := []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300}
	ttftBuckets := []float64{0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60}
	overheadBuckets := []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1}

	reg := prometheus.NewRegistry()
	f := factory{reg: reg}
	m := &Metrics{reg: reg}

	m.requests = f.counterVec("requests_total",
		"Client requests finished by the gateway, by calling app, model alias, API operation, backend that served the final attempt, and HTTP status class the client got (client hang-ups count as 4xx).",
		"app", "model", "operation", "backend", "status_class")
	m.requestErrors = f.counterVec("request_errors_total",
		"Client requests that did not succeed, by calling app and error class (refused_limit, throttled, upstream_error, client_disconnected, ...).",
		"app", "error_class")
	m.tokens = f.counterVec("tokens_total",
		"Tokens consumed, by app, team, model alias, backend and token type (prompt, completion, cached_prompt, reasoning). cached_prompt and reasoning are subsets of prompt and completion, not additions.",
		"app", "team", "model", "backend", "type")
	m.cost = f.counterVec("cost_total",
		"Price of the requests from the models' price tables, by app, team and currency, in units of that currency.",
		"app", "team", "currency")
	m.duration = f.histogramVec("request_duration_seconds",
		"Time from the gateway receiving a request to the last byte going to the client, by model alias and whether the response was streamed.",
		durationBuckets, "model", "stream")
	m.ttft = f.histogramVec("time_to_first_token_seconds",
		"Time from the gateway receiving a streamed request to the first content event reaching the client, by model alias.",
		ttftBuckets, "model", "stream")
	m.upstream = f.histogramVec("upstream_duration_seconds",
		"Time spent waiting on backends (first attempt sent to end of final response, retries included), by model alias and streaming.",
		durationBuckets, "model", "stream")
	m.overhead = f.histogramVec("gateway_overhead_seconds",
		"Time the gateway itself added to a request (total duration minus upstream duration: auth, limits, selection, usage accounting), by model alias and streaming.",
		overheadBuckets, "model", "stream")
	m.attempts = f.counterVec("backend_attempts_total",
		"Upstream attempts, by backend and the backend's HTTP status class (\"error\": no response — connection failure, reset or timeout). A rising 4xx share on one backend is usually throttling; see tokengate_backend_throttled_total.",
		"backend", "status_class")
	m.throttled = f.counterVec("backend_throttled_total",
		"Upstream attempts a backend answered with 429 Too Many Requests, by backend.",
		"backend")
	m.retries = f.counterVec("retries_total",
		"Extra upstream attempts made after a request's first one failed, by pool and model alias.",
		"pool", "model")
	m.spillovers = f.counterVec("spillovers_total",
		"Requests that had an attempt served by a lower-priority backend group of their pool (the preferred group was unavailable or throttled), by pool and model alias.",
		"pool", "model")
	m.limitDecisions = f.counterVec("limit_decisions_total",
		"Decisions of the gateway's request and token limits, by app, limit id and outcome (admitted, refused, shadow_refused: would have refused but the limit is in shadow mode).",
		"app", "limit", "outcome")

	reloads := f.counterVec("config_reloads_total",
		"Config reload attempts, by result (success, failure). A failed reload keeps the last good config running.",
		"result")
	m.reloadSuccess = reloads.WithLabelValues("success")
	m.reloadFailure = reloads.WithLabelValues("failure")
	m.reloadOK = f.gauge("config_last_reload_successful",
		"1 if the last config reload attempt succeeded (or none was made since start), 0 if it failed and an older config is still running.")
	m.reloadOK.Set(1)
	m.reloadTimestamp = f.gauge("config_last_reload_success_timestamp_seconds",
		"Unix time of the last successful config load (startup or reload).")
	m.reloadTimestamp.Set(float64(time.Now().UnixNano()) / 1e9)

	revision, goVersion := buildInfo()
	buildInfo := f.gaugeVec("build_info",
		"Always 1; its labels say which gateway build is running.",
		"version", "revision", "goversion")
	buildInfo.WithLabelValues(version, revision, goVersion).Set(1)

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if src != nil {
		reg.MustRegister(newSourceCollector(src))
	}

	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		// One failing collector must not hide every other metric.
		ErrorHandling: promhttp.ContinueOnError,
		// Counts scrape errors as promhttp_metric_handler_errors_total.
		Registry:            reg,
		MaxRequestsInFlight: 4,
	})
	return m
}

// Handler serves the metrics in the Prometheus text exposition format. It is
// built once by New; every call returns the same handler. Safe for
// concurrent use (at most 4 scrapes run at once; more get 503). A collector
// error does not fail the scrape: what could be gathered is served and
// promhttp_metric_handler_errors_total counts the error.
func (m *Metrics) Handler() http.Handler { return m.handler }

// Registry is the registry holding every metric, for tests and for
// registering more collectors. Never the process-global registry.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Reload records the result of a config reload attempt made at at: it
// counts it, sets tokengate_config_last_reload_successful, and on success
// moves tokengate_config_last_reload_success_timestamp_seconds to at. Safe
// for concurrent use.
func (m *Metrics) Reload(ok bool, at time.Time) {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	if ok {
		m.reloadSuccess.Inc()
		m.reloadOK.Set(1)
		m.reloadTimestamp.Set(float64(at.UnixNano()) / 1e9)
		return
	}
	m.reloadFailure.Inc()
	m.reloadOK.Set(0)
}

// LimitDecision counts one limit's decision on one request. app is the
// bounded app name, limit the limit's config id (e.g.
// "app/batch-app/limits[0].rpm"), outcome one of "admitted", "refused" or
// "shadow_refused". Called on the request path: it does not allocate once
// the combination has been seen. Safe for concurrent use.
func (m *Metrics) LimitDecision(app, limit, outcome string) {
	m.decisions.get(decisionKey{app, limit, outcome}, m.newDecision).Inc()
}

type decisionKey struct{ app, limit, outcome string }

func (m *Metrics) newDecision(k decisionKey) prometheus.Counter {
	return m.limitDecisions.WithLabelValues(k.app, k.limit, k.outcome)
}

// buildInfo returns the binary's VCS revision and Go version.
func buildInfo() (revision, goVersion string) {
	revision, goVersion = "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return revision, goVersion
	}
	if bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			revision = s.Value
		}
	}
	return revision, goVersion
}

// factory builds metrics named namespace_name and registers them in reg.
type factory struct{ reg *prometheus.Registry }

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(v)
	return v
}
