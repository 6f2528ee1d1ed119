package policy

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/openai"
)

const benchDoc = base + entraIdentity + `
roles:
  - name: text-only
    actions: ["deployments/*/action", "*/read"]
    not_actions: ["deployments/images/*", "other/*"]
apps:
  - name: batch-app
    app_ids: [11111111-1111-1111-1111-111111111111]
    roles: [openai-user]
    streaming: false
    max_tokens: {cap: 256}
  - name: clamp-app
    app_ids: [22222222-2222-2222-2222-222222222222]
    roles: [text-only]
    models: [gpt-4o, gpt-4o-mini]
    max_tokens: {cap: 100, mode: clamp}
role_assignments:
  - role: openai-contributor
    groups: [grp-admins]
  - role: openai-user
    groups: [grp-ml]
`

func BenchmarkAuthorize(b *testing.B) {
	p, cfg := newPolicy(b, benchDoc)
	batch := appCaller(b, cfg, "batch-app")
	clamp := appCaller(b, cfg, "clamp-app")
	// An unregistered app granted openai-user by the last of 50 groups, as
	// Entra tokens carry many groups.
	grouped := &auth.Caller{Method: auth.MethodEntra, AppID: "33333333-3333-3333-3333-333333333333"}
	for i := range 49 {
		grouped.Groups = append(grouped.Groups, fmt.Sprintf("grp-%02d", i))
	}
	grouped.Groups = append(grouped.Groups, "grp-ml")
	chat := request(b, http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", openai.Body{MaxTokens: 200})
	cases := []struct {
		name   string
		caller *auth.Caller
		req    Request
	}{
		{"routed/app-role", batch, chat},
		{"routed/absent-max-tokens", batch, request(b, http.MethodPost, "/v1/chat/completions", openai.Body{})},
		{"routed/clamp-custom-role-models", clamp, request(b, http.MethodPost, "/openai/deployments/gpt-4o/chat/completions", openai.Body{MaxCompletionTokens: 5000})},
		{"routed/group-assignment", grouped, chat},
		{"routed/unnamed-op", batch, request(b, http.MethodPost, "/openai/deployments/gpt-4o/realtime", openai.Body{})},
		{"pass-through/read", batch, request(b, http.MethodGet, "/openai/batches", openai.Body{})},
		{"refused/files-write", batch, request(b, http.MethodPost, "/openai/files", openai.Body{})},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = p.Authorize(bc.caller, bc.req)
			}
		})
	}
}

func BenchmarkAction(b *testing.B) {
	route, err := openai.ParseRoute(http.MethodGet, "/openai/vector_stores/vs-1")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = Action(http.MethodGet, route)
	}
}

func BenchmarkPatternMatch(b *testing.B) {
	p := compilePattern("deployments/*/action")
	b.ReportAllocs()
	for b.Loop() {
		_ = p.match("deployments/chat/completions/action")
	}
}
