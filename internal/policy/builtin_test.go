package policy

import (
	"net/http"
	"testing"

	"github.com/tokengate/tokengate/internal/openai"
)

const builtinDoc = base + keysIdentity + `
apps:
  - name: user-app
    roles: [openai-user]
  - name: contributor-app
    roles: [openai-contributor]
  - name: no-role-app
`

// TestBuiltinRoles checks the action and both built-in roles' answer for
// every operation the gateway routes, under every method it accepts there.
func TestBuiltinRoles(t *testing.T) {
	const (
		get, head, post, put, patch, del = http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete
	)
	tests := []struct {
		method, path string
		action       string
		user         bool
		contributor  bool
	}{
		// Routed inference operations (POST only: ParseRoute refuses others).
		{post, "/openai/deployments/gpt-4o/chat/completions", "deployments/chat/completions/action", true, true},
		{post, "/openai/deployments/gpt-4o/extensions/chat/completions", "deployments/chat/completions/action", true, true},
		{post, "/openai/v1/chat/completions", "deployments/chat/completions/action", true, true},
		{post, "/v1/chat/completions", "deployments/chat/completions/action", true, true},
		{post, "/openai/deployments/gpt-4o/completions", "deployments/completions/action", true, true},
		{post, "/openai/v1/completions", "deployments/completions/action", true, true},
		{post, "/openai/deployments/text-embedding-3-small/embeddings", "deployments/embeddings/action", true, true},
		{post, "/v1/embeddings", "deployments/embeddings/action", true, true},
		{post, "/openai/deployments/gpt-4o/images/generations", "deployments/images/generations/action", true, true},
		{post, "/openai/v1/images/generations", "deployments/images/generations/action", true, true},
		{post, "/openai/deployments/gpt-4o/audio/transcriptions", "deployments/audio/transcriptions/action", true, true},
		{post, "/openai/deployments/gpt-4o/audio/translations", "deployments/audio/translations/action", true, true},
		{post, "/openai/deployments/gpt-4o/audio/speech", "deployments/audio/speech/action", true, true},
		// Routed operations the gateway does not know by name.
		{post, "/openai/deployments/gpt-4o/realtime", "deployments/realtime/action", true, true},
		{get, "/openai/deployments/gpt-4o/some/thing", "deployments/some/thing/action", true, true},
		{post, "/openai/deployments/gpt-4o/Chat/Completions", "deployments/chat/completions/action", true, true},

		// files (uploads are files too)
		{get, "/openai/files", "files/read", true, true},
		{head, "/openai/files/file-1", "files/read", true, true},
		{post, "/openai/files", "files/write", false, true},
		{put, "/openai/files/file-1", "files/write", false, true},
		{patch, "/openai/files/file-1", "files/write", false, true},
		{del, "/openai/files/file-1", "files/delete", false, true},
		{post, "/openai/v1/uploads", "files/write", false, true},
		{get, "/openai/files/file-1/content", "files/read", true, true},

		// fine_tuning (all three path spellings)
		{get, "/openai/fine_tuning/jobs", "fine_tuning/read", true, true},
		{head, "/openai/fine_tuning/jobs/ft-1", "fine_tuning/read", true, true},
		{post, "/openai/fine_tuning/jobs", "fine_tuning/write", false, true},
		{put, "/openai/fine-tunes/ft-1", "fine_tuning/write", false, true},
		{patch, "/openai/fine_tunes/ft-1", "fine_tuning/write", false, true},
		{del, "/openai/fine_tuning/jobs/ft-1", "fine_tuning/delete", false, true},

		// batches
		{get, "/openai/batches", "batches/read", true, true},
		{head, "/openai/batches/b-1", "batches/read", true, true},
		{post, "/openai/batches", "batches/write", false, true},
		{put, "/openai/batches/b-1", "batches/write", false, true},
		{patch, "/openai/batches/b-1", "batches/write", false, true},
		{del, "/openai/batches/b-1", "batches/delete", false, true},

		// deployments (listing and getting them)
		{get, "/openai/deployments", "deployments/read", true, true},
		{get, "/openai/deployments/gpt-4o", "deployments/read", true, true},
		{head, "/openai/deployments/gpt-4o", "deployments/read", true, true},
		{post, "/openai/deployments", "deployments/write", false, true},
		{put, "/openai/deployments/gpt-4o", "deployments/write", false, true},
		{patch, "/openai/deployments/gpt-4o", "deployments/write", false, true},
		{del, "/openai/deployments/gpt-4o", "deployments/delete", false, true},

		// models
		{get, "/openai/models", "models/read", true, true},
		{head, "/v1/models/gpt-4o", "models/read", true, true},
		{post, "/openai/models", "models/write", false, true},
		{put, "/openai/models/m-1", "models/write", false, true},
		{patch, "/openai/models/m-1", "models/write", false, true},
		{del, "/openai/models/m-1", "models/delete", false, true},

		// responses
		{get, "/openai/v1/responses/resp-1", "responses/read", true, true},
		{head, "/openai/v1/responses/resp-1", "responses/read", true, true},
		{post, "/openai/v1/responses", "responses/write", true, true},
		{put, "/openai/v1/responses/resp-1", "responses/write", true, true},
		{patch, "/openai/v1/responses/resp-1", "responses/write", true, true},
		{del, "/openai/v1/responses/resp-1", "responses/delete", true, true},

		// assistants
		{get, "/openai/assistants", "assistants/read", true, true},
		{head, "/openai/assistants/asst-1", "assistants/read", true, true},
		{post, "/openai/assistants", "assistants/write", true, true},
		{put, "/openai/assistants/asst-1", "assistants/write", true, true},
		{patch, "/openai/assistants/asst-1", "assistants/write", true, true},
		{del, "/openai/assistants/asst-1", "assistants/delete", true, true},

		// threads
		{get, "/openai/threads/t-1/messages", "threads/read", true, true},
		{head, "/openai/threads/t-1", "threads/read", true, true},
		{post, "/openai/threads/t-1/runs", "threads/write", true, true},
		{put, "/openai/threads/t-1", "threads/write", true, true},
		{patch, "/openai/threads/t-1", "threads/write", true, true},
		{del, "/openai/threads/t-1", "threads/delete", true, true},

		// vector_stores
		{get, "/openai/vector_stores", "vector_stores/read", true, true},
		{head, "/openai/vector_stores/vs-1", "vector_stores/read", true, true},
		{post, "/openai/vector_stores", "vector_stores/write", true, true},
		{put, "/openai/vector_stores/vs-1", "vector_stores/write", true, true},
		{patch, "/openai/vector_stores/vs-1/files", "vector_stores/write", true, true},
		{del, "/openai/vector_stores/vs-1", "vector_stores/delete", true, true},

		// other (realtime, evals, stored completions, operations, ...)
		{get, "/openai/realtime", "other/read", false, true},
		{head, "/openai/operations/images/op-1", "other/read", false, true},
		{post, "/openai/v1/evals", "other/write", false, true},
		{put, "/openai/stored_completions/c-1", "other/write", false, true},
		{patch, "/openai/chat/completions/c-1", "other/write", false, true},
		{del, "/openai/stored_completions/c-1", "other/delete", false, true},
	}
	p, cfg := newPolicy(t, builtinDoc)
	user := appCaller(t, cfg, "user-app")
	contributor := appCaller(t, cfg, "contributor-app")
	none := appCaller(t, cfg, "no-role-app")
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req := request(t, tt.method, tt.path, openai.Body{})
			d, err := p.Authorize(user, req)
			if d.Action != tt.action {
				t.Errorf("Action = %q, want %q", d.Action, tt.action)
			}
			if got := err == nil; got != tt.user {
				t.Errorf("openai-user allowed = %v, want %v (err %v)", got, tt.user, err)
			}
			if !tt.user {
				wantRefusal(t, err, http.StatusForbidden, "PermissionDenied",
					"app user-app (roles: openai-user) may not perform "+tt.action)
			}
			if _, err := p.Authorize(contributor, req); (err == nil) != tt.contributor {
				t.Errorf("openai-contributor allowed = %v, want %v (err %v)", err == nil, tt.contributor, err)
			}
			_, err = p.Authorize(none, req)
			wantRefusal(t, err, http.StatusForbidden, "PermissionDenied", "app no-role-app (roles: none)")
		})
	}
}

