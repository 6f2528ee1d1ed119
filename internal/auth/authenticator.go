package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// MaxAuthorizationLen is the longest Authorization header read. Entra
// tokens are 1-3 KB; anything past 8 KiB is refused before parsing.
const MaxAuthorizationLen = 8 << 10

// Authenticator turns a request's credentials into a Caller. Build it once
// per config with New; Authenticate is safe for concurrent use. Close stops
// the background JWKS refreshes.
type Authenticator struct {
	cfg       config.Identity
	log       *slog.Logger
	now       func() time.Time
	anonymous *Caller

	issuers     map[string]*issuer     // by exact iss
	appClaims   []string               // generic issuers' app claims
	appsByID    map[string]*config.App // app id -> app
	passTenants map[string]bool
	passApps    map[string]bool
	cache       *tokenCache  // nil: disabled
	keys        *keyStore    // nil: gateway keys disabled
	audience    string       // the audience named in messages
	howTo       string       // how to authenticate, for messages
	apiKeyMsg   string       // why an api-key was refused
	keyLookups  atomic.Int64 // signing-key lookups (one per uncached verification)
	cancel      context.CancelFunc
	closeOnce   sync.Once
}

// Option customizes New.
type Option func(*options)

type options struct {
	client *http.Client
	now    func() time.Time
}

// WithHTTPClient sets the client for OIDC discovery and JWKS fetches.
// Default: a client with a 30 s timeout and the default transport.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithClock sets the clock for token validity, the token cache and key
// store reloads. Default time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// New builds an Authenticator for the identity config and registered apps.
// It reads generic issuers' OIDC discovery documents (an error names the
// issuer) and makes the first JWKS fetch of every issuer; a JWKS endpoint
// that is down does not fail New: its tokens fail until its keys arrive.
// cfg is expected to have passed config validation.
func New(cfg config.Identity, apps []config.App, logger *slog.Logger, opts ...Option) (*Authenticator, error) {
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.client == nil {
		o.client = &http.Client{Timeout: 30 * time.Second}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{cfg: cfg, log: logger, now: o.now, cancel: func() {}}
	if cfg.Anonymous {
		app := &config.App{Name: config.AnonymousApp}
		if i := slices.IndexFunc(apps, func(x config.App) bool { return x.Name == config.AnonymousApp }); i >= 0 {
			app = &apps[i] // its team, limits and capture apply
		}
		a.anonymous = &Caller{Method: MethodAnonymous, App: app}
		return a, nil
	}

	registered := slices.Clone(apps)
	a.appsByID = map[string]*config.App{}
	byName := map[string]*config.App{}
	for i := range registered {
		app := &registered[i]
		byName[app.Name] = app
		for _, id := range app.AppIDs {
			a.appsByID[appKey(app.Issuer, id)] = app
		}
	}
	if pt := cfg.PassThrough; pt.Enabled {
		a.passTenants, a.passApps = map[string]bool{}, map[string]bool{}
		for _, t := range pt.Tenants {
			a.passTenants[strings.ToLower(t)] = true
		}
		for _, id := range pt.Apps {
			a.passApps[normID(id)] = true
		}
	}
	a.audience = preferredAudience(cfg.Audiences)
	a.howTo = howTo(cfg, a.audience)
	a.apiKeyMsg = "API keys are not accepted by this gateway. To authenticate, " + a.howTo
	if cfg.GatewayKeys.Enabled {
		a.apiKeyMsg = "Azure API keys, subscription keys and keys in the query string are not accepted by this gateway. To authenticate, " + a.howTo
	}
	a.cache = newTokenCache(cfg.TokenCacheSize)

	if err := a.startIssuers(o.client); err != nil {
		a.cancel()
		return nil, err
	}
	if cfg.GatewayKeys.Enabled {
		ks, err := newKeyStore(cfg.GatewayKeys.File, byName, logger, o.now)
		if err != nil {
			a.cancel()
			return nil, fmt.Errorf("identity.gateway_keys.file: %w", err)
		}
		a.keys = ks
	}
	return a, nil
}

// startIssuers discovers JWKS URLs, starts one refreshing key set per URL
// and builds the issuer table.
func (a *Authenticator) startIssuers(client *http.Client) error {
	specs := issuerSpecs(a.cfg)
	a.issuers = make(map[string]*issuer, len(specs))
	if len(specs) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, s := range specs {
		if !s.discover {
			continue
		}
		wg.Go(func() {
			u, err := discoverJWKS(ctx, client, s.iss)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("identity.issuers %q (%s): OIDC discovery failed; set jwks_url or fix the issuer: %w", s.name, s.iss, err))
				return
			}
			s.jwksURL = u
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	var urls []string
	for _, s := range specs {
		if !slices.Contains(urls, s.jwksURL) {
			urls = append(urls, s.jwksURL)
		}
		if s.kind == generic && !slices.Contains(a.appClaims, s.appClaim) {
			a.appClaims = append(a.appClaims, s.appClaim)
		}
	}
	sets, err := keySets(ctx, urls, a.cfg, client, a.log)
	if err != nil {
		return err
	}
	for _, s := range specs {
		is := s.issuer
		is.keys = sets[is.jwksURL]
		is.parser = newParser(is.iss, a.cfg.Leeway, a.now)
		a.issuers[is.iss] = &is
	}
	return nil
}

// Close stops the JWKS refresh goroutines (they exit on their own once
// their context is cancelled; a fetch in flight is aborted). It is safe to
// call more than once; Authenticate keeps working with the keys it has.
func (a *Authenticator) Close(context.Context) error {
	a.closeOnce.Do(a.cancel)
	return nil
}

// Authenticate identifies the caller of r. Every error is an
// *openai.Error: 401 (with WWW-Authenticate: Bearer) for missing or
// invalid credentials, 403 for a valid caller that is refused. The
// returned Caller is shared and must not be modified.
func (a *Authenticator) Authenticate(r *http.Request) (*Caller, error) {
	if a.anonymous != nil {
		return a.anonymous, nil
	}
	if c, err, done := a.apiKey(r); done {
		return c, err
	}
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return nil, unauthorized(CodeUnauthorized, "no credentials: "+a.howTo, false, errNoCredential)
	}
	if len(values) > 1 {
		return nil, unauthorized(CodeUnauthorized, "send one Authorization header, not several", false, errNoCredential)
	}
	v := values[0]
	if len(v) > MaxAuthorizationLen {
		return nil, unauthorized(CodeInvalidToken, fmt.Sprintf("the Authorization header is longer than %d bytes", MaxAuthorizationLen), true, errMalformed)
	}
	token, ok := bearerToken(v)
	if !ok {
		return nil, unauthorized(CodeUnauthorized, "the Authorization header must be \"Bearer <token>\": "+a.howTo, false, errNoCredential)
	}
	if token == "" {
		return nil, unauthorized(CodeUnauthorized, "the Authorization header has no token after Bearer: "+a.howTo, false, errNoCredential)
	}
	if len(a.issuers) == 0 {
		return nil, unauthorized(CodeInvalidToken, "bearer tokens are not accepted by this gateway: "+a.howTo, true, errIssuer)
	}
	return a.verifyBearer(r.Context(), token)
}

// apiKey handles requests that carry an api-key or subscription key. done
// is false when there is none.
func (a *Authenticator) apiKey(r *http.Request) (c *Caller, err error, done bool) {
	// Canonical header names: Get then needs no allocation to canonicalize.
	key := r.Header.Get("Api-Key")
	if r.Header.Get("Ocp-Apim-Subscription-Key") != "" || (r.URL != nil && queryHasKey(r.URL.RawQuery)) {
		return nil, unauthorized(CodeAPIKeyNotAccepted, a.apiKeyMsg, false, errAPIKey), true
	}
	if key == "" {
		return nil, nil, false
	}
	if a.keys == nil {
		return nil, unauthorized(CodeAPIKeyNotAccepted, a.apiKeyMsg, false, errAPIKey), true
	}
	if _, ok := parseKey(key); !ok {
		return nil, unauthorized(CodeAPIKeyNotAccepted, "the api-key is not a tokengate gateway key (tgk_...); "+a.apiKeyMsg, false, errAPIKey), true
	}
	c, err = a.keys.lookup(key)
	return c, err, true
}

// queryHasKey reports whether the raw query has a non-empty api-key or
// subscription-key parameter. It does not allocate for ordinary queries.
func queryHasKey(q string) bool {
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		name, value, _ := strings.Cut(kv, "=")
		if value == "" {
			continue
		}
		if strings.ContainsAny(name, "%+") {
			if u, err := url.QueryUnescape(name); err == nil {
				name = u
			}
		}
		if strings.EqualFold(name, "api-key") || strings.EqualFold(name, "subscription-key") {
			return true
		}
	}
	return false
}

