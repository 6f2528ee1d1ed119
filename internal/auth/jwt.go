package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

// segment decodes JWT segments exactly as the parser (WithStrictDecoding)
// does: unpadded base64url with zero trailing bits, so each token has one
// spelling and sha256(raw) identifies it.
var segment = base64.RawURLEncoding.Strict()

// maxDisplayName bounds Caller.DisplayName (display only).
const maxDisplayName = 256

// newParser builds the parser for one issuer. The token's alg header never
// chooses the algorithm: only RS256 is valid.
func newParser(iss string, leeway time.Duration, now func() time.Time) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256"}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
		jwt.WithIssuer(iss),
		jwt.WithTimeFunc(now),
		jwt.WithStrictDecoding(),
	)
}

// stringBytes views s as bytes without copying, for read-only use (here:
// hashing the token on every request without allocating its size again).
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s)) //nolint:gosec // G103: read-only view, never written or retained
}

// verifyBearer authenticates a raw bearer token, from the cache when it was
// verified recently.
func (a *Authenticator) verifyBearer(ctx context.Context, raw string) (*Caller, error) {
	key := sha256.Sum256(stringBytes(raw))
	now := a.now()
	if c := a.cache.get(&key, now); c != nil {
		return c, nil
	}
	c, err := a.verifyToken(ctx, raw)
	if err != nil {
		return nil, err
	}
	until := c.ExpiresAt
	if lim := now.Add(maxCacheTTL); lim.Before(until) {
		until = lim
	}
	a.cache.put(&key, c, until, now)
	return c, nil
}

// verifyToken checks a token's form, picks its issuer by the unverified
// iss, verifies it with that issuer's keys only, then applies the
// audience, Entra and app-registry rules.
func (a *Authenticator) verifyToken(ctx context.Context, raw string) (*Caller, error) {
	if strings.Count(raw, ".") != 2 {
		return nil, invalidToken("malformed token: a JWT has three dot-separated parts", errMalformed)
	}
	h64, rest, _ := strings.Cut(raw, ".")
	p64, _, _ := strings.Cut(rest, ".")
	hb, err := segment.DecodeString(h64)
	if err != nil {
		return nil, invalidToken("malformed token: the header is not base64url", errMalformed)
	}
	hdr, err := parseHeader(hb)
	if err != nil {
		return nil, invalidToken("malformed token: the header is not a valid JSON object ("+err.Error()+")", fmt.Errorf("%w: %w", errMalformed, err))
	}
	if hdr.alg != "RS256" {
		return nil, invalidToken("signing algorithm not accepted: tokens must be signed with RS256", errAlgorithm)
	}
	if hdr.crit {
		return nil, invalidToken("malformed token: critical header extensions (crit) are not supported", errMalformed)
	}
	if hdr.kid == "" {
		return nil, invalidToken("unknown signing key: the token header has no kid", errNoKID)
	}
	pb, err := segment.DecodeString(p64)
	if err != nil {
		return nil, invalidToken("malformed token: the payload is not base64url", errMalformed)
	}
	c, err := parseClaims(pb, a.appClaims)
	if err != nil {
		return nil, invalidToken("malformed token: the payload is not a valid claims object ("+err.Error()+")",
			fmt.Errorf("%w: %w", errMalformed, err))
	}
	is := a.issuers[c.iss]
	if is == nil {
		return nil, invalidToken("issuer not accepted: the token's iss is not one of the gateway's issuers; "+a.howTo, errIssuer)
	}

	_, err = is.parser.ParseWithClaims(raw, &jwtClaims{c}, func(*jwt.Token) (any, error) {
		a.keyLookups.Add(1)
		return is.signingKey(ctx, hdr.kid)
	})
	if err != nil {
		return nil, jwtError(err, hdr.kid)
	}
	return a.caller(raw, c, is)
}

// jwtError turns a jwt parse/verify error into the client's 401.
func jwtError(err error, kid string) *openai.Error {
	var msg string
	switch {
	case errors.Is(err, errUnknownKey):
		msg = "unknown signing key: kid " + safeID(kid) + " is not among the issuer's published keys; get a new token"
	case errors.Is(err, errKeyType):
		msg = "unknown signing key: kid " + safeID(kid) + " is not an RS256 signature key"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		msg = "bad signature: the token was not signed by its issuer's key"
	case errors.Is(err, jwt.ErrTokenExpired):
		msg = "token expired: get a new token"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		msg = "token not yet valid (nbf is in the future): check the client's clock"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		msg = "malformed token: the exp claim is required"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		msg = "issuer not accepted"
	case errors.Is(err, jwt.ErrTokenMalformed):
		msg = "malformed token"
	default:
		msg = "the token could not be verified"
	}
	return invalidToken(msg, err)
}

