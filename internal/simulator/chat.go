package simulator

import (
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Content-filter annotations, byte for byte as Azure sends them when nothing
// was filtered: the prompt's (with jailbreak detection) and a completion's
// (with protected-material detection).
const (
	promptFilterResults = `{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}`
	outputFilterResults = `{"hate":{"filtered":false,"severity":"safe"},"protected_material_code":{"filtered":false,"detected":false},"protected_material_text":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}`
)

// completion is one chat or legacy completion being generated.
type completion struct {
	dep      *deployment
	req      *request
	chat     bool
	id       string
	created  int64
	choices  int
	length   int    // tokens per choice
	finish   string // "stop" or "length"
	prompt   int
	seeds    []uint64
	seedsBuf [4]uint64
	suffix   []byte // the end of every streamed chunk, from `],"created"` on
}

// complete answers a chat completions or completions request whose every
// choice generates length tokens.
func (x *exchange) complete(dep *deployment, req *request, prompt, length int) {
	c := &completion{
		dep:     dep,
		req:     req,
		chat:    req.op == opChat,
		created: x.in.now().Unix(),
		choices: req.choices(),
		length:  length,
		finish:  "stop",
		prompt:  prompt,
	}
	if length < x.in.cfg.CompletionTokens {
		c.finish = "length" // cut short by max_tokens
	}
	if c.chat {
		c.id = newCompletionID("chatcmpl-")
	} else {
		c.id = newCompletionID("cmpl-")
	}
	c.seeds = c.seedsBuf[:0]
	for i := range c.choices {
		if c.chat {
			c.seeds = append(c.seeds, choiceSeed(req.seed, i))
		} else {
			c.seeds = append(c.seeds, choiceSeed(req.prompts[i/req.n].hash, i%req.n))
		}
	}

	lat := x.lat
	var interval time.Duration
	if lat.TokensPerSecond > 0 {
		// Capped so an absurdly small rate cannot overflow the deadline maths.
		interval = time.Duration(min(float64(time.Second)/lat.TokensPerSecond, float64(time.Hour)))
	}
	start := time.Now()
	if req.stream {
		x.stream(c, start, interval)
		return
	}
	// A non-streaming answer arrives when its last token would have.
	if err := x.sleepUntil(start.Add(lat.TimeToFirstToken + time.Duration(length-1)*interval)); err != nil {
		x.interrupted(err)
		return
	}
	x.out = c.appendResponse(x.out[:0])
	x.obs.CompletionTokens = c.length * c.choices
	x.writeJSON()
}

func (c *completion) appendUsage(b []byte, completionTokens int) []byte {
	b = append(b, `{"completion_tokens":`...)
	b = appendInt(b, completionTokens)
	if c.chat {
		b = append(b, `,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0}`...)
	}
	b = append(b, `,"prompt_tokens":`...)
	b = appendInt(b, c.prompt)
	if c.chat {
		b = append(b, `,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0}`...)
	}
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, c.prompt+completionTokens)
	return append(b, '}')
}

func (c *completion) appendPromptFilters(b []byte) []byte {
	b = append(b, `"prompt_filter_results":[`...)
	prompts := 1
	if !c.chat {
		prompts = len(c.req.prompts)
	}
	for i := range prompts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"prompt_index":`...)
		b = appendInt(b, i)
		b = append(b, `,"content_filter_results":`...)
		b = append(b, promptFilterResults...)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendResponse appends the non-streaming response body.
func (c *completion) appendResponse(b []byte) []byte {
	b = append(b, `{"choices":[`...)
	for i := range c.choices {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"content_filter_results":`...)
		b = append(b, outputFilterResults...)
		b = append(b, `,"finish_reason":"`...)
		b = append(b, c.finish...)
		b = append(b, `","index":`...)
		b = appendInt(b, i)
		b = append(b, `,"logprobs":null,`...)
		if c.chat {
			b = append(b, `"message":{"annotations":[],"content":"`...)
			b = appendCompletion(b, c.seeds[i], c.length)
			b = append(b, `","refusal":null,"role":"assistant"}}`...)
		} else {
			b = append(b, `"text":"`...)
			b = appendCompletion(b, c.seeds[i], c.length)
			b = append(b, `"}`...)
		}
	}
	b = c.appendHeader(b, false)
	b = append(b, ',')
	b = c.appendPromptFilters(b)
	if c.chat {
		b = append(b, `,"system_fingerprint":"`...)
		b = append(b, c.dep.fingerprint...)
		b = append(b, '"')
	}
	b = append(b, `,"usage":`...)
	b = c.appendUsage(b, c.length*c.choices)
	return append(b, '}')
}

// appendHeader appends `],"created":..,"id":..,"model":..,"object":..` — what
// follows the choices array in every response and chunk.
func (c *completion) appendHeader(b []byte, chunk bool) []byte {
	b = append(b, `],"created":`...)
	b = strconv.AppendInt(b, c.created, 10)
	b = append(b, `,"id":"`...)
	b = append(b, c.id...)
	b = append(b, `","model":`...)
	b = append(b, c.dep.modelJSON...)
	b = append(b, `,"object":"`...)
	switch {
	case !c.chat:
		b = append(b, "text_completion"...)
	case chunk:
		b = append(b, "chat.completion.chunk"...)
	default:
		b = append(b, "chat.completion"...)
	}
	return append(b, '"')
}

