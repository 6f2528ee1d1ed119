package app

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/ratelimit"
	"github.com/tokengate/tokengate/internal/usage/store"
)

// AdminHandler serves the admin listener: health, /metrics and the admin
// API documented in docs/admin-api.md. Beyond loopback, everything but
// /healthz and /readyz needs an admin key or token (adminAuth).
func (g *Gateway) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", g.healthz)
	mux.HandleFunc("GET /readyz", g.readyz)
	mux.Handle("GET /metrics", g.metrics.Handler())
	mux.HandleFunc("GET /admin/backends", g.adminBackends)
	mux.HandleFunc("GET /admin/apps", g.adminApps)
	mux.HandleFunc("GET /admin/config", g.adminConfig)
	mux.HandleFunc("POST /admin/reload", g.adminReload)
	mux.HandleFunc("GET /admin/usage/summary", g.adminUsageSummary)
	mux.HandleFunc("GET /admin/usage/spool", g.adminSpool)
	if g.boot.Admin.Profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, openai.Errorf(http.StatusNotFound, "not_found",
			"no admin endpoint %s %s; see docs/admin-api.md", r.Method, r.URL.Path))
	})
	if !g.boot.AdminExposed() {
		return mux
	}
	return g.adminAuth(mux)
}

// adminAuth admits admin requests with an admin key or a bearer token
// (Entra ID or OIDC, verified like client tokens) carrying admin.role.
// Health checks stay open for probes.
func (g *Gateway) adminAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		rt := g.acquire()
		defer rt.done()
		ac := rt.cfg.Admin
		token, ok := bearer(r.Header.Get("Authorization"))
		if !ok {
			w.Header().Set("WWW-Authenticate", "Bearer")
			openai.WriteError(w, openai.Errorf(http.StatusUnauthorized, "unauthorized",
				"the admin API needs \"Authorization: Bearer <admin key or token with the %q role>\"", ac.Role))
			return
		}
		if adminKeyMatches(ac.Keys, token) {
			next.ServeHTTP(w, r)
			return
		}
		if ac.Role == "" || strings.Count(token, ".") != 2 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			openai.WriteError(w, openai.Errorf(http.StatusUnauthorized, "unauthorized", "the admin key is not valid"))
			return
		}
		c, err := rt.auth.Authenticate(r)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		if c.PassThrough || !slices.Contains(c.Roles, ac.Role) {
			// A pass-through token's audience is Azure OpenAI, not this
			// gateway: a backend could replay it.
			openai.WriteError(w, openai.Errorf(http.StatusForbidden, "forbidden",
				"the token is valid but lacks the %q app role the admin API requires", ac.Role))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// adminKeyMatches compares token with every admin key in constant time
// (over digests, so lengths leak nothing either).
func adminKeyMatches(keys []string, token string) bool {
	t := sha256.Sum256([]byte(token))
	match := 0
	for _, k := range keys {
		d := sha256.Sum256([]byte(k))
		match |= subtle.ConstantTimeCompare(t[:], d[:])
	}
	return match == 1
}

func bearer(v string) (string, bool) {
	const p = "bearer "
	if len(v) <= len(p) || !strings.EqualFold(v[:len(p)], p) {
		return "", false
	}
	t := strings.TrimSpace(v[len(p):])
	return t, t != ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// adminSpool shows the usage spool (records and bytes held, whether it is
// full) and every sink's lag, deliveries and last error.
func (g *Gateway) adminSpool(w http.ResponseWriter, _ *http.Request) {
	st := g.usage.Status()
	writeJSON(w, http.StatusOK, map[string]any{"spool": st.Spool, "near_full": g.usage.NearFull(), "unspooled": st.Unspooled, "sinks": st.Sinks})
}

// adminBackends lists every backend deployment's breaker state, last
// rate-limit readings and in-flight count.
func (g *Gateway) adminBackends(w http.ResponseWriter, _ *http.Request) {
	rt := g.acquire()
	defer rt.done()
	writeJSON(w, http.StatusOK, map[string]any{"backends": rt.balancer.Snapshot()})
}

// adminApp is one registered app as GET /admin/apps shows it.
type adminApp struct {
	Name       string                 `json:"name"`
	AppIDs     []string               `json:"app_ids,omitempty"`
	Issuer     string                 `json:"issuer,omitempty"`
	Team       string                 `json:"team,omitempty"`
	CostCenter string                 `json:"cost_center,omitempty"`
	Pool       string                 `json:"pool,omitempty"`
	Models     []string               `json:"models,omitempty"`
	Streaming  bool                   `json:"streaming"`
	Capture    string                 `json:"capture"`
	Limits     []ratelimit.LimitState `json:"limits"`
	// LimitsError says why current usage could not be read (Redis down).
	LimitsError string `json:"limits_error,omitempty"`
}

// adminApps lists the registered apps with their limits and what they have
// used of each in the current window or period.
func (g *Gateway) adminApps(w http.ResponseWriter, r *http.Request) {
	rt := g.acquire()
	defer rt.done()
	apps := make([]adminApp, 0, len(rt.cfg.Apps))
	for i := range rt.cfg.Apps {
		a := &rt.cfg.Apps[i]
		out := adminApp{Name: a.Name, AppIDs: a.AppIDs, Issuer: a.Issuer, Team: a.Team, CostCenter: a.CostCenter,
			Pool: a.Pool, Models: a.Models, Streaming: a.StreamingAllowed(), Capture: a.Capture}
		ls, err := rt.limiter.Peek(r.Context(), a)
		if err != nil {
			out.LimitsError = err.Error()
		}
		out.Limits = ls
		if out.Limits == nil {
			out.Limits = []ratelimit.LimitState{}
		}
		apps = append(apps, out)
	}
	writeJSON(w, http.StatusOK, map[string]any{"apps": apps})
}

// adminConfig shows the effective config with every secret redacted, and
// how the last reload went.
func (g *Gateway) adminConfig(w http.ResponseWriter, _ *http.Request) {
	rt := g.acquire()
	defer rt.done()
	g.reloadMu.Lock()
	st := g.reloads
	g.reloadMu.Unlock()
	writeJSON(w, http.StatusOK, struct {
		File   string       `json:"file,omitempty"`
		Reload reloadStatus `json:"reload"`
		Config any          `json:"config"`
	}{g.opts.path, st, redacted(reflect.ValueOf(rt.cfg), false)})
}

// adminReload reloads the config file now.
func (g *Gateway) adminReload(w http.ResponseWriter, _ *http.Request) {
	err := g.Reload("api")
	g.reloadMu.Lock()
	st := g.reloads
	g.reloadMu.Unlock()
	switch {
	case errors.Is(err, errNoConfigFile):
		openai.WriteError(w, openai.Errorf(http.StatusConflict, "no_config_file", "%v", err))
	case errors.Is(err, errShuttingDown):
		openai.WriteError(w, openai.Errorf(http.StatusServiceUnavailable, "shutting_down", "%v", err))
	case err != nil:
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
			"error":  map[string]any{"code": "invalid_config", "message": "the config file was rejected; the last good config keeps serving", "problems": st.Errors},
			"reload": st})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"status": "reloaded", "reload": st})
	}
}

