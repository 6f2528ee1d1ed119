package policy

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

// demoDoc has the demo's batch-app: openai-user, no streaming, a 256-token
// cap in reject mode (the default mode).
const demoDoc = base + keysIdentity + `
apps:
  - name: batch-app
    roles: [openai-user]
    streaming: false
    max_tokens: {cap: 256}
  - name: chat-app
    roles: [openai-user]
    models: [gpt-4o-mini, text-embedding-3-small]
  - name: clamp-app
    roles: [openai-user]
    max_tokens: {cap: 100, mode: clamp}
  - name: open-app
    roles: [openai-user]
`

func TestDeniedMessage(t *testing.T) {
	p, cfg := newPolicy(t, demoDoc)
	_, err := p.Authorize(appCaller(t, cfg, "batch-app"), request(t, http.MethodPost, "/openai/files", openai.Body{}))
	wantRefusal(t, err, http.StatusForbidden, "PermissionDenied")
	const want = "app batch-app (roles: openai-user) may not perform files/write; it needs a role granting it, such as openai-contributor"
	if got := err.(*openai.Error).Message; got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}
}

func TestCustomRoles(t *testing.T) {
	const doc = base + keysIdentity + `
roles:
  - name: text-only
    actions: ["deployments/*/action"]
    not_actions: ["deployments/images/*", "deployments/audio/*"]
  - name: image-maker
    actions: ["deployments/images/generations/action"]
  - name: files-keeper
    actions: ["files/*"]
    not_actions: ["files/delete"]
  - name: reader
    actions: ["*/read"]
    not_actions: ["other/*"]
apps:
  - name: text-app
    roles: [text-only]
  - name: mixed-app
    roles: [text-only, image-maker]
  - name: files-app
    roles: [files-keeper]
  - name: reader-app
    roles: [reader]
`
	tests := []struct {
		name         string
		app          string
		method, path string
		allowed      bool
		grantedBy    string // the "such as" list on refusal
	}{
		{"actions grant chat", "text-app", http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", true, ""},
		{"not_actions remove images", "text-app", http.MethodPost, "/openai/deployments/gpt-4o/images/generations", false, "openai-user or openai-contributor or image-maker"},
		{"not_actions remove audio", "text-app", http.MethodPost, "/openai/deployments/gpt-4o/audio/speech", false, "openai-user or openai-contributor"},
		{"not_actions apply to an unknown-case path", "text-app", http.MethodPost, "/openai/deployments/gpt-4o/Images/Generations", false, "image-maker"},
		{"not_actions subtract from their own role only", "mixed-app", http.MethodPost, "/openai/deployments/gpt-4o/images/generations", true, ""},
		{"other role's grant is exact", "mixed-app", http.MethodPost, "/openai/deployments/gpt-4o/audio/speech", false, ""},
		{"files write", "files-app", http.MethodPost, "/openai/files", true, ""},
		{"files read", "files-app", http.MethodGet, "/openai/files/f-1", true, ""},
		{"files delete subtracted", "files-app", http.MethodDelete, "/openai/files/f-1", false, "openai-contributor"},
		{"files role grants no inference", "files-app", http.MethodPost, "/v1/chat/completions", false, ""},
		{"start-star read", "reader-app", http.MethodGet, "/openai/batches", true, ""},
		{"start-star read minus other", "reader-app", http.MethodGet, "/openai/realtime", false, "openai-contributor"},
		{"start-star read is not write", "reader-app", http.MethodPost, "/openai/batches", false, "openai-contributor"},
	}
	p, cfg := newPolicy(t, doc)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Authorize(appCaller(t, cfg, tt.app), request(t, tt.method, tt.path, openai.Body{}))
			if tt.allowed {
				wantRefusal(t, err, 0, "")
				return
			}
			wantRefusal(t, err, http.StatusForbidden, "PermissionDenied", "app "+tt.app+" (roles: ", tt.grantedBy)
		})
	}
}

