package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokengate/tokengate/internal/balancer"
	"github.com/tokengate/tokengate/internal/usage"
)

// Source is the running gateway as seen at scrape time. It always answers
// for the gateway's current runtime, so after a config reload the backend
// metrics follow the new backends with no re-registration. Its methods are
// called on every scrape, possibly from concurrent scrapes: they must be
// safe for concurrent use and cheap (no I/O).
type Source interface {
	// Backends is every backend deployment's breaker and rate-limit state.
	Backends() []balancer.Snapshot
	// Usage is the usage spool's and sinks' state.
	Usage() usage.Status
	// UsageNearFull reports that the spool is close to its size limit.
	UsageNearFull() bool
	// LimitStoreErrors counts limit-store (Redis) errors; monotonic.
	LimitStoreErrors() uint64
	// InFlight is the number of client requests being served.
	InFlight() int64
}

// sourceCollector turns a Source into const metrics at each scrape.
type sourceCollector struct {
	src Source

	breakerState      *prometheus.Desc
	breakerTrips      *prometheus.Desc
	remainingTokens   *prometheus.Desc
	remainingRequests *prometheus.Desc
	backendInFlight   *prometheus.Desc
	inFlight          *prometheus.Desc
	limitStoreErrors  *prometheus.Desc
	spoolBytes        *prometheus.Desc
	spoolSegments     *prometheus.Desc
	spoolPending      *prometheus.Desc
	spoolAppended     *prometheus.Desc
	spoolCorrupt      *prometheus.Desc
	spoolNearFull     *prometheus.Desc
	spoolFull         *prometheus.Desc
	unspooled         *prometheus.Desc
	sinkLag           *prometheus.Desc
	sinkDelivered     *prometheus.Desc
	sinkErrors        *prometheus.Desc
}

var _ prometheus.Collector = (*sourceCollector)(nil)

func newSourceCollector(src Source) *sourceCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	bd := []string{"backend", "deployment"}
	return &sourceCollector{
		src: src,
		breakerState: d("backend_breaker_state",
			"Circuit breaker state of a backend deployment: 1 for the current state (closed: taking traffic; open: tripped, no traffic; half-open: one probe request allowed), 0 for the others.",
			"backend", "deployment", "state"),
		breakerTrips: d("backend_breaker_trips_total",
			"Times a backend deployment's circuit breaker tripped open (on 429s, 5xx or connection failures).", bd...),
		remainingTokens: d("backend_remaining_tokens",
			"Tokens the backend deployment said it had left in its rate-limit window (last x-ratelimit-remaining-tokens). Absent until the backend has sent one.", bd...),
		remainingRequests: d("backend_remaining_requests",
			"Requests the backend deployment said it had left in its rate-limit window (last x-ratelimit-remaining-requests). Absent until the backend has sent one.", bd...),
		backendInFlight: d("backend_in_flight",
			"Upstream attempts currently in flight to a backend deployment.", bd...),
		inFlight: d("requests_in_flight",
			"Client requests the gateway is currently serving."),
		limitStoreErrors: d("limit_store_errors_total",
			"Errors talking to the shared limit store (Redis). While it fails, limits follow limits.on_store_error (open: enforced per replica locally; closed: refused with 503)."),
		spoolBytes: d("usage_spool_bytes",
			"Size of the usage spool's segment files on disk, in bytes."),
		spoolSegments: d("usage_spool_segments",
			"Number of usage spool segment files on disk."),
		spoolPending: d("usage_spool_pending_records",
			"Usage records queued in memory, not yet written to the spool's files."),
		spoolAppended: d("usage_spool_appended_total",
			"Usage records taken into the spool."),
		spoolCorrupt: d("usage_spool_corrupt_records_total",
			"Usage records found damaged in the spool and skipped by sink readers. Nonzero means lost usage data: investigate."),
		spoolNearFull: d("usage_spool_near_full",
			"1 when the usage spool is close to its size limit (sinks are falling behind), else 0."),
		spoolFull: d("usage_spool_full",
			"1 when the usage spool is full and refusing records, else 0. Depending on usage.spool.when_full the gateway then refuses requests or counts tokengate_usage_unspooled_total."),
		unspooled: d("usage_unspooled_total",
			"Usage records that could not be written to the spool (spool full or disk error): usage data lost. Alert on any increase."),
		sinkLag: d("usage_sink_lag_records",
			"Usage records in the spool not yet delivered to a sink.", "sink"),
		sinkDelivered: d("usage_sink_delivered_total",
			"Usage records delivered to a sink.", "sink"),
		sinkErrors: d("usage_sink_errors_total",
			"Failed delivery attempts to a sink (each is retried; records are not lost while the spool holds them).", "sink"),
	}
}

