package tokens

import "github.com/tidwall/gjson"

// The constants of OpenAI's published chat token formula ("How to count tokens
// with tiktoken", OpenAI cookbook) for gpt-3.5-turbo-0613 and every later chat
// model: each message is wrapped as <|start|>{role/name}\n{content}<|end|>\n.
const (
	// TokensPerMessage is the framing overhead of one message.
	TokensPerMessage = 3
	// TokensPerName is the extra cost of a message's name field.
	TokensPerName = 1
	// ReplyPriming is added once per request: the reply is primed with
	// <|start|>assistant<|message|>.
	ReplyPriming = 3
)

// Message is a chat message as far as token counting is concerned.
type Message struct {
	Role string
	// Name is the optional participant name; when non-empty it costs its tokens
	// plus [TokensPerName].
	Name string
	// Content is the message text when the request's content is a string.
	Content string
	// Parts are the texts of the "text" parts when the request's content is an
	// array of parts; each is counted separately. Images, audio and other
	// non-text parts are not counted.
	Parts []string
}

// CountChat returns the prompt tokens of a chat request with these messages,
// following OpenAI's formula:
//
//	sum over messages of (3 + tokens(role) + tokens(content) + tokens(name) + [1 if name])
//	+ 3 for the reply priming
//
// Tool definitions, tool calls and non-text content are not counted, so for such
// requests the result is a lower bound of what the service reports. An empty
// list counts 3.
func (c *Counter) CountChat(messages []Message) int {
	n := ReplyPriming
	for i := range messages {
		m := &messages[i]
		n += TokensPerMessage + c.Count(m.Role) + c.Count(m.Content)
		for _, p := range m.Parts {
			n += c.Count(p)
		}
		if m.Name != "" {
			n += c.Count(m.Name) + TokensPerName
		}
	}
	return n
}

// CountChatJSON is [Counter.CountChat] for the raw JSON value of a request's
// "messages" array, for callers that peek at bodies instead of decoding them.
// Content may be a string, null, or an array of parts, of which those with
// "type":"text" (or no type) count their "text". It is best effort, not a
// validator: malformed JSON counts what can be read, at least [ReplyPriming].
func (c *Counter) CountChatJSON(messages []byte) int {
	n := ReplyPriming
	gjson.ParseBytes(messages).ForEach(func(_, msg gjson.Result) bool {
		if !msg.IsObject() {
			return true
		}
		n += TokensPerMessage + c.Count(msg.Get("role").String())
		if name := msg.Get("name").String(); name != "" {
			n += c.Count(name) + TokensPerName
		}
		content := msg.Get("content")
		switch {
		case content.Type == gjson.String:
			n += c.Count(content.Str)
		case content.IsArray():
			content.ForEach(func(_, part gjson.Result) bool {
				if t := part.Get("type"); t.Exists() && t.String() != "text" {
					return true
				}
				n += c.Count(part.Get("text").String())
				return true
			})
		}
		return true
	})
	return n
}
