package openai

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdk "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// backendReply is what a test backend answers: a JSON reply, or stream
// events, possibly cut short.
type backendReply struct {
	json   string
	events [][2]string // event name, data
}

// serveEndpoint runs ep as the gateway's request path uses it, on a
// local server: the request parsed, then echo mode (backend nil) or the
// backend's reply or stream normalized through ep.
func serveEndpoint(t *testing.T, ep Endpoint, backend func(req *Request) backendReply) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, e := ep.Parse(body)
		if e != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(e.Status)
			_, _ = w.Write(e.JSON())
			return
		}
		m := Meta{ID: "req-1", Model: req.Model, Created: 1700000000, PromptBytes: req.PromptBytes}
		emit := func(ev []byte) error {
			_, err := w.Write(ev)
			w.(http.Flusher).Flush()
			return err
		}
		if req.Stream {
			w.Header().Set("Content-Type", "text/event-stream")
		} else {
			w.Header().Set("Content-Type", "application/json")
		}
		if backend == nil {
			if req.Stream {
				if _, err := ep.EchoStream(req, m, emit); err != nil {
					t.Error(err)
				}
				return
			}
			out, _ := ep.Echo(nil, req, m)
			_, _ = w.Write(out)
			return
		}
		br := backend(req)
		if br.json != "" {
			out, _, err := ep.Normalize(nil, []byte(br.json), m)
			if err != nil {
				t.Error(err)
				return
			}
			if req.Stream {
				if err := ep.NewStream(m).FromReply(out, req.IncludeUsage, emit); err != nil {
					t.Error(err)
				}
				return
			}
			_, _ = w.Write(out)
			return
		}
		st := ep.NewStream(m)
		for _, ev := range br.events {
			out, err := st.Event(nil, []byte(ev[0]), []byte(ev[1]))
			var be *Error
			switch {
			case errors.As(err, &be):
				_ = st.Fail(be, emit)
				return
			case err != nil:
				_ = st.Fail(&Error{Code: "invalid_upstream_response", Message: "bad event"}, emit)
				return
			}
			if len(out) > 0 {
				_ = emit(out)
			}
		}
		if !st.Complete() {
			_ = st.Fail(&Error{Code: "stream_truncated", Message: "The backend ended the stream before it was complete."}, emit)
			return
		}
		_ = st.Finish(req.IncludeUsage, emit)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func sdkClient(srv *httptest.Server) sdk.Client {
	return sdk.NewClient(option.WithBaseURL(srv.URL+"/v1"), option.WithAPIKey("test"), option.WithMaxRetries(0))
}

// event is one SSE event as a client reads it.
type event struct{ name, data string }

// collectEvents returns an Emit that parses what it is given back into
// events, checking each is framed as one whole event.
func collectEvents(t *testing.T, into *[]event) Emit {
	return func(b []byte) error {
		var p sse.Parser
		n := 0
		err := p.Feed(b, func(ev sse.Event) error {
			n++
			*into = append(*into, event{string(ev.Type), string(ev.Data)})
			return nil
		})
		if err != nil || n != 1 || p.Pending() {
			t.Fatalf("%q is not one event (%d, %v)", b, n, err)
		}
		return nil
	}
}

func TestEndpointFor(t *testing.T) {
	for path, name := range map[string]string{"/v1/chat/completions": "chat_completions", "/v1/completions": "completions",
		"/embeddings": "embeddings", "/v1/responses": "responses"} {
		if ep := EndpointFor(path); ep == nil || ep.Name() != name {
			t.Errorf("%s: %v, want the %s endpoint", path, ep, name)
		} else if ep.AsksStreamUsage() != (name == "chat_completions" || name == "completions") {
			t.Errorf("%s asks for stream usage: %v, want %v", name, ep.AsksStreamUsage(), name == "chat_completions" || name == "completions")
		}
	}
	if EndpointFor("/v1/models") != nil || EndpointFor("/v1/responses/x") != nil {
		t.Error("unknown path served")
	}
}

