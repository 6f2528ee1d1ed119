// Package auth owns inbound identity: Entra ID and OIDC bearer tokens
// (verified against the issuers' published keys), gateway-issued keys, the
// refusal of Azure api-keys, and the Caller every later step acts on.
package auth

import (
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// Method says how a caller authenticated.
type Method string

// Authentication methods.
const (
	MethodEntra      Method = "entra"       // Microsoft Entra ID token
	MethodOIDC       Method = "oidc"        // token from another OIDC issuer
	MethodGatewayKey Method = "gateway-key" // key issued by "tokengate keys create"
	MethodAnonymous  Method = "anonymous"   // identity.anonymous: true
)

// Caller is who is calling. It is immutable once built and shared by every
// request that presents the same token (from the verified-token cache).
type Caller struct {
	// Method is how the caller authenticated.
	Method Method
	// Issuer is the token's iss (or the gateway-key store for keys).
	Issuer string
	// IssuerName is the identity.issuers entry that verified the token; ""
	// for Entra ID and gateway keys. App ids and role assignments match only
	// within their own issuer.
	IssuerName string
	// TenantID is the Entra tid claim.
	TenantID string
	// AppID is the calling application: appid (v1), azp (v2) or the
	// issuer's configured app claim.
	AppID string
	// ObjectID is the oid claim (the user or service principal).
	ObjectID string
	// Roles, Groups and Scopes are the roles, groups and scp claims.
	Roles, Groups, Scopes []string
	// DisplayName is upn, preferred_username or name: for display and logs
	// only, never for decisions.
	DisplayName string
	// App is the registered app; nil for an unregistered app admitted by
	// identity.unknown_apps: allow.
	App *config.App
	// PassThrough is true when the token's audience is Azure OpenAI itself,
	// so backends with auth type "caller" may forward Token.
	PassThrough bool
	// Token is the raw bearer token, kept only when PassThrough.
	Token string
	// ExpiresAt is when the credential stops being valid (zero for keys).
	ExpiresAt time.Time
	// KeyPrefix is the public prefix of the gateway key used, if any.
	KeyPrefix string
}

// AppName is the registered app's name, or "unknown".
func (c *Caller) AppName() string {
	if c == nil || c.App == nil {
		return "unknown"
	}
	return c.App.Name
}
