package auth

import (
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/testenv"
)

func TestKeyStoreCreateListRevoke(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	k1, err := CreateKey(path, "billing", t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := parseKey(k1); !ok || len(k1) != keyLen {
		t.Fatalf("key %q does not have the gateway key format", k1)
	}
	k2, err := CreateKey(path, "billing", t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateKey(path, "billing", t0); !errors.Is(err, ErrKeyLimit) || !strings.Contains(err.Error(), "revoke one first") {
		t.Fatalf("third active key: %v", err)
	}
	if _, err := CreateKey(path, "search", t0); err != nil {
		t.Fatalf("another app's key: %v", err)
	}
	if _, err := CreateKey(path, "bad name!", t0); err == nil {
		t.Error("accepted an invalid app name")
	}

	p1, _ := parseKey(k1)
	if err := RevokeKey(path, keyScheme+p1, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := RevokeKey(path, p1, t0.Add(time.Hour)); !errors.Is(err, ErrKeyRevoked) {
		t.Errorf("second revoke: %v", err)
	}
	if err := RevokeKey(path, "zzzzzzzz", t0); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	if _, err := CreateKey(path, "billing", t0.Add(2*time.Hour)); err != nil {
		t.Errorf("create after revoking one: %v", err)
	}

	keys, err := ListKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := parseKey(k2)
	if len(keys) != 4 || keys[0].Prefix != p1 || keys[0].Active() || !keys[0].Revoked.Equal(t0.Add(time.Hour)) ||
		keys[1].Prefix != p2 || !keys[1].Active() || keys[1].App != "billing" || !keys[1].Created.Equal(t0.Add(time.Minute)) {
		t.Errorf("ListKeys = %+v", keys)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("store mode = %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	for _, k := range []string{k1, k2} {
		secret := k[len(keyScheme)+keyPrefixLen+1:]
		if strings.Contains(string(raw), secret) {
			t.Errorf("store contains a key's secret")
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*")); len(left) != 1 {
		t.Errorf("temporary or lock files left behind: %v", left)
	}
	if keys, err := ListKeys(filepath.Join(t.TempDir(), "missing.json")); err != nil || len(keys) != 0 {
		t.Errorf("ListKeys(missing) = %v, %v", keys, err)
	}
}

// TestKeyStoreConcurrentCreate: the lock file keeps concurrent writers from
// losing one another's keys.
func TestKeyStoreConcurrentCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if _, err := CreateKey(path, "app"+string(rune('a'+i)), t0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	keys, err := ListKeys(path)
	if err != nil || len(keys) != 8 {
		t.Errorf("ListKeys = %d keys, %v; want 8", len(keys), err)
	}
}

func TestKeyStoreRejectsBadFile(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"notjson":  "{",
		"version":  `{"version":2,"keys":[]}`,
		"badhash":  `{"version":1,"keys":[{"prefix":"abcdefgh","sha256":"zz","app":"a"}]}`,
		"dupe":     `{"version":1,"keys":[{"prefix":"abcdefgh","sha256":"` + strings.Repeat("0", 64) + `","app":"a"},{"prefix":"abcdefgh","sha256":"` + strings.Repeat("0", 64) + `","app":"b"}]}`,
		"noprefix": `{"version":1,"keys":[{"sha256":"` + strings.Repeat("0", 64) + `","app":"a"}]}`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ListKeys(p); err == nil {
			t.Errorf("%s: ListKeys accepted a bad store", name)
		}
		id := config.Identity{GatewayKeys: config.GatewayKeys{Enabled: true, File: p}}
		if _, err := New(id, testApps(), nil); err == nil || !strings.Contains(err.Error(), "gateway_keys") {
			t.Errorf("%s: New error = %v", name, err)
		}
	}
}

func keyRequest(key string) *http.Request {
	r := request("")
	r.Header.Set("api-key", key)
	return r
}

func TestGatewayKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	var logs testenv.Buffer
	clock := newClock()
	ti := newTestIssuer(t)
	id := ti.identity()
	id.GatewayKeys = config.GatewayKeys{Enabled: true, File: path}
	a, err := New(id, testApps(), slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		WithClock(clock.Now), WithHTTPClient(ti.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(t.Context())

	// The store did not exist at New; keys created afterwards are picked up
	// within a second.
	key, err := CreateKey(path, "billing", t0)
	if err != nil {
		t.Fatal(err)
	}
	unregistered, err := CreateKey(path, "ghost", t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(keyRequest(key)); !isStatus(err, 401) {
		t.Fatalf("before reload: %v", err)
	}
	clock.Advance(reloadEvery)
	c, err := a.Authenticate(keyRequest(key))
	if err != nil {
		t.Fatalf("after reload: %v", err)
	}
	prefix, _ := parseKey(key)
	if c.Method != MethodGatewayKey || c.AppName() != "billing" || c.KeyPrefix != prefix || c.App.Team != "finance" {
		t.Errorf("caller = %+v", c)
	}
	// A good bearer token still works next to gateway keys.
	if _, err := a.Authenticate(bearer(mint(keyA1(), ti.v2Claims()))); err != nil {
		t.Errorf("bearer token: %v", err)
	}

	wrongSecret := key[:len(key)-4] + "aaaa"
	if wrongSecret == key {
		wrongSecret = key[:len(key)-4] + "bbbb"
	}
	var seen []string
	refuse := func(name string, r *http.Request, status int, code, msg string) {
		t.Helper()
		_, err := a.Authenticate(r)
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.Status != status || oe.Code != code || !strings.Contains(oe.Message, msg) {
			t.Errorf("%s: %v; want %d %s %q", name, err, status, code, msg)
			return
		}
		seen = append(seen, oe.Error())
	}
	refuse("wrong secret, right prefix", keyRequest(wrongSecret), 401, CodeInvalidAPIKey, "not valid")
	refuse("unknown prefix", keyRequest("tgk_aaaaaaaa_"+strings.Repeat("a", keySecretLen)), 401, CodeInvalidAPIKey, "not valid")
	refuse("Azure api-key", keyRequest("0123456789abcdef0123456789abcdef"), 401, CodeAPIKeyNotAccepted, "not a tokengate gateway key")
	refuse("gateway key as subscription key", withHeader(request(""), "Ocp-Apim-Subscription-Key", key), 401, CodeAPIKeyNotAccepted, "api-key header")
	refuse("gateway key in the query", withQuery(request(""), "api-key="+key), 401, CodeAPIKeyNotAccepted, "api-key header")
	refuse("unregistered app", keyRequest(unregistered), 403, CodeAppNotRegistered, "ghost")
	refuse("key with upper case", keyRequest(strings.ToUpper(key)), 401, CodeAPIKeyNotAccepted, "")

	if err := RevokeKey(path, prefix, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(reloadEvery / 2)
	if _, err := a.Authenticate(keyRequest(key)); err != nil {
		t.Errorf("reloaded sooner than once a second: %v", err)
	}
	clock.Advance(reloadEvery)
	refuse("revoked key", keyRequest(key), 401, CodeInvalidAPIKey, "revoked")

	// A corrupt store keeps the last good keys.
	other, err := CreateKey(path, "search", t0)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(reloadEvery)
	if _, err := a.Authenticate(keyRequest(other)); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if err := os.WriteFile(path, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Advance(reloadEvery)
	if _, err := a.Authenticate(keyRequest(other)); err != nil {
		t.Errorf("corrupt store dropped the loaded keys: %v", err)
	}
	if !strings.Contains(logs.String(), "cannot reload gateway key store") {
		t.Errorf("corrupt store not logged:\n%s", logs.String())
	}
	// A deleted store accepts no keys.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	clock.Advance(reloadEvery)
	refuse("store deleted", keyRequest(other), 401, CodeInvalidAPIKey, "not valid")

	for _, k := range []string{key, unregistered, other, wrongSecret} {
		secret := k[len(keyScheme)+keyPrefixLen+1:]
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a key's secret appears in the logs")
		}
		for _, s := range seen {
			if strings.Contains(s, secret) {
				t.Errorf("a key's secret appears in an error: %s", s)
			}
		}
	}
}

func TestParseKey(t *testing.T) {
	good := "tgk_abcdefgh_" + strings.Repeat("a", keySecretLen)
	tests := map[string]bool{
		good:                                true,
		good + "a":                          false,
		good[:len(good)-1]:                  false,
		"tgk_abcdefgh-" + good[13:]:         false,
		"tgk_ABCDEFGH_" + good[13:]:         false,
		"tgk_abcdefg1_" + good[13:]:         false,
		"xyz_abcdefgh_" + good[13:]:         false,
		"tgk_abcdefgh_" + good[13:64] + "_": false,
		"":                                  false,
	}
	for in, want := range tests {
		if _, ok := parseKey(in); ok != want {
			t.Errorf("parseKey(%q) ok = %v, want %v", in, ok, want)
		}
	}
}