// adminUsageSummary answers what "tokengate usage report --format json"
// answers, from the first SQL sink, with the same query parameters as its
// flags: from, to, group_by (and format: json, csv or table).
func (g *Gateway) adminUsageSummary(w http.ResponseWriter, r *http.Request) {
	if g.reports == nil {
		openai.WriteError(w, openai.Errorf(http.StatusNotFound, "no_usage_store",
			"no sqlite or postgres usage sink is configured to summarize from"))
		return
	}
	q, format, err := summaryQuery(r)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	rows, err := g.reports.Report(r.Context(), q)
	if err != nil {
		openai.WriteError(w, &openai.Error{Status: http.StatusServiceUnavailable, Code: "usage_store_unavailable",
			Message: "the usage store did not answer; retry shortly", Err: err})
		return
	}
	// Records still in the spool are not in the store yet.
	for _, s := range g.usage.Status().Sinks {
		if s.Name == g.reports.Name() {
			w.Header().Set("X-Tokengate-Sink-Lag", fmt.Sprint(s.Lag))
		}
	}
	switch format {
	case "csv":
		w.Header().Set("Content-Type", "text/csv")
	case "table":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	default:
		w.Header().Set("Content-Type", "application/json")
	}
	_ = store.WriteReport(w, rows, q.GroupBy, format)
}

func summaryQuery(r *http.Request) (store.Query, string, error) {
	var q store.Query
	v := r.URL.Query()
	bad := func(format string, args ...any) error {
		return openai.Errorf(http.StatusBadRequest, "invalid_query", format, args...)
	}
	groupBy := v.Get("group_by")
	if groupBy == "" {
		groupBy = "app"
	}
	var err error
	if q.GroupBy, err = store.ParseGroupBy(groupBy); err != nil {
		return q, "", bad("group_by: %v", err)
	}
	if s := v.Get("from"); s != "" {
		if q.From, err = store.ParseTime(s); err != nil {
			return q, "", bad("from: %v", err)
		}
	}
	if s := v.Get("to"); s != "" {
		if q.To, err = store.ParseTime(s); err != nil {
			return q, "", bad("to: %v", err)
		}
	}
	format := v.Get("format")
	switch format {
	case "":
		format = "json"
	case "json", "csv", "table":
	default:
		return q, "", bad("format must be json, csv or table, not %q", format)
	}
	return q, format, nil
}

var durationType = reflect.TypeFor[time.Duration]()

// redacted turns a config value into plain JSON-able data keyed by the
// YAML field names, with every non-empty value under a `secret:"true"`
// field replaced by "[redacted]".
func redacted(v reflect.Value, secret bool) any {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return redacted(v.Elem(), secret)
	case reflect.Struct:
		m := make(map[string]any, v.NumField())
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			m[name] = redacted(v.Field(i), secret || f.Tag.Get("secret") == "true")
		}
		return m
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return []any{}
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = redacted(v.Index(i), secret)
		}
		return out
	case reflect.Map:
		m := make(map[string]any, v.Len())
		it := v.MapRange()
		for it.Next() {
			m[fmt.Sprint(it.Key().Interface())] = redacted(it.Value(), secret)
		}
		return m
	case reflect.String:
		if secret && v.String() != "" {
			return "[redacted]"
		}
		return v.String()
	}
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	if secret && !v.IsZero() {
		return "[redacted]"
	}
	return v.Interface()
}
