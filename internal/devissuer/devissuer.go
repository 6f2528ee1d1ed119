// Package devissuer owns the demo's local development identity issuer: an
// Entra ID look-alike that serves OIDC discovery and a JWKS on loopback and
// mints v2-style app tokens for the demo's apps, signed with a key kept in
// the demo's data directory. It exists so a newcomer can try real bearer
// authentication in a minute; "tokengate serve" refuses it unless started
// with --insecure-dev-issuer.
package devissuer

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
)

// Files the issuer keeps in the data directory.
const (
	KeyFile   = "dev-issuer.key"  // RSA private key, PKCS#8 PEM, 0600
	StateFile = "dev-issuer.json" // State
)

// Tenant is the demo's fixed directory id.
const Tenant = "7e5ab1c2-0d3f-4a6b-9c8d-1e2f3a4b5c6d"

// TokenLifetime is how long minted tokens are valid.
const TokenLifetime = time.Hour

// State is what the running issuer publishes in the data directory so
// "tokengate dev-token" can mint tokens without talking to it.
type State struct {
	// URL is the issuer's base (the Entra "authority host" stand-in).
	URL string `json:"url"`
	// Tenant is the tenant id in every token.
	Tenant string `json:"tenant"`
	// Audience is the gateway's app id URI, the tokens' aud.
	Audience string `json:"audience"`
	// KeyID is the signing key's kid.
	KeyID string `json:"kid"`
	// Apps maps demo app names to their app (client) ids.
	Apps map[string]string `json:"apps"`
}

// Issuer serves discovery and keys for one tenant on loopback.
type Issuer struct {
	dir   string
	key   *rsa.PrivateKey
	state State
	srv   *http.Server
	ln    net.Listener
}

// Start loads (or creates) the signing key in dir and serves discovery and
// keys on loopback — on the port of the previous run when it is free, so
// tokens minted before a restart stay valid. Call Publish once the
// audience and apps are known.
func Start(dir string, log *slog.Logger) (*Issuer, error) {
	key, err := loadOrCreateKey(dir)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	if prev, err := ReadState(dir); err == nil {
		if u, err := parseLoopbackURL(prev.URL); err == nil {
			ln, _ = net.Listen("tcp", u)
		}
	}
	if ln == nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("dev issuer: %w", err)
		}
	}
	is := &Issuer{dir: dir, key: key, ln: ln, state: State{
		URL:    "http://" + ln.Addr().String(),
		Tenant: Tenant,
		KeyID:  keyID(&key.PublicKey),
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", is.discovery)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", is.keys)
	mux.HandleFunc("GET /{tenant}/discovery/keys", is.keys)
	is.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() { _ = is.srv.Serve(ln) }()
	return is, nil
}

// Publish sets the tokens' audience and the demo apps (name -> app id) and
// writes State to the data directory for "tokengate dev-token".
func (is *Issuer) Publish(audience string, apps map[string]string) error {
	is.state.Audience, is.state.Apps = audience, apps
	data, _ := json.MarshalIndent(is.state, "", "  ")
	return writeFile(filepath.Join(is.dir, StateFile), append(data, '\n'))
}

// State returns what the issuer published.
func (is *Issuer) State() State { return is.state }

// Close stops serving. The port is free when it returns: Shutdown closes
// only the listeners Serve has registered, and the goroutine started by
// Start may not have run yet.
func (is *Issuer) Close(ctx context.Context) error {
	err := is.srv.Shutdown(ctx)
	_ = is.ln.Close() // already closed when Serve ran first
	return err
}

// Mint signs a token for the demo app name, valid for TokenLifetime.
func (is *Issuer) Mint(app string, now time.Time) (string, error) {
	return mint(is.key, is.state, app, now)
}

// MintFor signs a token for app with another audience, e.g. Azure OpenAI's
// own (https://cognitiveservices.azure.com) for pass-through.
func (is *Issuer) MintFor(app, audience string, now time.Time) (string, error) {
	st := is.state
	st.Audience = audience
	return mint(is.key, st, app, now)
}

// MintFromDir signs a token for app using the key and state a running (or
// previously run) demo left in dir.
func MintFromDir(dir, app string, now time.Time) (string, error) {
	st, err := ReadState(dir)
	if err != nil {
		return "", err
	}
	key, err := readKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return "", err
	}
	return mint(key, st, app, now)
}

// ReadState reads the State file in dir.
func ReadState(dir string) (State, error) {
	var st State
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("no dev issuer in %s: start \"tokengate demo --data-dir %s\" first", dir, dir)
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%s: %w", StateFile, err)
	}
	return st, nil
}

func mint(key *rsa.PrivateKey, st State, app string, now time.Time) (string, error) {
	appID, ok := st.Apps[app]
	if !ok {
		names := make([]string, 0, len(st.Apps))
		for n := range st.Apps {
			names = append(names, n)
		}
		return "", fmt.Errorf("the demo has no app %q (it has %v)", app, names)
	}
	// The service principal's object id is stable per app, as in Entra.
	oid := uuid.NewSHA1(uuid.NameSpaceOID, []byte(st.Tenant+"/"+appID)).String()
	claims := jwt.MapClaims{
		"aud":    st.Audience,
		"iss":    st.URL + "/" + st.Tenant + "/v2.0",
		"iat":    now.Unix(),
		"nbf":    now.Unix(),
		"exp":    now.Add(TokenLifetime).Unix(),
		"azp":    appID,
		"azpacr": "1",
		"idtyp":  "app",
		"oid":    oid,
		"sub":    oid,
		"tid":    st.Tenant,
		"uti":    rand.Text()[:22],
		"ver":    "2.0",
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = st.KeyID
	return tok.SignedString(key)
}

func (is *Issuer) discovery(w http.ResponseWriter, r *http.Request) {
	base := is.state.URL + "/" + r.PathValue("tenant")
	writeJSON(w, map[string]any{
		"issuer":                                base + "/v2.0",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "token"},
		"subject_types_supported":               []string{"pairwise"},
	})
}

// keys serves the JWKS the way Entra does: RSA keys with kid, use, n, e and
// no alg.
func (is *Issuer) keys(w http.ResponseWriter, _ *http.Request) {
	pub := &is.key.PublicKey
	writeJSON(w, map[string]any{"keys": []map[string]any{{
		"kty": "RSA",
		"use": "sig",
		"kid": is.state.KeyID,
		"n":   base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func keyID(pub *rsa.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

func loadOrCreateKey(dir string) (*rsa.PrivateKey, error) {
	path := filepath.Join(dir, KeyFile)
	key, err := readKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return key, writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func readKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: not PEM", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an RSA key", path)
	}
	return rk, nil
}

// writeFile writes atomically with mode 0600.
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func parseLoopbackURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" || u.Port() == "" {
		return "", fmt.Errorf("not a loopback URL: %q", s)
	}
	return u.Host, nil
}
