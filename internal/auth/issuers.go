package auth

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/tokengate/tokengate/internal/config"
)

// fetchTimeout bounds OIDC discovery, each JWKS fetch, and how long a
// request with an unknown kid may wait for the refresh it triggers.
const fetchTimeout = 10 * time.Second

// maxDiscoveryBytes bounds the discovery document we read.
const maxDiscoveryBytes = 1 << 20

type issuerKind int

const (
	entraV1 issuerKind = iota + 1 // {v1_issuer_host}/{tid}/, app id in appid
	entraV2                       // {authority_host}/{tid}/v2.0, app id in azp
	generic                       // identity.issuers[i], app id in app_claim
)

// issuer is one accepted "iss" value and the only key set that may verify
// its tokens.
type issuer struct {
	iss      string
	name     string // for logs
	kind     issuerKind
	tenant   string // Entra tenant id (lower case)
	appClaim string // generic issuers
	// passThroughOnly marks an Entra tenant listed only under
	// pass_through.tenants: its tokens are accepted only with Azure
	// OpenAI's audience.
	passThroughOnly bool
	jwksURL         string
	keys            jwkset.Storage
	parser          *jwt.Parser
}

// issuerSpec is an issuer before its key set exists.
type issuerSpec struct {
	issuer
	discover bool // jwks_url is empty: read jwks_uri from discovery
}

// issuerSpecs lists every accepted issuer from the identity config.
func issuerSpecs(cfg config.Identity) []*issuerSpec {
	var out []*issuerSpec
	if e := cfg.Entra; e != nil {
		authority := strings.TrimSuffix(orDefault(e.AuthorityHost, "https://login.microsoftonline.com"), "/")
		v1 := strings.TrimSuffix(orDefault(e.V1IssuerHost, "https://sts.windows.net"), "/")
		type tenant struct {
			id          string
			passThrough bool
		}
		var tenants []tenant
		seen := map[string]bool{}
		for _, t := range e.Tenants {
			t = strings.ToLower(t)
			if !seen[t] {
				seen[t] = true
				tenants = append(tenants, tenant{t, false})
			}
		}
		if cfg.PassThrough.Enabled {
			for _, t := range cfg.PassThrough.Tenants {
				t = strings.ToLower(t)
				if !seen[t] {
					seen[t] = true
					tenants = append(tenants, tenant{t, true})
				}
			}
		}
		for _, t := range tenants {
			jwks := authority + "/" + t.id + "/discovery/v2.0/keys"
			out = append(out,
				&issuerSpec{issuer: issuer{iss: v1 + "/" + t.id + "/", name: "entra-v1/" + t.id, kind: entraV1,
					tenant: t.id, passThroughOnly: t.passThrough, jwksURL: jwks}},
				&issuerSpec{issuer: issuer{iss: authority + "/" + t.id + "/v2.0", name: "entra-v2/" + t.id, kind: entraV2,
					tenant: t.id, passThroughOnly: t.passThrough, jwksURL: jwks}})
		}
	}
	for _, is := range cfg.Issuers {
		out = append(out, &issuerSpec{
			issuer:   issuer{iss: is.Issuer, name: is.Name, kind: generic, appClaim: orDefault(is.AppClaim, "azp"), jwksURL: is.JWKSURL},
			discover: is.JWKSURL == "",
		})
	}
	return out
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// discoverJWKS reads jwks_uri from the issuer's OIDC discovery document.
func discoverJWKS(ctx context.Context, client *http.Client, iss string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	u := strings.TrimSuffix(iss, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxDiscoveryBytes)).Decode(&doc); err != nil {
		return "", fmt.Errorf("GET %s: %w", u, err)
	}
	if doc.Issuer != iss {
		return "", fmt.Errorf("GET %s: the document names issuer %q, not %q", u, doc.Issuer, iss)
	}
	ju, err := url.Parse(doc.JWKSURI)
	if err != nil || ju.Host == "" || !(ju.Scheme == "https" || ju.Scheme == "http" && strings.HasPrefix(iss, "http://")) {
		return "", fmt.Errorf("GET %s: jwks_uri %q is not an https URL", u, doc.JWKSURI)
	}
	return doc.JWKSURI, nil
}

// keySets creates one refreshing key set per distinct JWKS URL. The first
// fetch of each happens here, in parallel; a failed first fetch is logged,
// not returned: tokens fail until the keys arrive.
func keySets(ctx context.Context, urls []string, id config.Identity, client *http.Client, log *slog.Logger) (map[string]jwkset.Storage, error) {
	refresh := id.JWKSRefresh
	if refresh <= 0 {
		refresh = time.Hour
	}
	cooldown := id.UnknownKIDCooldown
	if cooldown <= 0 {
		cooldown = 5 * time.Minute
	}
	noErrFirst := true
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		out  = make(map[string]jwkset.Storage, len(urls))
		errs []error
	)
	for _, u := range urls {
		wg.Go(func() {
			kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{u}, keyfunc.Override{
				Client:                    client,
				HTTPTimeout:               fetchTimeout,
				NoErrorReturnFirstHTTPReq: &noErrFirst,
				// The wait for the unknown-kid limiter and the refresh it
				// allows share this bound: with a cooldown longer than it,
				// a flood of unknown kids is refused at once, not queued.
				RateLimitWaitMax:  fetchTimeout,
				RefreshInterval:   refresh,
				RefreshUnknownKID: rate.NewLimiter(rate.Every(cooldown), 1),
				RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
					return func(ctx context.Context, err error) {
						if ctx.Err() != nil && errors.Is(err, context.Canceled) {
							return // closing
						}
						log.Warn("auth: JWKS fetch failed; keeping the keys already known",
							slog.String("jwks_url", u), slog.String("error", err.Error()))
					}
				},
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("jwks %s: %w", u, err))
				return
			}
			out[u] = kf.Storage()
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// signingKey returns the RSA key with id kid from the issuer's key set,
// refreshing it (rate-limited) when the kid is unknown. Keys published for
// encryption, or for another algorithm, are refused.
func (is *issuer) signingKey(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	jwk, err := is.keys.KeyRead(ctx, kid)
	if err != nil {
		return nil, fmt.Errorf("%w (kid %s, issuer %s)", errUnknownKey, safeID(kid), is.name)
	}
	m := jwk.Marshal()
	if (m.USE != "" && m.USE != jwkset.UseSig) || (m.ALG != "" && m.ALG != jwkset.AlgRS256) {
		return nil, fmt.Errorf("%w (kid %s)", errKeyType, safeID(kid))
	}
	switch k := jwk.Key().(type) {
	case *rsa.PublicKey:
		return k, nil
	case *rsa.PrivateKey:
		return &k.PublicKey, nil
	}
	return nil, fmt.Errorf("%w (kid %s)", errKeyType, safeID(kid))
}
