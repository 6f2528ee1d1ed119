package auth

import (
	"errors"
	"net/http"

	"github.com/tokengate/tokengate/internal/openai"
)

// Error codes the client sees in {"error":{"code":..}}. They are stable: clients
// and dashboards may match on them.
const (
	CodeUnauthorized      = "unauthorized"         // 401: no credentials at all
	CodeInvalidToken      = "invalid_token"        // 401: a bearer token was refused
	CodeAPIKeyNotAccepted = "api_key_not_accepted" // 401: an Azure api-key / subscription key
	CodeInvalidAPIKey     = "invalid_api_key"      // 401: a gateway key that is unknown or revoked
	CodeAppNotRegistered  = "app_not_registered"   // 403: valid caller, app not under apps
	CodeTenantNotAllowed  = "tenant_not_allowed"   // 403: pass-through tenant not allowed
	CodeAppNotAllowed     = "app_not_allowed"      // 403: pass-through app not allowed
)

// Causes carried in openai.Error.Err for logs. They never contain a token.
var (
	errMalformed    = errors.New("malformed token")
	errAlgorithm    = errors.New("signing algorithm not accepted")
	errNoKID        = errors.New("token header has no kid")
	errUnknownKey   = errors.New("signing key not found in the issuer's key set")
	errKeyType      = errors.New("signing key is not an RSA signature key")
	errIssuer       = errors.New("issuer not accepted")
	errAudience     = errors.New("audience not accepted")
	errClaims       = errors.New("required claim missing or wrong")
	errUnknownApp   = errors.New("app not registered")
	errPassThrough  = errors.New("pass-through caller not allowed")
	errAPIKey       = errors.New("api key refused")
	errGatewayKey   = errors.New("gateway key refused")
	errNoCredential = errors.New("no credentials")
)

// unauthorized builds a 401. tokenPresented adds error="invalid_token" to
// WWW-Authenticate (RFC 6750 section 3.1).
func unauthorized(code, msg string, tokenPresented bool, cause error) *openai.Error {
	challenge := "Bearer"
	if tokenPresented {
		challenge = `Bearer error="invalid_token"`
	}
	return &openai.Error{
		Status:  http.StatusUnauthorized,
		Code:    code,
		Message: msg,
		Header:  http.Header{"Www-Authenticate": {challenge}},
		Err:     cause,
	}
}

// invalidToken is the 401 for a presented bearer token that failed a check.
func invalidToken(msg string, cause error) *openai.Error {
	return unauthorized(CodeInvalidToken, msg, true, cause)
}

func forbidden(code, msg string, cause error) *openai.Error {
	return &openai.Error{Status: http.StatusForbidden, Code: code, Message: msg, Err: cause}
}

// maxIDLen bounds the claim and header values that may appear in messages:
// ids (GUIDs, client ids, kids) are shown, anything longer is not.
const maxIDLen = 64

// safeID returns s if it looks like an identifier short enough to echo back,
// otherwise a placeholder. Messages must never echo tokens or long claims.
func safeID(s string) string {
	if s == "" || len(s) > maxIDLen {
		return "(not shown)"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '.', c == ':':
		default:
			return "(not shown)"
		}
	}
	return s
}
