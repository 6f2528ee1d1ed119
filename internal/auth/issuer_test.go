package auth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// Test identities. Tenant ids are lower case, as Entra issues them.
const (
	tenantA    = "aaaaaaaa-1111-4111-8111-111111111111"
	tenantB    = "bbbbbbbb-2222-4222-8222-222222222222"
	tenantC    = "cccccccc-3333-4333-8333-333333333333" // pass-through only
	tenantX    = "dddddddd-4444-4444-8444-444444444444" // not configured
	appA       = "0a0a0a0a-0000-4000-8000-00000000000a" // registered: billing
	appB       = "0b0b0b0b-0000-4000-8000-00000000000b" // registered: search
	appPT      = "0c0c0c0c-0000-4000-8000-00000000000c" // registered, pass-through
	appUnreg   = "0f0f0f0f-0000-4000-8000-00000000000f" // not registered
	oidcClient = "reporting-cli"                        // generic issuer app
	audURI     = "api://tokengate-test"
	audGUID    = "99999999-9999-4999-8999-999999999999"
	v1Host     = "https://sts.windows.net"
)

// t0 is the fake clock's start.
var t0 = time.Unix(1_900_000_000, 0).UTC()

// fakeClock is a settable clock safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t0.UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// testKey is an RSA signing key and the kid it is published under.
type testKey struct {
	kid  string
	priv *rsa.PrivateKey
	x5c  bool // publish a self-signed certificate too, as Entra does
}

// rsaKeys are generated once per test binary: 2048-bit generation is slow
// under -race.
var rsaKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	out := make([]*rsa.PrivateKey, 6)
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			out[i] = k
		})
	}
	wg.Wait()
	return out
})

// The keys of the test world.
func keyA1() testKey    { return testKey{kid: "a1", priv: rsaKeys()[0], x5c: true} }
func keyA2() testKey    { return testKey{kid: "a2", priv: rsaKeys()[1]} } // rotation
func keyB1() testKey    { return testKey{kid: "b1", priv: rsaKeys()[2]} }
func keyO1() testKey    { return testKey{kid: "o1", priv: rsaKeys()[3]} }
func keyEvil() testKey  { return testKey{kid: "x1", priv: rsaKeys()[4]} } // never published
func keyC1() testKey    { return testKey{kid: "c1", priv: rsaKeys()[5]} }
func keyEvilA() testKey { return testKey{kid: "a1", priv: rsaKeys()[4]} } // attacker reusing a real kid

// testIssuer is a real HTTP server playing Entra (per-tenant JWKS at
// /{tenant}/discovery/v2.0/keys) and a generic OIDC issuer at /oidc. It
// counts JWKS fetches, rotates keys and can fail.
type testIssuer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	sets    map[string][]testKey // "tenant id" or "oidc" -> published keys
	status  atomic.Int32         // non-zero: JWKS answers with this status
	fetches sync.Map             // set name -> *atomic.Int64
	disco   atomic.Int64
}

func newTestIssuer(t testing.TB) *testIssuer {
	ti := &testIssuer{sets: map[string][]testKey{
		tenantA: {keyA1()},
		tenantB: {keyB1()},
		tenantC: {keyC1()},
		"oidc":  {keyO1()},
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", func(w http.ResponseWriter, r *http.Request) {
		ti.serveJWKS(w, r.PathValue("tenant"))
	})
	mux.HandleFunc("GET /oidc/jwks", func(w http.ResponseWriter, r *http.Request) { ti.serveJWKS(w, "oidc") })
	mux.HandleFunc("GET /oidc/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		ti.disco.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": ti.srv.URL + "/oidc", "jwks_uri": ti.srv.URL + "/oidc/jwks"})
	})
	ti.srv = httptest.NewServer(mux)
	t.Cleanup(ti.srv.Close)
	return ti
}

func (ti *testIssuer) counter(set string) *atomic.Int64 {
	c, _ := ti.fetches.LoadOrStore(set, new(atomic.Int64))
	return c.(*atomic.Int64)
}

// fetched returns how many times the set's JWKS was requested.
func (ti *testIssuer) fetched(set string) int64 { return ti.counter(set).Load() }

// publish replaces the keys served for set.
func (ti *testIssuer) publish(set string, keys ...testKey) {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.sets[set] = keys
}

func (ti *testIssuer) serveJWKS(w http.ResponseWriter, set string) {
	ti.counter(set).Add(1)
	if s := ti.status.Load(); s != 0 {
		http.Error(w, "down", int(s))
		return
	}
	ti.mu.Lock()
	keys, ok := ti.sets[set]
	ti.mu.Unlock()
	if !ok {
		http.NotFound(w, nil)
		return
	}
	out := []map[string]any{}
	for _, k := range keys {
		out = append(out, jwk(k))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"keys": out})
}

// jwk renders a key the way Entra publishes it: no "alg".
func jwk(k testKey) map[string]any {
	pub := &k.priv.PublicKey
	m := map[string]any{
		"kty": "RSA", "use": "sig", "kid": k.kid,
		"n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes()),
	}
	if k.x5c {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "accounts.test"},
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, k.priv)
		if err != nil {
			panic(err)
		}
		sum := sha1.Sum(der)
		m["x5c"] = []string{base64.StdEncoding.EncodeToString(der)}
		m["x5t"] = b64(sum[:])
	}
	return m
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (ti *testIssuer) v1Iss(tenant string) string { return v1Host + "/" + tenant + "/" }
func (ti *testIssuer) v2Iss(tenant string) string { return ti.srv.URL + "/" + tenant + "/v2.0" }
func (ti *testIssuer) oidcIss() string            { return ti.srv.URL + "/oidc" }

