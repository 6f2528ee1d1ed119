package loadtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Mix is a request mix read from a YAML file (see the package comment).
// Unset fields are nil or empty; [Mix.Apply] fills a Config with the ones
// that are set.
type Mix struct {
	StreamShare  *float64      `yaml:"stream_share"`
	MaxTokens    *int          `yaml:"max_tokens"`
	PromptTokens []PromptShare `yaml:"prompt_tokens"`
	Models       []ModelShare  `yaml:"models"`
	Apps         []App         `yaml:"apps"`
}

// LoadMix reads and checks a mix file, expanding ${NAME} in header values
// from the environment. Errors name the file and, where known, the line.
func LoadMix(path string) (*Mix, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mix file: %w", err)
	}
	return ParseMix(path, data, os.LookupEnv)
}

// ParseMix is [LoadMix] for a file already read; name prefixes errors and
// lookup resolves ${NAME}.
func ParseMix(name string, data []byte, lookup func(string) (string, bool)) (*Mix, error) {
	var m Mix
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty mix file", name)
		}
		return nil, fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	// The node tree gives validation errors their lines.
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	var errs []error
	add := func(line int, format string, args ...any) {
		if line > 0 {
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, args...)))
		} else {
			errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
		}
	}
	weight := func(key string, i int, w float64) {
		if !(w >= 0) || math.IsInf(w, 0) {
			add(lineOf(&root, key, i, "weight"), "%s[%d].weight: must be positive, got %g", key, i, w)
		}
	}
	if s := m.StreamShare; s != nil && !(*s >= 0 && *s <= 1) {
		add(lineOf(&root, "stream_share", -1, ""), "stream_share: must be a fraction between 0 and 1, got %g", *s)
	}
	if t := m.MaxTokens; t != nil && *t < 1 {
		add(lineOf(&root, "max_tokens", -1, ""), "max_tokens: must be positive, got %d", *t)
	}
	for i, p := range m.PromptTokens {
		if p.Tokens < 1 || p.Tokens > MaxPromptTokens {
			add(lineOf(&root, "prompt_tokens", i, "tokens"), "prompt_tokens[%d].tokens: must be between 1 and %d, got %d", i, MaxPromptTokens, p.Tokens)
		}
		weight("prompt_tokens", i, p.Weight)
	}
	for i, md := range m.Models {
		if strings.TrimSpace(md.Alias) == "" {
			add(lineOf(&root, "models", i, "alias"), "models[%d].alias: required", i)
		}
		weight("models", i, md.Weight)
	}
	seen := map[string]int{}
	for i := range m.Apps {
		a := &m.Apps[i]
		line := lineOf(&root, "apps", i, "")
		if strings.TrimSpace(a.Name) == "" {
			add(line, "apps[%d].name: required", i)
		} else if j, dup := seen[a.Name]; dup {
			add(line, "apps[%d].name: %q is already used by apps[%d]", i, a.Name, j)
		} else {
			seen[a.Name] = i
		}
		weight("apps", i, a.Weight)
		headers := make(map[string]string, len(a.Headers))
		for k, v := range a.Headers {
			v, err := expandEnv(v, lookup)
			if err != nil {
				add(line, "apps[%d].headers.%s: %v", i, k, err)
				continue
			}
			if err := (Header{Name: k, Value: v}).check(); err != nil {
				add(line, "apps[%d].headers: %v", i, err)
			}
			headers[k] = v
		}
		a.Headers = headers
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &m, nil
}

// Apply copies the fields the mix sets into c, except those whose flag was
// given explicitly: explicit reports that for a flag name ("stream-share",
// "max-tokens", "prompt-tokens", "model").
func (m *Mix) Apply(c *Config, explicit func(flag string) bool) {
	if m.StreamShare != nil && !explicit("stream-share") {
		c.StreamShare = *m.StreamShare
	}
	if m.MaxTokens != nil && !explicit("max-tokens") {
		c.MaxTokens = *m.MaxTokens
	}
	if len(m.PromptTokens) > 0 && !explicit("prompt-tokens") {
		c.PromptTokens = append([]PromptShare(nil), m.PromptTokens...)
	}
	if len(m.Models) > 0 && !explicit("model") {
		c.Models = append([]ModelShare(nil), m.Models...)
	}
	if len(m.Apps) > 0 {
		c.Apps = append([]App(nil), m.Apps...)
	}
}

// expandEnv replaces every ${NAME} in s by lookup(NAME). A "$" not followed
// by "{" is kept as it is.
func expandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", errors.New(`unterminated "${": want ${NAME}`)
		}
		name := s[i+2 : i+j]
		if name == "" {
			return "", errors.New(`empty "${}": want ${NAME}`)
		}
		v, ok := lookup(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		b.WriteString(s[:i])
		b.WriteString(v)
		s = s[i+j+1:]
	}
}

// lineOf finds the line of root's top-level key, or of its index'th list
// item (index >= 0), or of that item's field; 0 when not found.
func lineOf(root *yaml.Node, key string, index int, field string) int {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return 0
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value != key {
			continue
		}
		v := doc.Content[i+1]
		if index < 0 {
			return doc.Content[i].Line
		}
		if v.Kind != yaml.SequenceNode || index >= len(v.Content) {
			return v.Line
		}
		item := v.Content[index]
		if field != "" && item.Kind == yaml.MappingNode {
			for k := 0; k+1 < len(item.Content); k += 2 {
				if item.Content[k].Value == field {
					return item.Content[k].Line
				}
			}
		}
		return item.Line
	}
	return 0
}