// bearerToken returns the token of "Bearer <token>" (scheme
// case-insensitive); ok is false for another scheme.
func bearerToken(v string) (token string, ok bool) {
	const scheme = "Bearer"
	if len(v) < len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	rest := v[len(scheme):]
	if rest != "" && rest[0] != ' ' {
		return "", false // e.g. "Bearerx"
	}
	return strings.Trim(rest, " "), true
}

// preferredAudience picks the audience to name in messages: an api:// URI
// reads better than a GUID.
func preferredAudience(auds []string) string {
	for _, a := range auds {
		if strings.HasPrefix(a, "api://") {
			return a
		}
	}
	if len(auds) > 0 {
		return auds[0]
	}
	return "the gateway's app id"
}

// howTo says how to authenticate with this config.
func howTo(cfg config.Identity, aud string) string {
	var ways []string
	switch {
	case cfg.Entra != nil:
		ways = append(ways, fmt.Sprintf("send \"Authorization: Bearer <token>\" with a Microsoft Entra ID token for %s (for example from: az account get-access-token --resource %s)", aud, aud))
	case len(cfg.Issuers) > 0:
		ways = append(ways, fmt.Sprintf("send \"Authorization: Bearer <token>\" with an access token for audience %s from one of the gateway's issuers", aud))
	}
	if cfg.GatewayKeys.Enabled {
		ways = append(ways, "send a tokengate gateway key (tgk_...) in the api-key header")
	}
	if len(ways) == 0 {
		return "no authentication method is configured"
	}
	return strings.Join(ways, ", or ")
}
