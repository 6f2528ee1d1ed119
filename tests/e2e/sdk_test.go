package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"

	"github.com/tokengate/tokengate/internal/simulator"
	"github.com/tokengate/tokengate/internal/tokens"
)

const apiVersion = "2024-10-21"

// setup runs two simulated instances (deployment names differ from the
// aliases, as in real life) and a gateway in front of them; it returns the
// gateway's base URL and one instance for direct comparison.
func setup(t *testing.T, latency simulator.Latency, obs *observations) (gateway string, direct *simulator.Instance) {
	t.Helper()
	deployments := []simulator.DeploymentConfig{
		{Name: "gpt-4o", Model: "gpt-4o"},
		{Name: "emb", Model: "text-embedding-3-small"},
	}
	a := startSimulator(t, simulator.InstanceConfig{Name: "sim-a", APIKey: "key-a", Latency: latency, Deployments: deployments}, obs)
	b := startSimulator(t, simulator.InstanceConfig{Name: "sim-b", APIKey: "key-b", Latency: latency, Deployments: deployments}, obs)
	base, _ := serve(t, fmt.Sprintf(`
log: {level: warn}
identity: {anonymous: true}
backends:
  - {name: sim-a, endpoint: %q, auth: {type: api-key, api_key: key-a}}
  - {name: sim-b, endpoint: %q, auth: {type: api-key, api_key: key-b}}
pools:
  - name: main
    backends: [{backend: sim-a, priority: 1}, {backend: sim-b, priority: 2}]
models:
  - name: gpt-4o
    deployments: [{backend: sim-a}, {backend: sim-b}]
  - name: text-embedding-3-small
    deployments: [{backend: sim-a, name: emb}]
`, a.URL(), b.URL()))
	return base, a
}

func azureClient(base, key string) *openai.Client {
	c := openai.NewClient(azure.WithEndpoint(base, apiVersion), azure.WithAPIKey(key), azure.WithUnsafeAllowHTTP(),
		option.WithMaxRetries(0))
	return &c
}

func v1Client(base string) *openai.Client {
	c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	return &c
}

func chatParams(stream bool) openai.ChatCompletionNewParams {
	p := openai.ChatCompletionNewParams{
		Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You are a terse assistant."),
			openai.UserMessage("Explain in one paragraph what an API gateway does."),
		},
		MaxTokens: openai.Int(40),
	}
	if stream {
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	}
	return p
}

func TestSDKChatThroughGatewayMatchesDirect(t *testing.T) {
	gateway, direct := setup(t, simulator.Latency{}, nil)
	ctx := context.Background()
	want, err := azureClient(direct.URL(), "key-a").Chat.Completions.New(ctx, chatParams(false))
	if err != nil {
		t.Fatalf("direct: %v", err)
	}
	for name, client := range map[string]*openai.Client{
		"azure": azureClient(gateway, "client-key-is-not-forwarded"),
		"v1":    v1Client(gateway),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := client.Chat.Completions.New(ctx, chatParams(false))
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Choices) != 1 || got.Choices[0].Message.Content == "" {
				t.Fatalf("no content: %+v", got)
			}
			if got.Choices[0].Message.Content != want.Choices[0].Message.Content {
				t.Errorf("content through the gateway %q, direct %q", got.Choices[0].Message.Content, want.Choices[0].Message.Content)
			}
			if got.Usage.PromptTokens != want.Usage.PromptTokens || got.Usage.CompletionTokens != 40 ||
				got.Usage.TotalTokens != want.Usage.TotalTokens || got.Usage.PromptTokens == 0 {
				t.Errorf("usage through the gateway %+v, direct %+v", got.Usage, want.Usage)
			}
			if got.Choices[0].FinishReason != "length" {
				t.Errorf("max_tokens=40 should finish with length, got %q", got.Choices[0].FinishReason)
			}
		})
	}
}

