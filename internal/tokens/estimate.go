package tokens

import (
	"sync"
	"unsafe"
)

// Estimates: the count on the request path.
//
// Token limits reserve a request's prompt tokens when it is admitted, before
// it is proxied, and settle the reservation to the backend's count
// afterwards. Exact counting runs the tokenizer's backtracking split regexp
// and BPE over every byte: 60 to 200 ms for a 400 KB body. The estimate gets
// within a percent or two of it, at a few percent of the cost, by doing the
// cheap half of the tokenizer exactly and guessing only the expensive half:
//
//   - The text is cut into the pieces the encoding's split regexp would cut
//     it into (split.go, and block.go for the bulk of ASCII text), in one
//     pass over the request body, decoding JSON escapes on the way.
//   - A piece that is one vocabulary entry, as nearly all are in English and
//     code, is one token: found by a hash probe into a fingerprint set of the
//     vocabulary (vocab.go).
//   - The other pieces are matched greedily against the same set, longest
//     prefix first (model.go, and short.go for pieces of under 16 bytes,
//     held in registers), instead of being merged by BPE rank.
//
// It allocates nothing per call.

// estimator is the per-encoding state of the estimate. It is immutable.
type estimator struct {
	vocab *vocabSet
	o200k bool // the split rules of o200k_base, else cl100k_base
}

// estimators caches one estimator per encoding, as codecs does counters: the
// vocabulary set is built once, on first use, from the codec's vocabulary.
var estimators struct {
	o200k, cl100k       sync.Once
	o200kEst, cl100kEst *estimator
}

func (c *Counter) estimator() *estimator {
	if c.encoding == Cl100kBase {
		estimators.cl100k.Do(func() { estimators.cl100kEst = &estimator{vocab: newVocabSet(c.codec)} })
		return estimators.cl100kEst
	}
	estimators.o200k.Do(func() { estimators.o200kEst = &estimator{vocab: newVocabSet(c.codec), o200k: true} })
	return estimators.o200kEst
}

// Warm builds what the estimates of c's encoding need: a set of its
// vocabulary (1 MiB for o200k_base, 512 KiB for cl100k_base), built once per
// process in a few tens of milliseconds, after the codec's own setup. The
// first estimate does it otherwise; call Warm at startup to keep that off
// the request path. Safe for concurrent use.
func (c *Counter) Warm() { c.estimator() }

// EstimateText estimates the number of tokens in text: [Counter.Count] at a
// few percent of its cost, typically within 1% of it for English, code and
// data and within 3% for the other languages tested (see estimate_test.go).
// It does not allocate.
func (c *Counter) EstimateText(text string) int {
	if text == "" {
		return 0
	}
	b := unsafe.Slice(unsafe.StringData(text), len(text)) //nolint:gosec // G103: read-only view, never written or retained
	n, _ := c.estimator().scan(b, true)
	return n
}

// EstimateChatJSON estimates [Counter.CountChatJSON] for the same input, a
// request's raw "messages" array, by the same formula: 3 per message, plus
// its role, content and name, plus 1 for a name, plus 3 for the reply
// priming, estimating each text as [Counter.EstimateText] does. Content may
// be a string, null or an array of parts, of which those with type "text",
// "input_text" or "output_text", or no type, count their "text". Like
// CountChatJSON it is best effort: malformed JSON estimates what can be
// read, at least [ReplyPriming]. It reads messages once and does not
// allocate.
func (c *Counter) EstimateChatJSON(messages []byte) int {
	w := walker{b: messages}
	w.space()
	return ReplyPriming + c.estimator().messages(&w)
}

// EstimateBody estimates the prompt tokens of a whole request body of any
// operation, for admission control:
//
//   - chat completions: "messages", as [Counter.EstimateChatJSON];
//   - completions and embeddings: "prompt" or "input", a string or an array
//     of strings (the sum of their texts) or of token ids (one token each,
//     also in arrays of arrays);
//   - Responses: "input", a string or an array of items, each message item
//     counted as a chat message and a function call's name and arguments and
//     a function output's output as text; and "instructions".
//
// When the body has a "messages" array, that alone counts; otherwise the
// others add up. Tool and function definitions are not counted, as in
// [Counter.CountChatJSON]. A body that is not a JSON object estimates 0. It
// reads the body once and does not allocate.
func (c *Counter) EstimateBody(body []byte) int {
	e := c.estimator()
	w := walker{b: body}
	w.space()
	if !w.is('{') {
		return 0
	}
	w.i++
	chat, other := -1, 0
	for w.member() {
		switch key := w.key(); string(key) {
		case "messages":
			if w.is('[') {
				chat = ReplyPriming + e.messages(&w)
				continue
			}
		case "prompt", "input":
			other += e.prompt(&w, string(key) == "input", false)
			continue
		case "instructions":
			if w.is('"') {
				other += e.str(&w)
				continue
			}
		}
		w.skip()
	}
	if chat >= 0 {
		return chat
	}
	return other
}

