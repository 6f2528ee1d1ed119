package upstream

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// fakeCred is a hand-written azcore.TokenCredential counting its calls.
type fakeCred struct {
	calls  atomic.Int32
	ttl    time.Duration
	now    func() time.Time
	fail   atomic.Bool
	delay  time.Duration
	scopes []string
	mu     sync.Mutex
}

func (f *fakeCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	n := f.calls.Add(1)
	f.mu.Lock()
	f.scopes = o.Scopes
	f.mu.Unlock()
	time.Sleep(f.delay)
	if f.fail.Load() {
		return azcore.AccessToken{}, errors.New("entra unavailable")
	}
	return azcore.AccessToken{Token: "tok" + string(rune('0'+n)), ExpiresOn: f.now().Add(f.ttl)}, nil
}

func TestEntraCachesAndRefreshes(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	fc := &fakeCred{ttl: time.Hour, now: clock, delay: 10 * time.Millisecond}
	e := NewEntra(fc, "https://cognitiveservices.azure.com/.default")
	e.now = clock

	// Many concurrent first requests share one fetch.
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			h := http.Header{}
			if err := e.Authorize(context.Background(), h); err != nil || h.Get("Authorization") != "Bearer tok1" {
				t.Errorf("got %q, %v", h.Get("Authorization"), err)
			}
		})
	}
	wg.Wait()
	if got := fc.calls.Load(); got != 1 {
		t.Fatalf("%d fetches for concurrent first requests, want 1", got)
	}
	if fc.scopes[0] != "https://cognitiveservices.azure.com/.default" {
		t.Fatalf("scope %v", fc.scopes)
	}

	advance(56 * time.Minute) // inside the refresh margin: refresh once
	h := http.Header{}
	_ = e.Authorize(context.Background(), h)
	if h.Get("Authorization") != "Bearer tok2" || fc.calls.Load() != 2 {
		t.Fatalf("refresh before expiry: %q after %d calls", h.Get("Authorization"), fc.calls.Load())
	}

	// A failed refresh keeps serving the still-valid token.
	advance(57 * time.Minute)
	fc.fail.Store(true)
	h = http.Header{}
	if err := e.Authorize(context.Background(), h); err != nil || h.Get("Authorization") != "Bearer tok2" {
		t.Fatalf("stale-but-valid token should be used when refresh fails: %q %v", h.Get("Authorization"), err)
	}
	// Once expired, a failure is an error.
	advance(10 * time.Minute)
	if err := e.Authorize(context.Background(), http.Header{}); err == nil {
		t.Fatal("expired token and failing credential must be an error")
	}
}

func TestAPIKeyNeverPrints(t *testing.T) {
	k := APIKey("secret")
	h := http.Header{}
	_ = k.Authorize(context.Background(), h)
	if h.Get("api-key") != "secret" {
		t.Fatal("api-key header not set")
	}
	if s := k.String(); s == "secret" {
		t.Fatal("String must redact")
	}
}