func TestRoleAssignments(t *testing.T) {
	const (
		knownID   = "11111111-1111-1111-1111-111111111111"
		unknownID = "22222222-2222-2222-2222-222222222222"
		viaID     = "33333333-3333-3333-3333-333333333333"
	)
	const doc = base + entraIdentity + `
roles:
  - name: files-keeper
    actions: ["files/*"]
apps:
  - name: reader-app
    app_ids: [` + knownID + `]
    roles: [openai-user]
    streaming: false
    max_tokens: {cap: 10}
    models: [gpt-4o-mini]
role_assignments:
  - role: openai-contributor
    app_ids: [` + viaID + `]
  - role: files-keeper
    app_roles: [Files.Manage]
  - role: openai-user
    groups: [grp-ml, grp-data]
`
	p, cfg := newPolicy(t, doc)
	registered := appCaller(t, cfg, "reader-app")
	with := func(c auth.Caller, f func(*auth.Caller)) *auth.Caller {
		f(&c)
		return &c
	}
	unknown := auth.Caller{Method: auth.MethodEntra, AppID: unknownID}
	tests := []struct {
		name         string
		caller       *auth.Caller
		method, path string
		code         string
		parts        []string
	}{
		{"registered app's own role", registered, http.MethodGet, "/openai/files", "", nil},
		{"registered app lacks write", registered, http.MethodPost, "/openai/files", "PermissionDenied",
			[]string{"app reader-app (roles: openai-user) may not perform files/write", "files-keeper"}},
		{"registered app + app role", with(*registered, func(c *auth.Caller) { c.Roles = []string{"Other", "Files.Manage"} }),
			http.MethodPost, "/openai/files", "", nil},
		{"registered app's denial lists assigned roles", with(*registered, func(c *auth.Caller) { c.Roles = []string{"Files.Manage"} }),
			http.MethodPost, "/openai/batches", "PermissionDenied", []string{"(roles: openai-user, files-keeper)"}},
		{"unknown app, nothing assigned", &unknown, http.MethodGet, "/openai/models", "PermissionDenied",
			[]string{`unregistered app (app id "` + unknownID + `"; roles: none) may not perform models/read`, "role_assignments"}},
		{"unknown app by app id", with(unknown, func(c *auth.Caller) { c.AppID = viaID }), http.MethodDelete, "/openai/files/f-1", "", nil},
		{"unknown app by app role", with(unknown, func(c *auth.Caller) { c.Roles = []string{"Files.Manage"} }), http.MethodPost, "/openai/files", "", nil},
		{"unknown app's app role grants only its role", with(unknown, func(c *auth.Caller) { c.Roles = []string{"Files.Manage"} }),
			http.MethodPost, "/openai/batches", "PermissionDenied", []string{"(app id", "roles: files-keeper)"}},
		{"unknown app by group", with(unknown, func(c *auth.Caller) { c.Groups = []string{"x", "grp-data"} }),
			http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", "", nil},
		{"unknown app, group names are exact", with(unknown, func(c *auth.Caller) { c.Groups = []string{"GRP-ML", "grp"} }),
			http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", "PermissionDenied", []string{"roles: none"}},
		{"app role claim does not match a group assignment", with(unknown, func(c *auth.Caller) { c.Roles = []string{"grp-ml"} }),
			http.MethodGet, "/openai/models", "PermissionDenied", nil},
		{"nil caller", nil, http.MethodGet, "/openai/models", "PermissionDenied", []string{`app id ""`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Authorize(tt.caller, request(t, tt.method, tt.path, openai.Body{}))
			wantRefusal(t, err, http.StatusForbidden, tt.code, tt.parts...)
		})
	}

	// An unregistered app has no per-app rules: any model, streaming, no cap.
	t.Run("unknown app has no caps", func(t *testing.T) {
		c := with(unknown, func(c *auth.Caller) { c.Groups = []string{"grp-ml"} })
		req := request(t, http.MethodPost, "/openai/deployments/gpt-4o/chat/completions",
			openai.Body{Stream: true, MaxTokens: 100000})
		d, err := p.Authorize(c, req)
		wantRefusal(t, err, 0, "")
		if d.SetMaxTokens != 0 {
			t.Errorf("SetMaxTokens = %d, want 0", d.SetMaxTokens)
		}
	})
}

func TestModelsAllowList(t *testing.T) {
	p, cfg := newPolicy(t, demoDoc)
	tests := []struct {
		name         string
		app          string
		method, path string
		alias        string
		code         string
		parts        []string
	}{
		{"listed alias", "chat-app", http.MethodPost, "/openai/deployments/gpt-4o-mini/chat/completions", "gpt-4o-mini", "", nil},
		{"listed embeddings alias", "chat-app", http.MethodPost, "/v1/embeddings", "text-embedding-3-small", "", nil},
		{"unlisted alias", "chat-app", http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", "gpt-4o", "model_not_allowed",
			[]string{`app chat-app may not use model "gpt-4o"`, "gpt-4o-mini, text-embedding-3-small"}},
		{"unlisted alias on v1", "chat-app", http.MethodPost, "/v1/chat/completions", "gpt-4o", "model_not_allowed", []string{`"gpt-4o"`}},
		{"unlisted alias on an unnamed routed op", "chat-app", http.MethodPost, "/openai/deployments/gpt-4o/realtime", "gpt-4o", "model_not_allowed", nil},
		{"no alias at all", "chat-app", http.MethodPost, "/v1/chat/completions", "", "model_required", []string{"app chat-app must name a model"}},
		{"pass-through is not model-checked", "chat-app", http.MethodGet, "/openai/deployments/gpt-4o", "", "", nil},
		{"empty list allows any alias", "open-app", http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", "gpt-4o", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request(t, tt.method, tt.path, openai.Body{})
			req.Alias = tt.alias
			_, err := p.Authorize(appCaller(t, cfg, tt.app), req)
			status := http.StatusForbidden
			if tt.code == "model_required" {
				status = http.StatusBadRequest
			}
			wantRefusal(t, err, status, tt.code, tt.parts...)
		})
	}
}

func TestStreaming(t *testing.T) {
	p, cfg := newPolicy(t, demoDoc)
	tests := []struct {
		name         string
		app          string
		method, path string
		stream       bool
		code         string
	}{
		{"batch-app streaming refused", "batch-app", http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", true, "streaming_disabled"},
		{"batch-app streaming refused on v1", "batch-app", http.MethodPost, "/v1/completions", true, "streaming_disabled"},
		{"batch-app without stream", "batch-app", http.MethodPost, "/openai/deployments/gpt-4o/embeddings", false, ""},
		{"streaming allowed by default", "open-app", http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request(t, tt.method, tt.path, openai.Body{Stream: tt.stream, MaxTokens: 10})
			_, err := p.Authorize(appCaller(t, cfg, tt.app), req)
			wantRefusal(t, err, http.StatusBadRequest, tt.code,
				"streaming is disabled for app batch-app", `call without "stream": true`)
		})
	}
}

func TestMaxTokens(t *testing.T) {
	p, cfg := newPolicy(t, demoDoc)
	tests := []struct {
		name      string
		app       string // batch-app: cap 256 reject; clamp-app: cap 100 clamp
		path      string
		body      openai.Body
		code      string
		parts     []string
		set       int64
		field     string
		wantNoSet bool
	}{
		{"reject: under the cap", "batch-app", "", openai.Body{MaxTokens: 200}, "", nil, 0, "", true},
		{"reject: at the cap", "batch-app", "", openai.Body{MaxTokens: 256}, "", nil, 0, "", true},
		{"reject: over the cap", "batch-app", "", openai.Body{MaxTokens: 257}, "max_tokens_exceeded",
			[]string{"max_tokens 257", "cap of 256", "at most 256"}, 0, "", true},
		{"reject: max_completion_tokens over", "batch-app", "", openai.Body{MaxCompletionTokens: 1000}, "max_tokens_exceeded",
			[]string{"max_completion_tokens 1000", "cap of 256"}, 0, "", true},
		{"reject: max_completion_tokens wins over max_tokens", "batch-app", "", openai.Body{MaxTokens: 100, MaxCompletionTokens: 300}, "max_tokens_exceeded",
			[]string{"max_completion_tokens 300"}, 0, "", true},
		{"reject: absent gets the cap", "batch-app", "", openai.Body{}, "", nil, 256, "max_tokens", false},
		{"reject: legacy completions absent gets the cap", "batch-app", "/openai/deployments/gpt-4o/completions", openai.Body{}, "", nil, 256, "max_tokens", false},
		{"reject: embeddings are not capped", "batch-app", "/openai/deployments/text-embedding-3-small/embeddings", openai.Body{}, "", nil, 0, "", true},
		{"reject: audio is not capped", "batch-app", "/openai/deployments/gpt-4o/audio/transcriptions", openai.Body{}, "", nil, 0, "", true},

		{"clamp: under the cap", "clamp-app", "", openai.Body{MaxTokens: 50}, "", nil, 0, "", true},
		{"clamp: over the cap", "clamp-app", "", openai.Body{MaxTokens: 5000}, "", nil, 100, "max_tokens", false},
		{"clamp: max_completion_tokens over", "clamp-app", "", openai.Body{MaxCompletionTokens: 5000}, "", nil, 100, "max_completion_tokens", false},
		{"clamp: both set, max_tokens under", "clamp-app", "", openai.Body{MaxTokens: 50, MaxCompletionTokens: 5000}, "", nil, 100, "max_completion_tokens", false},
		{"clamp: both set, max_tokens over", "clamp-app", "", openai.Body{MaxTokens: 5000, MaxCompletionTokens: 50}, "max_tokens_exceeded",
			[]string{"max_tokens 5000", "send only max_completion_tokens"}, 0, "", true},
		{"clamp: absent gets the cap", "clamp-app", "", openai.Body{}, "", nil, 100, "max_tokens", false},
		{"clamp: v1 path", "clamp-app", "/v1/chat/completions", openai.Body{MaxTokens: 101}, "", nil, 100, "max_tokens", false},

		{"no cap: anything goes", "open-app", "", openai.Body{MaxTokens: 1 << 40}, "", nil, 0, "", true},
		{"no cap: absent stays absent", "open-app", "", openai.Body{}, "", nil, 0, "", true},
		{"n is not multiplied", "batch-app", "", openai.Body{MaxTokens: 256, N: 8}, "", nil, 0, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if path == "" {
				path = "/openai/deployments/gpt-4o/chat/completions"
			}
			d, err := p.Authorize(appCaller(t, cfg, tt.app), request(t, http.MethodPost, path, tt.body))
			wantRefusal(t, err, http.StatusBadRequest, tt.code, tt.parts...)
			if d.SetMaxTokens != tt.set || d.MaxTokensField != tt.field {
				t.Errorf("SetMaxTokens, MaxTokensField = %d, %q; want %d, %q", d.SetMaxTokens, d.MaxTokensField, tt.set, tt.field)
			}
		})
	}
}