// messages estimates the chat messages of the array at w, without the reply
// priming, leaving w after it.
func (e *estimator) messages(w *walker) int {
	if !w.is('[') {
		w.skip()
		return 0
	}
	w.i++
	n := 0
	for w.element() {
		if w.is('{') {
			n += e.message(w, false)
		} else {
			w.skip()
		}
	}
	return n
}

// message estimates the chat message object at w: the framing, role, name
// and content. For a Responses input item (item), a function call's "name"
// and "arguments" and a function output's "output" count as text, and an
// item without a role (not a message) costs no framing.
func (e *estimator) message(w *walker, item bool) int {
	w.i++ // '{'
	n := 0
	framed := !item
	for w.member() {
		switch string(w.key()) {
		case "role":
			if w.is('"') {
				n += e.str(w)
				framed = true
				continue
			}
		case "name":
			if w.is('"') {
				k := e.str(w)
				if k > 0 && !item {
					k += TokensPerName
				}
				n += k
				continue
			}
		case "content":
			n += e.content(w)
			continue
		case "arguments", "output":
			if item && w.is('"') {
				n += e.str(w)
				continue
			}
		}
		w.skip()
	}
	if framed {
		n += TokensPerMessage
	}
	return n
}

// content estimates a message's content: a string, or the text parts of an
// array; anything else counts nothing.
func (e *estimator) content(w *walker) int {
	switch {
	case w.is('"'):
		return e.str(w)
	case w.is('['):
		w.i++
		n := 0
		for w.element() {
			if w.is('{') {
				n += e.part(w)
			} else {
				w.skip()
			}
		}
		return n
	}
	w.skip()
	return 0
}

// part estimates a content part object: its "text", if its type is a text
// type or absent. The type may come after the text, so the text is estimated
// first and dropped afterwards if the type says it does not count.
func (e *estimator) part(w *walker) int {
	w.i++ // '{'
	n, text := 0, true
	for w.member() {
		switch string(w.key()) {
		case "type":
			if w.is('"') {
				t := w.rawString()
				text = string(t) == "text" || string(t) == "input_text" || string(t) == "output_text"
				continue
			}
		case "text":
			if w.is('"') {
				n += e.str(w)
				continue
			}
		}
		w.skip()
	}
	if !text {
		return 0
	}
	return n
}

// prompt estimates a completions prompt or an embeddings or Responses
// input: a string, or an array of strings, token ids, arrays of token ids
// (nested is true inside one, where arrays are not looked into further)
// and, for Responses (item), item objects.
func (e *estimator) prompt(w *walker, item, nested bool) int {
	switch {
	case w.is('"'):
		return e.str(w)
	case w.is('[') && !nested:
		w.i++
		n := 0
		for w.element() {
			switch {
			case w.is('"'):
				n += e.str(w)
			case w.is('['):
				n += e.prompt(w, false, true)
			case w.is('{') && item:
				n += e.message(w, true)
			case w.isNumber():
				w.skip()
				n++ // a token id
			default:
				w.skip()
			}
		}
		return n
	case w.is('['):
		w.i++
		n := 0
		for w.element() {
			if w.isNumber() {
				n++
			}
			w.skip()
		}
		return n
	}
	w.skip()
	return 0
}

// decodeChunk is the size of the stack buffer a JSON string with escapes is
// decoded into, a chunk at a time.
const decodeChunk = 4096

// str estimates the JSON string at w (on its opening quote) and leaves w
// after it. A string without escapes is estimated where it is; one with
// escapes is decoded first (see escaped).
func (e *estimator) str(w *walker) int {
	raw := w.b[w.i+1:]
	q := special(raw)
	if q < len(raw) && raw[q] == '\\' {
		return e.escaped(w)
	}
	// No escapes (and, if q is len(raw), truncated: the rest is the
	// string).
	n, _ := e.scan(raw[:q], true)
	w.i = min(w.i+1+q+1, len(w.b))
	return n
}

// escaped is str for a string with escapes, which it decodes into a buffer
// on the stack, a chunk at a time, each chunk's last piece left for the
// next since it may go on there. (Kept out of str, whose calls are many and
// mostly of plain strings, for its stack frame.)
func (e *estimator) escaped(w *walker) int {
	var buf [decodeChunk]byte
	d := decoder{src: w.b, i: w.i + 1}
	have, n := 0, 0
	for {
		have = d.fill(buf[:], have)
		k, stop := e.scan(buf[:have], d.done)
		n += k
		if d.done {
			break
		}
		if stop == 0 {
			// One piece fills the buffer (kilobytes of letters): cut it
			// here, at the cost of a token or so.
			k, _ = e.scan(buf[:have], true)
			n += k
			stop = have
		}
		have = copy(buf[:], buf[stop:have])
	}
	w.i = d.i
	return n
}