func TestSDKStreamingThroughGateway(t *testing.T) {
	gateway, direct := setup(t, simulator.Latency{TokensPerSecond: 400}, nil)
	ctx := context.Background()
	collect := func(t *testing.T, client *openai.Client) (string, openai.CompletionUsage, int) {
		t.Helper()
		s := client.Chat.Completions.NewStreaming(ctx, chatParams(true))
		var text strings.Builder
		var usage openai.CompletionUsage
		chunks := 0
		for s.Next() {
			ch := s.Current()
			chunks++
			if len(ch.Choices) > 0 {
				text.WriteString(ch.Choices[0].Delta.Content)
			}
			if ch.Usage.TotalTokens > 0 {
				usage = ch.Usage
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		return text.String(), usage, chunks
	}
	wantText, wantUsage, wantChunks := collect(t, azureClient(direct.URL(), "key-a"))
	if wantText == "" || wantUsage.CompletionTokens != 40 {
		t.Fatalf("direct stream: %q %+v", wantText, wantUsage)
	}
	for name, client := range map[string]*openai.Client{
		"azure": azureClient(gateway, "unused"),
		"v1":    v1Client(gateway),
	} {
		t.Run(name, func(t *testing.T) {
			text, usage, chunks := collect(t, client)
			if text != wantText || usage.PromptTokens != wantUsage.PromptTokens || usage.CompletionTokens != wantUsage.CompletionTokens ||
				usage.TotalTokens != wantUsage.TotalTokens || chunks != wantChunks {
				t.Fatalf("through the gateway: %d chunks %q %+v\ndirect: %d chunks %q %+v", chunks, text, usage, wantChunks, wantText, wantUsage)
			}
		})
	}
}

func TestSDKEmbeddings(t *testing.T) {
	gateway, _ := setup(t, simulator.Latency{}, nil)
	for name, client := range map[string]*openai.Client{
		"azure": azureClient(gateway, "unused"),
		"v1":    v1Client(gateway),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := client.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
				Model: "text-embedding-3-small",
				Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"hello world", "tokengate"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			c := tokens.ForModel("text-embedding-3-small")
			want := int64(c.Count("hello world") + c.Count("tokengate"))
			if len(got.Data) != 2 || len(got.Data[0].Embedding) != 1536 || got.Usage.PromptTokens != want {
				t.Fatalf("got %d vectors of %d, usage %+v", len(got.Data), len(got.Data[0].Embedding), got.Usage)
			}
		})
	}
}

func TestSDKSeesAzureErrors(t *testing.T) {
	gateway, _ := setup(t, simulator.Latency{}, nil)
	client := v1Client(gateway)
	p := chatParams(false)
	p.Model = "no-such-model"
	_, err := client.Chat.Completions.New(context.Background(), p)
	var apiErr *openai.Error
	if !asError(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || !strings.Contains(apiErr.Message, "no-such-model") {
		t.Fatalf("want a 404 naming the alias, got %v", err)
	}
	if apiErr.Response.Header.Get("X-Request-Id") == "" {
		t.Error("error response without x-request-id")
	}
}

func TestClientHangUpCancelsBackendWithinOneSecond(t *testing.T) {
	obs := newObservations()
	gateway, _ := setup(t, simulator.Latency{TokensPerSecond: 20}, obs)
	ctx, cancel := context.WithCancel(context.Background())
	p := chatParams(true)
	p.MaxTokens = openai.Int(1000)
	s := azureClient(gateway, "unused").Chat.Completions.NewStreaming(ctx, p)
	got := 0
	for s.Next() {
		if ch := s.Current(); len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
			if got++; got == 3 {
				break
			}
		}
	}
	if got != 3 {
		t.Fatalf("stream ended early: %v", s.Err())
	}
	hungUp := time.Now()
	cancel()
	_ = s.Close()
	for {
		select {
		case ob := <-obs.ch:
			if !ob.Stream {
				continue
			}
			if !ob.Cancelled {
				t.Fatalf("the backend finished the stream instead of seeing it cancelled: %+v", ob.Status)
			}
			if d := ob.End.Sub(hungUp); d > time.Second {
				t.Fatalf("the backend saw the cancellation %v after the client hung up, want < 1s", d)
			}
			return
		case <-time.After(5 * time.Second):
			t.Fatal("the backend never finished the request")
		}
	}
}
