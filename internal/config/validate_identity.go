package config

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

var guid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// BuiltinRoles are the roles every config has.
var BuiltinRoles = []string{"openai-user", "openai-contributor"}

// CognitiveServicesAudience is the audience of tokens meant for Azure
// OpenAI itself, accepted only with identity.pass_through.
const CognitiveServicesAudience = "https://cognitiveservices.azure.com"

func (c *Config) validateIdentity(bad func(path, format string, args ...any)) {
	id := &c.Identity
	hasIssuer := id.Entra != nil || len(id.Issuers) > 0
	if !hasIssuer && !id.GatewayKeys.Enabled && !id.Anonymous {
		bad("identity", "configure entra, issuers or gateway_keys (or anonymous: true, for a trusted network only)")
	}
	if id.Anonymous && (hasIssuer || id.GatewayKeys.Enabled) {
		bad("identity.anonymous", "cannot be combined with entra, issuers or gateway_keys")
	}
	if hasIssuer && len(id.Audiences) == 0 {
		bad("identity.audiences", "required: the gateway's app id GUID and/or api:// URI")
	}
	for i, a := range id.Audiences {
		if a == "" {
			bad(fmt.Sprintf("identity.audiences[%d]", i), "must not be empty")
		}
		if strings.TrimSuffix(a, "/") == CognitiveServicesAudience {
			bad(fmt.Sprintf("identity.audiences[%d]", i), "Azure OpenAI's own audience is accepted only through identity.pass_through")
		}
	}
	if e := id.Entra; e != nil {
		if len(e.Tenants) == 0 {
			bad("identity.entra.tenants", "at least one tenant id is required")
		}
		for i, t := range e.Tenants {
			if !guid.MatchString(t) {
				bad(fmt.Sprintf("identity.entra.tenants[%d]", i), "%q is not a tenant id (GUID)", t)
			}
		}
		checkIssuerURL(bad, "identity.entra.authority_host", e.AuthorityHost)
		checkIssuerURL(bad, "identity.entra.v1_issuer_host", e.V1IssuerHost)
	}
	names := map[string]bool{}
	for i, is := range id.Issuers {
		p := fmt.Sprintf("identity.issuers[%d]", i)
		if is.Name == "" || names[is.Name] {
			bad(p+".name", "required and unique")
		}
		names[is.Name] = true
		checkIssuerURL(bad, p+".issuer", is.Issuer)
		if is.JWKSURL != "" {
			checkIssuerURL(bad, p+".jwks_url", is.JWKSURL)
		}
	}
	if id.Leeway < 0 || id.Leeway > 10*60e9 {
		bad("identity.leeway", "must be between 0 and 10m")
	}
	if id.JWKSRefresh <= 0 || id.UnknownKIDCooldown <= 0 {
		bad("identity.jwks_refresh", "jwks_refresh and unknown_kid_cooldown must be positive")
	}
	if id.TokenCacheSize < 0 {
		bad("identity.token_cache_size", "must not be negative")
	}
	switch id.UnknownApps {
	case "refuse", "allow":
	default:
		bad("identity.unknown_apps", "must be refuse or allow, not %q", id.UnknownApps)
	}
	if pt := id.PassThrough; pt.Enabled {
		if len(pt.Tenants) == 0 || len(pt.Apps) == 0 {
			bad("identity.pass_through", "tenants and apps are required: they are the allow-list for Azure OpenAI-audience tokens")
		}
		if !hasIssuer {
			bad("identity.pass_through", "needs identity.entra")
		}
	}
	if id.GatewayKeys.Enabled && id.GatewayKeys.File == "" {
		bad("identity.gateway_keys.file", "required when gateway keys are enabled")
	}

	issuerOK := func(path, name string) {
		switch {
		case name == "" && id.Entra == nil && hasIssuer:
			bad(path, "required: name the identity.issuers entry (empty means Entra ID, which is not configured)")
		case name != "" && !names[name]:
			bad(path, "no identity.issuers entry is named %q", name)
		}
	}
	roles := slices.Clone(BuiltinRoles)
	for i, r := range c.Roles {
		p := fmt.Sprintf("roles[%d]", i)
		if r.Name == "" || slices.Contains(roles, r.Name) {
			bad(p+".name", "required, unique, and not a built-in role name")
		}
		roles = append(roles, r.Name)
		if len(r.Actions) == 0 {
			bad(p+".actions", "at least one action is required")
		}
	}
	appIDs := map[string]string{}
	appNames := map[string]bool{}
	for i, a := range c.Apps {
		p := fmt.Sprintf("apps[%d]", i)
		switch {
		case a.Name == "" || !validName(a.Name):
			bad(p+".name", "required; letters, digits, '-', '_' and '.'")
		case a.Name == AnonymousApp && !id.Anonymous:
			bad(p+".name", "\"anonymous\" is reserved for identity.anonymous callers")
		case appNames[a.Name]:
			bad(p+".name", "%q is registered twice", a.Name)
		}
		appNames[a.Name] = true
		if len(a.AppIDs) > 0 {
			issuerOK(p+".issuer", a.Issuer)
		}
		if len(a.AppIDs) == 0 && !id.GatewayKeys.Enabled && !(id.Anonymous && a.Name == AnonymousApp) {
			bad(p+".app_ids", "at least one app id is required (or enable gateway keys for this app)")
		}
		for j, aid := range a.AppIDs {
			key := aid
			if guid.MatchString(aid) {
				key = strings.ToLower(aid) // Entra ids are GUIDs in any letter case
			}
			key = a.Issuer + "\x00" + key
			if other, dup := appIDs[key]; dup {
				bad(fmt.Sprintf("%s.app_ids[%d]", p, j), "%q already identifies app %q", aid, other)
			}
			appIDs[key] = a.Name
		}
		for j, r := range a.Roles {
			if !slices.Contains(roles, r) {
				bad(fmt.Sprintf("%s.roles[%d]", p, j), "unknown role %q", r)
			}
		}
		for j, m := range a.Models {
			if !slices.ContainsFunc(c.Models, func(x Model) bool { return x.Name == m }) {
				bad(fmt.Sprintf("%s.models[%d]", p, j), "no model alias %q", m)
			}
		}
		if a.MaxTokens.Cap < 0 {
			bad(p+".max_tokens.cap", "must not be negative")
		}
		switch a.MaxTokens.Mode {
		case "", "reject", "clamp":
		default:
			bad(p+".max_tokens.mode", "must be reject or clamp, not %q", a.MaxTokens.Mode)
		}
	}
	for i, ra := range c.RoleAssignments {
		p := fmt.Sprintf("role_assignments[%d]", i)
		if !slices.Contains(roles, ra.Role) {
			bad(p+".role", "unknown role %q", ra.Role)
		}
		if len(ra.AppIDs)+len(ra.AppRoles)+len(ra.Groups) == 0 {
			bad(p, "name at least one of app_ids, app_roles, groups")
		}
		issuerOK(p+".issuer", ra.Issuer)
	}
}

// checkIssuerURL requires https; plain http is accepted only on loopback,
// and only takes effect when serve runs with --insecure-dev-issuer.
func checkIssuerURL(bad func(path, format string, args ...any), path, s string) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))) {
		bad(path, "%q must be an https URL", s)
	}
}

// InsecureIssuers lists issuer URLs that use plain http (the demo's dev
// issuer); serve refuses them unless started with --insecure-dev-issuer.
func (c *Config) InsecureIssuers() []string {
	var out []string
	if e := c.Identity.Entra; e != nil {
		for _, u := range []string{e.AuthorityHost, e.V1IssuerHost} {
			if strings.HasPrefix(u, "http://") {
				out = append(out, u)
			}
		}
	}
	for _, is := range c.Identity.Issuers {
		for _, u := range []string{is.Issuer, is.JWKSURL} {
			if strings.HasPrefix(u, "http://") {
				out = append(out, u)
			}
		}
	}
	return out
}
