package tokens

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestEncodingForModel(t *testing.T) {
	tests := []struct {
		model string
		want  string
	}{
		{"gpt-4o", O200kBase},
		{"gpt-4o-mini", O200kBase},
		{"GPT-4o-2024-08-06", O200kBase},
		{"chatgpt-4o-latest", O200kBase},
		{"gpt-4.1", O200kBase},
		{"gpt-4.1-nano", O200kBase},
		{"gpt-5", O200kBase},
		{"gpt-5-mini", O200kBase},
		{"o1", O200kBase},
		{"o1-mini", O200kBase},
		{"o3-mini", O200kBase},
		{"o4-mini", O200kBase},
		{"gpt-4", Cl100kBase},
		{"gpt-4-32k", Cl100kBase},
		{"gpt-4-turbo", Cl100kBase},
		{"gpt-35-turbo", Cl100kBase},
		{"gpt-35-turbo-16k", Cl100kBase},
		{"gpt-3.5-turbo-instruct", Cl100kBase},
		{"text-embedding-ada-002", Cl100kBase},
		{"text-embedding-3-small", Cl100kBase},
		{"text-embedding-3-large", Cl100kBase},
		{"some-future-model", O200kBase},
		{"", O200kBase},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			if got := EncodingForModel(tt.model); got != tt.want {
				t.Errorf("EncodingForModel(%q) = %q, want %q", tt.model, got, tt.want)
			}
			if got := ForModel(tt.model).Encoding(); got != tt.want {
				t.Errorf("ForModel(%q).Encoding() = %q, want %q", tt.model, got, tt.want)
			}
		})
	}
}

func TestEncodeKnownIDs(t *testing.T) {
	tests := []struct {
		encoding string
		text     string
		want     []int
	}{
		{O200kBase, "hello world", []int{24912, 2375}},
		{Cl100kBase, "hello world", []int{15339, 1917}},
		{O200kBase, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.encoding+"/"+tt.text, func(t *testing.T) {
			c, err := ForEncoding(tt.encoding)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Encode(tt.text); !slices.Equal(got, tt.want) {
				t.Errorf("Encode(%q) = %v, want %v", tt.text, got, tt.want)
			}
			if got := c.Count(tt.text); got != len(tt.want) {
				t.Errorf("Count(%q) = %d, want %d", tt.text, got, len(tt.want))
			}
		})
	}
}

func TestForEncodingUnknown(t *testing.T) {
	_, err := ForEncoding("p50k_base")
	var ue *UnknownEncodingError
	if !errors.As(err, &ue) || ue.Name != "p50k_base" {
		t.Fatalf("ForEncoding(p50k_base) error = %v, want *UnknownEncodingError", err)
	}
}

func TestCountOddInput(t *testing.T) {
	c := ForModel("gpt-4o")
	for _, s := range []string{"\xff\xfe invalid utf-8", "<|endoftext|>", strings.Repeat("a", 10000), "\x00", "\x7f"} {
		if n := c.Count(s); n <= 0 {
			t.Errorf("Count(%q...) = %d, want > 0", s[:min(len(s), 10)], n)
		}
	}
}

