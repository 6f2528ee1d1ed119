package simulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/tokengate/tokengate/internal/tokens"
)

// operation is what a request asks for.
type operation uint8

const (
	opNone operation = iota
	opChat
	opCompletions
	opEmbeddings
)

// String is the operation's name in observations and logs.
func (o operation) String() string {
	switch o {
	case opChat:
		return "chat.completions"
	case opCompletions:
		return "completions"
	case opEmbeddings:
		return "embeddings"
	}
	return ""
}

// azureOperation is the name Azure uses in OperationNotSupported errors.
func (o operation) azureOperation() string {
	switch o {
	case opChat:
		return "chatCompletion"
	case opCompletions:
		return "completion"
	}
	return "embeddings"
}

// quotaOperation is the name Azure uses in 429 messages.
func (o operation) quotaOperation() string {
	switch o {
	case opChat:
		return "ChatCompletions_Create"
	case opCompletions:
		return "Completions_Create"
	}
	return "Embeddings_Create"
}

// Request limits. They match OpenAI's where it publishes them and otherwise
// only keep hostile input from making the simulator allocate without bound.
const (
	maxChoices    = 128  // n
	maxInputItems = 2048 // items of an embeddings input or completions prompt array
)

// request is the part of a request body the simulator acts on; everything else
// (temperature, tools, ...) is accepted and ignored, as a model would.
type request struct {
	op           operation
	model        string // the body's "model": the deployment on the v1 routes
	messages     []tokens.Message
	prompts      []promptItem // completions prompts or embeddings inputs
	maxTokens    int          // max_completion_tokens, else max_tokens; 0 when absent
	n            int
	stream       bool
	includeUsage bool
	dimensions   int // 0 when absent
	base64       bool
	seed         uint64 // hash of the chat messages, for deterministic output
}

// promptItem is one completions prompt or embeddings input: text, or token ids
// (of which only the number matters).
type promptItem struct {
	text     string
	tokenIDs int // number of token ids when given as ids
	isIDs    bool
	hash     uint64
}

type wireRequest struct {
	Model               *string         `json:"model"`
	Messages            []wireMessage   `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	N                   *int            `json:"n"`
	Stream              *bool           `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage *bool `json:"include_usage"`
	} `json:"stream_options"`
	Dimensions     *int    `json:"dimensions"`
	EncodingFormat *string `json:"encoding_format"`
}

type wireMessage struct {
	Role    *string         `json:"role"`
	Name    *string         `json:"name"`
	Content json.RawMessage `json:"content"`
}

type wirePart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// parseRequest validates body for op and extracts what the simulator needs.
// Every failure is an *apiError in OpenAI's invalid_request_error shape. It
// never panics, whatever the input.
func parseRequest(op operation, body []byte) (*request, *apiError) {
	var w wireRequest
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, jsonError(err)
	}
	req := &request{op: op, n: 1}
	if w.Model != nil {
		req.model = *w.Model
	}
	if w.N != nil {
		if e := checkRange("n", *w.N, 1, maxChoices); e != nil {
			return nil, e
		}
		req.n = *w.N
	}
	if w.Stream != nil {
		req.stream = *w.Stream
	}
	if w.StreamOptions != nil {
		if !req.stream {
			return nil, errInvalidRequest("stream_options", "invalid_value", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
		}
		req.includeUsage = w.StreamOptions.IncludeUsage != nil && *w.StreamOptions.IncludeUsage
	}
	for _, mt := range []struct {
		name string
		v    *int
	}{{"max_tokens", w.MaxTokens}, {"max_completion_tokens", w.MaxCompletionTokens}} {
		if mt.v == nil {
			continue
		}
		if e := checkRange(mt.name, *mt.v, 1, -1); e != nil {
			return nil, e
		}
		req.maxTokens = *mt.v // max_completion_tokens, checked last, wins
	}

	var e *apiError
	switch op {
	case opChat:
		e = req.parseMessages(w.Messages)
	case opCompletions:
		req.prompts, e = parsePrompts("prompt", w.Prompt)
		if e == nil && len(req.prompts)*req.n > maxChoices {
			e = errInvalidRequest("n", "integer_above_max_value", fmt.Sprintf("Too many choices: %d prompts times n=%d exceeds %d.", len(req.prompts), req.n, maxChoices))
		}
	case opEmbeddings:
		req.prompts, e = parsePrompts("input", w.Input)
		if e == nil {
			e = req.parseEmbeddingOptions(w.Dimensions, w.EncodingFormat)
		}
	default:
		e = errInvalidRequest("", "", "unsupported operation")
	}
	if e != nil {
		return nil, e
	}
	return req, nil
}

