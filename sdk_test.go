package chatgateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
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
		t.Fatalf("%+v, want id and X-Request-ID sdk-1, Echo: hello world and non-zero usage that adds up", c)
	}

	params := sdkParams
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(context.Background(), params, option.WithHeader("X-Request-ID", "sdk-2"))
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		if ch := stream.Current(); ch.ID != "sdk-2" {
			t.Fatalf("chunk id %q, want sdk-2", ch.ID)
		}
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != "Echo: hello world" || acc.Choices[0].FinishReason != "stop" || acc.Usage.TotalTokens == 0 {
		t.Fatalf("accumulated %+v, want Echo: hello world, finish_reason stop and usage", acc.ChatCompletion)
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
		t.Fatalf("%+v, want id sdk-3, Hello and 4 total tokens", c)
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
		t.Fatalf("accumulated %+v, want Hello from the assistant and 5 total tokens", acc.ChatCompletion)
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
		t.Fatalf("stream error %v, want a *ssestream.StreamError with model crashed", err)
	}

	_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "m", Messages: nil})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "messages" || apiErr.Type != "invalid_request_error" {
		t.Fatalf("error %v, want a 400 invalid_request_error on param messages", err)
	}
}

// TestSDKsStopOnFinalErrors: an error no retry can fix carries
// x-should-retry: false, and the official SDKs, which retry with
// backoff otherwise (Claude Code retried a wrong key's 401 for three
// minutes), give up after one attempt. A 429 over a rate limit is
// still retried.
func TestSDKsStopOnFinalErrors(t *testing.T) {
	g := newGateway(t, `chat_gateway {
		auth {
			key sk-sdk-final-0123456789 {
				models m claude*
			}
			key sk-sdk-spent-0123456789 {
				quota 60/month
			}
		}
		limits {
			default_max_tokens 8
		}
	}`)
	var attempts atomic.Int32
	count := func(req *http.Request, next func(*http.Request) (*http.Response, error)) (*http.Response, error) {
		attempts.Add(1)
		return next(req)
	}
	chat := func(key, model string, retries int) error {
		client := openai.NewClient(option.WithBaseURL(g.URL+"/v1"), option.WithAPIKey(key), option.WithMaxRetries(retries),
			option.WithMiddleware(func(r *http.Request, n option.MiddlewareNext) (*http.Response, error) { return count(r, n) }))
		params := sdkParams
		params.Model = model
		_, err := client.Chat.Completions.New(context.Background(), params)
		return err
	}
	messages := func(key, model string, retries int) error {
		client := anthropic.NewClient(aoption.WithBaseURL(g.URL), aoption.WithAPIKey(key), aoption.WithMaxRetries(retries),
			aoption.WithMiddleware(func(r *http.Request, n aoption.MiddlewareNext) (*http.Response, error) { return count(r, n) }))
		_, err := client.Messages.New(context.Background(), messageParams(model, "hi"))
		return err
	}
	for _, tt := range []struct {
		name   string
		call   func(key, model string, retries int) error
		key    string
		model  string
		status int
	}{
		{"chat, wrong key", chat, "sk-wrong-0123456789abc", "m", 401},
		{"messages, wrong key", messages, "sk-wrong-0123456789abc", "claude-x", 401},
		{"chat, model not allowed", chat, "sk-sdk-final-0123456789", "gpt-4o", 404},
		{"messages, model not allowed", messages, "sk-sdk-final-0123456789", "gpt-4o", 404},
		{"messages, larger than the whole quota", messages, "sk-sdk-spent-0123456789", "claude-x", 429},
		{"chat, quota spent", chat, "sk-sdk-spent-0123456789", "m", 429},
	} {
		if strings.HasSuffix(tt.name, "quota spent") {
			for i := 0; chat(tt.key, tt.model, 0) == nil; i++ {
				if i == 20 {
					t.Fatal("the quota is never spent")
				}
			}
		}
		attempts.Store(0)
		err := tt.call(tt.key, tt.model, 2)
		var oe *openai.Error
		var ae *anthropic.Error
		status := 0
		switch {
		case errors.As(err, &oe):
			status = oe.StatusCode
		case errors.As(err, &ae):
			status = ae.StatusCode
		}
		if status != tt.status || attempts.Load() != 1 {
			t.Errorf("%s: status %d after %d attempts (%v), want %d after 1", tt.name, status, attempts.Load(), err, tt.status)
		}
		if strings.HasSuffix(tt.name, "quota spent") && (oe == nil || oe.Code != "insufficient_quota") {
			t.Errorf("%s: %v, want insufficient_quota", tt.name, err)
		}
	}
	// A 429 that waiting may fix (here a backend's) is retried, as the
	// SDKs do unless told otherwise.
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 429, `{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}`)
	})
	g = newGateway(t, "chat_gateway "+be.URL)
	attempts.Store(0)
	if err := chat("any", "m", 1); err == nil || attempts.Load() != 2 || be.count() != 2 {
		t.Errorf("a backend's 429: %v after %d attempts (%d at the backend), want it retried once", err, attempts.Load(), be.count())
	}
}
