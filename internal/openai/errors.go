// Package openai owns the OpenAI / Azure OpenAI API surface as the gateway
// sees it: which operation a path names, the few body fields the gateway acts
// on, and the error shape every client receives.
package openai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// Error is an error a client sees: an HTTP status plus the Azure/OpenAI error
// body {"error":{"code":..,"message":..}}. Messages say what to do next and
// never echo credentials.
type Error struct {
	Status  int
	Code    string
	Message string
	// Header holds extra response headers (e.g. retry-after).
	Header http.Header
	// Err is the cause, for logs; never shown to the client.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// StatusClientClosed is logged (never sent) when the client hung up first,
// following nginx's 499.
const StatusClientClosed = 499

// AsError maps any error to the *Error a client sees. It is the one place
// where errors become HTTP statuses.
func AsError(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.Canceled):
		return &Error{Status: StatusClientClosed, Code: "client_closed", Message: "the client closed the request", Err: err}
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return &Error{Status: http.StatusGatewayTimeout, Code: "upstream_timeout",
			Message: "the backend did not answer in time; retry later", Err: err}
	case errors.Is(err, http.ErrAbortHandler):
		return &Error{Status: http.StatusBadGateway, Code: "upstream_error", Message: "the backend aborted the response", Err: err}
	default:
		var me *http.MaxBytesError
		if errors.As(err, &me) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Code: "request_too_large",
				Message: fmt.Sprintf("the request body is larger than the gateway's limit of %d bytes", me.Limit), Err: err}
		}
		return &Error{Status: http.StatusBadGateway, Code: "upstream_unreachable",
			Message: "the backend could not be reached; retry later", Err: err}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// WriteError writes err to w in the Azure/OpenAI JSON error shape. A client
// that has gone away gets nothing. It returns the status it chose, for logs.
func WriteError(w http.ResponseWriter, err error) int {
	e := AsError(err)
	if n, ok := w.(interface{ NoteError(*Error) }); ok {
		n.NoteError(e) // the usage record's error code and reason
	}
	if e.Status == StatusClientClosed {
		return e.Status
	}
	h := w.Header()
	for k, vs := range e.Header {
		h[k] = vs
	}
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(e.Status)
	// Messages quote things like "Bearer <token>": keep them readable raw.
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(errorBody{Error: errorDetail{Code: e.Code, Message: e.Message}})
	return e.Status
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}
