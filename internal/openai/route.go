package openai

import (
	"net/http"
	"strings"
)

// Operation names what a request does, independent of the path style that
// carried it. Policy (which operations an app may call) and metering key on it.
type Operation string

// Operations the gateway recognises. Only the first three are metered for tokens.
const (
	OpChatCompletions     Operation = "chat/completions"
	OpCompletions         Operation = "completions"
	OpEmbeddings          Operation = "embeddings"
	OpImagesGenerations   Operation = "images/generations"
	OpAudioTranscriptions Operation = "audio/transcriptions"
	OpAudioTranslations   Operation = "audio/translations"
	OpAudioSpeech         Operation = "audio/speech"
	OpFiles               Operation = "files"
	OpFineTuning          Operation = "fine_tuning"
	OpBatches             Operation = "batches"
	OpDeployments         Operation = "deployments"
	OpModels              Operation = "models"
	OpResponses           Operation = "responses"
	OpAssistants          Operation = "assistants"
	OpThreads             Operation = "threads"
	OpVectorStores        Operation = "vector_stores"
	OpOther               Operation = "other"
)

// Metered reports whether the gateway reads token usage for op.
func (op Operation) Metered() bool {
	return op == OpChatCompletions || op == OpCompletions || op == OpEmbeddings
}

// Route is what a request path says.
type Route struct {
	// Op is the operation.
	Op Operation
	// Alias is the model alias named in an Azure-style path
	// (/openai/deployments/{alias}/...); empty otherwise.
	Alias string
	// ModelInBody is true for v1-style paths whose JSON body names the model
	// alias ("model"), so the gateway must peek at the body to route.
	ModelInBody bool
	// Suffix is the operation's path below the deployment or v1 prefix,
	// e.g. "chat/completions"; for pass-through routes, the whole path.
	Suffix string
}

// Routed reports whether the request is served by a model alias's
// deployments (as opposed to passed through to one backend as-is).
func (r Route) Routed() bool { return r.Alias != "" || r.ModelInBody }

// deploymentOps are the operations below /openai/deployments/{d}/.
var deploymentOps = map[string]Operation{
	"chat/completions":            OpChatCompletions,
	"completions":                 OpCompletions,
	"embeddings":                  OpEmbeddings,
	"images/generations":          OpImagesGenerations,
	"audio/transcriptions":        OpAudioTranscriptions,
	"audio/translations":          OpAudioTranslations,
	"audio/speech":                OpAudioSpeech,
	"extensions/chat/completions": OpChatCompletions,
}

// v1BodyOps are v1-style operations with a JSON body naming the model.
var v1BodyOps = map[string]Operation{
	"chat/completions":   OpChatCompletions,
	"completions":        OpCompletions,
	"embeddings":         OpEmbeddings,
	"images/generations": OpImagesGenerations,
}

// passThroughOps classify other /openai/ and /v1/ paths by first segment.
var passThroughOps = map[string]Operation{
	"files":              OpFiles,
	"fine_tuning":        OpFineTuning,
	"fine-tunes":         OpFineTuning,
	"fine_tunes":         OpFineTuning,
	"batches":            OpBatches,
	"deployments":        OpDeployments,
	"models":             OpModels,
	"responses":          OpResponses,
	"assistants":         OpAssistants,
	"threads":            OpThreads,
	"vector_stores":      OpVectorStores,
	"audio":              OpOther,
	"images":             OpOther,
	"chat":               OpOther,
	"operations":         OpOther,
	"realtime":           OpOther,
	"uploads":            OpFiles,
	"evals":              OpOther,
	"stored_completions": OpOther,
}

// methods are the only methods served, spelled as RFC 9110 does: a backend
// that compares methods case-insensitively must never see "delete" where
// the gateway authorized a write.
var methods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// lookupOp finds suffix in ops ignoring letter case (backends route
// case-insensitively) and returns the canonical suffix with the operation.
func lookupOp(ops map[string]Operation, suffix string) (string, Operation, bool) {
	if op, ok := ops[suffix]; ok {
		return suffix, op, true
	}
	lower := strings.ToLower(suffix)
	op, ok := ops[lower]
	return lower, op, ok
}

// ParseRoute classifies a request by method and (decoded) URL path. It
// returns a 404 or 405 *Error for paths the gateway does not serve. Known
// operation suffixes are matched ignoring case and returned in canonical
// form, so a case variant cannot dodge the rules keyed on the operation. It
// never allocates for the common routes.
func ParseRoute(method, path string) (Route, error) {
	if !methods[method] {
		return Route{}, methodNotAllowed(method, path)
	}
	if !cleanPath(path) {
		return Route{}, notFound(path)
	}
	var rest string
	var v1 bool
	switch {
	case strings.HasPrefix(path, "/openai/deployments/"):
		rest = path[len("/openai/deployments/"):]
		alias, suffix, ok := strings.Cut(rest, "/")
		if !ok || suffix == "" {
			// GET /openai/deployments/{d}: deployment metadata, management plane.
			return Route{Op: OpDeployments, Suffix: path}, nil
		}
		suffix, op, known := lookupOp(deploymentOps, suffix)
		if !known {
			op = OpOther
		}
		if method != http.MethodPost && known {
			return Route{}, methodNotAllowed(method, path)
		}
		return Route{Op: op, Alias: alias, Suffix: suffix}, nil
	case strings.HasPrefix(path, "/openai/v1/"):
		rest, v1 = path[len("/openai/v1/"):], true
	case strings.HasPrefix(path, "/v1/"):
		rest, v1 = path[len("/v1/"):], true
	case strings.HasPrefix(path, "/openai/"):
		rest = path[len("/openai/"):]
	default:
		return Route{}, notFound(path)
	}
	if v1 {
		if suffix, op, ok := lookupOp(v1BodyOps, rest); ok {
			if method != http.MethodPost {
				return Route{}, methodNotAllowed(method, path)
			}
			return Route{Op: op, ModelInBody: true, Suffix: suffix}, nil
		}
	}
	first, _, _ := strings.Cut(rest, "/")
	op, ok := passThroughOps[first]
	if !ok {
		return Route{}, notFound(path)
	}
	return Route{Op: op, Suffix: path}, nil
}

// cleanPath rejects empty, "." and ".." segments so a pass-through path can
// never be normalised by a backend into something the gateway did not classify.
func cleanPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

func notFound(path string) *Error {
	if len(path) > 200 {
		path = path[:200] + "..."
	}
	return Errorf(http.StatusNotFound, "404",
		"Resource not found: %q is not an Azure OpenAI path this gateway serves (use /openai/deployments/{model}/chat/completions, /openai/v1/... or /v1/...)", path)
}

func methodNotAllowed(method, path string) *Error {
	if len(method) > 20 {
		method = method[:20] + "..."
	}
	return Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "%q is not allowed on %s", method, path)
}

// JSONBody reports whether op's request body is JSON that names the model
// and generation settings (as opposed to multipart audio uploads).
func (op Operation) JSONBody() bool {
	return op == OpChatCompletions || op == OpCompletions || op == OpEmbeddings || op == OpImagesGenerations
}
