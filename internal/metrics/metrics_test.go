package metrics

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokengate/tokengate/internal/balancer"
	"github.com/tokengate/tokengate/internal/usage"
	"github.com/tokengate/tokengate/internal/usage/spool"
)

// scrape GETs the handler through a real HTTP server and parses the text
// exposition.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape: content type %q, want text/plain", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	return fams
}

// lbl builds a label set from "k=v" pairs.
func lbl(kv ...string) map[string]string {
	m := make(map[string]string, len(kv))
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return m
}

// find returns the series of family name whose labels are exactly want.
func find(fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		match := true
		for _, lp := range m.GetLabel() {
			if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
				match = false
				break
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// value is a counter's or gauge's value; ok is false when the series is
// absent.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	m := find(fams, name, want)
	switch {
	case m == nil:
		return 0, false
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Untyped != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

func seriesCount(fams map[string]*dto.MetricFamily, name string) int {
	if f := fams[name]; f != nil {
		return len(f.GetMetric())
	}
	return 0
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

type fed struct {
	l       Labels
	rec     usage.Record
	spilled bool
	class   string // the status class the request must be counted under
}

// records is a mix of successes, refusals, throttling, hang-ups and
// failures, streamed and not, over two apps, two models and two backends.
func records() []fed {
	chatA := Labels{App: "app-a", Team: "team-1", Model: "gpt-4o", Operation: "chat/completions", Backend: "east", Pool: "main"}
	chatAWest := chatA
	chatAWest.Backend = "west"
	chatB := Labels{App: "app-b", Team: "team-2", Model: "other", Operation: "chat/completions", Backend: "west", Pool: "main"}
	embB := Labels{App: "app-b", Team: "team-2", Model: "embed", Operation: "embeddings", Backend: "east", Pool: "embed"}
	unknown := Labels{App: "unknown", Team: "unknown", Model: "other", Operation: "chat/completions"}
	return []fed{
		{l: chatA, class: "2xx", rec: usage.Record{RequestID: "r1", Status: 200,
			Tokens:   usage.Tokens{Prompt: 100, Completion: 50, CachedPrompt: 20, Source: usage.SourceBackend},
			Cost:     usage.Cost{Amount: 0.5, Currency: "USD"},
			Latency:  usage.Latency{TotalMS: 1200, UpstreamMS: 1100},
			Attempts: []usage.Attempt{{Backend: "east", Status: 200}}}},
		{l: chatAWest, spilled: true, class: "2xx", rec: usage.Record{RequestID: "r2", Status: 200, Stream: true,
			Tokens:   usage.Tokens{Prompt: 200, Completion: 80, Reasoning: 30, Source: usage.SourceBackend},
			Cost:     usage.Cost{Amount: 1.25, Currency: "USD"},
			Latency:  usage.Latency{TotalMS: 5000, FirstTokenMS: 300, UpstreamMS: 4990},
			Attempts: []usage.Attempt{{Backend: "east", Status: 429}, {Backend: "west", Status: 200}}}},
		{l: chatB, class: "4xx", rec: usage.Record{RequestID: "r3", Status: 429, ErrorClass: usage.ErrorThrottled,
			Latency:  usage.Latency{TotalMS: 50, UpstreamMS: 40},
			Attempts: []usage.Attempt{{Backend: "east", Status: 429}, {Backend: "west", Status: 429}}}},
		{l: chatB, class: "4xx", rec: usage.Record{RequestID: "r4", Status: 499, Stream: true, ErrorClass: usage.ErrorDisconnected,
			Tokens:   usage.Tokens{Prompt: 10, Completion: 5, Source: usage.SourceEstimated},
			Cost:     usage.Cost{Amount: 0.01, Currency: "USD"},
			Latency:  usage.Latency{TotalMS: 800, UpstreamMS: 790},
			Attempts: []usage.Attempt{{Backend: "west", Status: 0, Error: "connection reset"}}}},
		{l: unknown, class: "4xx", rec: usage.Record{RequestID: "r5", Status: 401, ErrorClass: usage.ErrorAuth,
			Latency: usage.Latency{TotalMS: 2}}},
		{l: chatA, spilled: true, class: "5xx", rec: usage.Record{RequestID: "r6", Status: 0, ErrorClass: usage.ErrorUpstream,
			Latency:  usage.Latency{TotalMS: 3000, UpstreamMS: 2999},
			Attempts: []usage.Attempt{{Backend: "east", Status: 503}, {Backend: "east", Status: 0, Error: "timeout"}, {Backend: "west", Status: 502}}}},
		{l: embB, class: "2xx", rec: usage.Record{RequestID: "r7", Status: 200,
			Tokens:   usage.Tokens{Prompt: 1000, Source: usage.SourceBackend},
			Cost:     usage.Cost{Amount: 0.02, Currency: "EUR"},
			Latency:  usage.Latency{TotalMS: 30, UpstreamMS: 29.5},
			Attempts: []usage.Attempt{{Backend: "east", Status: 200}}}},
		{l: chatA, class: "2xx", rec: usage.Record{RequestID: "r8", Status: 200,
			Tokens:   usage.Tokens{Prompt: 7, Completion: 3, Source: usage.SourceBackend},
			Cost:     usage.Cost{Amount: 0.001, Currency: "USD"},
			Latency:  usage.Latency{TotalMS: 400, UpstreamMS: 399},
			Attempts: []usage.Attempt{{Backend: "east", Status: 200}}}},
	}
}

func TestRequestMatchesRecords(t *testing.T) {
	m := New("v1.2.3", nil)
	recs := records()
	for i := range recs {
		m.Request(recs[i].l, &recs[i].rec, recs[i].spilled)
	}
	fams := scrape(t, m)

	// What the records add up to, computed independently of the package.
	type key struct{ a, b, c, d, e string }
	requests := map[key]float64{}
	errs := map[key]float64{}
	tokens := map[key]float64{}
	cost := map[key]float64{}
	retries := map[key]float64{}
	spills := map[key]float64{}
	type hist struct {
		count uint64
		sum   float64
	}
	duration, ttft, upstream, overhead := map[key]hist{}, map[key]hist{}, map[key]hist{}, map[key]hist{}
	addHist := func(h map[key]hist, k key, v float64) {
		x := h[k]
		x.count++
		x.sum += v
		h[k] = x
	}
	for _, f := range recs {
		l, r := f.l, f.rec
		requests[key{l.App, l.Model, l.Operation, l.Backend, f.class}]++
		if r.ErrorClass != "" {
			errs[key{a: l.App, b: r.ErrorClass}]++
		}
		for typ, n := range map[string]int64{"prompt": r.Tokens.Prompt, "completion": r.Tokens.Completion,
			"cached_prompt": r.Tokens.CachedPrompt, "reasoning": r.Tokens.Reasoning} {
			if n > 0 {
				tokens[key{l.App, l.Team, l.Model, l.Backend, typ}] += float64(n)
			}
		}
		if r.Cost.Amount != 0 {
			cost[key{a: l.App, b: l.Team, c: r.Cost.Currency}] += r.Cost.Amount
		}
		hk := key{a: l.Model, b: fmt.Sprint(r.Stream)}
		addHist(duration, hk, r.Latency.TotalMS/1000)
		if r.Latency.FirstTokenMS > 0 {
			addHist(ttft, hk, r.Latency.FirstTokenMS/1000)
		}
		if r.Latency.UpstreamMS > 0 {
			addHist(upstream, hk, r.Latency.UpstreamMS/1000)
			addHist(overhead, hk, (r.Latency.TotalMS-r.Latency.UpstreamMS)/1000)
		}
		pk := key{a: l.Pool, b: l.Model}
		if n := len(r.Attempts); n > 1 {
			retries[pk] += float64(n - 1)
		}
		if f.spilled {
			spills[pk]++
		}
	}

	check := func(name string, want map[key]float64, labels func(key) map[string]string) {
		t.Helper()
		if got := seriesCount(fams, name); got != len(want) {
			t.Errorf("%s: %d series, want %d", name, got, len(want))
		}
		for k, w := range want {
			got, ok := value(fams, name, labels(k))
			if !ok {
				t.Errorf("%s%v: missing", name, labels(k))
				continue
			}
			if !near(got, w) {
				t.Errorf("%s%v = %g, want %g", name, labels(k), got, w)
			}
		}
	}
	check("tokengate_requests_total", requests, func(k key) map[string]string {
		return map[string]string{"app": k.a, "model": k.b, "operation": k.c, "backend": k.d, "status_class": k.e}
	})
	check("tokengate_request_errors_total", errs, func(k key) map[string]string {
		return map[string]string{"app": k.a, "error_class": k.b}
	})
	check("tokengate_tokens_total", tokens, func(k key) map[string]string {
		return map[string]string{"app": k.a, "team": k.b, "model": k.c, "backend": k.d, "type": k.e}
	})
	check("tokengate_cost_total", cost, func(k key) map[string]string {
		return map[string]string{"app": k.a, "team": k.b, "currency": k.c}
	})
	check("tokengate_retries_total", retries, func(k key) map[string]string {
		return map[string]string{"pool": k.a, "model": k.b}
	})
	check("tokengate_spillovers_total", spills, func(k key) map[string]string {
		return map[string]string{"pool": k.a, "model": k.b}
	})

	checkHist := func(name string, want map[key]hist) {
		t.Helper()
		if got := seriesCount(fams, name); got != len(want) {
			t.Errorf("%s: %d series, want %d", name, got, len(want))
		}
		for k, w := range want {
			s := find(fams, name, map[string]string{"model": k.a, "stream": k.b})
			if s == nil || s.Histogram == nil {
				t.Errorf("%s{model=%s,stream=%s}: missing", name, k.a, k.b)
				continue
			}
			h := s.GetHistogram()
			if h.GetSampleCount() != w.count || !near(h.GetSampleSum(), w.sum) {
				t.Errorf("%s{model=%s,stream=%s}: count %d sum %g, want %d %g",
					name, k.a, k.b, h.GetSampleCount(), h.GetSampleSum(), w.count, w.sum)
			}
		}
	}
	checkHist("tokengate_request_duration_seconds", duration)
	checkHist("tokengate_time_to_first_token_seconds", ttft)
	checkHist("tokengate_upstream_duration_seconds", upstream)
	checkHist("tokengate_gateway_overhead_seconds", overhead)

	// Attempts and throttling, counted by hand from the records above.
	attempts := map[[2]string]float64{
		{"east", "2xx"}: 3, {"east", "4xx"}: 2, {"east", "5xx"}: 1, {"east", "error"}: 1,
		{"west", "2xx"}: 1, {"west", "4xx"}: 1, {"west", "5xx"}: 1, {"west", "error"}: 1,
	}
	if got := seriesCount(fams, "tokengate_backend_attempts_total"); got != len(attempts) {
		t.Errorf("tokengate_backend_attempts_total: %d series, want %d", got, len(attempts))
	}
	for k, w := range attempts {
		if got, _ := value(fams, "tokengate_backend_attempts_total", lbl("backend="+k[0], "status_class="+k[1])); got != w {
			t.Errorf("tokengate_backend_attempts_total{backend=%s,status_class=%s} = %g, want %g", k[0], k[1], got, w)
		}
	}
	for b, w := range map[string]float64{"east": 2, "west": 1} {
		if got, _ := value(fams, "tokengate_backend_throttled_total", lbl("backend="+b)); got != w {
			t.Errorf("tokengate_backend_throttled_total{backend=%s} = %g, want %g", b, got, w)
		}
	}

	// Spot checks of the contract, independent of the loop above.
	for _, c := range []struct {
		name  string
		l     map[string]string
		want  float64
		found bool
	}{
		{"tokengate_requests_total", lbl("app=app-b", "model=other", "operation=chat/completions", "backend=west", "status_class=4xx"), 2, true},
		{"tokengate_requests_total", lbl("app=app-a", "model=gpt-4o", "operation=chat/completions", "backend=east", "status_class=5xx"), 1, true},
		{"tokengate_tokens_total", lbl("app=app-a", "team=team-1", "model=gpt-4o", "backend=east", "type=prompt"), 107, true},
		{"tokengate_tokens_total", lbl("app=app-a", "team=team-1", "model=gpt-4o", "backend=west", "type=reasoning"), 30, true},
		{"tokengate_tokens_total", lbl("app=app-b", "team=team-2", "model=embed", "backend=east", "type=completion"), 0, false},
		{"tokengate_cost_total", lbl("app=app-a", "team=team-1", "currency=USD"), 1.751, true},
		{"tokengate_retries_total", lbl("pool=main", "model=gpt-4o"), 3, true},
		{"tokengate_spillovers_total", lbl("pool=main", "model=gpt-4o"), 2, true},
	} {
		got, ok := value(fams, c.name, c.l)
		if ok != c.found || !near(got, c.want) {
			t.Errorf("%s%v = %g (present %v), want %g (present %v)", c.name, c.l, got, ok, c.want, c.found)
		}
	}
	// Only streams have a time to first token.
	if s := find(fams, "tokengate_time_to_first_token_seconds", lbl("model=gpt-4o", "stream=false")); s != nil {
		t.Errorf("time_to_first_token has a non-streamed series: %v", s)
	}
	// Buckets: the 5s stream lands in le=5 but not le=2.
	s := find(fams, "tokengate_request_duration_seconds", lbl("model=gpt-4o", "stream=true"))
	for _, b := range s.GetHistogram().GetBucket() {
		want := uint64(0)
		if b.GetUpperBound() >= 5 {
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("duration{gpt-4o,stream} bucket le=%g: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

func TestRequestConcurrent(t *testing.T) {
	m := New("dev", nil)
	recs := records()
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				for i := range recs {
					m.Request(recs[i].l, &recs[i].rec, recs[i].spilled)
				}
			}
		})
	}
	wg.Wait()
	fams := scrape(t, m)
	var total float64
	for _, s := range fams["tokengate_requests_total"].GetMetric() {
		total += s.GetCounter().GetValue()
	}
	if want := float64(workers * rounds * len(recs)); total != want {
		t.Fatalf("requests_total sums to %g, want %g", total, want)
	}
	got, _ := value(fams, "tokengate_tokens_total", lbl("app=app-a", "team=team-1", "model=gpt-4o", "backend=east", "type=prompt"))
	if want := float64(workers * rounds * 107); got != want {
		t.Fatalf("prompt tokens = %g, want %g", got, want)
	}
}

func TestRequestBadInput(t *testing.T) {
	m := New("dev", nil)
	l := Labels{App: "a", Model: "m", Operation: "chat/completions"}
	m.Request(l, nil, false) // ignored
	m.Request(l, &usage.Record{
		Status:  200,
		Tokens:  usage.Tokens{Prompt: -5, Completion: 3},
		Cost:    usage.Cost{Amount: -1, Currency: "USD"},
		Latency: usage.Latency{TotalMS: math.NaN(), UpstreamMS: 10}, // overhead would be NaN
	}, false)
	m.Request(l, &usage.Record{Status: 200, Latency: usage.Latency{TotalMS: 5, UpstreamMS: 9}}, false) // clock step: overhead < 0
	fams := scrape(t, m)
	if got, ok := value(fams, "tokengate_tokens_total", lbl("app=a", "team=", "model=m", "backend=", "type=prompt")); ok {
		t.Errorf("negative prompt tokens exported: %g", got)
	}
	if _, ok := value(fams, "tokengate_cost_total", lbl("app=a", "team=", "currency=USD")); ok {
		t.Error("negative cost exported")
	}
	h := find(fams, "tokengate_gateway_overhead_seconds", lbl("model=m", "stream=false")).GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 0 {
		t.Errorf("overhead: count %d sum %g, want 2 observations clamped to 0", h.GetSampleCount(), h.GetSampleSum())
	}
	if got, _ := value(fams, "tokengate_requests_total", lbl("app=a", "model=m", "operation=chat/completions", "backend=", "status_class=2xx")); got != 2 {
		t.Errorf("requests_total = %g, want 2 (nil record not counted)", got)
	}
}

// TestCardinality: request ids and other per-request fields never become
// labels, so 10,000 requests with the same Labels make one series set.
func TestCardinality(t *testing.T) {
	m := New("dev", nil)
	l := Labels{App: "app-a", Team: "team-1", Model: "gpt-4o", Operation: "chat/completions", Backend: "east", Pool: "main"}
	rec := func(i int) *usage.Record {
		return &usage.Record{
			RequestID: fmt.Sprintf("req-%d", i), ClientRequestID: fmt.Sprintf("client-%d", i),
			ClientIP: fmt.Sprintf("10.0.%d.%d", i/256, i%256), UserAgent: fmt.Sprintf("agent/%d", i),
			Model: fmt.Sprintf("client-said-%d", i), Deployment: fmt.Sprintf("dep-%d", i),
			Status: 200, Stream: true,
			Tokens:   usage.Tokens{Prompt: int64(i%50 + 1), Completion: 1},
			Cost:     usage.Cost{Amount: 0.001, Currency: "USD"},
			Latency:  usage.Latency{TotalMS: float64(i % 3000), FirstTokenMS: 10, UpstreamMS: 5},
			Attempts: []usage.Attempt{{Backend: "east", Deployment: fmt.Sprintf("dep-%d", i), Status: 200}},
		}
	}
	count := func() (n int) {
		fams := scrape(t, m)
		for name, f := range fams {
			if strings.HasPrefix(name, "tokengate_") {
				n += len(f.GetMetric())
			}
		}
		return n
	}
	m.Request(l, rec(0), false)
	first := count()
	for i := 1; i < 10_000; i++ {
		m.Request(l, rec(i), false)
	}
	if got := count(); got != first {
		t.Fatalf("10,000 requests with the same labels: %d tokengate_ series, want %d (as after the first)", got, first)
	}
	if n := m.series.len(); n != 1 {
		t.Fatalf("series cache holds %d entries, want 1", n)
	}
	got, _ := value(scrape(t, m), "tokengate_requests_total", lbl("app=app-a", "model=gpt-4o", "operation=chat/completions", "backend=east", "status_class=2xx"))
	if got != 10_000 {
		t.Fatalf("requests_total = %g, want 10000", got)
	}
}

func TestLimitDecision(t *testing.T) {
	m := New("dev", nil)
	for range 3 {
		m.LimitDecision("batch-app", "app/batch-app/limits[0].rpm", "admitted")
	}
	m.LimitDecision("batch-app", "app/batch-app/limits[0].rpm", "refused")
	m.LimitDecision("batch-app", "app/batch-app/limits[1].tpm", "shadow_refused")
	fams := scrape(t, m)
	for _, c := range []struct {
		limit, outcome string
		want           float64
	}{
		{"app/batch-app/limits[0].rpm", "admitted", 3},
		{"app/batch-app/limits[0].rpm", "refused", 1},
		{"app/batch-app/limits[1].tpm", "shadow_refused", 1},
	} {
		got, _ := value(fams, "tokengate_limit_decisions_total", lbl("app=batch-app", "limit="+c.limit, "outcome="+c.outcome))
		if got != c.want {
			t.Errorf("limit_decisions_total{%s,%s} = %g, want %g", c.limit, c.outcome, got, c.want)
		}
	}
	if n := seriesCount(fams, "tokengate_limit_decisions_total"); n != 3 {
		t.Errorf("limit_decisions_total: %d series, want 3", n)
	}
}

func TestReloadAndBuildInfo(t *testing.T) {
	before := time.Now()
	m := New("v9.9.9", nil)
	fams := scrape(t, m)
	if got, _ := value(fams, "tokengate_config_last_reload_successful", nil); got != 1 {
		t.Errorf("last_reload_successful at start = %g, want 1", got)
	}
	ts, _ := value(fams, "tokengate_config_last_reload_success_timestamp_seconds", nil)
	if ts < float64(before.Unix())-1 || ts > float64(time.Now().Unix())+1 {
		t.Errorf("last_reload_success_timestamp at start = %g, want about %d", ts, before.Unix())
	}
	bi := fams["tokengate_build_info"]
	if bi == nil || len(bi.GetMetric()) != 1 {
		t.Fatalf("build_info: %v, want one series", bi)
	}
	labels := map[string]string{}
	for _, lp := range bi.GetMetric()[0].GetLabel() {
		labels[lp.GetName()] = lp.GetValue()
	}
	if labels["version"] != "v9.9.9" || labels["revision"] == "" || !strings.HasPrefix(labels["goversion"], "go") ||
		bi.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("build_info = %v value %g", labels, bi.GetMetric()[0].GetGauge().GetValue())
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if fams[name] == nil {
			t.Errorf("%s missing: Go and process collectors not registered", name)
		}
	}

	m.Reload(false, time.Unix(2_000_000_000, 0))
	fams = scrape(t, m)
	if got, _ := value(fams, "tokengate_config_last_reload_successful", nil); got != 0 {
		t.Errorf("after a failed reload last_reload_successful = %g, want 0", got)
	}
	if got, _ := value(fams, "tokengate_config_last_reload_success_timestamp_seconds", nil); got != ts {
		t.Errorf("a failed reload moved the success timestamp: %g, want %g", got, ts)
	}
	at := time.Unix(1_900_000_000, 500_000_000)
	m.Reload(true, at)
	m.Reload(true, at)
	fams = scrape(t, m)
	for _, c := range []struct {
		name string
		l    map[string]string
		want float64
	}{
		{"tokengate_config_last_reload_successful", nil, 1},
		{"tokengate_config_last_reload_success_timestamp_seconds", nil, 1_900_000_000.5},
		{"tokengate_config_reloads_total", lbl("result=success"), 2},
		{"tokengate_config_reloads_total", lbl("result=failure"), 1},
	} {
		if got, _ := value(fams, c.name, c.l); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.l, got, c.want)
		}
	}
}

// fakeSource is a Source with fixed answers.
type fakeSource struct {
	backends  []balancer.Snapshot
	status    usage.Status
	nearFull  bool
	storeErrs uint64
	inFlight  int64
}

var _ Source = (*fakeSource)(nil)

func (f *fakeSource) Backends() []balancer.Snapshot { return f.backends }
func (f *fakeSource) Usage() usage.Status           { return f.status }
func (f *fakeSource) UsageNearFull() bool           { return f.nearFull }
func (f *fakeSource) LimitStoreErrors() uint64      { return f.storeErrs }
func (f *fakeSource) InFlight() int64               { return f.inFlight }

func TestSource(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	src := &fakeSource{
		backends: []balancer.Snapshot{
			{Backend: "east", Deployment: "gpt-4o", State: balancer.StateClosed, Trips: 2, InFlight: 5,
				RemainingTokens: i64(12000), RemainingRequests: i64(0)},
			{Backend: "west", Deployment: "gpt-4o", State: balancer.StateOpen, Trips: 7, RemainingRequests: i64(3)},
			{Backend: "west", Deployment: "embed", State: balancer.StateHalfOpen, Trips: 1, InFlight: 1, RemainingTokens: i64(5)},
		},
		status: usage.Status{
			Spool:     spool.Stats{Bytes: 4096, Segments: 3, Pending: 12, Appended: 1000, Corrupt: 1, Full: true},
			Unspooled: 4,
			Sinks: []usage.SinkStatus{
				{Name: "sqlite", Lag: 0, Delivered: 1000},
				{Name: "kafka", Lag: 250, Delivered: 750, Errors: 9, LastError: "broker down"},
			},
		},
		nearFull:  true,
		storeErrs: 3,
		inFlight:  17,
	}
	m := New("dev", src)
	fams := scrape(t, m)

	states := []string{balancer.StateClosed, balancer.StateOpen, balancer.StateHalfOpen}
	for _, b := range src.backends {
		for _, st := range states {
			want := 0.0
			if st == b.State {
				want = 1
			}
			got, ok := value(fams, "tokengate_backend_breaker_state", lbl("backend="+b.Backend, "deployment="+b.Deployment, "state="+st))
			if !ok || got != want {
				t.Errorf("breaker_state{%s,%s,%s} = %g (present %v), want %g", b.Backend, b.Deployment, st, got, ok, want)
			}
		}
	}
	if n := seriesCount(fams, "tokengate_backend_breaker_state"); n != 3*len(states) {
		t.Errorf("breaker_state: %d series, want %d", n, 3*len(states))
	}

	for _, c := range []struct {
		name  string
		l     map[string]string
		want  float64
		found bool
	}{
		{"tokengate_backend_breaker_trips_total", lbl("backend=west", "deployment=gpt-4o"), 7, true},
		{"tokengate_backend_remaining_tokens", lbl("backend=east", "deployment=gpt-4o"), 12000, true},
		{"tokengate_backend_remaining_requests", lbl("backend=east", "deployment=gpt-4o"), 0, true}, // known zero is exported
		{"tokengate_backend_remaining_tokens", lbl("backend=west", "deployment=gpt-4o"), 0, false},  // unknown is absent
		{"tokengate_backend_remaining_requests", lbl("backend=west", "deployment=gpt-4o"), 3, true},
		{"tokengate_backend_remaining_requests", lbl("backend=west", "deployment=embed"), 0, false},
		{"tokengate_backend_remaining_tokens", lbl("backend=west", "deployment=embed"), 5, true},
		{"tokengate_backend_in_flight", lbl("backend=east", "deployment=gpt-4o"), 5, true},
		{"tokengate_backend_in_flight", lbl("backend=west", "deployment=gpt-4o"), 0, true},
		{"tokengate_requests_in_flight", nil, 17, true},
		{"tokengate_limit_store_errors_total", nil, 3, true},
		{"tokengate_usage_spool_bytes", nil, 4096, true},
		{"tokengate_usage_spool_segments", nil, 3, true},
		{"tokengate_usage_spool_pending_records", nil, 12, true},
		{"tokengate_usage_spool_appended_total", nil, 1000, true},
		{"tokengate_usage_spool_corrupt_records_total", nil, 1, true},
		{"tokengate_usage_spool_near_full", nil, 1, true},
		{"tokengate_usage_spool_full", nil, 1, true},
		{"tokengate_usage_unspooled_total", nil, 4, true},
		{"tokengate_usage_sink_lag_records", lbl("sink=sqlite"), 0, true},
		{"tokengate_usage_sink_lag_records", lbl("sink=kafka"), 250, true},
		{"tokengate_usage_sink_delivered_total", lbl("sink=kafka"), 750, true},
		{"tokengate_usage_sink_errors_total", lbl("sink=kafka"), 9, true},
	} {
		got, ok := value(fams, c.name, c.l)
		if ok != c.found || got != c.want {
			t.Errorf("%s%v = %g (present %v), want %g (present %v)", c.name, c.l, got, ok, c.want, c.found)
		}
	}
	if n := seriesCount(fams, "tokengate_backend_remaining_tokens"); n != 2 {
		t.Errorf("remaining_tokens: %d series, want 2 (only known readings)", n)
	}
	if n := seriesCount(fams, "tokengate_backend_remaining_requests"); n != 2 {
		t.Errorf("remaining_requests: %d series, want 2 (only known readings)", n)
	}

	// The source is read at every scrape: a reload that drops a backend
	// drops its series.
	src.backends = src.backends[:1]
	src.nearFull = false
	fams = scrape(t, m)
	if n := seriesCount(fams, "tokengate_backend_breaker_state"); n != len(states) {
		t.Errorf("after the source changed: breaker_state has %d series, want %d", n, len(states))
	}
	if got, _ := value(fams, "tokengate_usage_spool_near_full", nil); got != 0 {
		t.Errorf("near_full = %g after the source changed, want 0", got)
	}
}

func TestNilSource(t *testing.T) {
	fams := scrape(t, New("dev", nil))
	for _, name := range []string{"tokengate_requests_in_flight", "tokengate_usage_spool_bytes", "tokengate_backend_breaker_state"} {
		if fams[name] != nil {
			t.Errorf("%s exported without a Source", name)
		}
	}
}

// TestNames pins the metric names (a contract with dashboards and alerts)
// and checks every one says what it is.
func TestNames(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	src := &fakeSource{
		backends: []balancer.Snapshot{{Backend: "b", Deployment: "d", State: balancer.StateClosed,
			RemainingTokens: i64(1), RemainingRequests: i64(1)}},
		status: usage.Status{Sinks: []usage.SinkStatus{{Name: "s"}}},
	}
	m := New("dev", src)
	recs := records()
	for i := range recs {
		m.Request(recs[i].l, &recs[i].rec, recs[i].spilled)
	}
	m.LimitDecision("a", "app/a/limits[0].rpm", "admitted")
	fams := scrape(t, m)

	want := []string{
		"tokengate_backend_attempts_total",
		"tokengate_backend_breaker_state",
		"tokengate_backend_breaker_trips_total",
		"tokengate_backend_in_flight",
		"tokengate_backend_remaining_requests",
		"tokengate_backend_remaining_tokens",
		"tokengate_backend_throttled_total",
		"tokengate_build_info",
		"tokengate_config_last_reload_success_timestamp_seconds",
		"tokengate_config_last_reload_successful",
		"tokengate_config_reloads_total",
		"tokengate_cost_total",
		"tokengate_gateway_overhead_seconds",
		"tokengate_limit_decisions_total",
		"tokengate_limit_store_errors_total",
		"tokengate_request_duration_seconds",
		"tokengate_request_errors_total",
		"tokengate_requests_in_flight",
		"tokengate_requests_total",
		"tokengate_retries_total",
		"tokengate_spillovers_total",
		"tokengate_time_to_first_token_seconds",
		"tokengate_tokens_total",
		"tokengate_upstream_duration_seconds",
		"tokengate_usage_sink_delivered_total",
		"tokengate_usage_sink_errors_total",
		"tokengate_usage_sink_lag_records",
		"tokengate_usage_spool_appended_total",
		"tokengate_usage_spool_bytes",
		"tokengate_usage_spool_corrupt_records_total",
		"tokengate_usage_spool_full",
		"tokengate_usage_spool_near_full",
		"tokengate_usage_spool_pending_records",
		"tokengate_usage_spool_segments",
		"tokengate_usage_unspooled_total",
	}
	var got []string
	for name, f := range fams {
		if !strings.HasPrefix(name, "tokengate_") {
			continue
		}
		got = append(got, name)
		if len(f.GetHelp()) < 20 {
			t.Errorf("%s: help %q does not tell an operator much", name, f.GetHelp())
		}
		isCounter := f.GetType() == dto.MetricType_COUNTER
		if isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: type %v; counters and only counters end in _total", name, f.GetType())
		}
	}
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("metric names:\n got %q\nwant %q", got, want)
	}
}

