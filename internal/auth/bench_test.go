package auth

import (
	"net/http"
	"path/filepath"
	"testing"

	"github.com/tokengate/tokengate/internal/config"
)

// BenchmarkAuthenticate measures the request path: a cached token (the
// common case), an uncached one (full RS256 verification), a gateway key,
// and an api-key refusal.
func BenchmarkAuthenticate(b *testing.B) {
	ti := newTestIssuer(b)
	tok := mint(keyA1(), ti.v2Claims())
	keys := filepath.Join(b.TempDir(), "keys.json")
	key, err := CreateKey(keys, "billing", t0)
	if err != nil {
		b.Fatal(err)
	}
	withKeys := func(id *config.Identity) { id.GatewayKeys = config.GatewayKeys{Enabled: true, File: keys} }

	run := func(b *testing.B, a *Authenticator, r *http.Request, wantErr bool) {
		b.ReportAllocs()
		for b.Loop() {
			_, err := a.Authenticate(r)
			if (err != nil) != wantErr {
				b.Fatal(err)
			}
		}
	}
	b.Run("cached", func(b *testing.B) {
		run(b, newAuth(b, ti, newClock(), nil), bearer(tok), false)
	})
	b.Run("uncached", func(b *testing.B) {
		run(b, newAuth(b, ti, newClock(), func(id *config.Identity) { id.TokenCacheSize = 0 }), bearer(tok), false)
	})
	b.Run("gateway-key", func(b *testing.B) {
		run(b, newAuth(b, ti, newClock(), withKeys), keyRequest(key), false)
	})
	b.Run("api-key-refused", func(b *testing.B) {
		run(b, newAuth(b, ti, newClock(), nil), keyRequest("0123456789abcdef"), true)
	})
}

// BenchmarkParseClaims measures the claim parser on a typical Entra payload.
func BenchmarkParseClaims(b *testing.B) {
	payload := []byte(claimSet{
		"iss": "https://login.microsoftonline.com/" + tenantA + "/v2.0", "aud": audURI, "tid": tenantA, "azp": appA,
		"ver": "2.0", "oid": "11111111-aaaa-4aaa-8aaa-111111111111", "roles": []string{"Chat.Use"},
		"iat": t0.Unix(), "nbf": t0.Unix(), "exp": t0.Unix() + 3600, "uti": "AbCdEf", "rh": "0.AAAA",
		"xms_ftd": "x", "idp": "https://sts.windows.net/" + tenantA + "/",
	}.json())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseClaims(payload, nil); err != nil {
			b.Fatal(err)
		}
	}
}
