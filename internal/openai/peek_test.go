package openai

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestPeek(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       Body
		code       string // expected error code, "" for success
	}{
		{"chat", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"n":2}`,
			Body{Model: "gpt-4o", Stream: true, IncludeUsage: true, MaxTokens: 50, N: 2}, ""},
		{"model after messages", `{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"model":"gpt-4o-mini"}`, Body{Model: "gpt-4o-mini"}, ""},
		{"nested model ignored", `{"tools":[{"model":"evil"}],"metadata":{"model":"evil"}}`, Body{}, ""},
		{"escaped model value", `{"model":"gpt-4o\u002dmini"}`, Body{Model: "gpt-4o-mini"}, ""},
		{"whitespace", " \n\t{ \"model\" : \"m\" , \"stream\" : false }\n", Body{Model: "m"}, ""},
		{"nulls", `{"model":null,"stream":null,"max_tokens":null,"stream_options":null}`, Body{}, ""},
		{"max_completion_tokens", `{"max_completion_tokens":4096}`, Body{MaxCompletionTokens: 4096}, ""},
		{"empty object", `{}`, Body{}, ""},
		{"duplicate model", `{"model":"a","messages":[],"model":"b"}`, Body{}, "duplicate_key"},
		{"duplicate model case", `{"model":"a","MODEL":"b"}`, Body{}, "duplicate_key"},
		{"duplicate model escaped", `{"model":"a","mod\u0065l":"b"}`, Body{}, "duplicate_key"},
		{"duplicate model long s", `{"stream":false,"ſtream":true}`, Body{}, "duplicate_key"},
		{"duplicate stream", `{"stream":false,"stream":true}`, Body{}, "duplicate_key"},
		{"duplicate max_tokens", `{"max_tokens":1,"Max_Tokens":100000}`, Body{}, "duplicate_key"},
		{"duplicate include_usage", `{"stream_options":{"include_usage":false,"include_usage":true}}`, Body{}, "duplicate_key"},
		{"not json", `{"model":`, Body{}, "invalid_json"},
		{"trailing garbage", `{"model":"a"} x`, Body{}, "invalid_json"},
		{"array", `[{"model":"a"}]`, Body{}, "invalid_json"},
		{"empty", ``, Body{}, "invalid_json"},
		{"model number", `{"model":4}`, Body{}, "invalid_request"},
		{"stream string", `{"stream":"yes"}`, Body{}, "invalid_request"},
		{"max_tokens float", `{"max_tokens":1.5}`, Body{}, "invalid_request"},
		{"max_tokens negative", `{"max_tokens":-1}`, Body{}, "invalid_request"},
		{"max_tokens huge", `{"max_tokens":1e99}`, Body{}, "invalid_request"},
		{"stream_options array", `{"stream_options":[]}`, Body{}, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Peek([]byte(tc.body))
			if tc.code != "" {
				var e *Error
				if !errors.As(err, &e) || e.Code != tc.code || e.Status != 400 {
					t.Fatalf("got %+v, %v; want 400 %s", got, err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// stdlibView is what encoding/json (case-insensitive, last key wins, like
// the backends' parsers) makes of the fields Peek extracts.
type stdlibView struct {
	Model               *string `json:"model"`
	Stream              *bool   `json:"stream"`
	MaxTokens           *int64  `json:"max_tokens"`
	MaxCompletionTokens *int64  `json:"max_completion_tokens"`
	N                   *int64  `json:"n"`
	StreamOptions       *struct {
		IncludeUsage *bool `json:"include_usage"`
	} `json:"stream_options"`
}

// FuzzPeek checks that Peek never panics and, whenever it accepts a body,
// agrees with what a last-key-wins, case-insensitive parser reads.
func FuzzPeek(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":50}`,
		`{"model":"a","MODEL":"b"}`, `{"mod\u0065l":"x"}`, `{"stream":null}`, `{"a":[1,{"b":"}"}],"model":"\"q\""}`,
		`{"n":3,"max_completion_tokens":9}`, `[]`, `{"K":1,"k":2}`, `{"model":"\ud83d\ude00"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Peek(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error must be a 400 *Error: %v", err)
			}
			return
		}
		var v stdlibView
		if json.Unmarshal(data, &v) != nil {
			return // a body encoding/json rejects for type reasons; backends would reject it too
		}
		want := Body{}
		if v.Model != nil {
			want.Model = *v.Model
		}
		if v.Stream != nil {
			want.Stream = *v.Stream
		}
		if v.MaxTokens != nil {
			want.MaxTokens = *v.MaxTokens
		}
		if v.MaxCompletionTokens != nil {
			want.MaxCompletionTokens = *v.MaxCompletionTokens
		}
		if v.N != nil {
			want.N = *v.N
		}
		if v.StreamOptions != nil && v.StreamOptions.IncludeUsage != nil {
			want.IncludeUsage = *v.StreamOptions.IncludeUsage
		}
		if got != want {
			t.Fatalf("Peek(%q) = %+v, encoding/json reads %+v", data, got, want)
		}
	})
}

func chatBody(promptBytes int, modelLast bool) []byte {
	var b strings.Builder
	b.WriteString(`{`)
	if !modelLast {
		b.WriteString(`"model":"gpt-4o",`)
	}
	b.WriteString(`"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"`)
	word := "The quick brown fox jumps over the lazy dog. "
	for b.Len() < promptBytes {
		b.WriteString(word)
	}
	b.WriteString(`"}],"max_tokens":256,"stream":true`)
	if modelLast {
		b.WriteString(`,"model":"gpt-4o"`)
	}
	b.WriteString(`}`)
	return []byte(b.String())
}

func BenchmarkPeek(b *testing.B) {
	for _, bc := range []struct {
		name string
		body []byte
	}{
		{"1KB", chatBody(1<<10, false)},
		{"400KB-model-first", chatBody(400<<10, false)},
		{"400KB-model-last", chatBody(400<<10, true)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.body)))
			for b.Loop() {
				if _, err := Peek(bc.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestSetInt(t *testing.T) {
	for _, tc := range []struct {
		body, name string
		n          int64
		want       string
	}{
		{`{"model":"a","max_tokens":4096,"stream":true}`, "max_tokens", 256, `{"model":"a","max_tokens":256,"stream":true}`},
		{`{"model":"a","Max_Tokens": 4096 }`, "max_tokens", 256, `{"model":"a","Max_Tokens": 256 }`},
		{`{"model":"a"}`, "max_tokens", 256, `{"max_tokens":256,"model":"a"}`},
		{` { } `, "max_tokens", 7, ` {"max_tokens":7 } `},
		{`{"max_completion_tokens":null}`, "max_completion_tokens", 9, `{"max_completion_tokens":9}`},
	} {
		got := SetInt([]byte(tc.body), tc.name, tc.n)
		if string(got) != tc.want {
			t.Errorf("SetInt(%s) = %s, want %s", tc.body, got, tc.want)
		}
		b, err := Peek(got)
		if err != nil {
			t.Errorf("result does not peek: %v", err)
		}
		if v := b.MaxTokens + b.MaxCompletionTokens; v != tc.n {
			t.Errorf("peeked %d after SetInt", v)
		}
	}
}
