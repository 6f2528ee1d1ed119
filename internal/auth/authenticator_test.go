package auth

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

func TestCallerFromTokens(t *testing.T) {
	ti := newTestIssuer(t)
	clock := newClock()
	a := newAuth(t, ti, clock, func(id *config.Identity) {
		id.PassThrough = config.PassThrough{Enabled: true, Tenants: []string{tenantA}, Apps: []string{appA}}
	})
	v2 := mint(keyA1(), ti.v2Claims())
	pass := mint(keyA1(), ti.v2Claims().with("aud", config.CognitiveServicesAudience+"/"))
	tests := []struct {
		name  string
		token string
		want  Caller
	}{
		{"v2", v2, Caller{
			Method: MethodEntra, Issuer: ti.v2Iss(tenantA), TenantID: tenantA, AppID: appA,
			ObjectID: "11111111-aaaa-4aaa-8aaa-111111111111", Roles: []string{"Chat.Use"}, Groups: []string{"g1", "g2"},
			Scopes: []string{"user_impersonation", "Chat.Read"}, DisplayName: "alice@contoso.example",
			ExpiresAt: t0.Add(time.Hour),
		}},
		{"v1", mint(keyB1(), ti.v1Claims()), Caller{
			Method: MethodEntra, Issuer: ti.v1Iss(tenantB), TenantID: tenantB, AppID: appB,
			ObjectID: "22222222-bbbb-4bbb-8bbb-222222222222", Roles: []string{"Admin"}, DisplayName: "bob@contoso.example",
			ExpiresAt: t0.Add(time.Hour),
		}},
		{"generic", mint(keyO1(), ti.oidcClaims()), Caller{
			Method: MethodOIDC, Issuer: ti.oidcIss(), AppID: oidcClient, DisplayName: "Reporting",
			ExpiresAt: t0.Add(30 * time.Minute),
		}},
		{"pass-through", pass, Caller{
			Method: MethodEntra, Issuer: ti.v2Iss(tenantA), TenantID: tenantA, AppID: appA,
			ObjectID: "11111111-aaaa-4aaa-8aaa-111111111111", Roles: []string{"Chat.Use"}, Groups: []string{"g1", "g2"},
			Scopes: []string{"user_impersonation", "Chat.Read"}, DisplayName: "alice@contoso.example",
			ExpiresAt: t0.Add(time.Hour), PassThrough: true, Token: pass,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Authenticate(bearer(tt.token))
			if err != nil {
				t.Fatal(err)
			}
			if got.App == nil || !slices.Contains(got.App.AppIDs, tt.want.AppID) {
				t.Fatalf("App = %+v, want the app registering %s", got.App, tt.want.AppID)
			}
			g := *got
			g.App = nil
			if !equalCaller(g, tt.want) {
				t.Errorf("caller =\n %+v\nwant\n %+v", g, tt.want)
			}
		})
	}
}

func equalCaller(a, b Caller) bool {
	return a.Method == b.Method && a.Issuer == b.Issuer && a.TenantID == b.TenantID && a.AppID == b.AppID &&
		a.ObjectID == b.ObjectID && slices.Equal(a.Roles, b.Roles) && slices.Equal(a.Groups, b.Groups) &&
		slices.Equal(a.Scopes, b.Scopes) && a.DisplayName == b.DisplayName && a.App == b.App &&
		a.PassThrough == b.PassThrough && a.Token == b.Token && a.ExpiresAt.Equal(b.ExpiresAt) && a.KeyPrefix == b.KeyPrefix
}

func TestUnknownAppsAllow(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), func(id *config.Identity) { id.UnknownApps = "allow" })
	c, err := a.Authenticate(bearer(mint(keyA1(), ti.v2Claims().with("azp", appUnreg))))
	if err != nil {
		t.Fatal(err)
	}
	if c.App != nil || c.AppID != appUnreg || c.AppName() != "unknown" {
		t.Errorf("caller = %+v", c)
	}
}

