package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokengate/tokengate/internal/tokens"
)

// chunk is a streamed chat or completions event.
type chunk struct {
	ID                  string            `json:"id"`
	Object              string            `json:"object"`
	Created             int64             `json:"created"`
	Model               string            `json:"model"`
	SystemFingerprint   *string           `json:"system_fingerprint"`
	PromptFilterResults []json.RawMessage `json:"prompt_filter_results"`
	Choices             []struct {
		Index        int     `json:"index"`
		FinishReason *string `json:"finish_reason"`
		Delta        *struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text                 *string         `json:"text"`
		ContentFilterResults json.RawMessage `json:"content_filter_results"`
	} `json:"choices"`
	Usage json.RawMessage `json:"usage"`
}

func TestStreamEventSequence(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 6
	_, srv := newServer(t, cfg)
	messages := `"messages":[{"role":"user","content":"Stream me something."}]`

	tests := []struct {
		name         string
		op           string
		body         string // without the stream fields
		includeUsage bool
		choices      int
		length       int
		finish       string
	}{
		{"chat", "chat/completions", messages, false, 1, 6, "stop"},
		{"chat with usage", "chat/completions", messages, true, 1, 6, "stop"},
		{"chat n=2 max_tokens", "chat/completions", messages + `,"n":2,"max_tokens":3`, true, 2, 3, "length"},
		{"completions", "completions", `"prompt":"Once upon a time"`, false, 1, 6, "stop"},
		{"completions with usage", "completions", `"prompt":["a","b"],"max_tokens":2`, true, 2, 2, "length"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chat := tt.op == "chat/completions"
			url := deploymentURL(srv.URL, "gpt-4o", tt.op)

			// The non-streaming answer to the same request is the reference.
			_, b := post(t, url, "{"+tt.body+"}", nil)
			ref := decode[chatResponse](t, b)

			streamFields := `,"stream":true`
			if tt.includeUsage {
				streamFields += `,"stream_options":{"include_usage":true}`
			}
			resp, b := post(t, url, "{"+tt.body+streamFields+"}", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("Content-Type = %q", ct)
			}
			if resp.Header.Get("Content-Length") != "" {
				t.Error("a stream has a Content-Length")
			}
			events, err := sseEvents(strings.NewReader(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(string(b), "data: [DONE]\n\n") || events[len(events)-1] != "[DONE]" {
				t.Fatalf("stream does not end with [DONE]: %q", b[max(0, len(b)-100):])
			}
			events = events[:len(events)-1]

			roles := 0
			if chat {
				roles = tt.choices
			}
			usageEvents := 0
			if tt.includeUsage {
				usageEvents = 1
			}
			wantEvents := 1 + roles + tt.length*tt.choices + tt.choices + usageEvents
			if len(events) != wantEvents {
				t.Fatalf("%d events, want %d:\n%s", len(events), wantEvents, strings.Join(events, "\n"))
			}
			parse := func(i int) chunk {
				var c chunk
				if err := json.Unmarshal([]byte(events[i]), &c); err != nil {
					t.Fatalf("event %d: %v: %s", i, err, events[i])
				}
				return c
			}

			// 1. Prompt filter results, with empty id, model, object and choices.
			first := parse(0)
			if first.ID != "" || first.Model != "" || first.Object != "" || first.Created != 0 || len(first.Choices) != 0 || len(first.PromptFilterResults) == 0 {
				t.Errorf("first event = %s", events[0])
			}
			if strings.Contains(events[0], `"usage"`) {
				t.Errorf("prompt filter event carries usage: %s", events[0])
			}

			wantObject := "text_completion"
			if chat {
				wantObject = "chat.completion.chunk"
			}
			texts := make([]string, tt.choices)
			var id string
			for i := 1; i < len(events); i++ {
				c := parse(i)
				if c.Object != wantObject || c.Model != "gpt-4o" || c.Created == 0 || c.ID == "" {
					t.Errorf("event %d header: %s", i, events[i])
				}
				if id == "" {
					id = c.ID
				} else if c.ID != id {
					t.Errorf("event %d id %q, want %q", i, c.ID, id)
				}
				if chat && (c.SystemFingerprint == nil || !strings.HasPrefix(*c.SystemFingerprint, "fp_")) {
					t.Errorf("event %d lacks system_fingerprint", i)
				}
				isUsage := tt.includeUsage && i == len(events)-1
				if tt.includeUsage && !isUsage && string(c.Usage) != "null" {
					t.Errorf("event %d: usage = %s, want null with include_usage", i, c.Usage)
				}
				if !tt.includeUsage && c.Usage != nil {
					t.Errorf("event %d has usage without include_usage", i)
				}
				switch {
				case i <= roles: // role deltas
					ch := c.Choices[0]
					if ch.Delta == nil || ch.Delta.Role != "assistant" || ch.FinishReason != nil || ch.Index != i-1 {
						t.Errorf("event %d is not a role delta: %s", i, events[i])
					}
				case i <= roles+tt.length*tt.choices: // tokens
					ch := c.Choices[0]
					var tok string
					if chat {
						tok = *ch.Delta.Content
					} else {
						tok = *ch.Text
					}
					if n := tokens.ForModel("gpt-4o").Count(tok); n != 1 {
						t.Errorf("event %d carries %d tokens (%q), want 1", i, n, tok)
					}
					if ch.FinishReason != nil {
						t.Errorf("event %d: finish_reason before the end", i)
					}
					texts[ch.Index] += tok
				case !isUsage: // finish
					ch := c.Choices[0]
					if ch.FinishReason == nil || *ch.FinishReason != tt.finish {
						t.Errorf("event %d: finish_reason = %v, want %q", i, ch.FinishReason, tt.finish)
					}
				default: // usage
					if len(c.Choices) != 0 {
						t.Errorf("usage event has choices: %s", events[i])
					}
					var u usageBody
					if err := json.Unmarshal(c.Usage, &u); err != nil {
						t.Fatal(err)
					}
					ru := ref.Usage
					if u.PromptTokens != ru.PromptTokens || u.CompletionTokens != ru.CompletionTokens || u.TotalTokens != ru.TotalTokens {
						t.Errorf("stream usage %+v != non-streaming usage %+v", u, ru)
					}
					if chat && (u.PromptTokensDetails == nil || u.CompletionTokensDetails == nil) {
						t.Errorf("usage lacks details: %s", c.Usage)
					}
				}
			}
			for i, text := range texts {
				want := ref.Choices[i].Text
				if chat {
					want = ref.Choices[i].Message.Content
				}
				if text != want {
					t.Errorf("choice %d streamed %q, non-streaming gave %q", i, text, want)
				}
			}
		})
	}
}

// TestStreamIsFlushedPerEvent reads the first events while generation is still
// paced, which only works if each event is flushed on its own.
func TestStreamIsFlushedPerEvent(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 50
	cfg.Latency.TokensPerSecond = 20 // 50ms a token: 2.5s in all
	_, srv := newServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, deploymentURL(srv.URL, "gpt-4o", "chat/completions"),
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"stream":true}`))
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64<<10)
	got := ""
	for !strings.Contains(got, `"content":"`) || strings.Count(got, "data: ") < 3 {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		got += string(buf[:n])
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("first token arrived after %s; the stream is buffered", elapsed)
	}
}

