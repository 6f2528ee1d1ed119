package config

import "time"

// Identity configures who may call the gateway. At least one of Entra,
// Issuers or GatewayKeys must be set, unless Anonymous is true.
type Identity struct {
	// Audiences are the accepted "aud" values: the gateway's own app
	// registration (application id GUID and/or api:// URI). Required when
	// Entra or Issuers is set.
	Audiences []string `yaml:"audiences"`
	// Entra accepts Microsoft Entra ID tokens from the listed tenants.
	Entra *Entra `yaml:"entra"`
	// Issuers accepts tokens from other OIDC issuers (Keycloak, Okta, ...).
	Issuers []Issuer `yaml:"issuers"`
	// Leeway tolerated on exp and nbf. Default 60s.
	Leeway time.Duration `yaml:"leeway"`
	// JWKSRefresh is how often signing keys are refetched. Default 1h.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// UnknownKIDCooldown is the least time between two refetches caused by
	// tokens with an unknown key id (a flood of random kids costs at most
	// one fetch per cooldown). Default 5m.
	UnknownKIDCooldown time.Duration `yaml:"unknown_kid_cooldown"`
	// UnknownApps says what happens to a valid token from an app that is not
	// in apps: "refuse" (default, 403) or "allow" (served with no roles
	// beyond role_assignments that match its claims).
	UnknownApps string `yaml:"unknown_apps"`
	// TokenCacheSize bounds the verified-token cache. Default 10000.
	TokenCacheSize int `yaml:"token_cache_size"`
	// PassThrough accepts tokens whose audience is Azure OpenAI itself
	// (https://cognitiveservices.azure.com) so backends with auth type
	// "caller" can forward them. Off by default.
	PassThrough PassThrough `yaml:"pass_through"`
	// GatewayKeys lets apps that cannot use Entra ID send a gateway-issued
	// key in the api-key header. Off by default: api-key is refused.
	GatewayKeys GatewayKeys `yaml:"gateway_keys"`
	// Anonymous serves every request without identity, as app "anonymous"
	// with every permission. Only for trusted networks and tests.
	Anonymous bool `yaml:"anonymous"`
}

// Entra configures Microsoft Entra ID as an issuer.
type Entra struct {
	// Tenants are the directory (tenant) ids whose tokens are accepted, in
	// both issuer forms: v1 {v1_issuer_host}/{tid}/ and v2
	// {authority_host}/{tid}/v2.0. The token's tid must match its issuer.
	Tenants []string `yaml:"tenants"`
	// AuthorityHost is where v2 tokens come from and keys are fetched
	// ({authority_host}/{tid}/discovery/v2.0/keys). Default
	// https://login.microsoftonline.com.
	AuthorityHost string `yaml:"authority_host"`
	// V1IssuerHost prefixes v1 issuers. Default https://sts.windows.net.
	V1IssuerHost string `yaml:"v1_issuer_host"`
}

// Issuer is a generic OIDC issuer.
type Issuer struct {
	// Name labels the issuer in logs and the Caller.
	Name string `yaml:"name"`
	// Issuer is the exact "iss" value.
	Issuer string `yaml:"issuer"`
	// JWKSURL is where keys are fetched. Default: jwks_uri from
	// {issuer}/.well-known/openid-configuration, read at start.
	JWKSURL string `yaml:"jwks_url"`
	// AppClaim names the claim holding the calling app's id. Default azp.
	AppClaim string `yaml:"app_claim"`
}

// PassThrough configures tokens meant for Azure OpenAI itself.
type PassThrough struct {
	// Enabled accepts aud https://cognitiveservices.azure.com.
	Enabled bool `yaml:"enabled"`
	// Tenants and Apps (app ids) allowed to use such tokens. Both required
	// when enabled.
	Tenants []string `yaml:"tenants"`
	Apps    []string `yaml:"apps"`
}

// GatewayKeys configures gateway-issued API keys.
type GatewayKeys struct {
	// Enabled accepts keys issued by "tokengate keys create".
	Enabled bool `yaml:"enabled"`
	// File stores the keys' hashes (never the keys). Required when enabled.
	File string `yaml:"file"`
}

// App is a registered calling application.
type App struct {
	// Name is how logs, limits and reports name the app. Required, unique.
	Name string `yaml:"name"`
	// AppIDs are the Entra application (client) ids, or the app claim values
	// of other issuers, that identify it. Required unless the app only uses
	// gateway keys.
	AppIDs []string `yaml:"app_ids"`
	// Issuer names the identity.issuers entry whose tokens carry AppIDs;
	// empty means Microsoft Entra ID (identity.entra). An id is trusted only
	// from its own issuer, so another issuer's admin cannot become this app.
	Issuer string `yaml:"issuer"`
	// Team and CostCenter are carried to usage records for chargebacks.
	Team       string `yaml:"team"`
	CostCenter string `yaml:"cost_center"`
	// Roles assigned to the app (built-in openai-user, openai-contributor,
	// or a custom role).
	Roles []string `yaml:"roles"`
	// Pool serves the app's requests unless the model pins one. Default:
	// the first pool.
	Pool string `yaml:"pool"`
	// Models the app may call; empty means every alias.
	Models []string `yaml:"models"`
	// Streaming allows stream=true. Default true.
	Streaming *bool `yaml:"streaming"`
	// MaxTokens caps max_tokens / max_completion_tokens.
	MaxTokens MaxTokens `yaml:"max_tokens"`
	// Capture is what of the prompt and completion the app's usage records
	// keep: "off" (default: token counts only), "metadata" (sizes and
	// message count) or "full" (the text, after usage.redact).
	Capture string `yaml:"capture"`
	// Limits are the app's request and token limits, quotas and budget;
	// each is enforced on its own (all must admit a request).
	Limits []Limit `yaml:"limits"`
}

// StreamingAllowed reports the effective streaming setting.
func (a App) StreamingAllowed() bool { return a.Streaming == nil || *a.Streaming }

// MaxTokens is a per-app completion-token cap.
type MaxTokens struct {
	// Cap is the largest max_tokens allowed; 0 means no cap.
	Cap int64 `yaml:"cap"`
	// Mode is "reject" (default: 400 for a larger request) or "clamp"
	// (the request is lowered to the cap). A request that names no maximum
	// is given the cap in both modes.
	Mode string `yaml:"mode"`
}

// Role is a custom role: data actions modelled on Azure RBAC, with '*'
// matching any run of characters (e.g. "deployments/*/action", "files/*").
type Role struct {
	Name       string   `yaml:"name"`
	Actions    []string `yaml:"actions"`
	NotActions []string `yaml:"not_actions"`
}

// RoleAssignment grants a role to callers by app id, by Entra app role
// ("roles" claim) or by group ("groups" claim).
type RoleAssignment struct {
	Role string `yaml:"role"`
	// Issuer names the identity.issuers entry whose claims match; empty
	// means Microsoft Entra ID.
	Issuer   string   `yaml:"issuer"`
	AppIDs   []string `yaml:"app_ids"`
	AppRoles []string `yaml:"app_roles"`
	Groups   []string `yaml:"groups"`
}

// AnonymousApp names the app anonymous callers count as (identity.anonymous:
// true). Registering an app with this name (no app_ids needed) gives them
// its team, limits and capture settings.
const AnonymousApp = "anonymous"