// jsonError maps an encoding/json error to the API's error.
func jsonError(err error) *apiError {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return errInvalidRequest("", "invalid_type", fmt.Sprintf("Invalid type for the request body: expected an object, but got %s instead.", article(te.Value)))
		}
		return errInvalidRequest(te.Field, "invalid_type", fmt.Sprintf("Invalid type for '%s': expected %s, but got %s instead.", te.Field, article(goKind(te.Type.Kind().String())), article(te.Value)))
	}
	return errBadJSON
}

func goKind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"):
		return "integer"
	case k == "bool":
		return "boolean"
	case k == "slice":
		return "array"
	case k == "struct", k == "map":
		return "object"
	}
	return k
}

func article(s string) string {
	if f, _, _ := strings.Cut(s, " "); f != "" {
		s = f // "number 1.5" -> "number"
	}
	switch s {
	case "integer", "object", "array":
		return "an " + s
	}
	return "a " + s
}

// checkRange reports a value below lo or above hi (hi < 0: no upper bound) in
// OpenAI's words.
func checkRange(param string, v, lo, hi int) *apiError {
	if v < lo {
		return errInvalidRequest(param, "integer_below_min_value", fmt.Sprintf("Invalid '%s': integer below minimum value. Expected a value >= %d, but got %d instead.", param, lo, v))
	}
	if hi >= 0 && v > hi {
		return errInvalidRequest(param, "integer_above_max_value", fmt.Sprintf("Invalid '%s': integer above maximum value. Expected a value <= %d, but got %d instead.", param, hi, v))
	}
	return nil
}

var validRoles = map[string]bool{"system": true, "assistant": true, "user": true, "function": true, "tool": true, "developer": true}

func (req *request) parseMessages(msgs []wireMessage) *apiError {
	if msgs == nil {
		return errInvalidRequest("messages", "missing_required_parameter", "Missing required parameter: 'messages'.")
	}
	if len(msgs) == 0 {
		return errInvalidRequest("messages", "empty_array", "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.")
	}
	req.messages = make([]tokens.Message, len(msgs))
	h := uint64(fnvOffset)
	for i, m := range msgs {
		if m.Role == nil {
			p := fmt.Sprintf("messages[%d].role", i)
			return errInvalidRequest(p, "missing_required_parameter", fmt.Sprintf("Missing required parameter: '%s'.", p))
		}
		if !validRoles[*m.Role] {
			return errInvalidRequest(fmt.Sprintf("messages[%d].role", i), "invalid_value", fmt.Sprintf("Invalid value: '%s'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.", *m.Role))
		}
		tm := &req.messages[i]
		tm.Role = *m.Role
		if m.Name != nil {
			tm.Name = *m.Name
		}
		if e := parseContent(tm, i, m.Content); e != nil {
			return e
		}
		h = fnvString(h, tm.Role)
		h = fnvString(h, tm.Name)
		h = fnvString(h, tm.Content)
		for _, p := range tm.Parts {
			h = fnvString(h, p)
		}
	}
	req.seed = h
	return nil
}

func parseContent(tm *tokens.Message, i int, raw json.RawMessage) *apiError {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	param := fmt.Sprintf("messages[%d].content", i)
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &tm.Content); err != nil {
			return errBadJSON
		}
		return nil
	case '[':
		var parts []wirePart
		if err := json.Unmarshal(raw, &parts); err != nil {
			return errInvalidRequest(param, "invalid_type", fmt.Sprintf("Invalid type for '%s': expected a string or an array of content parts.", param))
		}
		for _, p := range parts {
			if p.Type == "text" || p.Type == "" && p.Text != "" {
				tm.Parts = append(tm.Parts, p.Text)
			}
		}
		return nil
	}
	return errInvalidRequest(param, "invalid_type", fmt.Sprintf("Invalid type for '%s': expected a string or an array of content parts.", param))
}

