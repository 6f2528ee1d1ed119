package tokens

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
)

// exactChat is CountChat, remembering the count of each content: the bodies
// of a category share their texts, and exact counting is what makes this
// test slow.
func exactChat(c *Counter, msgs []Message, memo map[string]int) int {
	n := ReplyPriming
	for _, m := range msgs {
		k, ok := memo[m.Content]
		if !ok {
			k = c.Count(m.Content)
			memo[m.Content] = k
		}
		n += TokensPerMessage + c.Count(m.Role) + k
	}
	return n
}

// maxError is the estimate's target: within 5% of the exact count.
const maxError = 0.05

// TestEstimateChatJSONAccuracy compares the estimate with the exact count on
// chat bodies of every category of the corpus at sizes from 1 KB to 400 KB,
// and logs the table (go test -run Accuracy -v).
func TestEstimateChatJSONAccuracy(t *testing.T) {
	sizes := bodySizes
	if testing.Short() || raceEnabled {
		// Exact counting of the 400 KB bodies takes the time, ten times
		// as long under the race detector; the 100 KB bodies are drawn
		// from the same texts.
		sizes = sizes[:len(sizes)-1]
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\n%-16s %-11s %6s %8s %8s %7s\n", "category", "encoding", "size", "exact", "estimate", "error")
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		var sumExact, sumEst int
		for _, cat := range corpusCategories() {
			t.Run(enc+"/"+strings.ReplaceAll(cat.name, " ", "_"), func(t *testing.T) {
				pool := cat.pool(t)
				memo := map[string]int{}
				for _, size := range sizes {
					body, msgs := chatBody(pool, size)
					exact := exactChat(c, msgs, memo)
					if size == 16<<10 {
						// The memoized formula is CountChatJSON's.
						if got := c.CountChatJSON(body); got != exact {
							t.Fatalf("CountChatJSON = %d, formula = %d", got, exact)
						}
					}
					est := c.EstimateChatJSON(body)
					sumExact += exact
					sumEst += est
					e := float64(est-exact) / float64(exact)
					fmt.Fprintf(&report, "%-16s %-11s %5dK %8d %8d %+6.2f%%\n", cat.name, enc, (len(body)+512)>>10, exact, est, 100*e)
					if math.Abs(e) > maxError {
						t.Errorf("%d bytes: estimate %d, exact %d: error %+.2f%%, want within %.0f%%", len(body), est, exact, 100*e, 100*maxError)
					}
				}
			})
		}
		fmt.Fprintf(&report, "%-16s %-11s %6s %8d %8d %+6.2f%%\n", "all", enc, "", sumExact, sumEst, 100*float64(sumEst-sumExact)/float64(sumExact))
	}
	t.Log(report.String())
}

func TestEstimateText(t *testing.T) {
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		for _, name := range []string{"english.txt", "chat.txt", "french.txt", "german.txt", "spanish.txt", "chinese.txt", "japanese.txt", "markdown.md", "python.py"} {
			text := testdata(t, name)
			est, exact := c.EstimateText(text), c.Count(text)
			if e := float64(est-exact) / float64(exact); math.Abs(e) > maxError {
				t.Errorf("%s %s: estimate %d, exact %d: %+.2f%%", enc, name, est, exact, 100*e)
			}
		}
		for _, s := range []string{"a", " ", "hello", " world", "123", ",", "\n"} {
			if got, want := c.EstimateText(s), c.Count(s); got != want {
				t.Errorf("%s: EstimateText(%q) = %d, want %d (one vocabulary entry)", enc, s, got, want)
			}
		}
		if n := c.EstimateText(""); n != 0 {
			t.Errorf("%s: EstimateText(\"\") = %d", enc, n)
		}
	}
}

