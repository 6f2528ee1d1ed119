package policy

import (
	"fmt"
	"testing"
)

func TestClaimIndex(t *testing.T) {
	user, contributor := compileRole(builtinRoles[0]), compileRole(builtinRoles[1])
	build := func(n int) *claimIndex {
		x := &claimIndex{}
		for i := range n {
			x.add(fmt.Sprintf("g-%d", i), user)
		}
		x.add("g-0", contributor)
		x.add("g-0", contributor) // twice: kept once
		x.seal()
		return x
	}
	tests := []struct {
		name  string
		x     *claimIndex
		key   string
		roles int
		isMap bool
	}{
		{"small: hit", build(3), "g-2", 1, false},
		{"small: two roles, deduplicated", build(3), "g-0", 2, false},
		{"small: miss", build(3), "g-3", 0, false},
		{"small: case matters", build(3), "G-1", 0, false},
		{"large: hit", build(20), "g-19", 1, true},
		{"large: two roles, deduplicated", build(20), "g-0", 2, true},
		{"large: miss", build(20), "g-20", 0, true},
		{"empty", &claimIndex{}, "g-0", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := len(tt.x.get(tt.key)); got != tt.roles {
				t.Errorf("get(%q) has %d roles, want %d", tt.key, got, tt.roles)
			}
			if (tt.x.m != nil) != tt.isMap {
				t.Errorf("map = %v, want %v", tt.x.m != nil, tt.isMap)
			}
		})
	}
}
