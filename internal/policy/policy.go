// Package policy owns authorization: what a Caller may do and how.
//
// # Data actions
//
// Every request performs one data action (see Action), modelled on Azure
// RBAC's Microsoft.CognitiveServices/accounts/OpenAI/... data actions with
// that prefix left off: "deployments/chat/completions/action" for a chat
// completion, "files/write" for an upload, "batches/read" for listing
// batches, and so on.
//
// # Roles
//
// A role has actions and not_actions, patterns in which '*' matches any run
// of characters, '/' included; matching ignores ASCII letter case, and a
// pattern may keep Azure's "Microsoft.CognitiveServices/accounts/OpenAI/"
// prefix. As in Azure, a caller may perform an action when some action of
// one of its roles matches and no not_action of that same role does:
// not_actions subtract from their own role, never from another.
//
// The built-in roles mirror Microsoft's "Cognitive Services OpenAI User"
// (5e0bd9bd-7b93-4f28-af87-19fc36ad61bd) and "Cognitive Services OpenAI
// Contributor" (a001fd3d-188f-4b5d-821b-7da978bf7442):
//
//	openai-user
//	  actions:
//	    deployments/*/action      every inference operation
//	    deployments/read          list and get deployments
//	    models/read
//	    files/read
//	    fine_tuning/read
//	    batches/read
//	    responses/*               create, read and delete responses
//	    assistants/*
//	    threads/*
//	    vector_stores/*
//	  not_actions: none
//
//	openai-contributor
//	  actions: *
//	  not_actions: none
//
// So openai-user may not upload or delete files, create or cancel
// fine-tuning jobs or batches, manage deployments or models, nor use the
// operations the gateway classifies as "other" (/openai/realtime, evals,
// stored completions, ...). Microsoft's User role grants every read
// (Microsoft.CognitiveServices/accounts/OpenAI/*/read) except
// stored-completions/read, and names each inference action; here the reads
// are listed and one pattern covers inference, so an inference operation
// added later is granted without a release. Microsoft's Contributor grants
// Microsoft.CognitiveServices/accounts/OpenAI/*, which is "*" here.
//
// # Who has which roles
//
// A caller's roles are its App's roles plus every role_assignments entry
// naming its app id (app_ids), one of its app roles (app_roles, the token's
// "roles" claim) or one of its groups (groups). An unregistered app
// (identity.unknown_apps: allow) has only the roles its assignments give it.
// An anonymous caller (identity.anonymous: true) may do everything.
//
// # Per-app rules
//
// For routed (model) operations a registered app's models list, streaming
// switch and max_tokens cap apply. Pass-through operations (files, batches,
// responses, ...) are governed by roles alone, so an app limited to some
// models should not also hold responses/write: a Responses API body names a
// model the gateway does not route. The cap applies to chat completions and
// completions, the operations that take a completion-token maximum, and is
// per choice like max_tokens itself: a request for n choices may produce n
// times the cap, and nothing here multiplies by n.
//
// A Policy is built once from a Config and never changes, so it is safe for
// concurrent use; a new configuration gets a new Policy.
package policy

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/openai"
)

// Max-tokens fields a Decision may name.
const (
	FieldMaxTokens           = "max_tokens"
	FieldMaxCompletionTokens = "max_completion_tokens"
)

// Request is what Authorize decides on.
type Request struct {
	// Method is the HTTP method.
	Method string
	// Route is the parsed path.
	Route openai.Route
	// Alias is the model alias the request names ("" for pass-through
	// operations).
	Alias string
	// Body holds the peeked body fields (zero for non-JSON operations).
	Body openai.Body
}

// Decision says how to proceed when a request is allowed.
type Decision struct {
	// Action is the data action evaluated, e.g.
	// "deployments/chat/completions/action" (for logs). It is set on
	// refusals too.
	Action string
	// SetMaxTokens > 0 means the request body's MaxTokensField must be set
	// to it: the app's cap in clamp mode, or a request that named no maximum
	// while the app has a cap.
	SetMaxTokens int64
	// MaxTokensField is FieldMaxTokens or FieldMaxCompletionTokens when
	// SetMaxTokens > 0.
	MaxTokensField string
}

// Policy decides what callers may do. It is immutable and safe for
// concurrent use.
type Policy struct {
	anonymous bool
	apps      map[string]*app
	// roles in definition order: built-in roles, then config.Roles.
	roles []*role
	// Role assignments by issuer name ("" for Entra ID), indexed by the
	// claim value they match: a claim counts only from its own issuer.
	assign map[string]*assignments
}

// assignments are one issuer's role assignments.
type assignments struct {
	byAppID, byAppRole, byGroup claimIndex
}

// app is a registered app's precomputed rules.
type app struct {
	name      string
	roleNames []string
	roles     []*role
	// known is the union of its roles' known-action masks.
	known uint64
	// models is nil when every alias is allowed.
	models     map[string]struct{}
	modelNames []string
	streaming  bool
	tokenCap   int64
	clamp      bool
}