// stream answers with server-sent events in Azure's sequence: the prompt
// filter results (with empty id, model and choices), for chat a role delta per
// choice, one delta per token per choice, a finish_reason chunk per choice, the
// usage chunk when stream_options.include_usage, then [DONE]. Each event is
// flushed on its own; tokens are paced by time_to_first_token and
// tokens_per_second.
func (x *exchange) stream(c *completion, start time.Time, interval time.Duration) {
	lat := x.lat
	if err := x.sleepUntil(start.Add(lat.TimeToFirstToken)); err != nil {
		x.interrupted(err)
		return
	}
	h := x.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	x.writeHeader(http.StatusOK)
	rc := http.NewResponseController(x.w)

	c.suffix = c.appendHeader(c.suffix[:0], true)
	if c.chat {
		c.suffix = append(c.suffix, `,"system_fingerprint":"`...)
		c.suffix = append(c.suffix, c.dep.fingerprint...)
		c.suffix = append(c.suffix, '"')
	}
	if c.req.includeUsage {
		c.suffix = append(c.suffix, `,"usage":null`...)
	}
	c.suffix = append(c.suffix, '}')

	// The prompt filter results come first, in a chunk of their own.
	x.out = append(x.out[:0], `data: {"choices":[],"created":0,"id":"","model":"","object":"",`...)
	x.out = c.appendPromptFilters(x.out)
	x.out = append(x.out, "}\n\n"...)
	if !x.emit(rc) {
		return
	}
	if c.chat {
		for i := range c.choices {
			x.out = c.appendChunk(x.out[:0], chunkRole, i, "")
			if !x.emit(rc) {
				return
			}
		}
	}

	reset := x.in.dice.chance(x.faults.ResetRate)
	cutAfter := max(1, c.length/2)
	for t := range c.length {
		if t > 0 {
			if err := x.sleepUntil(start.Add(lat.TimeToFirstToken + time.Duration(t)*interval)); err != nil {
				x.interrupted(err)
				return
			}
		}
		for i := range c.choices {
			x.out = c.appendChunk(x.out[:0], chunkContent, i, word(c.seeds[i], t))
			if !x.emit(rc) {
				return
			}
		}
		x.obs.CompletionTokens += c.choices
		if reset && t+1 == cutAfter {
			// The content so far is flushed; now the connection dies without
			// the terminating chunk, which the client reads as unexpected EOF.
			x.obs.Reset = true
			panic(http.ErrAbortHandler)
		}
	}
	for i := range c.choices {
		x.out = c.appendChunk(x.out[:0], chunkFinish, i, "")
		if !x.emit(rc) {
			return
		}
	}
	if c.req.includeUsage {
		x.out = append(x.out[:0], `data: {"choices":[`...)
		x.out = c.appendHeader(x.out, true)
		if c.chat {
			x.out = append(x.out, `,"system_fingerprint":"`...)
			x.out = append(x.out, c.dep.fingerprint...)
			x.out = append(x.out, '"')
		}
		x.out = append(x.out, `,"usage":`...)
		x.out = c.appendUsage(x.out, c.length*c.choices)
		x.out = append(x.out, "}\n\n"...)
		if !x.emit(rc) {
			return
		}
	}
	x.out = append(x.out[:0], "data: [DONE]\n\n"...)
	if x.emit(rc) {
		x.done = true
	}
}

type chunkKind uint8

const (
	chunkRole chunkKind = iota
	chunkContent
	chunkFinish
)

// appendChunk appends one streamed choice event: a chat role delta, a token
// (chat delta or completion text), or the finish_reason chunk.
func (c *completion) appendChunk(b []byte, kind chunkKind, index int, token string) []byte {
	b = append(b, `data: {"choices":[{"content_filter_results":`...)
	if kind == chunkContent {
		b = append(b, outputFilterResults...)
	} else {
		b = append(b, "{}"...)
	}
	if c.chat {
		switch kind {
		case chunkRole:
			b = append(b, `,"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null`...)
		case chunkContent:
			b = append(b, `,"delta":{"content":"`...)
			b = append(b, token...) // a word of the generator: nothing to escape
			b = append(b, `"},"finish_reason":null`...)
		case chunkFinish:
			b = append(b, `,"delta":{},"finish_reason":"`...)
			b = append(b, c.finish...)
			b = append(b, '"')
		}
		b = append(b, `,"index":`...)
		b = appendInt(b, index)
		b = append(b, `,"logprobs":null}`...)
	} else {
		if kind == chunkFinish {
			b = append(b, `,"finish_reason":"`...)
			b = append(b, c.finish...)
			b = append(b, '"')
		} else {
			b = append(b, `,"finish_reason":null`...)
		}
		b = append(b, `,"index":`...)
		b = appendInt(b, index)
		b = append(b, `,"logprobs":null,"text":"`...)
		b = append(b, token...)
		b = append(b, `"}`...)
	}
	b = append(b, c.suffix...)
	return append(b, "\n\n"...)
}

// emit writes and flushes the event in x.out. It reports false when the client
// is gone.
func (x *exchange) emit(rc *http.ResponseController) bool {
	if _, err := x.w.Write(x.out); err != nil {
		x.obs.Cancelled = true
		return false
	}
	if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		x.obs.Cancelled = true
		return false
	}
	return true
}