// benchRecord is a typical streamed chat completion.
func benchRecord() (Labels, *usage.Record) {
	l := Labels{App: "app-a", Team: "team-1", Model: "gpt-4o", Operation: "chat/completions", Backend: "east", Pool: "main"}
	return l, &usage.Record{
		RequestID: "req-1", Status: 200, Stream: true,
		Tokens:   usage.Tokens{Prompt: 1200, Completion: 300, CachedPrompt: 1024, Source: usage.SourceBackend},
		Cost:     usage.Cost{Amount: 0.0042, Currency: "USD"},
		Latency:  usage.Latency{TotalMS: 2300, FirstTokenMS: 250, UpstreamMS: 2299.4},
		Attempts: []usage.Attempt{{Backend: "east", Deployment: "gpt-4o", Status: 200}},
	}
}

func BenchmarkRequest(b *testing.B) {
	m := New("dev", nil)
	l, rec := benchRecord()
	m.Request(l, rec, false) // the steady state: labels already seen
	b.ReportAllocs()
	for b.Loop() {
		m.Request(l, rec, false)
	}
}

// BenchmarkRequestRetried is a request that was throttled, retried and
// spilled to a second backend.
func BenchmarkRequestRetried(b *testing.B) {
	m := New("dev", nil)
	l, rec := benchRecord()
	rec.Attempts = []usage.Attempt{{Backend: "east", Status: 429}, {Backend: "west", Status: 200}}
	l.Backend = "west"
	m.Request(l, rec, true)
	b.ReportAllocs()
	for b.Loop() {
		m.Request(l, rec, true)
	}
}

func BenchmarkRequestParallel(b *testing.B) {
	m := New("dev", nil)
	l, rec := benchRecord()
	m.Request(l, rec, false)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request(l, rec, false)
		}
	})
}

func BenchmarkLimitDecision(b *testing.B) {
	m := New("dev", nil)
	m.LimitDecision("batch-app", "app/batch-app/limits[0].rpm", "admitted")
	b.ReportAllocs()
	for b.Loop() {
		m.LimitDecision("batch-app", "app/batch-app/limits[0].rpm", "admitted")
	}
}
