package telemetry

import (
	"net"
	"net/url"
	"strconv"

	"go.opentelemetry.io/otel/attribute"

	"github.com/tokengate/tokengate/internal/openai"
)

// GenAI attribute keys, from the OpenTelemetry GenAI semantic conventions
// (github.com/open-telemetry/semantic-conventions-genai). They are written
// out here because semantic conventions v1.42.0 moved gen_ai.* out of the
// core conventions, so go.opentelemetry.io/otel/semconv/v1.43.0 no longer
// has them. The conventions are in development: keys follow the latest
// experimental version (gen_ai.provider.name, not the older gen_ai.system).
const (
	// GenAIOperationName is the operation: "chat", "text_completion",
	// "embeddings", ... (see OperationName).
	GenAIOperationName = attribute.Key("gen_ai.operation.name")
	// GenAIProviderName is the provider flavour: ProviderAzureOpenAI.
	GenAIProviderName = attribute.Key("gen_ai.provider.name")
	// GenAIRequestModel is the model the request names: the client's alias
	// on the request span, the backend's deployment on an attempt span.
	GenAIRequestModel = attribute.Key("gen_ai.request.model")
	// GenAIRequestMaxTokens is max_tokens (or max_completion_tokens).
	GenAIRequestMaxTokens = attribute.Key("gen_ai.request.max_tokens")
	// GenAIRequestStream says the response was requested as a stream.
	GenAIRequestStream = attribute.Key("gen_ai.request.stream")
	// GenAIUsageInputTokens is the prompt's tokens, cached ones included.
	GenAIUsageInputTokens = attribute.Key("gen_ai.usage.input_tokens")
	// GenAIUsageOutputTokens is the completion's tokens, reasoning included.
	GenAIUsageOutputTokens = attribute.Key("gen_ai.usage.output_tokens")
	// GenAIUsageCacheReadInputTokens is the prompt tokens served from the
	// provider's cache.
	GenAIUsageCacheReadInputTokens = attribute.Key("gen_ai.usage.cache_read.input_tokens")
	// GenAIUsageReasoningOutputTokens is the completion tokens spent on
	// reasoning.
	GenAIUsageReasoningOutputTokens = attribute.Key("gen_ai.usage.reasoning.output_tokens")
	// GenAIResponseTimeToFirstChunk is, for a stream, the seconds from the
	// request to its first content chunk.
	GenAIResponseTimeToFirstChunk = attribute.Key("gen_ai.response.time_to_first_chunk")
)

// ProviderAzureOpenAI is gen_ai.provider.name for Azure OpenAI, the API
// every backend of the gateway speaks.
const ProviderAzureOpenAI = "azure.ai.openai"

// The gateway's own attributes.
const (
	// AttrRequestID is the gateway's request id (X-Request-Id).
	AttrRequestID = attribute.Key("tokengate.request_id")
	// AttrApp is the calling app's configured name.
	AttrApp = attribute.Key("tokengate.app")
	// AttrBackend is the backend that served the request (request span) or
	// the attempt (attempt span).
	AttrBackend = attribute.Key("tokengate.backend")
	// AttrDeployment is the deployment that served the final attempt.
	AttrDeployment = attribute.Key("tokengate.deployment")
	// AttrTokenSource says where the token counts came from: "backend",
	// "estimated" or "none" (usage.Source*).
	AttrTokenSource = attribute.Key("tokengate.token_source")
	// AttrOperation is the gateway's operation (openai.Operation), set on
	// every request span, GenAI or not.
	AttrOperation = attribute.Key("tokengate.operation")
	// AttrModel is the model alias of a request whose operation has no
	// GenAI name (audio, ...), where gen_ai.request.model does not apply.
	AttrModel = attribute.Key("tokengate.model")
	// AttrPool is the pool that served the request.
	AttrPool = attribute.Key("tokengate.pool")
	// AttrAttempts is the number of upstream attempts the request made.
	AttrAttempts = attribute.Key("tokengate.attempts")
	// AttrAttempt is an attempt span's 1-based position in its request.
	AttrAttempt = attribute.Key("tokengate.attempt")
	// AttrErrorCode is the error code the client saw.
	AttrErrorCode = attribute.Key("tokengate.error_code")
)

// OperationName maps the gateway's operation to gen_ai.operation.name:
// chat/completions and responses -> "chat", completions ->
// "text_completion", embeddings -> "embeddings", images/generations ->
// "generate_content". Operations that are not a model call of a
// well-known GenAI kind (files, batches, audio, assistants, ...) map to ""
// and get no gen_ai.* attributes.
func OperationName(op openai.Operation) string {
	switch op {
	case openai.OpChatCompletions, openai.OpResponses:
		return "chat"
	case openai.OpCompletions:
		return "text_completion"
	case openai.OpEmbeddings:
		return "embeddings"
	case openai.OpImagesGenerations:
		return "generate_content"
	}
	return ""
}

// SpanName names a span as the GenAI conventions say,
// "{gen_ai.operation.name} {gen_ai.request.model}" ("chat gpt-4o"), or the
// operation name alone when model is empty. An operation without a GenAI
// name is named "{method} {operation}" ("GET files") instead.
func SpanName(op openai.Operation, method, model string) string {
	name := OperationName(op)
	switch {
	case name == "":
		if op == "" {
			return method
		}
		return method + " " + string(op)
	case model == "":
		return name
	}
	return name + " " + model
}

// HostPort returns the server.address and server.port of u: its host and
// its explicit port, or the scheme's default port (443, 80; 0 if unknown).
func HostPort(u *url.URL) (string, int) {
	return splitHostPort(u.Host, u.Scheme)
}

func splitHostPort(hostport, scheme string) (string, int) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		host, portStr = hostport, ""
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		switch scheme {
		case "https":
			port = 443
		case "http":
			port = 80
		default:
			port = 0
		}
	}
	return host, port
}
