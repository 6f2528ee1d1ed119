package simulator

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokengate/tokengate/internal/tokens"
)

type usageBody struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int `json:"cached_tokens"`
		AudioTokens  int `json:"audio_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails *struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
}

type filterResults map[string]map[string]any

type chatResponse struct {
	ID                  string `json:"id"`
	Object              string `json:"object"`
	Created             int64  `json:"created"`
	Model               string `json:"model"`
	SystemFingerprint   string `json:"system_fingerprint"`
	PromptFilterResults []struct {
		PromptIndex          int           `json:"prompt_index"`
		ContentFilterResults filterResults `json:"content_filter_results"`
	} `json:"prompt_filter_results"`
	Choices []struct {
		Index        int             `json:"index"`
		FinishReason string          `json:"finish_reason"`
		Logprobs     json.RawMessage `json:"logprobs"`
		Message      struct {
			Role    string  `json:"role"`
			Content string  `json:"content"`
			Refusal *string `json:"refusal"`
		} `json:"message"`
		Text                 string        `json:"text"`
		ContentFilterResults filterResults `json:"content_filter_results"`
	} `json:"choices"`
	Usage usageBody `json:"usage"`
}

func TestWordsAreSingleTokens(t *testing.T) {
	for _, enc := range []string{tokens.O200kBase, tokens.Cl100kBase} {
		c, err := tokens.ForEncoding(enc)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range words {
			if n := c.Count(w); n != 1 {
				t.Errorf("%s: %q is %d tokens, want 1", enc, w, n)
			}
			if n := c.Count(" " + w); n != 1 {
				t.Errorf("%s: %q is %d tokens, want 1", enc, " "+w, n)
			}
		}
		// And they stay one token each when run together.
		for _, length := range []int{1, 2, 7, 64, 500} {
			for seed := range uint64(5) {
				text := string(appendCompletion(nil, choiceSeed(seed, 0), length))
				if n := c.Count(text); n != length {
					t.Errorf("%s: completion of %d words counts %d tokens: %q", enc, length, n, text)
				}
			}
		}
	}
}

func TestChatCompletion(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 20
	_, srv := newServer(t, cfg)
	msgs := []tokens.Message{
		{Role: "system", Content: "You are terse."},
		{Role: "user", Name: "ann", Content: "Name three rivers."},
	}
	base := `"messages":[{"role":"system","content":"You are terse."},{"role":"user","name":"ann","content":"Name three rivers."}]`

	tests := []struct {
		name       string
		deployment string
		extra      string
		choices    int
		length     int
		finish     string
	}{
		{"natural length", "gpt-4o", ``, 1, 20, "stop"},
		{"max_tokens cuts", "gpt-4o", `,"max_tokens":5`, 1, 5, "length"},
		{"max_tokens equal to natural", "gpt-4o", `,"max_tokens":20`, 1, 20, "stop"},
		{"max_tokens above natural", "gpt-4o", `,"max_tokens":4000`, 1, 20, "stop"},
		{"max_completion_tokens", "gpt-4o", `,"max_completion_tokens":3`, 1, 3, "length"},
		{"max_completion_tokens wins", "gpt-4o", `,"max_tokens":2,"max_completion_tokens":6`, 1, 6, "length"},
		{"n choices", "gpt-4o", `,"n":3,"max_tokens":8`, 3, 8, "length"},
		{"cl100k model", "gpt-35", `,"max_tokens":7`, 1, 7, "length"},
		{"ignored fields", "gpt-4o", `,"temperature":0.2,"tools":[],"user":"u","stream":false`, 1, 20, "stop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, deploymentURL(srv.URL, tt.deployment, "chat/completions"), "{"+base+tt.extra+"}", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			r := decode[chatResponse](t, body)
			model := map[string]string{"gpt-4o": "gpt-4o", "gpt-35": "gpt-35-turbo"}[tt.deployment]
			counter := tokens.ForModel(model)
			if !strings.HasPrefix(r.ID, "chatcmpl-") || len(r.ID) != len("chatcmpl-")+29 {
				t.Errorf("id = %q", r.ID)
			}
			if r.Object != "chat.completion" || r.Model != model || r.Created == 0 || !strings.HasPrefix(r.SystemFingerprint, "fp_") {
				t.Errorf("object %q model %q created %d fingerprint %q", r.Object, r.Model, r.Created, r.SystemFingerprint)
			}
			if len(r.PromptFilterResults) != 1 || r.PromptFilterResults[0].ContentFilterResults["jailbreak"]["detected"] != false {
				t.Errorf("prompt_filter_results = %+v", r.PromptFilterResults)
			}
			if len(r.Choices) != tt.choices {
				t.Fatalf("choices = %d, want %d", len(r.Choices), tt.choices)
			}
			seen := map[string]bool{}
			for i, c := range r.Choices {
				if c.Index != i || c.FinishReason != tt.finish || c.Message.Role != "assistant" || c.Message.Refusal != nil || string(c.Logprobs) != "null" {
					t.Errorf("choice %d = %+v", i, c)
				}
				if n := counter.Count(c.Message.Content); n != tt.length {
					t.Errorf("choice %d content is %d tokens, want %d: %q", i, n, tt.length, c.Message.Content)
				}
				if c.ContentFilterResults["protected_material_text"]["detected"] != false {
					t.Errorf("choice %d content_filter_results = %v", i, c.ContentFilterResults)
				}
				seen[c.Message.Content] = true
			}
			if len(seen) != tt.choices {
				t.Errorf("choices are not distinct: %v", seen)
			}
			wantPrompt := counter.CountChat(msgs)
			u := r.Usage
			if u.PromptTokens != wantPrompt || u.CompletionTokens != tt.length*tt.choices || u.TotalTokens != wantPrompt+tt.length*tt.choices {
				t.Errorf("usage = %+v, want prompt %d completion %d", u, wantPrompt, tt.length*tt.choices)
			}
			if u.PromptTokensDetails == nil || u.CompletionTokensDetails == nil {
				t.Errorf("usage lacks token details: %s", body)
			}
		})
	}
}

func TestChatCompletionIsDeterministic(t *testing.T) {
	_, srv := newServer(t, testConfig())
	content := func(body string) string {
		t.Helper()
		_, b := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), body, nil)
		r := decode[chatResponse](t, b)
		return r.Choices[0].Message.Content
	}
	a := `{"messages":[{"role":"user","content":"one"}]}`
	b := `{"messages":[{"role":"user","content":"two"}]}`
	if content(a) != content(a) {
		t.Error("the same request gave different completions")
	}
	if content(a) == content(b) {
		t.Error("different requests gave the same completion")
	}
	// Parameters that do not change the prompt do not change the text.
	if got := content(`{"messages":[{"role":"user","content":"one"}],"temperature":1.5}`); got != content(a) {
		t.Error("temperature changed the completion")
	}
}

func TestChatContentParts(t *testing.T) {
	_, srv := newServer(t, testConfig())
	body := `{"messages":[{"role":"user","content":[{"type":"text","text":"Describe"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}},{"type":"text","text":"this image."}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"done"}]}`
	resp, b := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), body, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	r := decode[chatResponse](t, b)
	want := tokens.ForModel("gpt-4o").CountChat([]tokens.Message{
		{Role: "user", Parts: []string{"Describe", "this image."}},
		{Role: "assistant"},
		{Role: "tool", Content: "done"},
	})
	if r.Usage.PromptTokens != want {
		t.Errorf("prompt_tokens = %d, want %d", r.Usage.PromptTokens, want)
	}
}

func TestLegacyCompletions(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 10
	_, srv := newServer(t, cfg)
	counter := tokens.ForModel("gpt-4o")
	tests := []struct {
		name    string
		body    string
		prompt  int
		choices int
		length  int
	}{
		{"string prompt", `{"prompt":"Once upon a time"}`, counter.Count("Once upon a time"), 1, 10},
		{"prompt array times n", `{"prompt":["Once upon","a time"],"n":2,"max_tokens":4}`, counter.Count("Once upon") + counter.Count("a time"), 4, 4},
		{"token ids", `{"prompt":[1,2,3,4,5]}`, 5, 1, 10},
		{"arrays of token ids", `{"prompt":[[1,2],[3]]}`, 3, 2, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := post(t, deploymentURL(srv.URL, "gpt-4o", "completions"), tt.body, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			r := decode[chatResponse](t, b)
			if r.Object != "text_completion" || !strings.HasPrefix(r.ID, "cmpl-") {
				t.Errorf("object %q id %q", r.Object, r.ID)
			}
			if len(r.Choices) != tt.choices {
				t.Fatalf("choices = %d, want %d", len(r.Choices), tt.choices)
			}
			for i, c := range r.Choices {
				if c.Index != i || counter.Count(c.Text) != tt.length {
					t.Errorf("choice %d: index %d, %q", i, c.Index, c.Text)
				}
			}
			if r.Usage.PromptTokens != tt.prompt || r.Usage.CompletionTokens != tt.length*tt.choices {
				t.Errorf("usage = %+v, want prompt %d completion %d", r.Usage, tt.prompt, tt.length*tt.choices)
			}
			if r.Usage.PromptTokensDetails != nil {
				t.Error("legacy usage has chat token details")
			}
		})
	}
}

func TestModelNameIsEscaped(t *testing.T) {
	cfg := InstanceConfig{Name: "x", Deployments: []DeploymentConfig{{Name: "d", Model: `we"ird\model`}}}
	_, srv := newServer(t, cfg)
	_, b := post(t, deploymentURL(srv.URL, "d", "chat/completions"), chatBody, nil)
	r := decode[chatResponse](t, b)
	if r.Model != `we"ird\model` {
		t.Errorf("model = %q", r.Model)
	}
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "ctl\x00\x1f\n\r\t", "bad \xff utf8", "line\u2028sep", "日本"} {
		got := appendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("appendString(%q) = %s: invalid JSON: %v", s, got, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantBack string
		_ = json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("appendString(%q) round-trips to %q, want %q", s, back, wantBack)
		}
	}
}