func TestAnonymous(t *testing.T) {
	anon, _ := newPolicy(t, base+`
identity: {anonymous: true}
`)
	keyed, _ := newPolicy(t, demoDoc)
	caller := &auth.Caller{Method: auth.MethodAnonymous, App: &config.App{Name: "anonymous"}}
	tests := []struct {
		name         string
		p            *Policy
		method, path string
		body         openai.Body
		code         string
	}{
		{"inference, streaming, no cap", anon, http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", openai.Body{Stream: true, MaxTokens: 1 << 30}, ""},
		{"management write", anon, http.MethodDelete, "/openai/deployments/gpt-4o", openai.Body{}, ""},
		{"other", anon, http.MethodPost, "/openai/v1/evals", openai.Body{}, ""},
		{"refused when the config is not anonymous", keyed, http.MethodGet, "/openai/models", openai.Body{}, "PermissionDenied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := tt.p.Authorize(caller, request(t, tt.method, tt.path, tt.body))
			wantRefusal(t, err, http.StatusForbidden, tt.code)
			if d.SetMaxTokens != 0 {
				t.Errorf("SetMaxTokens = %d, want 0", d.SetMaxTokens)
			}
		})
	}
}

// TestStaleApp: a Caller cached under an older configuration may name an app
// this Policy does not know; it is refused rather than treated as unknown.
func TestStaleApp(t *testing.T) {
	p, _ := newPolicy(t, demoDoc)
	c := &auth.Caller{Method: auth.MethodGatewayKey, App: &config.App{Name: "removed-app", Roles: []string{"openai-contributor"}}}
	_, err := p.Authorize(c, request(t, http.MethodGet, "/openai/models", openai.Body{}))
	wantRefusal(t, err, http.StatusForbidden, "PermissionDenied", "app removed-app is not registered")
}

