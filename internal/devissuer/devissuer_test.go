package devissuer

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/config"
)

func start(t *testing.T, dir string) *Issuer {
	t.Helper()
	is, err := Start(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := is.Publish("api://demo", map[string]string{"chat-app": "0c7f6a1e-5b3d-4e2a-9f10-2a3b4c5d6e7f"}); err != nil {
		t.Fatal(err)
	}
	return is
}

// TestTokensVerifyAndSurviveRestart checks a minted token is accepted by the
// gateway's real authenticator, and that after a restart (same data dir)
// the issuer keeps its key and URL so earlier tokens stay valid.
func TestTokensVerifyAndSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	is := start(t, dir)
	tok, err := MintFromDir(dir, "chat-app", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MintFromDir(dir, "nobody", time.Now()); err == nil {
		t.Fatal("minted a token for an unknown app")
	}
	url := is.State().URL
	_ = is.Close(context.Background())

	is = start(t, dir)
	defer is.Close(context.Background())
	if got := is.State().URL; got != url {
		// Another test process may have taken the port in between (tests
		// run in parallel): only then may the issuer move.
		host := strings.TrimPrefix(url, "http://")
		if ln, err := net.Listen("tcp", host); err == nil {
			ln.Close()
			t.Fatalf("restarted on %s although %s was free: earlier tokens would stop working", got, url)
		}
		t.Logf("%s was taken by another process; the issuer moved to %s", url, got)
		url = got
	}
	a, err := auth.New(config.Identity{
		Audiences:          []string{"api://demo"},
		Entra:              &config.Entra{Tenants: []string{Tenant}, AuthorityHost: url, V1IssuerHost: url},
		Leeway:             time.Minute,
		JWKSRefresh:        time.Hour,
		UnknownKIDCooldown: time.Minute,
		UnknownApps:        "refuse",
		TokenCacheSize:     10,
	}, []config.App{{Name: "chat-app", AppIDs: []string{"0c7f6a1e-5b3d-4e2a-9f10-2a3b4c5d6e7f"}}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	r, _ := http.NewRequest("POST", "/v1/chat/completions", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	c, err := a.Authenticate(r)
	if err != nil {
		t.Fatalf("a dev token was refused: %v", err)
	}
	if c.AppName() != "chat-app" || c.Method != auth.MethodEntra || c.TenantID != Tenant {
		t.Fatalf("caller %+v", c)
	}
}

func TestMissingDataDir(t *testing.T) {
	if _, err := MintFromDir(t.TempDir(), "chat-app", time.Now()); err == nil {
		t.Fatal("expected an error telling to start the demo first")
	}
}
