package simulator

import (
	"fmt"
	"net/http"
)

// apiError is an error response. Azure answers in two shapes, depending on
// which layer refuses the request, and the simulator keeps both:
//
//   - the resource gateway (auth, routing, quotas):
//     {"error":{"code":"404","message":"Resource not found"}}
//   - the model service (request validation, server errors):
//     {"error":{"message":"...","type":"invalid_request_error","param":null,"code":null}}
//
// typ == "" selects the first shape.
type apiError struct {
	status  int
	code    string // "" is JSON null in the model shape
	message string
	typ     string
	param   string // "" is JSON null
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.message) }

func (e *apiError) appendJSON(b []byte) []byte {
	b = append(b, `{"error":{`...)
	if e.typ == "" {
		b = appendKey(b, "code")
		b = appendString(b, e.code)
		b = append(b, ',')
		b = appendKey(b, "message")
		b = appendString(b, e.message)
		return append(b, "}}"...)
	}
	b = appendKey(b, "message")
	b = appendString(b, e.message)
	b = append(b, ',')
	b = appendKey(b, "type")
	b = appendString(b, e.typ)
	b = append(b, ',')
	b = appendKey(b, "param")
	if e.param == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, e.param)
	}
	b = append(b, ',')
	b = appendKey(b, "code")
	if e.code == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, e.code)
	}
	return append(b, "}}"...)
}

// Gateway-layer errors, with Azure's codes and messages.
var (
	errNotFound = &apiError{status: http.StatusNotFound, code: "404", message: "Resource not found"}

	errUnauthorized = &apiError{status: http.StatusUnauthorized, code: "401",
		message: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}

	errDeploymentNotFound = &apiError{status: http.StatusNotFound, code: "DeploymentNotFound",
		message: "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}
)

func errOperationNotSupported(op operation, model string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "OperationNotSupported",
		message: fmt.Sprintf("The %s operation does not work with the specified model, %s. Please choose different model and try again. You can learn more about which models can be used with each operation here: https://go.microsoft.com/fwlink/?linkid=2197993.", op.azureOperation(), model)}
}

// errRateLimited is Azure's 429. kind is "call" (requests per minute) or
// "token" (tokens per minute).
func errRateLimited(op operation, apiVersion, kind string, retrySeconds int) *apiError {
	return &apiError{status: http.StatusTooManyRequests, code: "429",
		message: fmt.Sprintf("Requests to the %s Operation under Azure OpenAI API version %s have exceeded %s rate limit of your current OpenAI S0 pricing tier. Please retry after %d second%s. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
			op.quotaOperation(), apiVersion, kind, retrySeconds, plural(retrySeconds))}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Model-layer errors, in OpenAI's shape.

func errInvalidRequest(param, code, message string) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: param, code: code, message: message}
}

var errBadJSON = &apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
	message: "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"}

func errBodyTooLarge(limit int64) *apiError {
	return &apiError{status: http.StatusRequestEntityTooLarge, typ: "invalid_request_error",
		message: fmt.Sprintf("The request body is larger than the simulator's limit of %d bytes. Send a smaller request.", limit)}
}

func errServer(requestID string) *apiError {
	return &apiError{status: http.StatusInternalServerError, typ: "server_error",
		message: "The server had an error while processing your request. Sorry about that! You can retry your request, or contact us through an Azure support request at: https://go.microsoft.com/fwlink/?linkid=2213926 if the error persists. (Please include the request ID " + requestID + " in your message.)"}
}

var errUnavailable = &apiError{status: http.StatusServiceUnavailable, typ: "server_error",
	message: "The service is temporarily unable to process your request. Please try again later."}
