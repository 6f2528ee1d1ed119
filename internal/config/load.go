package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Lookup finds an environment variable, like os.LookupEnv.
type Lookup func(name string) (string, bool)

// Load reads, substitutes, decodes and validates the YAML file at path,
// taking ${VAR} values from the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := Parse(data, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates a YAML document. String values may use
// ${VAR} (an error when VAR is unset) and ${VAR:-default}; $$ is a literal $.
// Substitution happens on decoded scalar values, so a secret containing YAML
// syntax cannot change the document's structure. Unknown fields are errors.
// Every problem found is reported at once, joined with errors.Join.
func Parse(data []byte, lookup Lookup) (*Config, error) {
	src := data
	if bytes.Contains(data, []byte("${")) {
		var root yaml.Node
		if err := yaml.Unmarshal(data, &root); err != nil {
			return nil, fmt.Errorf("yaml: %w", err)
		}
		if len(root.Content) == 0 {
			return nil, errors.New("the file is empty")
		}
		var errs []error
		substitute(&root, "", lookup, &errs)
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		// Re-encode the substituted tree so the strict decoder (KnownFields)
		// sees it. Only files that name variables pay for this: it is most
		// of the parse of a large file (10,000 apps).
		var buf bytes.Buffer
		if err := yaml.NewEncoder(&buf).Encode(&root); err != nil {
			return nil, fmt.Errorf("yaml: %w", err)
		}
		src = buf.Bytes()
	}
	cfg := Defaults()
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty")
		}
		return nil, err // "yaml: ..." already
	}
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// substitute expands ${VAR} in every scalar below n, collecting one error per
// unset variable with the path of the field that named it.
func substitute(n *yaml.Node, path string, lookup Lookup, errs *[]error) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = path + "[" + strconv.Itoa(i) + "]"
			}
			substitute(c, p, lookup, errs)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			substitute(n.Content[i+1], p, lookup, errs)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		v, err := Expand(n.Value, lookup)
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
			return
		}
		if v != n.Value {
			// Re-resolve like a plain scalar so ${PORT} can fill an int field;
			// the emitter quotes whatever cannot stay plain. A value that would
			// read as null ("", "~", "null") is pinned to a string.
			n.Value, n.Tag, n.Style = v, "", 0
			if n.ShortTag() == "!!null" {
				n.Tag = "!!str"
			}
		}
	}
}

// Expand replaces ${VAR} and ${VAR:-default} in s. $$ stands for a literal $.
func Expand(s string, lookup Lookup) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 >= len(s) || s[i+1] != '{' {
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s)
		}
		expr := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validVarName(name) {
			return "", fmt.Errorf("invalid variable name %q in ${...}", name)
		}
		v, ok := lookup(name)
		switch {
		case ok && v != "":
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		case ok:
			// Set but empty, no default: the empty string.
		default:
			return "", fmt.Errorf("environment variable %s is not set (write ${%s:-default} for an optional value)", name, name)
		}
		i += 2 + end
	}
	return b.String(), nil
}

func validVarName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (i > 0 && c >= '0' && c <= '9') {
			continue
		}
		return false
	}
	return true
}
