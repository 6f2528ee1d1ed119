package policy

import (
	"strings"

	"github.com/tokengate/tokengate/internal/config"
)

// Built-in role names (config.BuiltinRoles).
const (
	RoleUser        = "openai-user"
	RoleContributor = "openai-contributor"
)

// builtinRoles mirror Microsoft's "Cognitive Services OpenAI User" and
// "Cognitive Services OpenAI Contributor"; the package comment lists them and
// says where they differ from Microsoft's.
var builtinRoles = []config.Role{
	{
		Name: RoleUser,
		Actions: []string{
			"deployments/*/action",
			"deployments/read",
			"models/read",
			"files/read",
			"fine_tuning/read",
			"batches/read",
			"responses/*",
			"assistants/*",
			"threads/*",
			"vector_stores/*",
		},
	},
	{
		Name:    RoleContributor,
		Actions: []string{"*"},
	},
}

// azurePrefix is accepted (and ignored) in front of a pattern, so an action
// copied from an Azure role definition means the same here.
const azurePrefix = "microsoft.cognitiveservices/accounts/openai/"

// pattern is a compiled action pattern: '*' matches any run of characters,
// '/' included. Matching is ASCII case-insensitive, as Azure RBAC's is:
// patterns are lowered here, actions by the caller.
type pattern struct {
	// parts are the literal runs between '*'s; one part means no '*'.
	parts []string
}

func compilePattern(s string) pattern {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, azurePrefix)
	return pattern{parts: strings.Split(s, "*")}
}

// match reports whether the (lower-case) action s matches. A leading and a
// trailing literal must match exactly at the ends; the literals between are
// found leftmost-first, which is exact for patterns whose only
// metacharacter is '*'.
func (p pattern) match(s string) bool {
	if len(p.parts) == 1 {
		return s == p.parts[0]
	}
	first, last := p.parts[0], p.parts[len(p.parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	s = s[len(first) : len(s)-len(last)]
	for _, mid := range p.parts[1 : len(p.parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return true
}

// role is a compiled role. Following Azure, its NotActions subtract from its
// own Actions only: another role of the same caller may still grant what
// this one excludes.
type role struct {
	name       string
	actions    []pattern
	notActions []pattern
	// known has bit i set when the role allows knownActions[i].
	known uint64
}

func compileRole(r config.Role) *role {
	c := &role{name: r.Name}
	for _, a := range r.Actions {
		c.actions = append(c.actions, compilePattern(a))
	}
	for _, a := range r.NotActions {
		c.notActions = append(c.notActions, compilePattern(a))
	}
	for i, a := range knownActions {
		if c.allows(a) {
			c.known |= 1 << i
		}
	}
	return c
}

// allows reports whether the role grants the lower-case action.
func (r *role) allows(action string) bool {
	granted := false
	for _, p := range r.actions {
		if p.match(action) {
			granted = true
			break
		}
	}
	if !granted {
		return false
	}
	for _, p := range r.notActions {
		if p.match(action) {
			return false
		}
	}
	return true
}

// allowsAction answers from the mask for a known action (idx >= 0).
func (r *role) allowsAction(action string, idx int) bool {
	if idx >= 0 {
		return r.known&(1<<idx) != 0
	}
	return r.allows(action)
}
