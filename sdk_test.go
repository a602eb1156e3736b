package chatgateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
)

// sdkClient is the official OpenAI Go SDK pointed at the gateway.
func sdkClient(g *gateway) openai.Client {
	return openai.NewClient(option.WithBaseURL(g.URL+"/v1"), option.WithAPIKey("client-key"), option.WithMaxRetries(0))
}

var sdkParams = openai.ChatCompletionNewParams{
	Model:    "m",
	Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("hello world")},
}

func TestSDKEcho(t *testing.T) {
	g := newGateway(t, `chat_gateway`)
	client := sdkClient(g)
	var httpResp *http.Response
	c, err := client.Chat.Completions.New(context.Background(), sdkParams, option.WithHeader("X-Request-ID", "sdk-1"), option.WithResponseInto(&httpResp))
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "sdk-1" || httpResp.Header.Get("X-Request-ID") != "sdk-1" || c.Choices[0].Message.Content != "Echo: hello world" ||
		c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens || c.Usage.CompletionTokens == 0 {
		t.Fatalf("%+v", c)
	}

	params := sdkParams
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(context.Background(), params, option.WithHeader("X-Request-ID", "sdk-2"))
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		if ch := stream.Current(); ch.ID != "sdk-2" {
			t.Fatalf("chunk id %q", ch.ID)
		}
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != "Echo: hello world" || acc.Choices[0].FinishReason != "stop" || acc.Usage.TotalTokens == 0 {
		t.Fatalf("accumulated %+v", acc.ChatCompletion)
	}
}

func TestSDKBackend(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(upstreamBody(r), `"stream":true`) {
			llamaStream(w, r)
			return
		}
		writeJSON(w, 200, `{"choices":[{"message":{"content":"Hello"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	client := sdkClient(g)
	c, err := client.Chat.Completions.New(context.Background(), sdkParams, option.WithHeader("X-Request-ID", "sdk-3"))
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "sdk-3" || c.Choices[0].Message.Content != "Hello" || c.Usage.TotalTokens != 4 {
		t.Fatalf("%+v", c)
	}
	if auth := be.last(t).Header.Get("Authorization"); auth != "" {
		t.Fatalf("client key forwarded: %q", auth)
	}

	params := sdkParams
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(context.Background(), params)
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != "Hello" || acc.Choices[0].Message.Role != "assistant" || acc.Usage.TotalTokens != 5 {
		t.Fatalf("accumulated %+v", acc.ChatCompletion)
	}
}

func TestSDKErrors(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
		sseEvent(w, `{"error":{"message":"model crashed","type":"server_error"}}`)
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	client := sdkClient(g)
	stream := client.Chat.Completions.NewStreaming(context.Background(), sdkParams)
	for stream.Next() {
	}
	var se *ssestream.StreamError
	if err := stream.Err(); !errors.As(err, &se) || !strings.Contains(se.Message, "model crashed") {
		t.Fatalf("stream error %v", err)
	}

	_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "m", Messages: nil})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "messages" || apiErr.Type != "invalid_request_error" {
		t.Fatalf("error %v", err)
	}
}