func TestStreamPacing(t *testing.T) {
	cfg := testConfig()
	cfg.Latency.TimeToFirstToken = 100 * time.Millisecond
	cfg.Latency.TokensPerSecond = 50 // 20ms a token
	_, srv := newServer(t, cfg)
	for _, stream := range []bool{true, false} {
		start := time.Now()
		body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":6,"stream":` + map[bool]string{true: "true", false: "false"}[stream] + `}`
		resp, _ := post(t, deploymentURL(srv.URL, "gpt-4o", "chat/completions"), body, nil)
		elapsed := time.Since(start)
		// TTFT, then 5 more tokens at 20ms.
		if min := 100*time.Millisecond + 5*20*time.Millisecond; resp.StatusCode != 200 || elapsed < min {
			t.Errorf("stream=%v: status %d after %s, want at least %s", stream, resp.StatusCode, elapsed, min)
		}
	}
}

func TestStreamClientCancelIsObserved(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 200
	cfg.Latency.TokensPerSecond = 10
	obs := newObservations()
	in, srv := newServer(t, cfg, obs.option())

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, deploymentURL(srv.URL, "gpt-4o", "chat/completions"),
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancelled := time.Now()
	cancel()
	resp.Body.Close()

	o := obs.next(t, time.Second)
	if !o.Cancelled || o.Reset || o.Status != 200 || !o.Stream {
		t.Errorf("observation = cancelled %v reset %v status %d stream %v", o.Cancelled, o.Reset, o.Status, o.Stream)
	}
	if d := o.End.Sub(cancelled); d > time.Second {
		t.Errorf("generation stopped %s after the client left", d)
	}
	if o.CompletionTokens >= 200 {
		t.Errorf("CompletionTokens = %d: generation ran to the end", o.CompletionTokens)
	}
	if st := in.Stats(); st.Cancelled != 1 {
		t.Errorf("Stats.Cancelled = %d", st.Cancelled)
	}
}

func TestNonStreamClientCancelIsObserved(t *testing.T) {
	cfg := testConfig()
	cfg.Latency.TimeToFirstToken = 10 * time.Second
	obs := newObservations()
	_, srv := newServer(t, cfg, obs.option())
	client := &http.Client{Timeout: 100 * time.Millisecond}
	_, err := client.Post(deploymentURL(srv.URL, "gpt-4o", "chat/completions"), "application/json", strings.NewReader(chatBody))
	if err == nil {
		t.Fatal("request did not time out")
	}
	o := obs.next(t, time.Second)
	if !o.Cancelled || o.Status != 0 || o.CompletionTokens != 0 {
		t.Errorf("observation = cancelled %v status %d completion %d", o.Cancelled, o.Status, o.CompletionTokens)
	}
}

func TestCloseCutsStreams(t *testing.T) {
	cfg := testConfig()
	cfg.CompletionTokens = 200
	cfg.Latency.TokensPerSecond = 10
	obs := newObservations()
	in, err := New(cfg, nil, obs.option())
	if err != nil {
		t.Fatal(err)
	}
	base, err := in.Start()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(deploymentURL(base, "gpt-4o", "chat/completions"), "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := in.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	events, err := sseEvents(resp.Body)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read after Close: err = %v, want unexpected EOF", err)
	}
	if len(events) > 0 && events[len(events)-1] == "[DONE]" {
		t.Error("stream completed despite Close")
	}
	if o := obs.next(t, time.Second); !o.Reset {
		t.Errorf("observation Reset = false")
	}
}