// TestAction covers the exported Action beside Authorize, including routes
// that ParseRoute never produces.
func TestAction(t *testing.T) {
	tests := []struct {
		name   string
		method string
		route  openai.Route
		want   string
	}{
		{"azure chat", http.MethodPost, openai.Route{Op: openai.OpChatCompletions, Alias: "gpt-4o", Suffix: "chat/completions"}, "deployments/chat/completions/action"},
		{"v1 embeddings", http.MethodPost, openai.Route{Op: openai.OpEmbeddings, ModelInBody: true, Suffix: "embeddings"}, "deployments/embeddings/action"},
		{"routed other", http.MethodPost, openai.Route{Op: openai.OpOther, Alias: "gpt-4o", Suffix: "x/y"}, "deployments/x/y/action"},
		{"routed other without suffix", http.MethodPost, openai.Route{Op: openai.OpOther, Alias: "gpt-4o"}, "deployments/other/action"},
		{"files get", http.MethodGet, openai.Route{Op: openai.OpFiles, Suffix: "/openai/files"}, "files/read"},
		{"files options is a write", http.MethodOptions, openai.Route{Op: openai.OpFiles}, "files/write"},
		{"unknown pass-through op", http.MethodDelete, openai.Route{Op: "widgets"}, "widgets/delete"},
		{"routed path case is folded", http.MethodPost, openai.Route{Op: openai.OpOther, Alias: "gpt-4o", Suffix: "Images/Generations"}, "deployments/images/generations/action"},
		{"empty op", http.MethodGet, openai.Route{}, "other/read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Action(tt.method, tt.route); got != tt.want {
				t.Errorf("Action = %q, want %q", got, tt.want)
			}
		})
	}
}