func TestCountChat(t *testing.T) {
	c := ForModel("gpt-4o")
	// Each of these is a single o200k token, so the expected sums are plain.
	one := func(s string) int {
		if n := c.Count(s); n != 1 {
			t.Fatalf("test assumes %q is one token, got %d", s, n)
		}
		return 1
	}
	tests := []struct {
		name string
		msgs []Message
		want int
	}{
		{"empty", nil, ReplyPriming},
		{"one user message", []Message{{Role: "user", Content: "hello"}},
			TokensPerMessage + one("user") + one("hello") + ReplyPriming},
		{"system and user", []Message{{Role: "system", Content: "hello"}, {Role: "user", Content: "world"}},
			2*TokensPerMessage + one("system") + one("user") + one("hello") + one("world") + ReplyPriming},
		{"name costs one extra", []Message{{Role: "user", Name: "bob", Content: "hello"}},
			TokensPerMessage + one("user") + one("bob") + TokensPerName + one("hello") + ReplyPriming},
		{"text parts each counted", []Message{{Role: "user", Parts: []string{"hello", "world"}}},
			TokensPerMessage + one("user") + one("hello") + one("world") + ReplyPriming},
		{"null content", []Message{{Role: "assistant"}},
			TokensPerMessage + one("assistant") + ReplyPriming},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.CountChat(tt.msgs); got != tt.want {
				t.Errorf("CountChat = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestCountChatOpenAIReference(t *testing.T) {
	// The example conversation of OpenAI's cookbook "How to count tokens with
	// tiktoken", for which the API reported 129 prompt tokens on gpt-4 and
	// gpt-3.5-turbo-0613 (cl100k) and 124 on gpt-4o (o200k).
	msgs := []Message{
		{Role: "system", Content: "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
		{Role: "system", Name: "example_user", Content: "New synergies will help drive top-line growth."},
		{Role: "system", Name: "example_assistant", Content: "Things working well together will increase revenue."},
		{Role: "system", Name: "example_user", Content: "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
		{Role: "system", Name: "example_assistant", Content: "Let's talk later when we're less busy about how to do better."},
		{Role: "user", Content: "This late pivot means we don't have time to boil the ocean for the client deliverable."},
	}
	for _, tt := range []struct {
		model string
		want  int
	}{{"gpt-4", 129}, {"gpt-4o", 124}} {
		if got := ForModel(tt.model).CountChat(msgs); got != tt.want {
			t.Errorf("%s: CountChat = %d, want %d", tt.model, got, tt.want)
		}
	}
}

func TestCountChatJSONMatchesCountChat(t *testing.T) {
	c := ForModel("gpt-4o-mini")
	tests := []struct {
		name string
		json string
		msgs []Message
	}{
		{"string content", `[{"role":"system","content":"Be brief."},{"role":"user","content":"What is the capital of France?"}]`,
			[]Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "What is the capital of France?"}}},
		{"parts and name", `[{"role":"user","name":"ann","content":[{"type":"text","text":"Describe"},{"type":"image_url","image_url":{"url":"http://x"}},{"type":"text","text":"this picture."}]}]`,
			[]Message{{Role: "user", Name: "ann", Parts: []string{"Describe", "this picture."}}}},
		{"null content", `[{"role":"assistant","content":null,"tool_calls":[]}]`,
			[]Message{{Role: "assistant"}}},
		{"empty", `[]`, nil},
		{"garbage", `{"not":"an array"`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := c.CountChatJSON([]byte(tt.json)), c.CountChat(tt.msgs); got != want {
				t.Errorf("CountChatJSON = %d, CountChat = %d", got, want)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			model := "gpt-4o"
			if i%2 == 1 {
				model = "gpt-4"
			}
			for range 50 {
				if n := ForModel(model).Count("hello world"); n != 2 {
					t.Errorf("Count = %d, want 2", n)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func FuzzCount(f *testing.F) {
	for _, s := range []string{"", "hello world", "\xff", "<|endoftext|>", "  \n\t", "日本語のテキスト", "'s'll've", "\x7f", "a\x7fb"} {
		f.Add(s)
	}
	o, c := ForModel("gpt-4o"), ForModel("gpt-4")
	f.Fuzz(func(t *testing.T, s string) {
		for _, ctr := range []*Counter{o, c} {
			n := ctr.Count(s)
			if s != "" && n < 1 || n > len(s) {
				t.Fatalf("%s: Count(%q) = %d, outside [1, len]", ctr.Encoding(), s, n)
			}
		}
		_ = o.CountChatJSON([]byte(s))
	})
}

func BenchmarkCount(b *testing.B) {
	text := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20) // ~200 tokens
	for _, enc := range []string{O200kBase, Cl100kBase} {
		c, _ := ForEncoding(enc)
		b.Run(enc, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				c.Count(text)
			}
		})
	}
}

func BenchmarkCountChat(b *testing.B) {
	c := ForModel("gpt-4o")
	msgs := []Message{
		{Role: "system", Content: "You are a helpful assistant that answers in one short paragraph."},
		{Role: "user", Content: "Explain what a token bucket rate limiter is and when to use one."},
	}
	b.ReportAllocs()
	for b.Loop() {
		c.CountChat(msgs)
	}
}