// parsePrompts reads a completions prompt or embeddings input: a string, an
// array of strings, an array of token ids, or an array of arrays of token ids.
func parsePrompts(param string, raw json.RawMessage) ([]promptItem, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errInvalidRequest(param, "missing_required_parameter", fmt.Sprintf("Missing required parameter: '%s'.", param))
	}
	invalidType := errInvalidRequest(param, "invalid_type", fmt.Sprintf("Invalid type for '%s': expected a string, an array of strings, an array of token ids, or an array of arrays of token ids.", param))
	emptyInput := errInvalidRequest("", "", fmt.Sprintf("'$.%s' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", param))
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, errBadJSON
		}
		if s == "" && param == "input" {
			return nil, emptyInput
		}
		return []promptItem{textItem(s)}, nil
	case '[':
	default:
		return nil, invalidType
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, invalidType
	}
	if len(elems) == 0 {
		return nil, emptyInput
	}
	first := bytes.TrimSpace(elems[0])
	if len(first) == 0 {
		return nil, invalidType
	}
	flatIDs := first[0] == '-' || isDigit(first[0])
	if !flatIDs && len(elems) > maxInputItems {
		return nil, errInvalidRequest(param, "array_above_max_length", fmt.Sprintf("Invalid '%s': array too long. Expected an array with maximum length %d, but got an array with length %d instead.", param, maxInputItems, len(elems)))
	}
	switch {
	case first[0] == '"':
		var ss []string
		if err := json.Unmarshal(raw, &ss); err != nil {
			return nil, invalidType
		}
		items := make([]promptItem, len(ss))
		for i, s := range ss {
			if s == "" && param == "input" {
				return nil, emptyInput
			}
			items[i] = textItem(s)
		}
		return items, nil
	case flatIDs:
		var ids []int64
		if err := json.Unmarshal(raw, &ids); err != nil {
			return nil, invalidType
		}
		return []promptItem{idsItem(ids)}, nil
	case first[0] == '[':
		var lists [][]int64
		if err := json.Unmarshal(raw, &lists); err != nil {
			return nil, invalidType
		}
		items := make([]promptItem, len(lists))
		for i, ids := range lists {
			if len(ids) == 0 {
				return nil, emptyInput
			}
			items[i] = idsItem(ids)
		}
		return items, nil
	}
	return nil, invalidType
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func textItem(s string) promptItem {
	return promptItem{text: s, hash: fnvString(fnvOffset, s)}
}

func idsItem(ids []int64) promptItem {
	h := uint64(fnvOffset)
	for _, id := range ids {
		h = fnvUint(h, uint64(id))
	}
	return promptItem{tokenIDs: len(ids), isIDs: true, hash: h}
}

func (req *request) parseEmbeddingOptions(dims *int, format *string) *apiError {
	if dims != nil {
		if e := checkRange("dimensions", *dims, 1, -1); e != nil {
			return e
		}
		req.dimensions = *dims
	}
	if format != nil {
		switch *format {
		case "float":
		case "base64":
			req.base64 = true
		default:
			return errInvalidRequest("encoding_format", "invalid_value", fmt.Sprintf("Invalid value: '%s'. Supported values are: 'float' and 'base64'.", *format))
		}
	}
	return nil
}

// choices is the number of choices the request generates: n, times the number
// of prompts for completions.
func (req *request) choices() int {
	if req.op == opCompletions {
		return len(req.prompts) * req.n
	}
	return req.n
}

// promptTokens counts the request's prompt tokens with the deployment's
// tokenizer: the chat formula for messages, the sum over prompts otherwise
// (token-id prompts count their length). cache may be nil.
func (req *request) promptTokens(c *tokens.Counter, cache *countCache) int {
	if req.op == opChat {
		if n, ok := cache.get(req.seed); ok {
			return n
		}
		n := c.CountChat(req.messages)
		cache.put(req.seed, n)
		return n
	}
	n := 0
	for _, p := range req.prompts {
		if p.isIDs {
			n += p.tokenIDs
			continue
		}
		key := splitmix64(p.hash) // apart from the chat keys
		k, ok := cache.get(key)
		if !ok {
			k = c.Count(p.text)
			cache.put(key, k)
		}
		n += k
	}
	return n
}

// countCache remembers token counts by content hash. Tokenizing costs about a
// microsecond per token, and load tests send the same prompts over and over;
// with the cache a repeated prompt costs a map lookup. It is bounded: when
// full it starts over. Safe for concurrent use; a nil cache caches nothing.
type countCache struct {
	mu sync.Mutex
	m  map[uint64]int
}

const countCacheEntries = 4096

func newCountCache() *countCache { return &countCache{m: make(map[uint64]int)} }

func (c *countCache) get(key uint64) (int, bool) {
	if c == nil {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.m[key]
	return n, ok
}

func (c *countCache) put(key uint64, n int) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= countCacheEntries {
		clear(c.m)
	}
	c.m[key] = n
}