// TestEstimateChatJSONFormula checks the JSON handling: the estimate of a
// body is CountChatJSON's formula over EstimateText of its decoded texts.
func TestEstimateChatJSONFormula(t *testing.T) {
	c := ForModel("gpt-4o")
	text := c.EstimateText
	msg := func(role, content string) int { return TokensPerMessage + text(role) + text(content) }
	tests := []struct {
		name string
		json string
		want int
	}{
		{"empty array", `[]`, 0},
		{"whitespace", " \n\t[ \n ] ", 0},
		{"one message", `[{"role":"user","content":"What is the capital of France?"}]`, msg("user", "What is the capital of France?")},
		{"keys in any order, spaces", `[ { "content" : "Be brief." , "role" : "system" } ]`, msg("system", "Be brief.")},
		{"escapes", `[{"role":"user","content":"line one\nline \"two\"\ttab \\ back\/slash caf\u00e9 \ud83d\ude00 \u4e2d\u6587"}]`,
			msg("user", "line one\nline \"two\"\ttab \\ back/slash café 😀 中文")},
		{"raw UTF-8", `[{"role":"user","content":"café 中文 😀"}]`, msg("user", "café 中文 😀")},
		{"invalid escapes kept", `[{"role":"user","content":"a\qb \u12 \ud800x"}]`, msg("user", `a\qb \u12 `+"\uFFFDx")},
		{"name", `[{"role":"user","name":"ann","content":"hi"}]`, msg("user", "hi") + text("ann") + TokensPerName},
		{"empty name", `[{"role":"user","name":"","content":"hi"}]`, msg("user", "hi")},
		{"null content", `[{"role":"assistant","content":null,"tool_calls":[{"id":"x","function":{"arguments":"{\"a\":1}"}}]}]`, msg("assistant", "")},
		{"text parts", `[{"role":"user","content":[{"type":"text","text":"Describe"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},{"text":"this","type":"text"},{"text":"untyped"}]}]`,
			msg("user", "") + text("Describe") + text("this") + text("untyped")},
		{"type after text", `[{"role":"user","content":[{"text":"not counted","type":"image_url"}]}]`, msg("user", "")},
		{"responses part types", `[{"role":"user","content":[{"type":"input_text","text":"in"},{"type":"output_text","text":"out"}]}]`,
			msg("user", "") + text("in") + text("out")},
		{"unknown members skipped", `[{"role":"user","x":{"content":"nested"},"y":[1,"two",{"z":null}],"content":"ok","w":true}]`, msg("user", "ok")},
		{"non-object elements", `[1, "two", null, {"role":"user","content":"three"}, []]`, msg("user", "three")},
		{"two messages", `[{"role":"system","content":"s"},{"role":"user","content":"u"}]`, msg("system", "s") + msg("user", "u")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := c.EstimateChatJSON([]byte(tt.json)), ReplyPriming+tt.want; got != want {
				t.Errorf("EstimateChatJSON = %d, want %d", got, want)
			}
		})
	}
}