// caller applies the checks that need a verified token and builds the
// Caller.
func (a *Authenticator) caller(raw string, c *claims, is *issuer) (*Caller, error) {
	passThrough := false
	switch {
	case a.audienceAccepted(c.aud):
	case a.cfg.PassThrough.Enabled && is.kind != generic && isCognitiveServices(c.aud):
		passThrough = true
	default:
		return nil, invalidToken("wrong audience: the token was issued for another resource; request a token for "+a.audience, errAudience)
	}

	var appID string
	method := MethodEntra
	switch is.kind {
	case entraV1:
		if c.ver == "2.0" {
			return nil, invalidToken("malformed token: a v2.0 token (ver 2.0) cannot carry a v1 (sts.windows.net) issuer", errClaims)
		}
		appID = c.appid
	case entraV2:
		if c.ver == "1.0" {
			return nil, invalidToken("malformed token: a v1.0 token (ver 1.0) cannot carry a v2.0 issuer", errClaims)
		}
		appID = c.azp
	case generic:
		method = MethodOIDC
		appID = c.get(is.appClaim)
	}
	if is.kind != generic {
		if c.tid == "" {
			return nil, invalidToken("malformed token: the tid claim is required", errClaims)
		}
		if c.tid != is.tenant {
			return nil, invalidToken("malformed token: tid does not match the tenant of the issuer", errClaims)
		}
	}
	if appID == "" {
		name := map[issuerKind]string{entraV1: "appid", entraV2: "azp", generic: is.appClaim}[is.kind]
		return nil, invalidToken("malformed token: the app id claim "+safeID(name)+" is missing", errClaims)
	}

	if passThrough {
		if !a.passTenants[c.tid] {
			return nil, forbidden(CodeTenantNotAllowed, "tenant "+safeID(c.tid)+" may not use Azure OpenAI-audience tokens here (identity.pass_through.tenants)", errPassThrough)
		}
		if !a.passApps[normID(appID)] {
			return nil, forbidden(CodeAppNotAllowed, "app "+safeID(appID)+" may not use Azure OpenAI-audience tokens here: add it to identity.pass_through.apps, or request a token for "+a.audience, errPassThrough)
		}
	} else if is.passThroughOnly {
		return nil, forbidden(CodeTenantNotAllowed, "tenant "+safeID(c.tid)+" is accepted only for Azure OpenAI-audience pass-through tokens; add it to identity.entra.tenants", errIssuer)
	}

	issuerName := ""
	if is.kind == generic {
		issuerName = is.name
	}
	app := a.appsByID[appKey(issuerName, appID)]
	if app == nil && a.cfg.UnknownApps != "allow" {
		return nil, forbidden(CodeAppNotRegistered, "app "+safeID(appID)+" is not registered with this gateway: add it to an app's app_ids under apps in the gateway config", errUnknownApp)
	}

	caller := &Caller{
		Method:      method,
		Issuer:      c.iss,
		IssuerName:  issuerName,
		TenantID:    c.tid,
		AppID:       appID,
		ObjectID:    c.oid,
		Roles:       c.roles,
		Groups:      c.groups,
		Scopes:      strings.Fields(c.scp),
		DisplayName: displayName(c),
		App:         app,
		PassThrough: passThrough,
		ExpiresAt:   c.exp,
	}
	if passThrough {
		caller.Token = raw
	}
	return caller, nil
}

func (a *Authenticator) audienceAccepted(aud []string) bool {
	for _, x := range aud {
		for _, y := range a.cfg.Audiences {
			if x == y {
				return true
			}
		}
	}
	return false
}

func isCognitiveServices(aud []string) bool {
	for _, x := range aud {
		if x == config.CognitiveServicesAudience || x == config.CognitiveServicesAudience+"/" {
			return true
		}
	}
	return false
}

// appKey keys the app registry: an app id counts only from its own issuer
// ("" for Entra ID, else the generic issuer's name).
func appKey(issuerName, appID string) string {
	return issuerName + "\x00" + normID(appID)
}

// normID lower-cases GUID-shaped ids: Entra issues them in lower case but
// a config may carry them as the portal or a script spelled them. Other ids
// (generic issuers' client ids) are compared exactly.
func normID(s string) string {
	if len(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' {
		return strings.ToLower(s)
	}
	return s
}

// displayName picks upn, preferred_username or name, bounded in length.
func displayName(c *claims) string {
	s := c.upn
	if s == "" {
		s = c.preferredUsername
	}
	if s == "" {
		s = c.name
	}
	if len(s) > maxDisplayName {
		s = s[:maxDisplayName]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}
