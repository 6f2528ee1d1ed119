package openai

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         Route
		status       int
	}{
		{"POST", "/openai/deployments/gpt-4o/chat/completions", Route{Op: OpChatCompletions, Alias: "gpt-4o", Suffix: "chat/completions"}, 0},
		{"POST", "/openai/deployments/gpt-4o/completions", Route{Op: OpCompletions, Alias: "gpt-4o", Suffix: "completions"}, 0},
		{"POST", "/openai/deployments/emb/embeddings", Route{Op: OpEmbeddings, Alias: "emb", Suffix: "embeddings"}, 0},
		{"POST", "/openai/deployments/dalle/images/generations", Route{Op: OpImagesGenerations, Alias: "dalle", Suffix: "images/generations"}, 0},
		{"POST", "/openai/deployments/whisper/audio/transcriptions", Route{Op: OpAudioTranscriptions, Alias: "whisper", Suffix: "audio/transcriptions"}, 0},
		{"POST", "/openai/deployments/gpt-4o/extensions/chat/completions", Route{Op: OpChatCompletions, Alias: "gpt-4o", Suffix: "extensions/chat/completions"}, 0},
		{"POST", "/openai/deployments/gpt-4o/something/new", Route{Op: OpOther, Alias: "gpt-4o", Suffix: "something/new"}, 0},
		{"GET", "/openai/deployments/gpt-4o", Route{Op: OpDeployments, Suffix: "/openai/deployments/gpt-4o"}, 0},
		{"GET", "/openai/deployments/gpt-4o/chat/completions", Route{}, 405},
		{"POST", "/openai/v1/chat/completions", Route{Op: OpChatCompletions, ModelInBody: true, Suffix: "chat/completions"}, 0},
		{"POST", "/v1/chat/completions", Route{Op: OpChatCompletions, ModelInBody: true, Suffix: "chat/completions"}, 0},
		{"POST", "/v1/embeddings", Route{Op: OpEmbeddings, ModelInBody: true, Suffix: "embeddings"}, 0},
		{"POST", "/v1/completions", Route{Op: OpCompletions, ModelInBody: true, Suffix: "completions"}, 0},
		{"GET", "/v1/chat/completions", Route{}, 405},
		{"POST", "/v1/files", Route{Op: OpFiles, Suffix: "/v1/files"}, 0},
		{"GET", "/openai/v1/models", Route{Op: OpModels, Suffix: "/openai/v1/models"}, 0},
		{"POST", "/openai/v1/responses", Route{Op: OpResponses, Suffix: "/openai/v1/responses"}, 0},
		{"GET", "/openai/files/file-123/content", Route{Op: OpFiles, Suffix: "/openai/files/file-123/content"}, 0},
		{"POST", "/openai/fine_tuning/jobs", Route{Op: OpFineTuning, Suffix: "/openai/fine_tuning/jobs"}, 0},
		{"POST", "/openai/batches", Route{Op: OpBatches, Suffix: "/openai/batches"}, 0},
		{"GET", "/openai/deployments", Route{Op: OpDeployments, Suffix: "/openai/deployments"}, 0},
		{"POST", "/openai/assistants", Route{Op: OpAssistants, Suffix: "/openai/assistants"}, 0},
		{"POST", "/openai/threads/t1/runs", Route{Op: OpThreads, Suffix: "/openai/threads/t1/runs"}, 0},
		{"GET", "/", Route{}, 404},
		{"GET", "/admin", Route{}, 404},
		{"POST", "/openai/unknown", Route{}, 404},
		{"POST", "/openai/deployments/../files", Route{}, 404},
		{"POST", "/openai/deployments//chat/completions", Route{}, 404},
		{"POST", "/v1/chat/completions/", Route{}, 404},
		{"POST", "/openai/./files", Route{}, 404},
		{"POST", "relative", Route{}, 404},
		{"POST", "/openai/deployments/gpt-4o/Chat/Completions", Route{Op: OpChatCompletions, Alias: "gpt-4o", Suffix: "chat/completions"}, 0},
		{"POST", "/openai/deployments/gpt-4o/EMBEDDINGS", Route{Op: OpEmbeddings, Alias: "gpt-4o", Suffix: "embeddings"}, 0},
		{"POST", "/v1/chat/Completions", Route{Op: OpChatCompletions, ModelInBody: true, Suffix: "chat/completions"}, 0},
		{"delete", "/openai/files/file-1", Route{}, 405},
		{"Post", "/v1/chat/completions", Route{}, 405},
		{"PROPFIND", "/openai/files", Route{}, 405},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			got, err := ParseRoute(tc.method, tc.path)
			if tc.status != 0 {
				var e *Error
				if !errors.As(err, &e) || e.Status != tc.status {
					t.Fatalf("got %+v, %v; want status %d", got, err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestOperationKinds(t *testing.T) {
	for _, op := range []Operation{OpChatCompletions, OpCompletions, OpEmbeddings} {
		if !op.Metered() || !op.JSONBody() {
			t.Errorf("%s must be metered with a JSON body", op)
		}
	}
	if OpFiles.Metered() || OpAudioTranscriptions.JSONBody() {
		t.Error("files are not metered; audio is multipart")
	}
}

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{
		"/openai/deployments/gpt-4o/chat/completions", "/v1/chat/completions", "/openai/v1/embeddings",
		"/openai/files/x", "/openai/deployments/", "/openai/deployments//", "//", "/v1/", "/openai/deployments/a/../b",
	} {
		f.Add("POST", s)
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		r, err := ParseRoute(method, path)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status < 400 || e.Status >= 500 {
				t.Fatalf("error must be a 4xx *Error: %v", err)
			}
			return
		}
		if !cleanPath(path) {
			t.Fatalf("accepted unclean path %q", path)
		}
		if r.Op == "" {
			t.Fatalf("no operation for %q", path)
		}
		if r.Routed() && r.Op.JSONBody() && method != http.MethodPost {
			t.Fatalf("%s accepted for %q", method, path)
		}
		if !methods[method] {
			t.Fatalf("method %q accepted", method)
		}
		if r.Op != OpOther && r.Routed() && strings.ToLower(r.Suffix) != r.Suffix {
			t.Fatalf("non-canonical suffix %q for %s", r.Suffix, r.Op)
		}
	})
}