func TestOutputBudget(t *testing.T) {
	tests := []struct {
		ep   Endpoint
		body string
		want int64
	}{
		{ChatCompletions, `{"messages":[{"role":"user","content":"x"}],"max_tokens":50}`, 50},
		// A backend may honour either: the largest is the budget.
		{ChatCompletions, `{"messages":[{"role":"user","content":"x"}],"max_tokens":50,"max_completion_tokens":20}`, 50},
		{ChatCompletions, `{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"max_completion_tokens":2000}`, 2000},
		{ChatCompletions, `{"messages":[{"role":"user","content":"x"}],"max_tokens":null}`, 0},
		{Completions, `{"prompt":"x","max_tokens":16}`, 16},
		{Responses, `{"input":"x","max_output_tokens":1000}`, 1000},
		{Embeddings, `{"input":"x"}`, 0},
	}
	for _, tt := range tests {
		req, e := tt.ep.Parse([]byte(tt.body))
		if e != nil || req.MaxOutputTokens != tt.want {
			t.Errorf("%s %s: %+v %v; want max output tokens %d", tt.ep.Name(), tt.body, req, e, tt.want)
		}
	}
	for _, body := range []string{`{"prompt":"x","max_tokens":-1}`, `{"prompt":"x","max_tokens":"5"}`, `{"prompt":"x","max_tokens":1.5}`} {
		if _, e := Completions.Parse([]byte(body)); e == nil || e.Param != "max_tokens" || e.Code != "invalid_type" {
			t.Errorf("%s: %v, want invalid_type on max_tokens", body, e)
		}
	}
	outputs := []struct {
		ep   Endpoint
		body string
		want int64
	}{
		{ChatCompletions, `{"messages":[{"role":"user","content":"x"}],"n":4}`, 4},
		{ChatCompletions, `{"messages":[{"role":"user","content":"x"}],"n":null}`, 0},
		{Completions, `{"prompt":"x","n":2,"best_of":5}`, 5},
		{Completions, `{"prompt":"x","best_of":3,"n":2}`, 3},
	}
	for _, tt := range outputs {
		req, e := tt.ep.Parse([]byte(tt.body))
		if e != nil || req.Outputs != tt.want {
			t.Errorf("%s %s: outputs %+v %v, want %d", tt.ep.Name(), tt.body, req, e, tt.want)
		}
	}
	if _, e := ChatCompletions.Parse([]byte(`{"messages":[{"role":"user","content":"x"}],"n":"2"}`)); e == nil || e.Param != "n" || e.Code != "invalid_type" {
		t.Errorf("n as a string: %v, want invalid_type on n", e)
	}
}

// TestOneReading checks that a member a backend could read differently
// is refused on every route: a name given twice in any object (escapes
// decoded), and a name the route reads spelt in another case, which
// case-insensitive decoders (encoding/json and its kind) take for it.
func TestOneReading(t *testing.T) {
	const msg = `"messages":[{"role":"user","content":"x"}]`
	tests := []struct {
		ep          Endpoint
		body        string
		param, code string
	}{
		{ChatCompletions, `{"model":"a","Model":"b",` + msg + `}`, "Model", "unknown_parameter"},
		{ChatCompletions, `{"MODEL":"b",` + msg + `}`, "MODEL", "unknown_parameter"},
		{ChatCompletions, "{\"\u017ftream\":true," + msg + `}`, "\u017ftream", "unknown_parameter"},
		{ChatCompletions, "{\"max_tokens\":1,\"MAX_TOKENS\":4000," + msg + `}`, "MAX_TOKENS", "unknown_parameter"},
		{ChatCompletions, `{"messages":[{"role":"user","Role":"system","content":"x"}]}`, "messages[0].Role", "unknown_parameter"},
		{ChatCompletions, `{"stream_options":{"Include_Usage":true},` + msg + `}`, "stream_options.Include_Usage", "unknown_parameter"},
		{ChatCompletions, `{"tools":[{"type":"function","function":{"name":"f","name":"g"}}],` + msg + `}`, "tools[0].function.name", "duplicate_key"},
		{ChatCompletions, `{"messages":[{"role":"user","content":[{"type":"text","text":"a","t\u0065xt":"b"}]}]}`, "messages[0].content[0].text", "duplicate_key"},
		{Completions, `{"prompt":"x","Prompt":"y"}`, "Prompt", "unknown_parameter"},
		{Completions, `{"prompt":"x","n":1,"N":9}`, "N", "unknown_parameter"},
		{Embeddings, `{"input":"x","INPUT":"y"}`, "INPUT", "unknown_parameter"},
		{Embeddings, `{"input":"x","input":"y"}`, "input", "duplicate_key"},
		{Responses, `{"input":"x","Previous_Response_Id":"resp_1"}`, "Previous_Response_Id", "unknown_parameter"},
		{Responses, `{"input":"x","metadata":{"a":"1","a":"2"}}`, "metadata.a", "duplicate_key"},
	}
	for _, tt := range tests {
		_, e := tt.ep.Parse([]byte(tt.body))
		if e == nil || e.Status != http.StatusBadRequest || e.Param != tt.param || e.Code != tt.code {
			t.Errorf("%s %s: %+v, want 400 %s param %q", tt.ep.Name(), tt.body, e, tt.code, tt.param)
		}
	}
	// Names the gateway does not read may take any case, and the same
	// name may appear in different objects.
	for _, body := range []string{
		`{"Metadata":{"x":1},"metadata":{"X":1,"x":2},` + msg + `}`,
		`{"tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"id":{},"ID":{}}}}}],` + msg + `}`,
	} {
		if _, e := ChatCompletions.Parse([]byte(body)); e != nil {
			t.Errorf("%s: refused: %v", body, e)
		}
	}
}

