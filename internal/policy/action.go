package policy

import (
	"net/http"
	"strings"

	"github.com/tokengate/tokengate/internal/openai"
)

// routedOps are the model operations with a fixed data action
// "deployments/<op>/action", in the order of their known-action index.
var routedOps = [...]openai.Operation{
	openai.OpChatCompletions,
	openai.OpCompletions,
	openai.OpEmbeddings,
	openai.OpImagesGenerations,
	openai.OpAudioTranscriptions,
	openai.OpAudioTranslations,
	openai.OpAudioSpeech,
}

// resources are the pass-through operations, each with a read, write and
// delete action, in the order of their known-action index.
var resources = [...]openai.Operation{
	openai.OpFiles,
	openai.OpFineTuning,
	openai.OpBatches,
	openai.OpDeployments,
	openai.OpModels,
	openai.OpResponses,
	openai.OpAssistants,
	openai.OpThreads,
	openai.OpVectorStores,
	openai.OpOther,
}

// Verbs of pass-through actions, in the order of their known-action index.
const (
	verbRead = iota
	verbWrite
	verbDelete
	numVerbs
)

var verbs = [numVerbs]string{"read", "write", "delete"}

// knownActions holds every action whose string is fixed, so Authorize can
// answer them from a per-role bit mask computed in New and never builds or
// matches a string for them. Its length must stay within 64 (one uint64).
var knownActions = buildKnownActions()

func buildKnownActions() []string {
	out := make([]string, 0, len(routedOps)+len(resources)*numVerbs)
	for _, op := range routedOps {
		out = append(out, "deployments/"+string(op)+"/action")
	}
	for _, op := range resources {
		for _, v := range verbs {
			out = append(out, string(op)+"/"+v)
		}
	}
	if len(out) > 64 {
		panic("policy: more than 64 known actions; widen the role masks")
	}
	return out
}

// Action returns the data action a request performs, modelled on Azure RBAC
// data actions without the "Microsoft.CognitiveServices/accounts/OpenAI/"
// prefix:
//
//   - a routed (model) operation is "deployments/<operation>/action", e.g.
//     "deployments/chat/completions/action"; a routed operation the gateway
//     does not know by name is "deployments/<path below the deployment>/action";
//   - a pass-through operation is "<resource>/read" for GET and HEAD,
//     "<resource>/delete" for DELETE and "<resource>/write" for any other
//     method, where resource is the route's Operation (files, fine_tuning,
//     batches, deployments, models, responses, assistants, threads,
//     vector_stores, other).
//
// Actions are lower case: a path's letter case does not change its action.
// It does not allocate for any operation the gateway knows by name.
func Action(method string, route openai.Route) string {
	name, _ := resolve(method, &route)
	return name
}

// resolve returns the action and its index in knownActions, or -1 when the
// action string had to be built.
func resolve(method string, r *openai.Route) (string, int) {
	if r.Routed() {
		if i := routedIndex(r.Op); i >= 0 {
			return knownActions[i], i
		}
		suffix := r.Suffix
		if suffix == "" {
			suffix = string(r.Op)
		}
		return lower("deployments/" + suffix + "/action"), -1
	}
	v := verbOf(method)
	if i := resourceIndex(r.Op); i >= 0 {
		k := len(routedOps) + i*numVerbs + v
		return knownActions[k], k
	}
	op := r.Op
	if op == "" {
		op = openai.OpOther
	}
	return lower(string(op) + "/" + verbs[v]), -1
}

// lower folds ASCII upper case, allocating only when there is some: roles
// match case-insensitively, so "deployments/Images/Generations/action" is
// the same action as "deployments/images/generations/action".
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

func verbOf(method string) int {
	switch method {
	case http.MethodGet, http.MethodHead:
		return verbRead
	case http.MethodDelete:
		return verbDelete
	}
	return verbWrite
}

// routedIndex and resourceIndex are switches, not loops, so the compiler
// can dispatch on length and content instead of comparing one by one; the
// test TestIndexesAgree keeps them in step with routedOps and resources.
func routedIndex(op openai.Operation) int {
	switch op {
	case openai.OpChatCompletions:
		return 0
	case openai.OpCompletions:
		return 1
	case openai.OpEmbeddings:
		return 2
	case openai.OpImagesGenerations:
		return 3
	case openai.OpAudioTranscriptions:
		return 4
	case openai.OpAudioTranslations:
		return 5
	case openai.OpAudioSpeech:
		return 6
	}
	return -1
}

func resourceIndex(op openai.Operation) int {
	switch op {
	case openai.OpFiles:
		return 0
	case openai.OpFineTuning:
		return 1
	case openai.OpBatches:
		return 2
	case openai.OpDeployments:
		return 3
	case openai.OpModels:
		return 4
	case openai.OpResponses:
		return 5
	case openai.OpAssistants:
		return 6
	case openai.OpThreads:
		return 7
	case openai.OpVectorStores:
		return 8
	case openai.OpOther:
		return 9
	}
	return -1
}