func TestAnonymous(t *testing.T) {
	a, err := New(config.Identity{Anonymous: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(t.Context())
	for _, r := range []*http.Request{request(""), request("Bearer garbage"), withHeader(request(""), "api-key", "x")} {
		c, err := a.Authenticate(r)
		if err != nil || c.Method != MethodAnonymous || c.AppName() != "anonymous" {
			t.Errorf("Authenticate = %+v, %v", c, err)
		}
	}
}

// TestDiscovery checks that a generic issuer's jwks_uri comes from its
// discovery document, read once at New, and that a broken document fails
// New with an error naming the issuer.
func TestDiscovery(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), nil)
	if got := ti.disco.Load(); got != 1 {
		t.Errorf("discovery fetched %d times, want 1", got)
	}
	if got := ti.fetched("oidc"); got != 1 {
		t.Errorf("oidc JWKS fetched %d times, want 1", got)
	}
	if _, err := a.Authenticate(bearer(mint(keyO1(), ti.oidcClaims()))); err != nil {
		t.Fatal(err)
	}

	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/wrong/.well-known/openid-configuration":
			_, _ = w.Write([]byte(`{"issuer":"https://elsewhere.example","jwks_uri":"https://elsewhere.example/keys"}`))
		case "/nojwks/.well-known/openid-configuration":
			_, _ = w.Write([]byte(`{"issuer":"http://` + r.Host + `/nojwks","jwks_uri":"ftp://x/keys"}`))
		default:
			http.Error(w, "nope", http.StatusInternalServerError)
		}
	}))
	defer bad.Close()
	for _, path := range []string{"/down", "/wrong", "/nojwks"} {
		id := ti.identity()
		id.Issuers = append(id.Issuers, config.Issuer{Name: "broken" + path[1:], Issuer: bad.URL + path, AppClaim: "azp"})
		_, err := New(id, testApps(), nil, WithHTTPClient(bad.Client()))
		if err == nil || !strings.Contains(err.Error(), bad.URL+path) || !strings.Contains(err.Error(), "broken"+path[1:]) {
			t.Errorf("%s: New error = %v, want one naming the issuer", path, err)
		}
	}
}

// TestJWKSDownAtStart: New succeeds, tokens fail until keys arrive, then
// the first token with an unknown kid fetches them.
func TestJWKSDownAtStart(t *testing.T) {
	ti := newTestIssuer(t)
	ti.status.Store(http.StatusServiceUnavailable)
	a := newAuth(t, ti, newClock(), func(id *config.Identity) { id.UnknownKIDCooldown = 50 * time.Millisecond })
	tok := mint(keyA1(), ti.v2Claims())
	if _, err := a.Authenticate(bearer(tok)); !isStatus(err, 401) || !strings.Contains(err.Error(), "unknown signing key") {
		t.Fatalf("with JWKS down: %v", err)
	}
	ti.status.Store(0)
	time.Sleep(60 * time.Millisecond) // one cooldown
	if _, err := a.Authenticate(bearer(tok)); err != nil {
		t.Fatalf("after JWKS recovered: %v", err)
	}
}

// TestKeyRotation: a token signed with a newly published key is accepted
// after exactly one extra JWKS fetch, and the next ones need none.
func TestKeyRotation(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), func(id *config.Identity) { id.TokenCacheSize = 0 })
	before := ti.fetched(tenantA)
	if before != 1 {
		t.Fatalf("initial fetches = %d", before)
	}
	ti.publish(tenantA, keyA1(), keyA2())
	tok := mint(keyA2(), ti.v2Claims())
	if _, err := a.Authenticate(bearer(tok)); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if got := ti.fetched(tenantA); got != before+1 {
		t.Errorf("fetches = %d, want %d", got, before+1)
	}
	for range 3 {
		if _, err := a.Authenticate(bearer(tok)); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(bearer(mint(keyA1(), ti.v2Claims()))); err != nil {
			t.Fatal(err)
		}
	}
	if got := ti.fetched(tenantA); got != before+1 {
		t.Errorf("fetches after reuse = %d, want %d", got, before+1)
	}
	// The key set is the issuer's: tenant B never saw a fetch beyond its first.
	if got := ti.fetched(tenantB); got != 1 {
		t.Errorf("tenant B fetches = %d, want 1", got)
	}
}

// TestUnknownKIDFlood: 100 tokens with random kids cost at most one JWKS
// fetch per cooldown and are refused without waiting.
func TestUnknownKIDFlood(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), nil) // cooldown 1h
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			k := testKey{kid: "flood-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Now().Format("150405.000000"), priv: keyEvil().priv}
			_, err := a.Authenticate(bearer(signRaw(k, hdr("RS256", k.kid), ti.v2Claims().json())))
			if !isStatus(err, 401) {
				t.Errorf("random kid: %v", err)
			}
		})
	}
	wg.Wait()
	if got := ti.fetched(tenantA); got > 2 {
		t.Errorf("JWKS fetched %d times for 100 unknown kids, want at most 1 + 1", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("flood took %v: refusals waited for the limiter", d)
	}
	if _, err := a.Authenticate(bearer(mint(keyA1(), ti.v2Claims()))); err != nil {
		t.Errorf("good token after the flood: %v", err)
	}
}