// Describe sends every descriptor.
func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.breakerState, c.breakerTrips, c.remainingTokens, c.remainingRequests, c.backendInFlight,
		c.inFlight, c.limitStoreErrors,
		c.spoolBytes, c.spoolSegments, c.spoolPending, c.spoolAppended, c.spoolCorrupt,
		c.spoolNearFull, c.spoolFull, c.unspooled, c.sinkLag, c.sinkDelivered, c.sinkErrors,
	} {
		ch <- d
	}
}

// Collect reads the Source once and sends its metrics.
func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	for _, b := range c.src.Backends() {
		for _, state := range [...]string{balancer.StateClosed, balancer.StateOpen, balancer.StateHalfOpen} {
			ch <- prometheus.MustNewConstMetric(c.breakerState, gauge, boolFloat(b.State == state), b.Backend, b.Deployment, state)
		}
		ch <- prometheus.MustNewConstMetric(c.breakerTrips, counter, float64(b.Trips), b.Backend, b.Deployment)
		if b.RemainingTokens != nil {
			ch <- prometheus.MustNewConstMetric(c.remainingTokens, gauge, float64(*b.RemainingTokens), b.Backend, b.Deployment)
		}
		if b.RemainingRequests != nil {
			ch <- prometheus.MustNewConstMetric(c.remainingRequests, gauge, float64(*b.RemainingRequests), b.Backend, b.Deployment)
		}
		ch <- prometheus.MustNewConstMetric(c.backendInFlight, gauge, float64(b.InFlight), b.Backend, b.Deployment)
	}
	ch <- prometheus.MustNewConstMetric(c.inFlight, gauge, float64(c.src.InFlight()))
	ch <- prometheus.MustNewConstMetric(c.limitStoreErrors, counter, float64(c.src.LimitStoreErrors()))

	u := c.src.Usage()
	ch <- prometheus.MustNewConstMetric(c.spoolBytes, gauge, float64(u.Spool.Bytes))
	ch <- prometheus.MustNewConstMetric(c.spoolSegments, gauge, float64(u.Spool.Segments))
	ch <- prometheus.MustNewConstMetric(c.spoolPending, gauge, float64(u.Spool.Pending))
	ch <- prometheus.MustNewConstMetric(c.spoolAppended, counter, float64(u.Spool.Appended))
	ch <- prometheus.MustNewConstMetric(c.spoolCorrupt, counter, float64(u.Spool.Corrupt))
	ch <- prometheus.MustNewConstMetric(c.spoolNearFull, gauge, boolFloat(c.src.UsageNearFull()))
	ch <- prometheus.MustNewConstMetric(c.spoolFull, gauge, boolFloat(u.Spool.Full))
	ch <- prometheus.MustNewConstMetric(c.unspooled, counter, float64(u.Unspooled))
	for _, s := range u.Sinks {
		ch <- prometheus.MustNewConstMetric(c.sinkLag, gauge, float64(s.Lag), s.Name)
		ch <- prometheus.MustNewConstMetric(c.sinkDelivered, counter, float64(s.Delivered), s.Name)
		ch <- prometheus.MustNewConstMetric(c.sinkErrors, counter, float64(s.Errors), s.Name)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
