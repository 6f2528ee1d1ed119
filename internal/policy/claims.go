package policy

import "slices"

// smallIndex is the most claim values a claimIndex scans instead of hashing.
const smallIndex = 8

// claimIndex finds the roles that role_assignments give one claim value (an
// app id, app role or group). A token may carry hundreds of groups while a
// config names a few, so a few values are kept in a slice and compared
// directly (strings of different lengths differ at no cost); more go in a
// map. It is built in New and read-only after.
type claimIndex struct {
	keys  []string
	roles [][]*role
	m     map[string][]*role
	// known is the union of its roles' known-action masks: when it lacks an
	// action, no claim value can grant it and the caller's claims need no
	// scan.
	known uint64
}

func (x *claimIndex) add(key string, r *role) {
	i := slices.Index(x.keys, key)
	if i < 0 {
		x.keys = append(x.keys, key)
		x.roles = append(x.roles, nil)
		i = len(x.keys) - 1
	}
	if !slices.Contains(x.roles[i], r) {
		x.roles[i] = append(x.roles[i], r)
	}
	x.known |= r.known
}

// seal switches a large index to a map.
func (x *claimIndex) seal() {
	if len(x.keys) <= smallIndex {
		return
	}
	x.m = make(map[string][]*role, len(x.keys))
	for i, k := range x.keys {
		x.m[k] = x.roles[i]
	}
}

// mayGrant reports whether some role in the index may grant the action
// (idx < 0: an action without a mask, which only matching can tell).
func (x *claimIndex) mayGrant(idx int) bool {
	if len(x.keys) == 0 {
		return false
	}
	return idx < 0 || x.known&(1<<idx) != 0
}

func (x *claimIndex) get(key string) []*role {
	if x.m != nil {
		return x.m[key]
	}
	for i, k := range x.keys {
		if k == key {
			return x.roles[i]
		}
	}
	return nil
}