// TestJWKSDownKeepsKeys: failed refreshes (500, garbage, server gone) keep
// the keys already known.
func TestJWKSDownKeepsKeys(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), func(id *config.Identity) {
		id.TokenCacheSize = 0
		id.JWKSRefresh = 20 * time.Millisecond
		id.UnknownKIDCooldown = 10 * time.Millisecond
	})
	tok := mint(keyA1(), ti.v2Claims())
	check := func(when string) {
		t.Helper()
		if _, err := a.Authenticate(bearer(tok)); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	check("up")

	ti.status.Store(http.StatusInternalServerError)
	waitFetches(t, ti, tenantA, 3)
	check("JWKS answering 500")
	// An unknown kid forces a refresh that fails; known keys must survive it.
	_, _ = a.Authenticate(bearer(mint(keyEvil(), ti.v2Claims())))
	check("after a failed unknown-kid refresh")

	ti.srv.Close()
	time.Sleep(100 * time.Millisecond) // several failed periodic refreshes
	check("JWKS server gone")
}

func waitFetches(t *testing.T, ti *testIssuer, set string, n int64) {
	t.Helper()
	want := ti.fetched(set) + n
	deadline := time.Now().Add(5 * time.Second)
	for ti.fetched(set) < want {
		if time.Now().After(deadline) {
			t.Fatalf("JWKS %s fetched %d times, waited for %d", set, ti.fetched(set), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCloseStopsRefresh: no JWKS fetches after Close.
func TestCloseStopsRefresh(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), func(id *config.Identity) { id.JWKSRefresh = 10 * time.Millisecond })
	waitFetches(t, ti, tenantA, 2)
	if err := a.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // a fetch in flight may finish
	n := ti.fetched(tenantA)
	time.Sleep(100 * time.Millisecond)
	if got := ti.fetched(tenantA); got != n {
		t.Errorf("fetches went on after Close: %d -> %d", n, got)
	}
}

func TestCache(t *testing.T) {
	ti := newTestIssuer(t)
	clock := newClock()
	a := newAuth(t, ti, clock, nil)
	tok := mint(keyA1(), ti.v2Claims().with("exp", t0.Add(5*time.Minute).Unix()))

	c1, err := a.Authenticate(bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	n := a.keyLookups.Load()
	c2, err := a.Authenticate(bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 || a.keyLookups.Load() != n {
		t.Errorf("second Authenticate verified again (lookups %d -> %d)", n, a.keyLookups.Load())
	}

	// Past exp (beyond leeway) the entry is unusable, the token is verified
	// again and refused.
	clock.Advance(5*time.Minute + 2*time.Minute)
	if _, err := a.Authenticate(bearer(tok)); !isStatus(err, 401) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired cached token: %v", err)
	}
	if a.keyLookups.Load() != n+1 {
		t.Errorf("expired token was not re-verified")
	}
	// Failures are not cached.
	if _, err := a.Authenticate(bearer(tok)); !isStatus(err, 401) || a.keyLookups.Load() != n+2 {
		t.Errorf("refusal was cached: %v", err)
	}
}

// TestCacheTTLCap: a long-lived token is re-verified after maxCacheTTL.
func TestCacheTTLCap(t *testing.T) {
	ti := newTestIssuer(t)
	clock := newClock()
	a := newAuth(t, ti, clock, nil)
	tok := mint(keyA1(), ti.v2Claims().with("exp", t0.Add(24*time.Hour).Unix()))
	for range 2 {
		if _, err := a.Authenticate(bearer(tok)); err != nil {
			t.Fatal(err)
		}
	}
	if a.keyLookups.Load() != 1 {
		t.Fatalf("lookups = %d", a.keyLookups.Load())
	}
	clock.Advance(maxCacheTTL - time.Second)
	_, _ = a.Authenticate(bearer(tok))
	if a.keyLookups.Load() != 1 {
		t.Errorf("re-verified before the TTL cap")
	}
	clock.Advance(2 * time.Second)
	_, _ = a.Authenticate(bearer(tok))
	if a.keyLookups.Load() != 2 {
		t.Errorf("not re-verified after the TTL cap")
	}
}

func TestTokenCacheBounded(t *testing.T) {
	for _, size := range []int{1, 10, 1000} {
		c := newTokenCache(size)
		now := t0
		caller := &Caller{}
		for i := range 3 * size {
			k := [32]byte{byte(i), byte(i >> 8), byte(i >> 16)}
			c.put(&k, caller, now.Add(time.Minute), now)
			if got := c.get(&k, now); got != caller {
				t.Fatalf("size %d: entry %d missing right after put", size, i)
			}
		}
		if n := c.len(); n > size+cacheShards {
			t.Errorf("size %d: cache holds %d entries", size, n)
		}
	}
	if newTokenCache(0) != nil {
		t.Error("size 0 must disable the cache")
	}
	var nilCache *tokenCache
	k := [32]byte{}
	nilCache.put(&k, &Caller{}, t0.Add(time.Hour), t0)
	if nilCache.get(&k, t0) != nil {
		t.Error("nil cache returned an entry")
	}
}

func TestQueryHasKey(t *testing.T) {
	tests := map[string]bool{
		"":                                  false,
		"api-version=2024-10-21":            false,
		"api-version=1&api-key=abc":         true,
		"subscription-key=abc":              true,
		"API-KEY=abc":                       true,
		"api%2Dkey=abc":                     true,
		"api-key=":                          false,
		"api-key":                           false,
		"x=api-key%3Dabc":                   false,
		"notapi-key=1":                      false,
		"a=1&&b=2&subscription%2dkey=zz&c=": true,
	}
	for q, want := range tests {
		if got := queryHasKey(q); got != want {
			t.Errorf("queryHasKey(%q) = %v, want %v", q, got, want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		in, tok string
		ok      bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER  abc ", "abc", true},
		{"Bearer", "", true},
		{"Bearerabc", "", false},
		{"Basic abc", "", false},
		{"", "", false},
		{"Bear", "", false},
	}
	for _, tt := range tests {
		tok, ok := bearerToken(tt.in)
		if tok != tt.tok || ok != tt.ok {
			t.Errorf("bearerToken(%q) = %q, %v", tt.in, tok, ok)
		}
	}
}

func TestSafeID(t *testing.T) {
	for in, want := range map[string]string{
		appA:                    appA,
		"reporting-cli":         "reporting-cli",
		"":                      "(not shown)",
		strings.Repeat("a", 65): "(not shown)",
		"a b":                   "(not shown)",
		"eyJ\"<script>":         "(not shown)",
	} {
		if got := safeID(in); got != want {
			t.Errorf("safeID(%q) = %q", in, got)
		}
	}
}

// TestNewNeedsNoIssuers: a gateway-keys-only config refuses bearer tokens
// with a message that says how to authenticate.
func TestNewNeedsNoIssuers(t *testing.T) {
	id := config.Identity{GatewayKeys: config.GatewayKeys{Enabled: true, File: t.TempDir() + "/keys.json"}, UnknownApps: "refuse"}
	a, err := New(id, testApps(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(t.Context())
	_, err = a.Authenticate(request("Bearer a.b.c"))
	if !isStatus(err, 401) || !strings.Contains(err.Error(), "api-key header") {
		t.Errorf("bearer with no issuers: %v", err)
	}
}

func isStatus(err error, status int) bool {
	var oe *openai.Error
	return errors.As(err, &oe) && oe.Status == status
}

// TestConcurrentAuthenticate mixes good and bad tokens from many goroutines
// over a cache small enough to evict, for the race detector.
func TestConcurrentAuthenticate(t *testing.T) {
	ti := newTestIssuer(t)
	clock := newClock()
	a := newAuth(t, ti, clock, func(id *config.Identity) { id.TokenCacheSize = 4 })
	var good []string
	for i := range 8 {
		good = append(good, mint(keyA1(), ti.v2Claims().with("oid", "user-"+string(rune('a'+i)))))
	}
	bad := mint(keyA1(), ti.v2Claims().with("azp", appUnreg))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				tok := good[(g+i)%len(good)]
				c, err := a.Authenticate(bearer(tok))
				if err != nil || c.App == nil || c.App.Name != "billing" {
					t.Errorf("good token: %+v, %v", c, err)
					return
				}
				if _, err := a.Authenticate(bearer(bad)); !isStatus(err, 403) {
					t.Errorf("bad token: %v", err)
					return
				}
				if i%10 == 0 {
					clock.Advance(time.Second)
				}
			}
		})
	}
	wg.Wait()
	if n := a.cache.len(); n > 4 {
		t.Errorf("cache holds %d entries, bound is 4", n)
	}
}

// TestAppIDCase: GUID app ids in the config match Entra's lower-case
// claims whatever their case; other ids match exactly.
func TestAppIDCase(t *testing.T) {
	ti := newTestIssuer(t)
	id := ti.identity()
	apps := []config.App{{Name: "billing", AppIDs: []string{strings.ToUpper(appA)}}, {Name: "reporting", AppIDs: []string{"Reporting-CLI"}}}
	a, err := New(id, apps, nil, WithClock(newClock().Now), WithHTTPClient(ti.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(t.Context())
	if c, err := a.Authenticate(bearer(mint(keyA1(), ti.v2Claims()))); err != nil || c.AppName() != "billing" {
		t.Errorf("upper-case GUID in config: %+v, %v", c, err)
	}
	if _, err := a.Authenticate(bearer(mint(keyO1(), ti.oidcClaims()))); !isStatus(err, 403) {
		t.Errorf("client id differing in case was accepted: %v", err)
	}
}