// TestChatEndpoint checks the chat adapter: echo through the SDK, a
// backend stream's [DONE] and in-band error, and the error event.
func TestChatEndpoint(t *testing.T) {
	client := sdkClient(serveEndpoint(t, ChatCompletions, nil))
	params := sdk.ChatCompletionNewParams{Model: "m", Messages: []sdk.ChatCompletionMessageParamUnion{sdk.UserMessage("hello world")},
		StreamOptions: sdk.ChatCompletionStreamOptionsParam{IncludeUsage: sdk.Bool(true)}}
	stream := client.Chat.Completions.NewStreaming(t.Context(), params)
	acc := sdk.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.ID != "req-1" || acc.Choices[0].Message.Content != "Echo: hello world" || acc.Choices[0].FinishReason != "stop" || acc.Usage.TotalTokens == 0 {
		t.Fatalf("%+v, want req-1, Echo: hello world, stop, usage", acc.ChatCompletion)
	}
	c, err := client.Chat.Completions.New(t.Context(), params)
	if err != nil || c.Choices[0].Message.Content != "Echo: hello world" || c.ID != "req-1" {
		t.Fatalf("%+v %v; want req-1, Echo: hello world", c, err)
	}

	// A backend: a stream ended by [DONE] without a finish_reason, a JSON
	// answer to a stream, a stream cut short.
	replies := map[string]backendReply{
		"stream": {events: [][2]string{{"", `{"choices":[{"index":0,"delta":{"role":"assistant"}}]}`},
			{"", `{"choices":[{"index":0,"delta":{"content":"Hi"}}],"model":"llama"}`},
			{"", `{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}`}, {"", "[DONE]"}}},
		"json": {json: `{"choices":[{"message":{"content":"Whole"}}],"usage":{"prompt_tokens":2,"completion_tokens":1}}`},
		"cut":  {events: [][2]string{{"", `{"choices":[{"index":0,"delta":{"content":"Hi"}}]}`}}},
	}
	for name, want := range map[string]string{"stream": "Hi", "json": "Whole", "cut": ""} {
		client := sdkClient(serveEndpoint(t, ChatCompletions, func(*Request) backendReply { return replies[name] }))
		stream := client.Chat.Completions.NewStreaming(t.Context(), params)
		acc := sdk.ChatCompletionAccumulator{}
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if name == "cut" {
			if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "before it was complete") {
				t.Fatalf("cut: %v, want an error saying before it was complete", err)
			}
			continue
		}
		if err := stream.Err(); err != nil || acc.Choices[0].Message.Content != want || acc.Choices[0].FinishReason != "stop" || acc.Usage.TotalTokens != 3 {
			t.Fatalf("%s: %v %+v; want %q, stop, 3 tokens", name, err, acc.ChatCompletion, want)
		}
	}

	st := ChatCompletions.NewStream(Meta{ID: "r"})
	out, err := st.Event(nil, nil, []byte(`{"choices":[{"delta":{"content":"hi"}}]}`))
	if err != nil || !st.Content() || st.Complete() || len(out) == 0 {
		t.Fatalf("%q %v; want output with content, not complete", out, err)
	}
	if out, err = st.Event(nil, nil, []byte(" [DONE]")); err != nil || len(out) != 0 || !st.Complete() {
		t.Fatalf("[DONE]: %q %v; want no output, complete", out, err)
	}
	st = ChatCompletions.NewStream(Meta{ID: "r"})
	_, err = st.Event(nil, nil, []byte(`{"error":{"message":"crashed","type":"server_error"}}`))
	var be *Error
	if !errors.As(err, &be) || be.Message != "crashed" {
		t.Fatalf("in-band error: %v, want an *Error crashed", err)
	}
	var evs []event
	if err := st.Fail(&Error{Message: "cut", Type: TypeUpstream, Code: "stream_truncated"}, collectEvents(t, &evs)); err != nil {
		t.Fatal(err)
	}
	if e, ok := ParseError([]byte(evs[0].data)); !ok || evs[0].name != "" || e.Code != "stream_truncated" {
		t.Fatalf("%+v, want one unnamed stream_truncated error event", evs)
	}
}

// decodeInto decodes b into v, failing the test if it is not JSON.
func decodeInto(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}