func TestNew(t *testing.T) {
	good, err := config.Parse([]byte(demoDoc), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		cfg   func() *config.Config
		error string
	}{
		{"valid", func() *config.Config { return good }, ""},
		{"nil", func() *config.Config { return nil }, "nil config"},
		{"unknown app role", func() *config.Config {
			c := *good
			c.Apps = []config.App{{Name: "a", Roles: []string{"nope"}}}
			return &c
		}, `apps[0].roles: unknown role "nope"`},
		{"unknown assigned role", func() *config.Config {
			c := *good
			c.RoleAssignments = []config.RoleAssignment{{Role: "nope", Groups: []string{"g"}}}
			return &c
		}, `role_assignments[0].role: unknown role "nope"`},
		{"custom role shadows a built-in", func() *config.Config {
			c := *good
			c.Roles = []config.Role{{Name: RoleUser, Actions: []string{"*"}}}
			return &c
		}, `"openai-user" is defined twice`},
		{"app twice", func() *config.Config {
			c := *good
			c.Apps = []config.App{{Name: "a"}, {Name: "a"}}
			return &c
		}, `"a" is registered twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg())
			if tt.error == "" {
				if err != nil || p == nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.error) {
				t.Fatalf("New error = %v, want it to contain %q", err, tt.error)
			}
		})
	}
}

// TestConcurrent exercises one Policy from many goroutines (run with -race).
func TestConcurrent(t *testing.T) {
	p, cfg := newPolicy(t, demoDoc)
	callers := []*auth.Caller{appCaller(t, cfg, "batch-app"), appCaller(t, cfg, "clamp-app"), appCaller(t, cfg, "chat-app")}
	reqs := []Request{
		request(t, http.MethodPost, "/openai/deployments/gpt-4o-mini/chat/completions", openai.Body{MaxTokens: 1000}),
		request(t, http.MethodPost, "/openai/deployments/gpt-4o/some/thing", openai.Body{}),
		request(t, http.MethodPost, "/openai/files", openai.Body{}),
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				c, r := callers[(g+i)%len(callers)], reqs[i%len(reqs)]
				_, _ = p.Authorize(c, r)
			}
		})
	}
	wg.Wait()
}

// TestAssignmentsMatchOnlyTheirIssuer: an app role or group claim counts
// only from the issuer the assignment names (Entra by default), so another
// issuer's admin cannot grant himself roles by naming the same value.
func TestAssignmentsMatchOnlyTheirIssuer(t *testing.T) {
	cfg, err := config.Parse([]byte(base+`
identity:
  audiences: [api://tokengate]
  entra: {tenants: [72f988bf-86f1-41af-91ab-2d7cd011db47]}
  issuers: [{name: keycloak, issuer: "https://kc.example/realms/x"}]
  unknown_apps: allow
role_assignments:
  - {role: openai-contributor, app_roles: [Gateway.Admin]}
  - {role: openai-user, issuer: keycloak, groups: [ml]}
`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Method: "DELETE", Route: openai.Route{Op: openai.OpFiles, Suffix: "/openai/files/f"}}
	entra := &auth.Caller{Method: auth.MethodEntra, AppID: "a", Roles: []string{"Gateway.Admin"}}
	if _, err := p.Authorize(entra, req); err != nil {
		t.Fatalf("Entra app role should grant contributor: %v", err)
	}
	forged := &auth.Caller{Method: auth.MethodOIDC, IssuerName: "keycloak", AppID: "a", Roles: []string{"Gateway.Admin"}}
	if _, err := p.Authorize(forged, req); err == nil {
		t.Fatal("a keycloak token's roles claim matched an Entra role assignment")
	}
	chat := Request{Method: "POST", Route: openai.Route{Op: openai.OpChatCompletions, Alias: "gpt-4o", Suffix: "chat/completions"}, Alias: "gpt-4o"}
	kc := &auth.Caller{Method: auth.MethodOIDC, IssuerName: "keycloak", AppID: "b", Groups: []string{"ml"}}
	if _, err := p.Authorize(kc, chat); err != nil {
		t.Fatalf("keycloak group assignment: %v", err)
	}
	if _, err := p.Authorize(&auth.Caller{Method: auth.MethodEntra, AppID: "b", Groups: []string{"ml"}}, chat); err == nil {
		t.Fatal("an Entra group matched a keycloak-only assignment")
	}
}