// identity is the test world's identity config.
func (ti *testIssuer) identity() config.Identity {
	return config.Identity{
		Audiences:          []string{audURI, audGUID},
		Entra:              &config.Entra{Tenants: []string{tenantA, tenantB}, AuthorityHost: ti.srv.URL, V1IssuerHost: v1Host},
		Issuers:            []config.Issuer{{Name: "keycloak", Issuer: ti.srv.URL + "/oidc", AppClaim: "azp"}},
		Leeway:             time.Minute,
		JWKSRefresh:        time.Hour,
		UnknownKIDCooldown: time.Hour,
		UnknownApps:        "refuse",
		TokenCacheSize:     1000,
	}
}

func testApps() []config.App {
	return []config.App{
		{Name: "billing", AppIDs: []string{appA}, Team: "finance", Roles: []string{"openai-user"}},
		{Name: "search", AppIDs: []string{appB}},
		{Name: "pt-app", AppIDs: []string{appPT}},
		{Name: "reporting", AppIDs: []string{oidcClient}, Issuer: "keycloak"},
		{Name: "keyonly"},
	}
}

// newAuth builds an Authenticator on ti with the fake clock; mutate may
// change the config first.
func newAuth(t testing.TB, ti *testIssuer, clock *fakeClock, mutate func(*config.Identity)) *Authenticator {
	t.Helper()
	id := ti.identity()
	if mutate != nil {
		mutate(&id)
	}
	a, err := New(id, testApps(), slog.New(slog.DiscardHandler), WithClock(clock.Now), WithHTTPClient(ti.srv.Client()))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = a.Close(t.Context()) })
	return a
}

// claimSet is a token payload; JSON keys are sorted, values as given.
type claimSet map[string]any

func (c claimSet) with(kv ...any) claimSet {
	out := claimSet{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

func (c claimSet) json() string {
	b, err := json.Marshal(map[string]any(c))
	if err != nil {
		panic(err)
	}
	return string(b)
}

// v2Claims is a good v2.0 app token for appA in tenantA.
func (ti *testIssuer) v2Claims() claimSet {
	return claimSet{
		"iss": ti.v2Iss(tenantA), "aud": audURI, "tid": tenantA, "azp": appA, "ver": "2.0",
		"oid": "11111111-aaaa-4aaa-8aaa-111111111111", "roles": []string{"Chat.Use"},
		"groups": []string{"g1", "g2"}, "scp": "user_impersonation Chat.Read",
		"preferred_username": "alice@contoso.example",
		"iat":                t0.Add(-time.Minute).Unix(), "nbf": t0.Add(-time.Minute).Unix(), "exp": t0.Add(time.Hour).Unix(),
	}
}

// v1Claims is a good v1.0 token for appB in tenantB.
func (ti *testIssuer) v1Claims() claimSet {
	return claimSet{
		"iss": ti.v1Iss(tenantB), "aud": audGUID, "tid": tenantB, "appid": appB, "ver": "1.0",
		"oid": "22222222-bbbb-4bbb-8bbb-222222222222", "roles": []string{"Admin"}, "upn": "bob@contoso.example",
		"iat": t0.Add(-time.Minute).Unix(), "nbf": t0.Add(-time.Minute).Unix(), "exp": t0.Add(time.Hour).Unix(),
	}
}

// oidcClaims is a good token from the generic issuer.
func (ti *testIssuer) oidcClaims() claimSet {
	return claimSet{
		"iss": ti.oidcIss(), "aud": []string{"account", audURI}, "azp": oidcClient, "name": "Reporting",
		"iat": t0.Unix(), "exp": t0.Add(30 * time.Minute).Unix(),
	}
}

// hdr renders a JOSE header.
func hdr(alg, kid string, extra ...string) string {
	h := `{"alg":"` + alg + `","typ":"JWT"`
	if kid != "" {
		h += `,"kid":"` + kid + `"`
	}
	for _, e := range extra {
		h += "," + e
	}
	return h + "}"
}

// signRaw signs header.payload (both raw JSON) with RS256.
func signRaw(k testKey, hdr, payload string) string {
	input := b64([]byte(hdr)) + "." + b64([]byte(payload))
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k.priv, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	return input + "." + b64(sig)
}

// mint signs claims with k under its kid, RS256.
func mint(k testKey, c claimSet) string { return signRaw(k, hdr("RS256", k.kid), c.json()) }

// request builds a request carrying the Authorization value (if any).
func request(authz string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/openai/deployments/gpt/chat/completions?api-version=2024-10-21", nil)
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	return r
}

func bearer(tok string) *http.Request { return request("Bearer " + tok) }

// containsAny reports whether s contains any of the needles (ignoring
// needles shorter than 8 bytes, which occur by chance).
func containsAny(s string, needles ...string) bool {
	for _, n := range needles {
		if len(n) >= 8 && strings.Contains(s, n) {
			return true
		}
	}
	return false
}
