package simulator

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/testenv"
)

// TestTLS serves an instance over https and checks a client that trusts
// its certificate gets HTTP/2, as from Azure.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool, err := testenv.LoopbackCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.TLS = &TLS{CertFile: certFile, KeyFile: keyFile}
	in, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	base, err := in.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(context.Background())
	if !strings.HasPrefix(base, "https://127.0.0.1:") {
		t.Fatalf("base URL %q, want https", base)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := client.Post(deploymentURL(base, "gpt-4o", "chat/completions"), "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("got %d over %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}

	cfg.TLS = &TLS{CertFile: certFile}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "tls: needs both") {
		t.Fatalf("Validate = %v, want the missing key_file named", err)
	}
}
