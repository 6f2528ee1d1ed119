package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	_ "modernc.org/sqlite"

	"github.com/tokengate/tokengate/internal/devissuer"
)

// demoBannerURL is the URL the demo's banner prints after name ("gateway",
// "admin").
func demoBannerURL(t *testing.T, p *process, name string) string {
	t.Helper()
	for _, line := range strings.Split(p.stdout.String(), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == name {
			u := f[1]
			if !strings.HasPrefix(u, "http://127.0.0.1:") {
				t.Fatalf("banner line %q", line)
			}
			return u
		}
	}
	t.Fatalf("the banner has no %s line:\n%s", name, p.stdout.String())
	return ""
}

// demoToken runs "tokengate dev-token" for app; the token is its last line.
func demoToken(t *testing.T, dataDir, app string) string {
	t.Helper()
	out, err := exec.Command(binary, "dev-token", "--app", app, "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatalf("dev-token --app %s: %v", app, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// opsDo makes one request with an optional bearer and headers and reads
// the whole answer.
func opsDo(t *testing.T, method, url, bearer, body string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	return resp, b
}

// opsErrorShape decodes an OpenAI-shape error body or fails the test.
func opsErrorShape(t *testing.T, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("not the OpenAI error shape: %q", body)
	}
	return e.Error.Code, e.Error.Message
}

// opsRun runs tokengate to completion and returns its output and exit
// code.
func opsRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func opsHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// opsExternalIPv4 is this machine's first non-loopback IPv4 address; the
// test is skipped on a machine that has none.
func opsExternalIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skipf("cannot list interface addresses (%v): an exposed admin listener needs a non-loopback address", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address: an admin listener cannot be exposed without leaving loopback")
	return ""
}

// opsFreeAddrOn is freeAddr on ip.
func opsFreeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// opsIssuer is startIssuer that also returns the issuer's data
// directory, where its signing key is.
func opsIssuer(t *testing.T) (*devissuer.Issuer, string) {
	t.Helper()
	dir := t.TempDir()
	is, err := devissuer.Start(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = is.Close(context.Background()) })
	if err := is.Publish("api://tokengate-test", map[string]string{"chat-app": chatAppID, "batch-app": batchAppID}); err != nil {
		t.Fatal(err)
	}
	return is, dir
}

// opsMintWithRoles signs, with the dev issuer's key, a token like the dev
// issuer's own (which carries no roles claim) with a roles claim: an
// Entra app token for an app that was assigned app roles.
func opsMintWithRoles(t *testing.T, is *devissuer.Issuer, dir, app, audience string, roles []string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, devissuer.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s is not PEM", devissuer.KeyFile)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	st := is.State()
	appID := st.Apps[app]
	oid := uuid.NewSHA1(uuid.NameSpaceOID, []byte(st.Tenant+"/"+appID)).String()
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"aud": audience, "iss": st.URL + "/" + st.Tenant + "/v2.0",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"azp": appID, "azpacr": "1", "idtyp": "app", "oid": oid, "sub": oid, "tid": st.Tenant,
		"uti": opsHex(t, 11), "ver": "2.0", "roles": roles,
	})
	tok.Header["kid"] = st.KeyID
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// opsSample is one exposed series: its labels and value.
type opsSample struct {
	labels map[string]string
	value  float64
}

// opsScrape reads and parses a Prometheus text exposition.
func opsScrape(t *testing.T, url, bearer string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, body := opsDo(t, "GET", url, bearer, "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %.300s", url, resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("GET %s: not the Prometheus text format: %v", url, err)
	}
	return fams
}

// opsSamples lists a counter's or gauge's series.
func opsSamples(fams map[string]*dto.MetricFamily, name string) []opsSample {
	var out []opsSample
	for _, m := range fams[name].GetMetric() {
		s := opsSample{labels: map[string]string{}}
		for _, l := range m.GetLabel() {
			s.labels[l.GetName()] = l.GetValue()
		}
		switch {
		case m.Counter != nil:
			s.value = m.GetCounter().GetValue()
		case m.Gauge != nil:
			s.value = m.GetGauge().GetValue()
		default:
			s.value = m.GetUntyped().GetValue()
		}
		out = append(out, s)
	}
	return out
}

func opsSum(ss []opsSample) float64 {
	var n float64
	for _, s := range ss {
		n += s.value
	}
	return n
}

// opsByLabels sums series by the named labels.
func opsByLabels(ss []opsSample, names ...string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ss {
		kv := make([]string, 0, 2*len(names))
		for _, n := range names {
			kv = append(kv, n, s.labels[n])
		}
		out[opsKey(kv...)] += s.value
	}
	return out
}

// opsKey joins label names and values: opsKey("app", "x", "model", "y").
func opsKey(kv ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, "%s=%q ", kv[i], kv[i+1])
	}
	return strings.TrimSpace(b.String())
}

// opsCompare fails unless got and want hold the same keys with values
// within tol.
func opsCompare(t *testing.T, what string, got, want map[string]float64, tol float64) {
	t.Helper()
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		g, okg := got[k]
		w, okw := want[k]
		if okg != okw || math.Abs(g-w) > tol {
			diffs = append(diffs, fmt.Sprintf("  {%s}: metrics %v (present %v), records %v (present %v)", k, g, okg, w, okw))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s differs from the usage records:\n%s", what, strings.Join(diffs, "\n"))
	}
}

func opsStatusClass(status int) string {
	switch {
	case status >= 200 && status < 300:
		return "2xx"
	case status >= 300 && status < 400:
		return "3xx"
	case status >= 400 && status < 500:
		return "4xx"
	}
	return "5xx"
}

// opsText renders parsed families back to text, for searching.
func opsText(fams map[string]*dto.MetricFamily) string {
	var b bytes.Buffer
	for _, f := range fams {
		_, _ = expfmt.MetricFamilyToText(&b, f)
	}
	return b.String()
}

// opsRecord is what the metrics are compared with, from usage.db.
type opsRecord struct {
	app, team, model, backend, operation, errorClass, currency string
	status                                                     int
	prompt, completion, cached, reasoning                      int64
	cost                                                       float64
}

func opsRecords(t *testing.T, path string) []opsRecord {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT app, team, model, backend, operation, error_class, cost_currency, status,
		prompt_tokens, completion_tokens, cached_prompt_tokens, reasoning_tokens, cost_amount FROM usage_records`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []opsRecord
	for rows.Next() {
		var r opsRecord
		if err := rows.Scan(&r.app, &r.team, &r.model, &r.backend, &r.operation, &r.errorClass, &r.currency, &r.status,
			&r.prompt, &r.completion, &r.cached, &r.reasoning, &r.cost); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
