package auth

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/openai"
)

// FuzzAuthenticate sends arbitrary Authorization header values through
// Authenticate: it must never panic, never answer other than 401/403, and
// never accept anything but the valid seed tokens.
func FuzzAuthenticate(f *testing.F) {
	ti := newTestIssuer(f)
	a := newAuth(f, ti, newClock(), nil)
	valid := []string{
		mint(keyA1(), ti.v2Claims()),
		mint(keyB1(), ti.v1Claims()),
		mint(keyO1(), ti.oidcClaims()),
	}
	for _, tok := range valid {
		f.Add("Bearer " + tok)
		h, p, s := splitTok(tok)
		f.Add("Bearer " + h + "." + p + ".")
		f.Add("bearer " + h + "." + p + "." + s + "." + s)
	}
	good := ti.v2Claims()
	for _, seed := range []string{
		"", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer a.b.c", "Bearer ..", strings.Repeat(".", 100),
		"Bearer " + h("none", "a1") + "." + b64([]byte(good.json())) + ".",
		"Bearer " + signRaw(keyA1(), hdr("RS256", "a1"), `{"aud":"x",`+good.json()[1:]),
		"Bearer " + signRaw(keyA1(), hdr("RS256", "a1"), good.with("exp", "1900003600").json()),
		"Bearer " + mint(keyA1(), good.with("exp", t0.Add(-time.Hour).Unix())),
		"Bearer " + mint(keyB1(), good),
		"Bearer " + mint(keyEvilA(), good),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r, _ := http.NewRequest(http.MethodGet, "http://gw.test/openai/models", nil)
		r.Header["Authorization"] = []string{v}
		c, err := a.Authenticate(r)
		if err != nil {
			var oe *openai.Error
			if !errors.As(err, &oe) || (oe.Status != 401 && oe.Status != 403) {
				t.Fatalf("Authenticate(%q) error %v", v, err)
			}
			return
		}
		if c == nil {
			t.Fatal("nil caller without error")
		}
		if len(v) < 6 || !strings.EqualFold(v[:6], "bearer") {
			t.Fatalf("accepted a non-Bearer credential %q", v)
		}
		tok := strings.Trim(v[6:], " ")
		for _, ok := range valid {
			if tok == ok {
				return
			}
		}
		t.Fatalf("accepted a token that is not a valid seed: %q", v)
	})
}

// FuzzClaims sends arbitrary payload bytes through the claim parser and the
// header parser: no panic, and whatever they accept is a duplicate-free
// JSON object whose values encoding/json reads the same way.
func FuzzClaims(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, `null`, `{"exp":1}`, `{"exp":"1"}`, `{"exp":1e300}`, `{"exp":-1}`,
		`{"aud":"a","aud":"b"}`, `{"aud":["a","b"],"tid":"t","azp":"x","roles":["r"],"scp":"a b"}`,
		`{"x":{"y":{"z":[1,2,{"a":1,"a":2}]}}}`, `{"\u0061ud":1,"aud":2}`, `{"client_id":"c","upn":{"x":1}}`,
		`{"iss":"https://login.microsoftonline.com/t/v2.0","exp":1900003600,"nbf":1899999940.5}`,
		`{"alg":"RS256","kid":"a1","typ":"JWT"}`, `{"alg":"none","alg":"RS256"}`, `{"crit":["b64"]}`,
		`{} {}`, `{"a":1}x`, "{\"a\":\"\xff\xfe\"}",
	} {
		f.Add([]byte(seed))
	}
	want := []string{"client_id", "upn"}
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, err := parseClaims(payload, want)
		if err == nil {
			var m map[string]any
			if uerr := json.Unmarshal(payload, &m); uerr != nil {
				t.Fatalf("parseClaims accepted %q, encoding/json refuses it: %v", payload, uerr)
			}
			if n := countKeys(t, payload); n != len(m) {
				t.Fatalf("parseClaims accepted %q with duplicate keys", payload)
			}
			checkString(t, m, "iss", c.iss)
			checkString(t, m, "tid", c.tid)
			checkString(t, m, "azp", c.azp)
			checkString(t, m, "appid", c.appid)
			checkString(t, m, "client_id", c.get("client_id"))
			if exp, ok := m["exp"].(float64); ok != c.hasExp || ok && c.exp.Unix() != int64(exp) {
				t.Fatalf("exp: parseClaims %v (%v), encoding/json %v", c.exp, c.hasExp, m["exp"])
			}
			switch aud := m["aud"].(type) {
			case string:
				if len(c.aud) != 1 || c.aud[0] != aud {
					t.Fatalf("aud: %q vs %q", c.aud, aud)
				}
			case []any:
				if len(c.aud) != len(aud) {
					t.Fatalf("aud: %q vs %v", c.aud, aud)
				}
			case nil:
				if c.aud != nil {
					t.Fatalf("aud: %q vs absent", c.aud)
				}
			}
		}
		if h, err := parseHeader(payload); err == nil {
			var m map[string]any
			if uerr := json.Unmarshal(payload, &m); uerr != nil {
				t.Fatalf("parseHeader accepted %q, encoding/json refuses it: %v", payload, uerr)
			}
			checkString(t, m, "alg", h.alg)
			checkString(t, m, "kid", h.kid)
		}
	})
}

func checkString(t *testing.T, m map[string]any, name, got string) {
	t.Helper()
	if v, ok := m[name]; ok {
		if s, _ := v.(string); s != got {
			t.Fatalf("%s: parser read %q, encoding/json %#v", name, got, v)
		}
	} else if got != "" {
		t.Fatalf("%s: parser read %q, encoding/json nothing", name, got)
	}
}

// countKeys counts the top-level keys of a JSON object, duplicates
// included.
func countKeys(t *testing.T, b []byte) int {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(b)))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %q", b)
	}
	n := 0
	for dec.More() {
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}