// New compiles cfg's roles, role assignments and per-app rules. cfg is
// expected to be validated (config.Parse does); New still refuses a
// reference to a role that does not exist.
func New(cfg *config.Config) (*Policy, error) {
	if cfg == nil {
		return nil, errors.New("policy: nil config")
	}
	p := &Policy{
		anonymous: cfg.Identity.Anonymous,
		apps:      make(map[string]*app, len(cfg.Apps)),
		assign:    map[string]*assignments{},
	}
	byName := map[string]*role{}
	var errs []error
	for _, r := range slices.Concat(builtinRoles, cfg.Roles) {
		if _, dup := byName[r.Name]; dup || r.Name == "" {
			errs = append(errs, fmt.Errorf("roles: %q is defined twice or unnamed", r.Name))
			continue
		}
		c := compileRole(r)
		byName[r.Name] = c
		p.roles = append(p.roles, c)
	}
	for i, ca := range cfg.Apps {
		a := &app{
			name:      ca.Name,
			streaming: ca.StreamingAllowed(),
			tokenCap:  ca.MaxTokens.Cap,
			clamp:     ca.MaxTokens.Mode == "clamp",
		}
		for _, rn := range ca.Roles {
			r, ok := byName[rn]
			if !ok {
				errs = append(errs, fmt.Errorf("apps[%d].roles: unknown role %q", i, rn))
				continue
			}
			if !slices.Contains(a.roles, r) {
				a.roles = append(a.roles, r)
				a.roleNames = append(a.roleNames, rn)
				a.known |= r.known
			}
		}
		if len(ca.Models) > 0 {
			a.models = make(map[string]struct{}, len(ca.Models))
			for _, m := range ca.Models {
				a.models[m] = struct{}{}
			}
			a.modelNames = slices.Clone(ca.Models)
		}
		if _, dup := p.apps[ca.Name]; dup {
			errs = append(errs, fmt.Errorf("apps[%d].name: %q is registered twice", i, ca.Name))
		}
		p.apps[ca.Name] = a
	}
	for i, ra := range cfg.RoleAssignments {
		r, ok := byName[ra.Role]
		if !ok {
			errs = append(errs, fmt.Errorf("role_assignments[%d].role: unknown role %q", i, ra.Role))
			continue
		}
		as := p.assign[ra.Issuer]
		if as == nil {
			as = &assignments{}
			p.assign[ra.Issuer] = as
		}
		for _, k := range ra.AppIDs {
			as.byAppID.add(strings.ToLower(k), r) // Entra GUIDs come in lower case; config may not
		}
		for _, k := range ra.AppRoles {
			as.byAppRole.add(k, r)
		}
		for _, k := range ra.Groups {
			as.byGroup.add(k, r)
		}
	}
	for _, as := range p.assign {
		as.byAppID.seal()
		as.byAppRole.seal()
		as.byGroup.seal()
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}

// Authorize decides whether c may make req and how. It returns an
// *openai.Error when not: 403 PermissionDenied when no role of the caller
// grants the action or a registered app is not in this Policy's config, 403
// model_not_allowed for a model alias outside the app's models (400
// model_required when a restricted app names none), 400 streaming_disabled and 400 max_tokens_exceeded for the app's streaming
// and max_tokens rules. The Decision carries Action on refusals too. It does
// not allocate for an allowed request whose operation the gateway knows by
// name.
func (p *Policy) Authorize(c *auth.Caller, req Request) (Decision, error) {
	action, idx := resolve(req.Method, &req.Route)
	d := Decision{Action: action}
	if c != nil && c.Method == auth.MethodAnonymous {
		if !p.anonymous {
			return d, openai.Errorf(http.StatusForbidden, "PermissionDenied",
				"anonymous access is not enabled; authenticate with an Entra ID token or a gateway key")
		}
		return d, nil
	}
	var a *app
	if c != nil && c.App != nil {
		if a = p.apps[c.App.Name]; a == nil {
			return d, openai.Errorf(http.StatusForbidden, "PermissionDenied",
				"app %s is not registered in the gateway's current configuration; ask the gateway operator to add it to apps", c.App.Name)
		}
	}
	if !p.permitted(c, a, action, idx) {
		return d, p.denied(c, a, action)
	}
	if a == nil || !req.Route.Routed() {
		return d, nil
	}
	if a.models != nil {
		if _, ok := a.models[req.Alias]; !ok {
			if req.Alias == "" {
				return d, openai.Errorf(http.StatusBadRequest, "model_required",
					"app %s must name a model; it may use: %s", a.name, strings.Join(a.modelNames, ", "))
			}
			return d, openai.Errorf(http.StatusForbidden, "model_not_allowed",
				"app %s may not use model %q; it may use: %s", a.name, req.Alias, strings.Join(a.modelNames, ", "))
		}
	}
	if req.Route.Op == openai.OpOther && (!a.streaming || a.tokenCap > 0) {
		// The gateway cannot see streaming or token settings in operations it
		// does not know, so it cannot enforce this app's rules on them.
		return d, openai.Errorf(http.StatusForbidden, "PermissionDenied",
			"app %s may not call %s: its streaming and max_tokens rules cannot be enforced on an operation the gateway does not recognise",
			a.name, req.Route.Suffix)
	}
	if req.Body.Stream && !a.streaming {
		return d, openai.Errorf(http.StatusBadRequest, "streaming_disabled",
			`streaming is disabled for app %s; call without "stream": true`, a.name)
	}
	if a.tokenCap > 0 && (req.Route.Op == openai.OpChatCompletions || req.Route.Op == openai.OpCompletions) {
		err := a.capTokens(&d, &req.Body)
		return d, err
	}
	return d, nil
}

// capTokens applies the app's max_tokens cap (a.tokenCap > 0) to d.
func (a *app) capTokens(d *Decision, b *openai.Body) error {
	asked, field := b.MaxTokens, FieldMaxTokens
	if b.MaxCompletionTokens > 0 {
		asked, field = b.MaxCompletionTokens, FieldMaxCompletionTokens
		// Only one field can be lowered, so a max_tokens beside it that is
		// over the cap is refused in both modes rather than left for the
		// backend to honour.
		if b.MaxTokens > a.tokenCap {
			return openai.Errorf(http.StatusBadRequest, "max_tokens_exceeded",
				"max_tokens %d is above app %s's cap of %d; send only max_completion_tokens, at most %d",
				b.MaxTokens, a.name, a.tokenCap, a.tokenCap)
		}
	}
	switch {
	case asked == 0:
		d.SetMaxTokens, d.MaxTokensField = a.tokenCap, FieldMaxTokens
	case asked <= a.tokenCap:
	case a.clamp:
		d.SetMaxTokens, d.MaxTokensField = a.tokenCap, field
	default:
		return openai.Errorf(http.StatusBadRequest, "max_tokens_exceeded",
			"%s %d is above app %s's cap of %d; ask for at most %d (a request that names no maximum gets %d)",
			field, asked, a.name, a.tokenCap, a.tokenCap, a.tokenCap)
	}
	return nil
}

// issuerOf is the caller's issuer name, or a name no assignment uses.
func issuerOf(c *auth.Caller) string {
	if c == nil {
		return "\x00none"
	}
	return c.IssuerName
}

// permitted reports whether some role of the caller grants action.
func (p *Policy) permitted(c *auth.Caller, a *app, action string, idx int) bool {
	if a != nil {
		if idx >= 0 {
			if a.known&(1<<idx) != 0 {
				return true
			}
		} else {
			for _, r := range a.roles {
				if r.allows(action) {
					return true
				}
			}
		}
	}
	if c == nil {
		return false
	}
	as := p.assign[c.IssuerName]
	if as == nil {
		return false
	}
	if as.byAppID.mayGrant(idx) && c.AppID != "" && anyAllows(as.byAppID.get(strings.ToLower(c.AppID)), action, idx) {
		return true
	}
	if as.byAppRole.mayGrant(idx) {
		for _, v := range c.Roles {
			if anyAllows(as.byAppRole.get(v), action, idx) {
				return true
			}
		}
	}
	if as.byGroup.mayGrant(idx) {
		for _, v := range c.Groups {
			if anyAllows(as.byGroup.get(v), action, idx) {
				return true
			}
		}
	}
	return false
}

func anyAllows(roles []*role, action string, idx int) bool {
	for _, r := range roles {
		if r.allowsAction(action, idx) {
			return true
		}
	}
	return false
}

// denied builds the 403 for a refused action: who the caller is, the roles
// it has, and roles that would grant the action.
func (p *Policy) denied(c *auth.Caller, a *app, action string) error {
	var have []string
	add := func(rs []*role) {
		for _, r := range rs {
			if !slices.Contains(have, r.name) {
				have = append(have, r.name)
			}
		}
	}
	if a != nil {
		have = append(have, a.roleNames...)
	}
	if as := p.assign[issuerOf(c)]; as != nil {
		if c.AppID != "" {
			add(as.byAppID.get(strings.ToLower(c.AppID)))
		}
		for _, v := range c.Roles {
			add(as.byAppRole.get(v))
		}
		for _, v := range c.Groups {
			add(as.byGroup.get(v))
		}
	}
	roles := "none"
	if len(have) > 0 {
		roles = strings.Join(have, ", ")
	}
	var grant []string
	for _, r := range p.roles {
		if r.allows(action) {
			grant = append(grant, r.name)
		}
	}
	need := "no configured role grants it; define one under roles"
	if len(grant) > 0 {
		need = "it needs a role granting it, such as " + strings.Join(grant, " or ")
	}
	if a == nil {
		appID := ""
		if c != nil {
			appID = c.AppID
		}
		return openai.Errorf(http.StatusForbidden, "PermissionDenied",
			"unregistered app (app id %q; roles: %s) may not perform %s; %s, through a role_assignments entry naming its app id, app roles or groups, or register the app under apps",
			appID, roles, action, need)
	}
	return openai.Errorf(http.StatusForbidden, "PermissionDenied",
		"app %s (roles: %s) may not perform %s; %s", a.name, roles, action, need)
}
