package chatgateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// anthropicClient is the official Anthropic Go SDK pointed at the
// gateway, as ANTHROPIC_BASE_URL does.
func anthropicClient(g *gateway, key string) anthropic.Client {
	return anthropic.NewClient(option.WithBaseURL(g.URL), option.WithAPIKey(key), option.WithMaxRetries(0))
}

// messageParams is a request for model with one user message.
func messageParams(model, text string) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     anthropic.Model(model),
		MaxTokens: 256,
		System:    []anthropic.TextBlockParam{{Text: "be brief"}},
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(text))},
	}
}

// accumulate reads a whole stream through the SDK's accumulator.
func accumulate(t *testing.T, client anthropic.Client, params anthropic.MessageNewParams, opts ...option.RequestOption) (anthropic.Message, error) {
	t.Helper()
	stream := client.Messages.NewStreaming(context.Background(), params, opts...)
	defer stream.Close()
	var msg anthropic.Message
	for stream.Next() {
		if err := msg.Accumulate(stream.Current()); err != nil {
			t.Fatalf("accumulating %s: %v", stream.Current().RawJSON(), err)
		}
	}
	return msg, stream.Err()
}

func TestMessagesEcho(t *testing.T) {
	g := newGateway(t, "chat_gateway {\n echo\n}")
	client := anthropicClient(g, "client-key")
	served := gatewayMetrics.requests.WithLabelValues("other", "false", "ok", "", "messages")
	before := testutil.ToFloat64(served)
	var httpResp *http.Response
	msg, err := client.Messages.New(context.Background(), messageParams("claude-echo", "hello world"),
		option.WithHeader("X-Request-ID", "msg-echo-1"), option.WithResponseInto(&httpResp))
	if err != nil {
		t.Fatal(err)
	}
	g.waitLog(t, "handled request", "msg-echo-1")
	if n := testutil.ToFloat64(served) - before; n != 1 {
		t.Fatalf("requests_total{endpoint=\"messages\"} grew by %v, want 1", n)
	}
	if len(msg.Content) != 1 || msg.Content[0].Text != "Echo: hello world" || msg.StopReason != anthropic.StopReasonEndTurn ||
		msg.Model != "claude-echo" || msg.Usage.OutputTokens == 0 || msg.Usage.InputTokens == 0 {
		t.Fatalf("%s, want one block \"Echo: hello world\", end_turn, model claude-echo and token usage", msg.RawJSON())
	}
	if httpResp.Header.Get("Request-Id") != "msg-echo-1" || httpResp.Header.Get("X-Request-ID") != "msg-echo-1" {
		t.Fatalf("request id headers %v, want Request-Id and X-Request-ID msg-echo-1", httpResp.Header)
	}

	streamed, err := accumulate(t, client, messageParams("claude-echo", "hello world"), option.WithResponseInto(&httpResp))
	if err != nil {
		t.Fatal(err)
	}
	if len(streamed.Content) != 1 || streamed.Content[0].Text != "Echo: hello world" || streamed.StopReason != anthropic.StopReasonEndTurn ||
		streamed.Usage.OutputTokens != msg.Usage.OutputTokens {
		t.Fatalf("streamed %s, want one block \"Echo: hello world\", end_turn and the same output tokens", streamed.RawJSON())
	}
	if httpResp.Header.Get("Request-Id") == "" || httpResp.Header.Get("Request-Id") != httpResp.Header.Get("X-Request-ID") {
		t.Fatalf("stream request id headers %v, want the same Request-Id and X-Request-ID", httpResp.Header)
	}

	count, err := client.Messages.CountTokens(context.Background(), anthropic.MessageCountTokensParams{
		Model:    "claude-echo",
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("count these words please"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if count.InputTokens <= 0 {
		t.Fatalf("count %s, want input tokens above 0", count.RawJSON())
	}
}

// TestMessagesEchoDelay: the echo stream is paced by echo_delay, one
// event at a time.
func TestMessagesEchoDelay(t *testing.T) {
	g := newGateway(t, "chat_gateway {\n echo\n echo_delay 1ms\n}")
	resp, body := do(t, messagesRequest(g, `{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %s, want 200 text/event-stream", resp.StatusCode, body)
	}
	var names []string
	for line := range strings.SplitSeq(body, "\n") {
		if name, ok := strings.CutPrefix(line, "event: "); ok {
			names = append(names, name)
		}
	}
	want := "message_start content_block_start content_block_delta content_block_stop message_delta message_stop"
	if strings.Join(names, " ") != want {
		t.Fatalf("events %v, want %s", names, want)
	}
}

// messagesRequest builds a raw POST /v1/messages.
func messagesRequest(g *gateway, body string, header ...string) *http.Request {
	req := g.request(body, header...)
	req.URL.Path = "/v1/messages"
	return req
}

// chatToolStream is a chat stream whose tool call arrives in pieces:
// its id and name first, its arguments split inside a string, its
// index repeated, after some text.
var chatToolStream = []string{
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Let me "}}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"check."}}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Par"}}]}}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is\"}"}}]}}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`,
	`{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}`,
	`[DONE]`,
}

// chatToolReply is the same reply, not streamed.
const chatToolReply = `{"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Let me check.",
"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],
"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}`

// toolParams asks with a tool, as Claude clients do.
func toolParams(model string) anthropic.MessageNewParams {
	p := messageParams(model, "weather in Paris?")
	p.Tools = []anthropic.ToolUnionParam{{OfTool: &anthropic.ToolParam{Name: "get_weather",
		InputSchema: anthropic.ToolInputSchemaParam{Properties: map[string]any{"city": map[string]any{"type": "string"}}}}}}
	return p
}

// checkToolMessage checks a reply made of chatToolStream or chatToolReply.
func checkToolMessage(t *testing.T, msg anthropic.Message) {
	t.Helper()
	if len(msg.Content) != 2 || msg.Content[0].Type != "text" || msg.Content[0].Text != "Let me check." ||
		msg.Content[1].Type != "tool_use" || msg.Content[1].ID != "call_1" || msg.Content[1].Name != "get_weather" ||
		!jsonEqual(msg.Content[1].Input, []byte(`{"city":"Paris"}`)) {
		t.Fatalf("content %s, want text \"Let me check.\" then tool_use call_1 get_weather {\"city\":\"Paris\"}", msg.RawJSON())
	}
	if msg.StopReason != anthropic.StopReasonToolUse || msg.Usage.InputTokens != 12 || msg.Usage.OutputTokens != 7 || msg.Model != "claude-test" {
		t.Fatalf("reply %s, want stop_reason tool_use, 12 input and 7 output tokens, model claude-test", msg.RawJSON())
	}
}

// jsonEqual reports whether a and b hold the same JSON value.
func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func TestMessagesTranslated(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" {
			writeJSON(w, 404, `{"error":{"message":"no such path"}}`)
			return
		}
		if !strings.Contains(upstreamBody(r), `"stream":true`) {
			writeJSON(w, 200, chatToolReply)
			return
		}
		startSSE(w)
		for _, ev := range chatToolStream {
			sseEvent(w, ev)
		}
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n alias claude-test qwen\n }\n}", be.URL))
	client := anthropicClient(g, "client-key")
	msg, err := client.Messages.New(context.Background(), toolParams("claude-test"))
	if err != nil {
		t.Fatal(err)
	}
	checkToolMessage(t, *msg)
	up := be.last(t)
	var chat struct {
		Model    string `json:"model"`
		Messages []struct {
			Role string `json:"role"`
		} `json:"messages"`
		Tools []struct {
			Function struct {
				Name       string          `json:"name"`
				Parameters json.RawMessage `json:"parameters"`
			} `json:"function"`
		} `json:"tools"`
		MaxTokens int `json:"max_tokens"`
	}
	if err := json.Unmarshal([]byte(up.Body), &chat); err != nil {
		t.Fatal(err)
	}
	if chat.Model != "qwen" || len(chat.Messages) != 2 || chat.Messages[0].Role != "system" || len(chat.Tools) != 1 ||
		chat.Tools[0].Function.Name != "get_weather" || len(chat.Tools[0].Function.Parameters) == 0 || chat.MaxTokens != 256 {
		t.Fatalf("upstream body %s, want model qwen, a system and a user message, the get_weather tool and max_tokens 256", up.Body)
	}
	if up.Header.Get("X-Api-Key") != "" || up.Header.Get("Authorization") != "" {
		t.Fatalf("client key forwarded: %v", up.Header)
	}

	streamed, err := accumulate(t, client, toolParams("claude-test"), option.WithHeader("X-Request-ID", "msg-translated-stream"))
	if err != nil {
		t.Fatal(err)
	}
	checkToolMessage(t, streamed)
	if l := g.waitLog(t, "handled request", "msg-translated-stream"); l["finish_reason"] != "tool_use" || l["prompt_tokens"] != 12.0 ||
		l["completion_tokens"] != 7.0 || l["outcome"] != "ok" {
		t.Fatalf("access log %v, want finish_reason tool_use, prompt_tokens 12, completion_tokens 7, outcome ok", l)
	}
	if body := be.last(t).Body; !strings.Contains(body, `"include_usage":true`) {
		t.Fatalf("stream asked without usage: %s", body)
	}
}

// TestMessagesStreamFailure: a chat backend cut mid-stream ends the
// Messages stream with an error event, which the SDK surfaces.
func TestMessagesStreamFailure(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, chatToolStream[0])
		sseEvent(w, chatToolStream[1])
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	_, err := accumulate(t, anthropicClient(g, "k"), messageParams("m", "hi"))
	if err == nil || !strings.Contains(err.Error(), "api_error") {
		t.Fatalf("error %v, want an api_error", err)
	}
}

// nativeReply is a native backend's Messages reply.
const nativeReply = `{"id":"msg_native","type":"message","role":"assistant","model":"native-model","content":[{"type":"text","text":"Native hello"}],
"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":21,"output_tokens":3}}`

// nativeEvents is a native backend's Messages stream, ping included.
var nativeEvents = [][2]string{
	{"message_start", `{"type":"message_start","message":{"id":"msg_native","type":"message","role":"assistant","model":"native-model","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":21,"output_tokens":1}}}`},
	{"ping", `{"type":"ping"}`},
	{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
	{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Native "}}`},
	{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello"}}`},
	{"content_block_stop", `{"type":"content_block_stop","index":0}`},
	{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}`},
	{"message_stop", `{"type":"message_stop"}`},
}

func TestMessagesNative(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/messages/count_tokens":
			writeJSON(w, 200, `{"input_tokens":42}`)
		case r.URL.Path != "/v1/messages":
			writeJSON(w, 404, `{"type":"error","error":{"type":"not_found_error","message":"no such path"}}`)
		case !strings.Contains(upstreamBody(r), `"stream":true`):
			writeJSON(w, 200, nativeReply)
		default:
			startSSE(w)
			for _, ev := range nativeEvents {
				_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev[0], ev[1])
				w.(http.Flusher).Flush()
			}
		}
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n alias claude-test native-model\n api_key sk-upstream-native\n messages native\n }\n}", be.URL))
	client := anthropicClient(g, "client-key")
	params := messageParams("claude-test", "hi")
	params.StopSequences = []string{"STOP"}
	msg, err := client.Messages.New(context.Background(), params, option.WithHeader("anthropic-beta", "some-beta"))
	if err != nil {
		t.Fatal(err)
	}
	if msg.ID != "msg_native" || len(msg.Content) != 1 || msg.Content[0].Text != "Native hello" || msg.Usage.InputTokens != 21 {
		t.Fatalf("%s, want msg_native, one block \"Native hello\", 21 input tokens", msg.RawJSON())
	}
	up := be.last(t)
	var sent map[string]any
	if err := json.Unmarshal([]byte(up.Body), &sent); err != nil {
		t.Fatal(err)
	}
	if sent["model"] != "native-model" || fmt.Sprint(sent["stop_sequences"]) != "[STOP]" || sent["system"] == nil || sent["messages"] == nil {
		t.Fatalf("upstream body %s, want model native-model, stop_sequences [STOP], system and messages", up.Body)
	}
	if up.Header.Get("Anthropic-Version") == "" || up.Header.Get("Anthropic-Beta") != "some-beta" ||
		up.Header.Get("X-Api-Key") != "sk-upstream-native" || up.Header.Get("Authorization") != "Bearer sk-upstream-native" {
		t.Fatalf("upstream headers %v, want Anthropic-Version, Anthropic-Beta some-beta and the upstream key in X-Api-Key and Authorization", up.Header)
	}

	streamed, err := accumulate(t, client, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(streamed.Content) != 1 || streamed.Content[0].Text != "Native hello" || streamed.StopReason != anthropic.StopReasonEndTurn ||
		streamed.Usage.OutputTokens != 3 {
		t.Fatalf("streamed %s, want one block \"Native hello\", end_turn, 3 output tokens", streamed.RawJSON())
	}

	count, err := client.Messages.CountTokens(context.Background(), anthropic.MessageCountTokensParams{
		Model: "claude-test", Messages: params.Messages,
	})
	if err != nil {
		t.Fatal(err)
	}
	if count.InputTokens != 42 || be.last(t).Path != "/v1/messages/count_tokens" {
		t.Fatalf("count %s from %s, want 42 from /v1/messages/count_tokens", count.RawJSON(), be.last(t).Path)
	}
}

// TestMessagesNativeError: a native backend's error keeps its status
// and reaches the client in Anthropic's shape.
func TestMessagesNativeError(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 400, `{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}`)
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n messages native\n }\n}", be.URL))
	client := anthropicClient(g, "k")
	_, err := client.Messages.New(context.Background(), messageParams("m", "hi"))
	apiErr := anthropicError(t, err, 400)
	if !strings.Contains(apiErr.RawJSON(), "roles must alternate") || !strings.Contains(apiErr.RawJSON(), `"invalid_request_error"`) {
		t.Fatalf("%s, want invalid_request_error with roles must alternate", apiErr.RawJSON())
	}
}

// anthropicError asserts that err is the SDK's API error with status.
func anthropicError(t *testing.T, err error, status int) *anthropic.Error {
	t.Helper()
	apiErr, ok := errors.AsType[*anthropic.Error](err)
	if !ok {
		t.Fatalf("error %v is not an *anthropic.Error", err)
	}
	if apiErr.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", apiErr.StatusCode, status, apiErr.RawJSON())
	}
	var body struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(apiErr.RawJSON()), &body) != nil || body.Type != "error" || body.Error.Type == "" || body.Error.Message == "" {
		t.Fatalf("not an Anthropic error body: %s", apiErr.RawJSON())
	}
	if apiErr.RequestID == "" {
		t.Fatalf("no request-id on the error")
	}
	return apiErr
}

func TestMessagesErrors(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, chatToolReply)
	})
	g := newGateway(t, aliceBobConfig(t, fmt.Sprintf("backend %s {\n models served\n }", be.URL)))

	wrong := anthropicClient(g, "sk-cg-wrong-0123456789abcdefghijklmnop")
	_, err := wrong.Messages.New(context.Background(), messageParams("served", "hi"))
	if e := anthropicError(t, err, 401); !strings.Contains(e.RawJSON(), `"authentication_error"`) {
		t.Fatalf("%s, want authentication_error", e.RawJSON())
	}
	client := anthropicClient(g, aliceKey)
	_, err = client.Messages.New(context.Background(), messageParams("unknown-model", "hi"))
	if e := anthropicError(t, err, 404); !strings.Contains(e.RawJSON(), `"not_found_error"`) {
		t.Fatalf("%s, want not_found_error", e.RawJSON())
	}
	noMax := messageParams("served", "hi")
	noMax.MaxTokens = 0
	_, err = client.Messages.New(context.Background(), noMax)
	if e := anthropicError(t, err, 400); !strings.Contains(e.RawJSON(), "max_tokens") {
		t.Fatalf("%s, want an error naming max_tokens", e.RawJSON())
	}
	resp, body := do(t, messagesRequest(g, `{"model":"served","messages":[{"role":"user","content":"hi"}]}`, "X-Api-Key", aliceKey))
	if resp.StatusCode != 400 || !strings.Contains(body, `"type":"error"`) || !strings.Contains(body, "max_tokens: Field required") ||
		resp.Header.Get("Request-Id") == "" {
		t.Fatalf("%d %v %s, want 400 error \"max_tokens: Field required\" with Request-Id", resp.StatusCode, resp.Header, body)
	}
	// A block with no chat equivalent is refused before the backend.
	resp, body = do(t, messagesRequest(g, `{"model":"served","max_tokens":9,"messages":[{"role":"user","content":[
		{"type":"document","source":{"type":"url","url":"http://127.0.0.1:1/a.pdf"}}]}]}`, "X-Api-Key", aliceKey))
	if resp.StatusCode != 400 || !strings.Contains(body, `"invalid_request_error"`) || !strings.Contains(body, "messages.0.content.0") {
		t.Fatalf("%d %s, want 400 invalid_request_error naming messages.0.content.0", resp.StatusCode, body)
	}
	if be.count() != 0 {
		t.Fatalf("the backend got %d requests, want none", be.count())
	}
	if _, err := client.Messages.New(context.Background(), toolParams("served")); err != nil {
		t.Fatal(err)
	}
}

// TestMessagesRateLimited: a limit's 429 is a rate_limit_error with
// Anthropic's rate-limit headers and retry-after, which the SDK reads.
func TestMessagesRateLimited(t *testing.T) {
	g := newGateway(t, "chat_gateway {\n echo\n limits {\n requests 1/1h\n tokens 100000/1h\n per {http.request.header.X-Team}\n }\n}")
	client := anthropicClient(g, "k")
	teamHeader := option.WithHeader("X-Team", team("messages"))
	var httpResp *http.Response
	if _, err := client.Messages.New(context.Background(), messageParams("m", "hi"), teamHeader, option.WithResponseInto(&httpResp)); err != nil {
		t.Fatal(err)
	}
	if httpResp.Header.Get("Anthropic-Ratelimit-Requests-Limit") != "1" || httpResp.Header.Get("Anthropic-Ratelimit-Requests-Remaining") != "0" ||
		httpResp.Header.Get("Anthropic-Ratelimit-Tokens-Limit") != "100000" {
		t.Fatalf("headers %v, want requests limit 1, remaining 0, tokens limit 100000", httpResp.Header)
	}
	_, err := client.Messages.New(context.Background(), messageParams("m", "hi"), teamHeader)
	e := anthropicError(t, err, 429)
	if !strings.Contains(e.RawJSON(), `"rate_limit_error"`) {
		t.Fatalf("%s, want rate_limit_error", e.RawJSON())
	}
	h := e.Response.Header
	reset, perr := time.Parse(time.RFC3339, h.Get("Anthropic-Ratelimit-Requests-Reset"))
	if h.Get("Retry-After") == "" || perr != nil || reset.Before(time.Now()) || reset.After(time.Now().Add(time.Hour+time.Minute)) {
		t.Fatalf("429 headers %v, want Retry-After and a requests reset within the hour", h)
	}
}

// TestMessagesOption: messages native is read from the Caddyfile and
// any other JSON value is refused.
func TestMessagesOption(t *testing.T) {
	h, err := parse(t, "chat_gateway {\n backend http://a:1 {\n messages native\n }\n}")
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Backends) != 1 || !h.Backends[0].servesMessages() {
		t.Fatalf("%+v, want one backend serving messages", h.Backends)
	}
	h.Backends[0].Messages = "translated"
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), `messages must be "native" or empty`) {
		t.Fatalf("error %v, want messages must be \"native\" or empty", err)
	}
}

// TestMessagesStreamFromJSON: a backend that answers a streaming
// request with one JSON reply is streamed to the client as the event
// sequence, translated or native.
func TestMessagesStreamFromJSON(t *testing.T) {
	chat := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, chatToolReply) })
	native := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, nativeReply) })
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n models claude-test\n }\n backend %s {\n models native-model\n messages native\n }\n}",
		chat.URL, native.URL))
	client := anthropicClient(g, "k")
	msg, err := accumulate(t, client, toolParams("claude-test"))
	if err != nil {
		t.Fatal(err)
	}
	checkToolMessage(t, msg)
	msg, err = accumulate(t, client, messageParams("native-model", "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 1 || msg.Content[0].Text != "Native hello" || msg.Usage.OutputTokens != 3 || msg.StopReason != anthropic.StopReasonEndTurn {
		t.Fatalf("%s, want one block \"Native hello\", 3 output tokens, end_turn", msg.RawJSON())
	}
}

// TestMessagesNativeStreamError: a native backend's error event after
// content reaches the client as Anthropic's error event, its type kept.
func TestMessagesNativeStreamError(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		for _, ev := range nativeEvents[:4] {
			_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev[0], ev[1])
		}
		_, _ = io.WriteString(w, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n messages native\n }\n}", be.URL))
	resp, body := do(t, messagesRequest(g, `{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != 200 || !strings.HasSuffix(body, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n") ||
		!strings.Contains(body, "event: content_block_delta\n") {
		t.Fatalf("%d %q, want 200 with content_block_delta, ending in the overloaded_error event", resp.StatusCode, body)
	}
}

// TestMessagesPing: with keepalive_interval, a translated stream opens
// with message_start and ping events while the backend is silent, then
// goes on with the one message_start sent, whether the backend streams
// or answers with JSON.
func TestMessagesPing(t *testing.T) {
	for _, jsonReply := range []bool{false, true} {
		proceed := make(chan struct{})
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-proceed:
			case <-r.Context().Done():
				return
			}
			if jsonReply {
				writeJSON(w, 200, chatToolReply)
				return
			}
			startSSE(w)
			for _, ev := range chatToolStream {
				sseEvent(w, ev)
			}
		})
		g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n keepalive_interval 5ms\n}", be.URL))
		resp, err := http.DefaultClient.Do(messagesRequest(g, `{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		rd := bufio.NewReader(resp.Body)
		var names []string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("after %v: %v, want a ping event", names, err)
			}
			if name, ok := strings.CutPrefix(strings.TrimSpace(line), "event: "); ok {
				names = append(names, name)
				if name == "ping" {
					break
				}
			}
		}
		close(proceed)
		rest, err := io.ReadAll(rd)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(rest), "\n") {
			if name, ok := strings.CutPrefix(line, "event: "); ok && name != "ping" {
				names = append(names, name)
			}
		}
		// Streamed, the text comes in two deltas and the tool's arguments
		// in three; from JSON, each block in one.
		want := "message_start ping content_block_start content_block_delta content_block_delta content_block_stop " +
			"content_block_start content_block_delta content_block_delta content_block_delta content_block_stop message_delta message_stop"
		if jsonReply {
			want = "message_start ping content_block_start content_block_delta content_block_stop " +
				"content_block_start content_block_delta content_block_stop message_delta message_stop"
		}
		if got := strings.Join(names, " "); got != want {
			t.Fatalf("json=%v events %s, want %s", jsonReply, got, want)
		}
		if !strings.Contains(string(rest), `"input_tokens":12`) || !strings.Contains(string(rest), `"stop_reason":"tool_use"`) {
			t.Fatalf("json=%v rest %s, want input_tokens 12 and stop_reason tool_use", jsonReply, rest)
		}
	}
}

// TestMessagesFallback: a translated backend that fails before the
// first byte hands the request to its fallback, a native backend, which
// gets the client's Messages body under the fallback's name.
func TestMessagesFallback(t *testing.T) {
	failing := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 503, `{"error":{"message":"overloaded"}}`)
	})
	native := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, nativeReply) })
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n models claude-test\n fallback native-model\n }\n backend %s {\n models native-model\n messages native\n }\n}",
		failing.URL, native.URL))
	client := anthropicClient(g, "k")
	for _, stream := range []bool{false, true} {
		var msg anthropic.Message
		var err error
		if stream {
			msg, err = accumulate(t, client, messageParams("claude-test", "hi"))
		} else {
			var m *anthropic.Message
			if m, err = client.Messages.New(context.Background(), messageParams("claude-test", "hi")); err == nil {
				msg = *m
			}
		}
		if err != nil {
			t.Fatalf("stream=%v: %v", stream, err)
		}
		if len(msg.Content) != 1 || msg.Content[0].Text != "Native hello" {
			t.Fatalf("stream=%v: %s, want one block \"Native hello\"", stream, msg.RawJSON())
		}
		if up := failing.last(t); up.Path != "/v1/chat/completions" {
			t.Fatalf("first attempt to %s, want /v1/chat/completions", up.Path)
		}
		up := native.last(t)
		var sent struct {
			Model    string          `json:"model"`
			System   json.RawMessage `json:"system"`
			Messages json.RawMessage `json:"messages"`
		}
		if err := json.Unmarshal([]byte(up.Body), &sent); err != nil || up.Path != "/v1/messages" || sent.Model != "native-model" || len(sent.System) == 0 {
			t.Fatalf("fallback got %s %s, want /v1/messages with model native-model and a system", up.Path, up.Body)
		}
	}
}

// TestMessagesOneReading: the Messages routes read a request as the
// OpenAI routes do. A key allowed pub-* cannot reach secret-native by
// spelling model twice, in another case or escaped, nor reserve less
// than the backend will generate: each is refused with 400, in
// Anthropic's shape, before the backend or the limits see it.
func TestMessagesOneReading(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, nativeReply) })
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models pub-native secret-native
			messages native
		}
		auth {
			key sk-pub-key-0123456789 {
				models pub-*
			}
		}
	}`, be.URL))
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	for _, tt := range []struct{ path, body, param, code string }{
		{"/v1/messages", `{"model":"secret-native","Model":"pub-native","max_tokens":10,` + msgs + `}`, "Model", "unknown_parameter"},
		{"/v1/messages", `{"model":"pub-native","max_tokens":4000,"MAX_TOKENS":1,` + msgs + `}`, "MAX_TOKENS", "unknown_parameter"},
		{"/v1/messages", `{"model":"secret-native","model":"pub-native","max_tokens":10,` + msgs + `}`, "model", "duplicate_key"},
		{"/v1/messages", `{"model":"secret-native","mod\u0065l":"pub-native","max_tokens":10,` + msgs + `}`, "model", "duplicate_key"},
		{"/v1/messages", `{"model":"pub-native","max_tokens":10,"stream":false,"stream":true,` + msgs + `}`, "stream", "duplicate_key"},
		{"/v1/messages/count_tokens", `{"model":"secret-native","Model":"pub-native",` + msgs + `}`, "Model", "unknown_parameter"},
		{"/v1/messages/count_tokens", `{"model":"secret-native","model":"pub-native",` + msgs + `}`, "model", "duplicate_key"},
	} {
		req := g.request(tt.body, "X-Api-Key", "sk-pub-key-0123456789")
		req.URL.Path = tt.path
		resp, body := do(t, req)
		var env struct {
			Type  string
			Error struct{ Type, Message string }
		}
		if resp.StatusCode != 400 || json.Unmarshal([]byte(body), &env) != nil || env.Type != "error" ||
			env.Error.Type != "invalid_request_error" || !strings.HasPrefix(env.Error.Message, tt.param+": ") {
			t.Errorf("%s %s: %d %s, want 400 naming %s", tt.path, tt.body, resp.StatusCode, body, tt.param)
		}
		if resp.Header.Get("Request-Id") == "" || resp.Header.Get("X-Should-Retry") != "false" {
			t.Errorf("%s: headers %v, want Request-Id and X-Should-Retry false", tt.body, resp.Header)
		}
	}
	if n := be.count(); n != 0 {
		t.Fatalf("the backend got %d requests, want none", n)
	}
	// The same key still reaches what it may use.
	req := g.request(`{"model":"pub-native","max_tokens":10,`+msgs+`}`, "X-Api-Key", "sk-pub-key-0123456789")
	req.URL.Path = "/v1/messages"
	if resp, body := do(t, req); resp.StatusCode != 200 || be.count() != 1 {
		t.Fatalf("allowed model: %d %s, want 200 and one backend request", resp.StatusCode, body)
	}
}

// templateBackend answers chat completions as a backend whose chat
// template takes one system message, first, and roles that alternate
// (Llama 3, Mistral and Gemma templates in llama.cpp and vLLM): other
// conversations get the 400 such servers send.
func templateBackend(t *testing.T) *backend {
	return newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		var chat struct {
			Messages []struct{ Role string } `json:"messages"`
		}
		if err := json.Unmarshal([]byte(upstreamBody(r)), &chat); err != nil {
			writeJSON(w, 400, `{"error":{"message":"invalid JSON","type":"invalid_request_error"}}`)
			return
		}
		last := ""
		for i, m := range chat.Messages {
			switch {
			case m.Role == "system" && i > 0:
				writeJSON(w, 400, `{"error":{"message":"System message must be at the beginning.","type":"invalid_request_error"}}`)
				return
			case m.Role == last && m.Role != "tool":
				writeJSON(w, 400, `{"error":{"message":"Conversation roles must alternate user/assistant/user/assistant/...","type":"invalid_request_error"}}`)
				return
			}
			last = m.Role
		}
		writeJSON(w, 200, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`)
	})
}

// TestMessagesSystemMidConversation: Claude Code's system messages after
// the user's turn reach a backend with a strict chat template as it
// accepts them.
func TestMessagesSystemMidConversation(t *testing.T) {
	be := templateBackend(t)
	g := newGateway(t, "chat_gateway "+be.URL)
	for _, msgs := range []string{
		`{"role":"user","content":"hi"},{"role":"system","content":"<system-reminder>mode changed</system-reminder>"}`,
		`{"role":"system","content":"first"},{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"system","content":"later"},{"role":"user","content":"and?"}`,
		`{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},` +
			`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"42"}]},{"role":"system","content":"after the tool"}`,
	} {
		resp, body := do(t, messagesRequest(g, `{"model":"m","max_tokens":10,"system":"be brief","messages":[`+msgs+`]}`))
		if resp.StatusCode != 200 || !strings.Contains(body, `"text":"ok"`) {
			t.Errorf("%s: %d %s (the backend got %s), want 200 with text ok", msgs, resp.StatusCode, body, be.last(t).Body)
		}
	}
}
