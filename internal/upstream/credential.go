// Package upstream owns the gateway's side of every backend call: backend
// credentials (Entra ID or api-key), the URL and deployment mapping, the
// shared keep-alive transport and the reverse proxy that streams responses
// back unbuffered.
package upstream

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokengate/tokengate/internal/config"
)

// Credential sets the gateway's own credential on an outgoing request.
// Implementations are safe for concurrent use.
type Credential interface {
	Authorize(ctx context.Context, h http.Header) error
}

// NewCredential builds the credential a backend's config names.
func NewCredential(a config.BackendAuth) (Credential, error) {
	switch a.Type {
	case config.AuthAPIKey:
		return APIKey(a.APIKey), nil
	case config.AuthNone, config.AuthCaller:
		return None{}, nil // for caller, Forward sets the caller's own token
	case config.AuthEntra:
		// The default chain: environment (secret or certificate), workload
		// identity, managed identity, Azure CLI. Building it makes no call.
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("entra credential: %w", err)
		}
		return NewEntra(cred, a.Scope), nil
	}
	return nil, fmt.Errorf("unknown backend auth type %q", a.Type)
}

// APIKey sends a static key in the api-key header, as Azure OpenAI expects.
type APIKey string

// Authorize implements Credential.
func (k APIKey) Authorize(_ context.Context, h http.Header) error {
	h.Set("api-key", string(k))
	return nil
}

// String never prints the key.
func (k APIKey) String() string { return "api-key(redacted)" }

// None sends no credential.
type None struct{}

// Authorize implements Credential.
func (None) Authorize(context.Context, http.Header) error { return nil }

// refreshMargin is how long before expiry a token is refreshed. Requests keep
// using the old token while one refresh runs, so none of them waits.
const refreshMargin = 5 * time.Minute

// Entra sends "Authorization: Bearer <token>" from an azcore.TokenCredential,
// caching the token and refreshing it before it expires: at most one fetch
// runs at a time, and callers wait only when no valid token is held.
type Entra struct {
	cred  azcore.TokenCredential
	scope string
	now   func() time.Time

	mu    sync.RWMutex
	token azcore.AccessToken
	fetch sync.Mutex // held by the one caller fetching a new token
}

// NewEntra wraps cred for the given scope.
func NewEntra(cred azcore.TokenCredential, scope string) *Entra {
	return &Entra{cred: cred, scope: scope, now: time.Now}
}

// Authorize implements Credential.
func (e *Entra) Authorize(ctx context.Context, h http.Header) error {
	tok, err := e.current(ctx)
	if err != nil {
		return err
	}
	h.Set("Authorization", "Bearer "+tok)
	return nil
}

func (e *Entra) current(ctx context.Context) (string, error) {
	e.mu.RLock()
	tok := e.token
	e.mu.RUnlock()
	now := e.now()
	if tok.Token != "" && now.Add(refreshMargin).Before(tok.ExpiresOn) {
		return tok.Token, nil
	}
	if tok.Token != "" && now.Before(tok.ExpiresOn) {
		// Still valid: refresh if nobody else is, otherwise use it.
		if !e.fetch.TryLock() {
			return tok.Token, nil
		}
		defer e.fetch.Unlock()
		if fresh, err := e.get(ctx); err == nil {
			return fresh, nil
		}
		return tok.Token, nil
	}
	e.fetch.Lock()
	defer e.fetch.Unlock()
	e.mu.RLock()
	tok = e.token
	e.mu.RUnlock()
	if tok.Token != "" && e.now().Before(tok.ExpiresOn) {
		return tok.Token, nil // fetched by the caller we waited for
	}
	return e.get(ctx)
}

func (e *Entra) get(ctx context.Context) (string, error) {
	tok, err := e.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{e.scope}})
	if err != nil {
		return "", fmt.Errorf("entra token for %s: %w", e.scope, err)
	}
	e.mu.Lock()
	e.token = tok
	e.mu.Unlock()
	return tok.Token, nil
}
