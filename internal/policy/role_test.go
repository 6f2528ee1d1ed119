package policy

import "testing"

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		action  string
		want    bool
	}{
		{"star alone matches anything", "*", "deployments/chat/completions/action", true},
		{"star alone matches empty", "*", "", true},
		{"double star", "**", "files/read", true},
		{"literal equal", "files/read", "files/read", true},
		{"literal is not a prefix match", "files/read", "files/read/x", false},
		{"literal shorter action", "files/read", "files/rea", false},
		{"literal prefix mismatch", "files/read", "xfiles/read", false},

		{"end star", "files/*", "files/read", true},
		{"end star crosses slashes", "files/*", "files/a/b/c", true},
		{"end star empty run", "files/*", "files/", true},
		{"end star needs the slash", "files/*", "files", false},
		{"end star literal prefix mismatch", "files/*", "filesx/read", false},
		{"end star shorter resource", "files/*", "file/read", false},
		{"end star no partial word", "deployments/chat*", "deployments/cha", false},
		{"end star mid word", "deployments/chat*", "deployments/chat/completions/action", true},

		{"start star", "*/read", "files/read", true},
		{"start star crosses slashes", "*/read", "a/b/read", true},
		{"start star suffix mismatch", "*/read", "files/reader", false},
		{"start star other verb", "*/read", "files/write", false},
		{"start star needs the slash", "*/read", "read", false},

		{"middle star", "deployments/*/action", "deployments/chat/completions/action", true},
		{"middle star one segment", "deployments/*/action", "deployments/embeddings/action", true},
		{"middle star empty run", "deployments/*/action", "deployments//action", true},
		{"middle star literals overlap", "deployments/*/action", "deployments/action", false},
		{"middle star wrong suffix", "deployments/*/action", "deployments/chat/actions", false},
		{"middle star wrong prefix", "deployments/*/action", "deployment/chat/action", false},
		{"middle star pass-through", "deployments/*/action", "deployments/read", false},

		{"several stars in order", "a*b*c", "aXbYc", true},
		{"several stars adjacent", "a*b*c", "abc", true},
		{"several stars out of order", "a*b*c", "acb", false},
		{"several stars repeated literal", "a*b*c", "abbbc", true},
		{"prefix and suffix share a char", "a*ab", "aab", true},
		{"prefix and suffix too long", "a*ab", "ab", false},
		{"start and end stars", "*files*", "my/files/x", true},
		{"start and end stars missing", "*files*", "my/file/x", false},

		{"case-insensitive pattern", "Files/READ", "files/read", true},
		{"azure prefix accepted", "Microsoft.CognitiveServices/accounts/OpenAI/deployments/*/action", "deployments/chat/completions/action", true},
		{"azure prefix with star", "Microsoft.CognitiveServices/accounts/OpenAI/*", "files/write", true},
		{"other prefix kept literal", "Microsoft.CognitiveServices/*", "files/write", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := compilePattern(tt.pattern).match(tt.action); got != tt.want {
				t.Errorf("%q matches %q = %v, want %v", tt.pattern, tt.action, got, tt.want)
			}
		})
	}
}

// TestIndexesAgree keeps the index switches in step with the tables.
func TestIndexesAgree(t *testing.T) {
	for i, op := range routedOps {
		if got := routedIndex(op); got != i {
			t.Errorf("routedIndex(%s) = %d, want %d", op, got, i)
		}
		if resourceIndex(op) != -1 {
			t.Errorf("%s is both routed and a resource", op)
		}
	}
	for i, op := range resources {
		if got := resourceIndex(op); got != i {
			t.Errorf("resourceIndex(%s) = %d, want %d", op, got, i)
		}
	}
	seen := map[string]bool{}
	for _, a := range knownActions {
		if seen[a] {
			t.Errorf("known action %s twice", a)
		}
		seen[a] = true
	}
}