// TestEstimateChatJSONMalformed checks that anything estimates at least the
// reply priming, without panicking, and what is readable counts.
func TestEstimateChatJSONMalformed(t *testing.T) {
	c := ForModel("gpt-4o")
	for _, s := range []string{
		``, `null`, `{}`, `{"not":"an array"`, `[`, `[{`, `[{"role"`, `[{"role":`, `[{"role":"user","content":"unterminated`,
		`[{"role":"user","content":"a\`, `[{"role":"user","content":"\u12`, `]]]]`, `[,,,]`, `[{"role":1,"content":2}]`,
		`[{"role":"user","content":[{"type":"text","text":"x"`, `[{]}`, `[{"a":}]`, `["\`, strings.Repeat("[", 10000),
		strings.Repeat(`{"a":`, 5000), "\xff\xfe", `[{"role":"user","content":"` + strings.Repeat("\\", 9999) + `"}]`,
	} {
		n := c.EstimateChatJSON([]byte(s))
		if n < ReplyPriming || n > ReplyPriming+2*len(s) {
			t.Errorf("EstimateChatJSON(%.40q) = %d", s, n)
		}
	}
	// A truncated body still counts what it has.
	if n := c.EstimateChatJSON([]byte(`[{"role":"user","content":"hello world`)); n != ReplyPriming+TokensPerMessage+c.EstimateText("user")+c.EstimateText("hello world") {
		t.Errorf("truncated body: %d", n)
	}
}

func TestEstimateBody(t *testing.T) {
	c := ForModel("gpt-4o-mini")
	text := c.EstimateText
	tests := []struct {
		name string
		body string
		want int
	}{
		{"chat", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hi there"}],"temperature":0.2}`,
			ReplyPriming + TokensPerMessage + text("user") + text("Hi there")},
		{"chat, messages last", `{"tools":[{"type":"function","function":{"name":"f","description":"long text"}}],"messages":[{"role":"user","content":"Hi"}]}`,
			ReplyPriming + TokensPerMessage + text("user") + text("Hi")},
		{"completions prompt", `{"prompt":"Once upon a time","max_tokens":5}`, text("Once upon a time")},
		{"completions prompts", `{"prompt":["one","two three"]}`, text("one") + text("two three")},
		{"token ids", `{"prompt":[1,2,3,-4]}`, 4},
		{"arrays of token ids", `{"prompt":[[1,2],[3]]}`, 3},
		{"deeper arrays skipped", `{"prompt":[[1,[2,[3]]],"four"]}`, 1 + text("four")},
		{"embeddings", `{"input":["alpha","beta"],"model":"text-embedding-3-small"}`, text("alpha") + text("beta")},
		{"embedding string", `{"input":"alpha beta"}`, text("alpha beta")},
		{"responses string", `{"model":"gpt-4.1","instructions":"Be brief.","input":"Tell me a joke."}`, text("Be brief.") + text("Tell me a joke.")},
		{"responses items", `{"input":[{"role":"user","content":[{"type":"input_text","text":"What is 2+2?"},{"type":"input_image","image_url":"x"}]},` +
			`{"type":"function_call","name":"calc","arguments":"{\"expr\":\"2+2\"}"},{"type":"function_call_output","call_id":"c","output":"4"}]}`,
			TokensPerMessage + text("user") + text("What is 2+2?") + text("calc") + text(`{"expr":"2+2"}`) + text("4")},
		{"nothing to count", `{"model":"gpt-4o"}`, 0},
		{"not an object", `["messages"]`, 0},
		{"empty", ``, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.EstimateBody([]byte(tt.body)); got != tt.want {
				t.Errorf("EstimateBody = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestEstimateConcurrent races first uses of both encodings' estimators.
func TestEstimateConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	body := []byte(`[{"role":"user","content":"hello world"}]`)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ForModel([]string{"gpt-4o", "gpt-4"}[i%2])
			for range 20 {
				if n := c.EstimateChatJSON(body); n != ReplyPriming+TokensPerMessage+3 {
					t.Errorf("%s: %d", c.Encoding(), n)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func FuzzEstimateChatJSON(f *testing.F) {
	for _, s := range []string{
		`[]`, `[{"role":"user","content":"hello"}]`, `[{"role":"user","name":"x","content":[{"type":"text","text":"a\nb"}]}]`,
		`[{"role":"user","content":"\u00e9\ud83d\ude00\"\\"}]`, `[{`, `{"messages":[]}`, "\xff",
	} {
		f.Add(s)
	}
	o, c := ForModel("gpt-4o"), ForModel("gpt-4")
	f.Fuzz(func(t *testing.T, s string) {
		for _, ctr := range []*Counter{o, c} {
			// Anything: at least the priming, at most what the bytes can
			// hold (a token per byte of text, a message's framing per two
			// bytes of "{}").
			if n := ctr.EstimateChatJSON([]byte(s)); n < ReplyPriming || n > ReplyPriming+2*len(s) {
				t.Fatalf("%s: EstimateChatJSON(%q) = %d", ctr.Encoding(), s, n)
			}
			_ = ctr.EstimateBody([]byte(s))

			// s as a message's content: counted as its text, and two such
			// messages count twice as much.
			one := marshalMessages([]Message{{Role: "user", Content: s}})
			var sent []struct{ Content string } // s as it travels: invalid UTF-8 replaced
			if err := json.Unmarshal(one, &sent); err != nil {
				t.Fatal(err)
			}
			n1 := ctr.EstimateChatJSON(one)
			if want := ReplyPriming + TokensPerMessage + ctr.EstimateText("user") + ctr.EstimateText(sent[0].Content); n1 != want {
				t.Fatalf("%s: content %q: %d, want %d", ctr.Encoding(), s, n1, want)
			}
			two := marshalMessages([]Message{{Role: "user", Content: s}, {Role: "user", Content: s}})
			if n2 := ctr.EstimateChatJSON(two); n2 != 2*n1-ReplyPriming {
				t.Fatalf("%s: two messages %d, one %d", ctr.Encoding(), n2, n1)
			}
		}
	})
}

// chatRequest is a chat completions request body as the gateway receives
// it: the model, about size bytes of messages of the mixed category (prose,
// code, data and languages in one conversation), tool definitions and
// sampling options. It returns the body and the exact count of its
// messages, which is what the estimate of the body estimates: tools are not
// counted by either (see [Counter.EstimateBody]).
func chatRequest(tb testing.TB, c *Counter, size int) (body []byte, exact int) {
	tb.Helper()
	messages, msgs := chatBody(mixedPool(tb), size)
	body = fmt.Appendf(nil, `{"model":"gpt-4o","messages":%s,"tools":%s,"tool_choice":"auto","temperature":0.2,"stream":true}`, messages, requestTools)
	return body, exactMessages(c, messages, msgs)
}

// requestTools are the tool definitions of chatRequest's body.
const requestTools = `[{"type":"function","function":{"name":"get_weather","description":"Get the current weather for a city.",` +
	`"parameters":{"type":"object","properties":{"city":{"type":"string","description":"City name, e.g. Paris"},` +
	`"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["city"]}}},` +
	`{"type":"function","function":{"name":"search_orders","description":"Search a customer's orders by status and date range.",` +
	`"parameters":{"type":"object","properties":{"customer_id":{"type":"integer"},"status":{"type":"string","enum":["open","shipped","returned"]},` +
	`"from":{"type":"string","format":"date"},"to":{"type":"string","format":"date"}},"required":["customer_id"]}}}]`

// exactCounts remembers the exact counts of chatRequest's messages per
// encoding and size: counting 400 KB exactly takes a tenth of a second, and
// benchmarks with -count run the setup again.
var exactCounts sync.Map // "encoding/size" -> int

func exactMessages(c *Counter, messages []byte, msgs []Message) int {
	key := fmt.Sprintf("%s/%d", c.Encoding(), len(messages))
	if n, ok := exactCounts.Load(key); ok {
		return n.(int)
	}
	n := c.CountChat(msgs)
	exactCounts.Store(key, n)
	return n
}

// TestEstimateChat400KBAccuracy holds the estimate of the request body of
// BenchmarkEstimateChat400KB to the target: within 5% of the exact count.
func TestEstimateChat400KBAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("counts 400 KB exactly")
	}
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		body, exact := chatRequest(t, c, 400<<10)
		est := c.EstimateBody(body)
		e := float64(est-exact) / float64(exact)
		t.Logf("%s: %d bytes: estimate %d, exact %d: %+.2f%%", enc, len(body), est, exact, 100*e)
		if math.Abs(e) > maxError {
			t.Errorf("%s: estimate %d, exact %d: error %+.2f%%, want within %.0f%%", enc, est, exact, 100*e, 100*maxError)
		}
	}
}

// BenchmarkEstimateChat400KB is the target of the request path: the prompt
// estimate of a 400 KB chat completions request body, the whole body as
// admission control sees it, in at most 1 ms and within 5% of the exact
// count. It reports the error as err%.
func BenchmarkEstimateChat400KB(b *testing.B) {
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		c.Warm()
		body, exact := chatRequest(b, c, 400<<10)
		b.Run(enc, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			est := 0
			for b.Loop() {
				est = c.EstimateBody(body)
			}
			b.ReportMetric(100*float64(est-exact)/float64(exact), "err%")
		})
	}
}

// The benchmarks of the request path: BenchmarkEstimateChatJSON400KB and
// BenchmarkCountChatJSON400KB compare the estimate with the exact count on
// the same 400 KB bodies.

func BenchmarkEstimateChatJSON400KB(b *testing.B) {
	benchmarkChatJSON(b, 400<<10, (*Counter).EstimateChatJSON)
}

func BenchmarkCountChatJSON400KB(b *testing.B) {
	benchmarkChatJSON(b, 400<<10, (*Counter).CountChatJSON)
}

// BenchmarkEstimateChatJSON4KB is a typical request.
func BenchmarkEstimateChatJSON4KB(b *testing.B) {
	benchmarkChatJSON(b, 4<<10, (*Counter).EstimateChatJSON)
}

func benchmarkChatJSON(b *testing.B, size int, count func(*Counter, []byte) int) {
	for _, cat := range corpusCategories() {
		switch cat.name {
		case "english prose", "chat + system", "go source", "json data", "german", "chinese", "mixed":
		default:
			continue
		}
		body, _ := chatBody(cat.pool(b), size)
		for _, enc := range []string{O200kBase, Cl100kBase} {
			c, _ := ForEncoding(enc)
			c.Warm()
			b.Run(strings.ReplaceAll(cat.name, " ", "_")+"/"+enc, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					count(c, body)
				}
			})
		}
	}
}

func BenchmarkEstimateBody(b *testing.B) {
	body := []byte(`{"model":"gpt-4o","temperature":0.2,"messages":[{"role":"system","content":"You are a helpful assistant."},` +
		`{"role":"user","content":"Explain what a token bucket rate limiter is and when to use one, in two short paragraphs."}]}`)
	c := ForModel("gpt-4o")
	c.Warm()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		c.EstimateBody(body)
	}
}

func BenchmarkEstimateText(b *testing.B) {
	text := testdata(b, "english.txt")
	c := ForModel("gpt-4o")
	c.Warm()
	b.ReportAllocs()
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		c.EstimateText(text)
	}
}

// BenchmarkWarm is the one-time cost of an encoding's vocabulary set.
func BenchmarkWarm(b *testing.B) {
	c := ForModel("gpt-4o")
	b.ReportAllocs()
	for b.Loop() {
		newVocabSet(c.codec)
	}
}
