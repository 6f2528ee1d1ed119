package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

// signWith signs header.payload with a jwt signing method (HS*, RS384,
// PS256, ES256...) and any key, for the algorithm-confusion cases.
func signWith(t *testing.T, m jwt.SigningMethod, key any, hdr, payload string) string {
	t.Helper()
	input := b64([]byte(hdr)) + "." + b64([]byte(payload))
	sig, err := m.Sign(input, key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return input + "." + b64(sig)
}

// TestHostileTokens runs every token the gateway must refuse through
// Authenticate, next to positive controls that must pass, in one table.
func TestHostileTokens(t *testing.T) {
	ti := newTestIssuer(t)
	clock := newClock()
	base := newAuth(t, ti, clock, nil)
	pt := newAuth(t, ti, clock, func(id *config.Identity) {
		id.PassThrough = config.PassThrough{Enabled: true, Tenants: []string{tenantA, tenantC}, Apps: []string{appPT, appA}}
	})

	good := ti.v2Claims()
	goodJSON := good.json()
	goodTok := mint(keyA1(), good)
	h64, p64, s64 := splitTok(goodTok)
	pubDER, _ := x509.MarshalPKIXPublicKey(&keyA1().priv.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	pkcs1PEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&keyA1().priv.PublicKey)})
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, _ := base64.RawURLEncoding.DecodeString(s64)
	sig[len(sig)/2] ^= 0x01
	flipped := b64(sig)
	// A payload whose encoding ends in unused bits, for the canonical-form case.
	padded := good
	for pad := ""; len(b64([]byte(padded.json())))%4 == 0; pad += "x" {
		padded = good.with("pad", pad+"x")
	}
	ph64, pp64, ps64 := splitTok(mint(keyA1(), padded))
	hugeDots := "Bearer " + strings.Repeat(".", 100_000)
	cogAud := good.with("aud", config.CognitiveServicesAudience)

	type tc struct {
		name   string
		r      *http.Request
		pt     bool   // use the pass-through authenticator
		status int    // 200 = accepted
		code   string // expected error code
		msg    string // substring of the message
	}
	tok := func(name, token string, status int, msg string) tc {
		code := CodeInvalidToken
		if status == http.StatusForbidden {
			code = ""
		}
		return tc{name: name, r: bearer(token), status: status, code: code, msg: msg}
	}
	signed := func(c claimSet) string { return mint(keyA1(), c) }
	cases := []tc{
		// Positive controls.
		tok("good v2 token", goodTok, 200, ""),
		tok("good v1 token", mint(keyB1(), ti.v1Claims()), 200, ""),
		tok("good generic-issuer token", mint(keyO1(), ti.oidcClaims()), 200, ""),
		tok("multi-audience token with the right aud", signed(good.with("aud", []string{"api://other", audGUID, "x"})), 200, ""),
		tok("expired within leeway is accepted", signed(good.with("exp", t0.Add(-30*time.Second).Unix())), 200, ""),
		tok("nbf within leeway is accepted", signed(good.with("nbf", t0.Add(30*time.Second).Unix())), 200, ""),
		{name: "lower-case bearer scheme", r: request("bearer " + goodTok), status: 200},
		{name: "extra spaces after Bearer", r: request("Bearer   " + goodTok), status: 200},

		// Algorithm confusion.
		tok("alg none", h("none", "a1")+"."+p64+".", 401, "signing algorithm"),
		tok("alg None", h("None", "a1")+"."+p64+".", 401, "signing algorithm"),
		tok("alg NONE", h("NONE", "a1")+"."+p64+".", 401, "signing algorithm"),
		tok("alg none with signature", h("none", "a1")+"."+p64+"."+s64, 401, "signing algorithm"),
		tok("HS256 keyed with the public key PEM", signWith(t, jwt.SigningMethodHS256, pubPEM, hdr("HS256", "a1"), goodJSON), 401, "signing algorithm"),
		tok("HS384 keyed with the public key PEM", signWith(t, jwt.SigningMethodHS384, pubPEM, hdr("HS384", "a1"), goodJSON), 401, "signing algorithm"),
		tok("HS512 keyed with the public key PEM", signWith(t, jwt.SigningMethodHS512, pubPEM, hdr("HS512", "a1"), goodJSON), 401, "signing algorithm"),
		tok("HS256 keyed with the PKCS1 PEM", signWith(t, jwt.SigningMethodHS256, pkcs1PEM, hdr("HS256", "a1"), goodJSON), 401, "signing algorithm"),
		tok("HS256 keyed with the public key DER", signWith(t, jwt.SigningMethodHS256, pubDER, hdr("HS256", "a1"), goodJSON), 401, "signing algorithm"),
		tok("RS384 with the real key", signWith(t, jwt.SigningMethodRS384, keyA1().priv, hdr("RS384", "a1"), goodJSON), 401, "signing algorithm"),
		tok("PS256 with the real key", signWith(t, jwt.SigningMethodPS256, keyA1().priv, hdr("PS256", "a1"), goodJSON), 401, "signing algorithm"),
		tok("ES256", signWith(t, jwt.SigningMethodES256, ecKey, hdr("ES256", "a1"), goodJSON), 401, "signing algorithm"),
		tok("alg missing", b64([]byte(`{"kid":"a1"}`))+"."+p64+"."+s64, 401, "signing algorithm"),
		tok("alg as number", b64([]byte(`{"alg":256,"kid":"a1"}`))+"."+p64+"."+s64, 401, "malformed"),

		// Keys.
		tok("unknown kid", signRaw(testKey{kid: "zz", priv: keyEvil().priv}, hdr("RS256", "zz"), goodJSON), 401, "unknown signing key"),
		tok("no kid", signRaw(keyA1(), hdr("RS256", ""), goodJSON), 401, "no kid"),
		tok("kid as number", signRaw(keyA1(), `{"alg":"RS256","kid":7}`, goodJSON), 401, "malformed"),
		tok("key from another issuer's JWKS", signRaw(keyB1(), hdr("RS256", "b1"), goodJSON), 401, "unknown signing key"),
		tok("attacker key under a real kid", signRaw(keyEvilA(), hdr("RS256", "a1"), goodJSON), 401, "bad signature"),
		tok("embedded jwk header", signRaw(keyEvil(), hdr("RS256", "x1", `"jwk":`+mustJSON(jwk(keyEvil()))), goodJSON), 401, "unknown signing key"),
		tok("jku header to attacker", signRaw(keyEvil(), hdr("RS256", "x1", `"jku":"https://evil.example/keys"`), goodJSON), 401, "unknown signing key"),
		tok("crit header", signRaw(keyA1(), hdr("RS256", "a1", `"crit":["exp"]`), goodJSON), 401, "crit"),

		// Time.
		tok("expired beyond leeway", signed(good.with("exp", t0.Add(-2*time.Minute).Unix())), 401, "expired"),
		tok("nbf in the future", signed(good.with("nbf", t0.Add(5*time.Minute).Unix())), 401, "not yet valid"),
		tok("missing exp", signed(good.with("exp", nil)), 401, "exp claim is required"),
		tok("exp as string", signed(good.with("exp", "1900003600")), 401, "malformed"),
		tok("huge exp", signRaw(keyA1(), hdr("RS256", "a1"), strings.Replace(goodJSON, `"exp":1900003600`, `"exp":1e300`, 1)), 401, "malformed"),
		tok("exp past year 9999", signed(good.with("exp", int64(1)<<50)), 401, "malformed"),
		tok("negative exp", signed(good.with("exp", -1)), 401, "malformed"),
		tok("nbf as string", signed(good.with("nbf", "0")), 401, "malformed"),

		// Audience.
		tok("wrong aud", signed(good.with("aud", "api://other")), 401, "wrong audience"),
		tok("empty aud array", signed(good.with("aud", []string{})), 401, "wrong audience"),
		tok("aud array of wrong values", signed(good.with("aud", []string{"api://a", "api://b"})), 401, "wrong audience"),
		tok("missing aud", signed(good.with("aud", nil)), 401, "wrong audience"),
		tok("aud as object", signed(good.with("aud", map[string]string{"x": audURI})), 401, "malformed"),
		tok("aud case variant", signed(good.with("aud", strings.ToUpper(audURI))), 401, "wrong audience"),
		tok("cognitiveservices aud without pass-through", signed(cogAud), 401, "wrong audience"),
		tok("cognitiveservices aud on a generic issuer", mint(keyO1(), ti.oidcClaims().with("aud", config.CognitiveServicesAudience)), 401, "wrong audience"),

		// Issuer.
		tok("wrong iss", signed(good.with("iss", "https://evil.example/"+tenantA+"/v2.0")), 401, "issuer not accepted"),
		tok("missing iss", signed(good.with("iss", nil)), 401, "issuer not accepted"),
		tok("iss in upper case", signed(good.with("iss", strings.ToUpper(ti.v2Iss(tenantA)))), 401, "issuer not accepted"),
		tok("iss tenant in upper case", signed(good.with("iss", ti.v2Iss(strings.ToUpper(tenantA)))), 401, "issuer not accepted"),
		tok("v2 iss with trailing slash", signed(good.with("iss", ti.v2Iss(tenantA)+"/")), 401, "issuer not accepted"),
		tok("v1 iss without trailing slash", signed(ti.v1Claims().with("iss", strings.TrimSuffix(ti.v1Iss(tenantA), "/"), "tid", tenantA)), 401, "issuer not accepted"),
		tok("generic iss with trailing slash", mint(keyO1(), ti.oidcClaims().with("iss", ti.oidcIss()+"/")), 401, "issuer not accepted"),
		tok("tenant not configured", signed(good.with("iss", ti.v2Iss(tenantX), "tid", tenantX)), 401, "issuer not accepted"),
		tok("iss/tid mismatch", signed(good.with("tid", tenantB)), 401, "tid does not match"),
		tok("missing tid", signed(good.with("tid", nil)), 401, "tid claim is required"),
		tok("tid as array", signed(good.with("tid", []string{tenantA})), 401, "malformed"),

		// Entra token versions and app ids.
		tok("v1 issuer with ver 2.0", mint(keyB1(), ti.v1Claims().with("ver", "2.0")), 401, "v2.0 token"),
		tok("v1 issuer with azp only", mint(keyB1(), ti.v1Claims().with("appid", nil, "azp", appB)), 401, "appid is missing"),
		tok("v2 issuer with ver 1.0", signed(good.with("ver", "1.0")), 401, "v1.0 token"),
		tok("v2 issuer with appid only", signed(good.with("azp", nil, "appid", appA)), 401, "azp is missing"),
		tok("missing app id claim", signed(good.with("azp", nil)), 401, "azp is missing"),
		tok("generic issuer without app claim", mint(keyO1(), ti.oidcClaims().with("azp", nil)), 401, "azp is missing"),
		tok("appid as number", mint(keyB1(), ti.v1Claims().with("appid", 12)), 401, "malformed"),
		tok("app not registered", signed(good.with("azp", appUnreg)), 403, appUnreg),

		// Signature and form.
		tok("flipped signature bit", h64+"."+p64+"."+flipped, 401, "signature"),
		tok("signature stripped", h64+"."+p64+".", 401, "signature"),
		tok("payload swapped under a valid signature", h64+"."+b64([]byte(good.with("azp", appB).json()))+"."+s64, 401, "bad signature"),
		tok("truncated token", goodTok[:len(goodTok)-20], 401, ""),
		tok("two segments", h64+"."+p64, 401, "three"),
		tok("four segments", goodTok+"."+s64, 401, "three"),
		tok("one segment", p64, 401, "three"),
		tok("empty segments", "..", 401, "malformed"),
		tok("non-base64 segments", "!!!.@@@.###", 401, "base64"),
		tok("base64 with padding", padB64(h64)+"."+p64+"."+s64, 401, "base64"),
		tok("payload with padding", h64+"."+padB64(p64)+"."+s64, 401, "base64"),
		tok("std base64 alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(goodTok)+"+/", 401, ""),
		tok("non-canonical trailing bits in signature", h64+"."+p64+"."+nonCanonical(s64), 401, "malformed"),
		tok("non-canonical trailing bits in payload", ph64+"."+nonCanonical(pp64)+"."+ps64, 401, "base64"),
		tok("header not JSON", b64([]byte("not json"))+"."+p64+"."+s64, 401, "malformed"),
		tok("header JSON array", b64([]byte(`["RS256"]`))+"."+p64+"."+s64, 401, "malformed"),
		tok("duplicate alg in header", signRaw(keyA1(), `{"alg":"none","alg":"RS256","kid":"a1"}`, goodJSON), 401, "duplicate"),
		tok("payload not JSON", signRaw(keyA1(), hdr("RS256", "a1"), "not json"), 401, "malformed"),
		tok("payload JSON array", signRaw(keyA1(), hdr("RS256", "a1"), `[`+goodJSON+`]`), 401, "malformed"),
		tok("payload JSON string", signRaw(keyA1(), hdr("RS256", "a1"), `"x"`), 401, "malformed"),
		tok("payload with trailing data", signRaw(keyA1(), hdr("RS256", "a1"), goodJSON+`{}`), 401, "malformed"),
		tok("duplicate aud", signRaw(keyA1(), hdr("RS256", "a1"), `{"aud":"api://other",`+goodJSON[1:]), 401, "duplicate"),
		tok("duplicate tid", signRaw(keyA1(), hdr("RS256", "a1"), strings.Replace(goodJSON, `"tid":`, `"tid":"`+tenantB+`","tid":`, 1)), 401, "duplicate"),
		tok("duplicate via escape", signRaw(keyA1(), hdr("RS256", "a1"), `{"\u0061zp":"`+appB+`",`+goodJSON[1:]), 401, "duplicate"),
		tok("duplicate nested key", signRaw(keyA1(), hdr("RS256", "a1"), `{"x":{"a":1,"a":2},`+goodJSON[1:]), 401, "duplicate"),
		tok("deeply nested claim", signRaw(keyA1(), hdr("RS256", "a1"), `{"x":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)+`,`+goodJSON[1:]), 401, "malformed"),
		tok("token with spaces", h64+". "+p64+"."+s64, 401, ""),

		// Pass-through.
		{name: "pass-through accepted", r: bearer(signed(cogAud)), pt: true, status: 200},
		{name: "pass-through with trailing slash aud", r: bearer(signed(cogAud.with("aud", config.CognitiveServicesAudience+"/"))), pt: true, status: 200},
		{name: "pass-through tenant not allowed", r: bearer(mint(keyB1(), ti.v1Claims().with("aud", config.CognitiveServicesAudience))), pt: true, status: 403, code: CodeTenantNotAllowed, msg: tenantB},
		{name: "pass-through app not allowed", r: bearer(signed(cogAud.with("azp", appB))), pt: true, status: 403, code: CodeAppNotAllowed, msg: appB},
		{name: "pass-through-only tenant with gateway aud", r: bearer(mint(keyC1(), good.with("iss", ti.v2Iss(tenantC), "tid", tenantC))), pt: true, status: 403, code: CodeTenantNotAllowed},
		{name: "pass-through-only tenant with cognitiveservices aud", r: bearer(mint(keyC1(), cogAud.with("iss", ti.v2Iss(tenantC), "tid", tenantC, "azp", appPT))), pt: true, status: 200},

		// Header forms and api keys.
		{name: "Basic scheme", r: request("Basic dXNlcjpwYXNz"), status: 401, code: CodeUnauthorized, msg: "Bearer <token>"},
		{name: "Bearer with no token", r: request("Bearer"), status: 401, code: CodeUnauthorized, msg: "no token"},
		{name: "Bearer with only spaces", r: request("Bearer    "), status: 401, code: CodeUnauthorized, msg: "no token"},
		{name: "Bearerx scheme", r: request("Bearerx " + goodTok), status: 401, code: CodeUnauthorized},
		{name: "no credentials", r: request(""), status: 401, code: CodeUnauthorized, msg: "az account get-access-token --resource " + audURI},
		{name: "100k dots", r: request(hugeDots), status: 401, code: CodeInvalidToken, msg: "longer than"},
		{name: "64 KiB Authorization header", r: request("Bearer " + strings.Repeat("A", 64<<10)), status: 401, code: CodeInvalidToken, msg: "longer than"},
		{name: "two Authorization headers", r: withHeader(bearer(goodTok), "Authorization", "Bearer "+goodTok), status: 401, code: CodeUnauthorized, msg: "one Authorization"},
		{name: "api-key header", r: withHeader(request(""), "api-key", "0123456789abcdef0123456789abcdef"), status: 401, code: CodeAPIKeyNotAccepted, msg: "az account get-access-token --resource " + audURI},
		{name: "api-key header next to a good token", r: withHeader(bearer(goodTok), "api-key", "0123456789abcdef"), status: 401, code: CodeAPIKeyNotAccepted},
		{name: "Ocp-Apim-Subscription-Key", r: withHeader(request(""), "Ocp-Apim-Subscription-Key", "0123456789abcdef"), status: 401, code: CodeAPIKeyNotAccepted, msg: "not accepted"},
		{name: "api-key query", r: withQuery(request(""), "api-key=0123456789abcdef"), status: 401, code: CodeAPIKeyNotAccepted, msg: "not accepted"},
		{name: "subscription-key query", r: withQuery(request(""), "subscription-key=0123456789abcdef"), status: 401, code: CodeAPIKeyNotAccepted},
		{name: "escaped api-key query", r: withQuery(request(""), "api%2Dkey=0123456789abcdef"), status: 401, code: CodeAPIKeyNotAccepted},
	}
	if n := len(cases); n < 60 {
		t.Fatalf("battery has %d cases", n)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := base
			if c.pt {
				a = pt
			}
			authz := c.r.Header.Get("Authorization")
			caller, err := a.Authenticate(c.r)
			if c.status == 200 {
				if err != nil {
					t.Fatalf("refused a good credential: %v", err)
				}
				if caller == nil || caller.App == nil {
					t.Fatalf("caller = %+v", caller)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %+v", caller)
			}
			var oe *openai.Error
			if !errors.As(err, &oe) {
				t.Fatalf("error %T is not *openai.Error: %v", err, err)
			}
			t.Logf("%d %s: %s", oe.Status, oe.Code, oe.Message)
			if oe.Status != c.status {
				t.Errorf("status = %d, want %d (%s)", oe.Status, c.status, oe.Message)
			}
			if c.code != "" && oe.Code != c.code {
				t.Errorf("code = %q, want %q", oe.Code, c.code)
			}
			if !strings.Contains(oe.Message, c.msg) {
				t.Errorf("message %q does not contain %q", oe.Message, c.msg)
			}
			if oe.Status == 401 {
				want := "Bearer"
				if oe.Code == CodeInvalidToken {
					want = `Bearer error="invalid_token"`
				}
				if got := oe.Header.Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate = %q, want %q", got, want)
				}
			}
			// Neither the message nor the logged cause may echo the token.
			parts := strings.Split(strings.TrimPrefix(strings.TrimPrefix(authz, "Bearer "), "bearer "), ".")
			if containsAny(oe.Message, parts...) || containsAny(oe.Error(), parts...) {
				t.Errorf("error echoes the token: %v", oe)
			}
			if len(oe.Message) > 600 {
				t.Errorf("message is %d bytes long", len(oe.Message))
			}
		})
	}
}

func splitTok(tok string) (h, p, s string) {
	parts := strings.Split(tok, ".")
	return parts[0], parts[1], parts[2]
}

// h is a base64url header with alg and kid.
func h(alg, kid string) string { return b64([]byte(hdr(alg, kid))) }

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// padB64 re-encodes a raw base64url segment with '=' padding.
func padB64(s string) string {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	p := base64.URLEncoding.EncodeToString(b)
	if p == s {
		return s + "===="
	}
	return p
}

// nonCanonical changes the unused trailing bits of the last character, so
// that a lax decoder yields the same bytes from a different string.
func nonCanonical(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(s)%4 == 0 {
		panic("segment has no trailing bits: " + s[len(s)-4:])
	}
	i := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[i^1]) // the lowest bit is never used
}

func withHeader(r *http.Request, k, v string) *http.Request {
	r.Header.Add(k, v)
	return r
}

func withQuery(r *http.Request, q string) *http.Request {
	r.URL.RawQuery += "&" + q
	return r
}

// TestAppIDsCountOnlyFromTheirIssuer: a generic issuer's admin can mint a
// token whose app claim equals an Entra app's id; it must not become that
// app.
func TestAppIDsCountOnlyFromTheirIssuer(t *testing.T) {
	ti := newTestIssuer(t)
	a := newAuth(t, ti, newClock(), nil)
	if _, err := a.Authenticate(bearer(mint(keyO1(), ti.oidcClaims()))); err != nil {
		t.Fatalf("control: the generic issuer's own app was refused: %v", err)
	}
	forged := ti.oidcClaims().with("azp", appA) // appA is registered as an Entra app
	c, err := a.Authenticate(bearer(mint(keyO1(), forged)))
	if err == nil {
		t.Fatalf("a generic issuer's token became Entra app %s", c.AppName())
	}
}
