package openai

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	sdk "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/packages/ssestream"
)

func TestCompletionsParse(t *testing.T) {
	tests := []struct {
		body        string
		promptBytes int
		echo        string
	}{
		{`{"model":"m","prompt":"hello","suffix":"}","stream":true,"stream_options":{"include_usage":true}}`, 6, "hello"},
		{`{"prompt":""}`, 0, ""},
		{`{"prompt":["first","second"]}`, 11, "first"},
		{`{"prompt":[1,2,3]}`, 12, "[1,2,3]"},
		{`{"prompt":[[1,2],[3]]}`, 12, "[1,2]"},
		{`{"prompt":"a\u00e9","suffix":null}`, 7, "aé"},
	}
	for _, tt := range tests {
		req, e := Completions.Parse([]byte(tt.body))
		if e != nil {
			t.Errorf("%s: %v", tt.body, e)
			continue
		}
		if req.PromptBytes != tt.promptBytes || firstPrompt(req.echo) != tt.echo {
			t.Errorf("%s: prompt bytes %d, echo %q; want %d, %q", tt.body, req.PromptBytes, firstPrompt(req.echo), tt.promptBytes, tt.echo)
		}
	}
	req, _ := Completions.Parse([]byte(tests[0].body))
	if req.Model != "m" || !req.Stream || !req.IncludeUsage {
		t.Errorf("%+v, want model m, stream, include usage", req)
	}
}

func TestCompletionsParseErrors(t *testing.T) {
	tests := []struct{ body, param, code string }{
		{``, "", "invalid_json"},
		{`{"prompt":"x"`, "", "invalid_json"},
		{`["x"]`, "", "invalid_type"},
		{`{}`, "prompt", "missing_required_parameter"},
		{`{"prompt":null}`, "prompt", "missing_required_parameter"},
		{`{"prompt":[]}`, "prompt", "empty_array"},
		{`{"prompt":5}`, "prompt", "invalid_type"},
		{`{"prompt":{"text":"x"}}`, "prompt", "invalid_type"},
		{`{"prompt":["x",1]}`, "prompt", "invalid_type"},
		{`{"prompt":[1,-2]}`, "prompt", "invalid_type"},
		{`{"prompt":[1.5]}`, "prompt", "invalid_type"},
		{`{"prompt":[[1],["x"]]}`, "prompt", "invalid_type"},
		{`{"prompt":[true]}`, "prompt", "invalid_type"},
		{`{"prompt":"x","suffix":1}`, "suffix", "invalid_type"},
		{`{"prompt":"x","model":1}`, "model", "invalid_type"},
		{`{"prompt":"x","stream":"yes"}`, "stream", "invalid_type"},
		{`{"prompt":"x","prompt":"y"}`, "prompt", "duplicate_key"},
	}
	for _, tt := range tests {
		_, e := Completions.Parse([]byte(tt.body))
		if e == nil {
			t.Errorf("%s: accepted", tt.body)
			continue
		}
		if e.Status != 400 || e.Type != TypeInvalidRequest || e.Param != tt.param || e.Code != tt.code {
			t.Errorf("%s: got param=%q code=%q (%s), want 400 %s param=%q code=%q", tt.body, e.Param, e.Code, e.Message, TypeInvalidRequest, tt.param, tt.code)
		}
	}
}

func TestCompletionsNormalize(t *testing.T) {
	m := Meta{ID: "req-1", Model: "asked", Created: 99, PromptBytes: 40}
	// vLLM style: full reply, with its own id and usage.
	in := `{"id":"cmpl-x","object":"text_completion","created":5,"model":"qwen","choices":[{"index":0,"text":" world","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}`
	out, rep, err := Completions.Normalize(nil, []byte(in), m)
	if err != nil {
		t.Fatal(err)
	}
	var c sdk.Completion
	decodeInto(t, out, &c)
	if c.ID != "req-1" || c.Object != "text_completion" || c.Created != 5 || c.Model != "qwen" || c.Choices[0].Text != " world" ||
		c.Choices[0].FinishReason != "length" || c.Usage.TotalTokens != 3 || rep.FinishReason != "length" || rep.Usage.Estimated {
		t.Fatalf(`%s %+v; want req-1, text_completion, created 5, qwen, " world", length, 3 tokens reported`, out, rep)
	}
	if !strings.Contains(string(out), `"stop_reason":null`) {
		t.Fatalf("extra field lost: %s", out)
	}

	// A minimal server: no id, model, created, index, text, finish_reason or usage.
	out, rep, err = Completions.Normalize(nil, []byte(`{"choices":[{"text":"12345678"},{}]}`), m)
	if err != nil {
		t.Fatal(err)
	}
	c = sdk.Completion{}
	decodeInto(t, out, &c)
	if c.ID != "req-1" || c.Model != "asked" || c.Created != 99 || len(c.Choices) != 2 || c.Choices[1].Index != 1 || c.Choices[1].Text != "" ||
		c.Choices[0].FinishReason != "stop" || c.Usage.PromptTokens != 10 || c.Usage.CompletionTokens != 2 || c.Usage.TotalTokens != 12 || !rep.Usage.Estimated {
		t.Fatalf("%s %+v; want req-1, asked, created 99, 2 choices, stop, estimated usage 10 and 2", out, rep)
	}
	for _, bad := range []string{``, `[]`, `{"choices":{}}`, `{"text":"x"}`, `{"choices":[`} {
		if _, _, err := Completions.Normalize(nil, []byte(bad), m); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCompletionsStream(t *testing.T) {
	st := Completions.NewStream(Meta{ID: "req-1", Model: "asked", Created: 1, PromptBytes: 8})
	var got []event
	emit := collectEvents(t, &got)
	feed := func(data string) {
		t.Helper()
		out, err := st.Event(nil, nil, []byte(data))
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		if len(out) > 0 {
			_ = emit(out)
		}
	}
	feed(`{"id":"cmpl-1","object":"text_completion","created":7,"model":"llama","choices":[{"text":"Hel","index":0,"logprobs":null,"finish_reason":null}]}`)
	feed(`{"choices":[{"text":"lo"}]}`)
	if !st.Content() || st.Complete() {
		t.Fatal("content / complete: want content, not complete")
	}
	feed(`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}`) // usage only: nothing relayed
	if len(got) != 2 {
		t.Fatalf("%+v, want 2 events", got)
	}
	// The stream ends without a finish_reason: Finish adds it, the usage chunk and [DONE].
	if err := st.Finish(true, emit); err != nil {
		t.Fatal(err)
	}
	var text string
	for i, ev := range got[:len(got)-1] {
		var c sdk.Completion
		decodeInto(t, []byte(ev.data), &c)
		if c.ID != "req-1" || c.Object != "text_completion" || c.Model != "llama" || c.Created != 7 {
			t.Fatalf("chunk %d: %s, want req-1, text_completion, llama, created 7", i, ev.data)
		}
		if len(c.Choices) > 0 {
			text += c.Choices[0].Text
		}
	}
	finish, usage := got[len(got)-3].data, got[len(got)-2].data
	if text != "Hello" || !strings.Contains(finish, `"finish_reason":"stop"`) || !strings.Contains(usage, `"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}`) ||
		got[len(got)-1].data != "[DONE]" {
		t.Fatalf(`%+v, want text "Hello", finish stop, the usage chunk, [DONE]`, got)
	}
	if r := st.Result(); r.FinishReason != "stop" || r.Usage.CompletionTokens != 2 || r.Usage.Estimated || r.CompletionBytes != 5 {
		t.Fatalf("%+v, want stop, 2 completion tokens reported, 5 completion bytes", r)
	}

	// A finish_reason and [DONE] complete the stream; the estimate counts the text.
	st = Completions.NewStream(Meta{ID: "r", PromptBytes: 4})
	for _, d := range []string{`{"choices":[{"index":0,"text":"abcdefgh","finish_reason":"length"}]}`, `[DONE]`} {
		if _, err := st.Event(nil, nil, []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	if r := st.Result(); !st.Complete() || r.FinishReason != "length" || !r.Usage.Estimated || r.Usage.PromptTokens != 1 || r.Usage.CompletionTokens != 2 {
		t.Fatalf("%+v, want complete, length, estimated usage 1 and 2", r)
	}
	if _, err := st.Event(nil, nil, []byte(`not json`)); err != nil {
		t.Fatal("event after [DONE] read")
	}
	st = Completions.NewStream(Meta{ID: "r"})
	if _, err := st.Event(nil, nil, []byte(`not json`)); !errors.Is(err, ErrInvalidReply) {
		t.Fatalf("%v, want ErrInvalidReply", err)
	}
}

// TestCompletionsSDK drives echo mode and a backend with the official
// SDK's Completions.New and NewStreaming.
func TestCompletionsSDK(t *testing.T) {
	params := sdk.CompletionNewParams{Model: "m", Prompt: sdk.CompletionNewParamsPromptUnion{OfString: sdk.String("hello world")},
		StreamOptions: sdk.ChatCompletionStreamOptionsParam{IncludeUsage: sdk.Bool(true)}}
	streamed := func(client sdk.Client) (string, sdk.CompletionUsage, string) {
		stream := client.Completions.NewStreaming(t.Context(), params)
		var text, finish string
		var usage sdk.CompletionUsage
		for stream.Next() {
			c := stream.Current()
			if c.ID != "req-1" || c.Object != "text_completion" {
				t.Fatalf("chunk %+v, want req-1, text_completion", c)
			}
			for _, ch := range c.Choices {
				text += ch.Text
				if ch.FinishReason != "" {
					finish = string(ch.FinishReason)
				}
			}
			if c.JSON.Usage.Valid() {
				usage = c.Usage
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		return text, usage, finish
	}

	echo := sdkClient(serveEndpoint(t, Completions, nil))
	c, err := echo.Completions.New(t.Context(), params)
	if err != nil || c.ID != "req-1" || c.Choices[0].Text != "Echo: hello world" || c.Choices[0].FinishReason != "stop" || c.Usage.TotalTokens == 0 {
		t.Fatalf("%+v %v; want req-1, Echo: hello world, stop, usage", c, err)
	}
	if text, usage, finish := streamed(echo); text != "Echo: hello world" || finish != "stop" || usage.TotalTokens != c.Usage.TotalTokens {
		t.Fatalf(`%q %+v %q; want "Echo: hello world", %d tokens, stop`, text, usage, finish, c.Usage.TotalTokens)
	}

	// A llama.cpp-like backend: JSON with usage, a stream that ends with
	// a finish and [DONE]; then a backend that answers a stream with JSON.
	backend := sdkClient(serveEndpoint(t, Completions, func(req *Request) backendReply {
		if !req.Stream {
			return backendReply{json: `{"choices":[{"text":"Hi","index":0,"finish_reason":"stop"}],"model":"llama","usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}`}
		}
		return backendReply{events: [][2]string{
			{"", `{"choices":[{"text":"Hi","index":0,"finish_reason":null}],"model":"llama"}`},
			{"", `{"choices":[{"text":" there","index":0,"finish_reason":"length"}],"model":"llama"}`},
			{"", `{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}`},
			{"", `[DONE]`},
		}}
	}))
	if c, err := backend.Completions.New(t.Context(), params); err != nil || c.Choices[0].Text != "Hi" || c.Usage.TotalTokens != 3 || c.ID != "req-1" {
		t.Fatalf("%+v %v; want Hi, 3 tokens, req-1", c, err)
	}
	if text, usage, finish := streamed(backend); text != "Hi there" || usage.TotalTokens != 4 || finish != "length" {
		t.Fatalf(`%q %+v %q; want "Hi there", 4 tokens, length`, text, usage, finish)
	}
	jsonToStream := sdkClient(serveEndpoint(t, Completions, func(req *Request) backendReply {
		return backendReply{json: `{"choices":[{"text":"Whole"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}`}
	}))
	if text, usage, finish := streamed(jsonToStream); text != "Whole" || usage.TotalTokens != 3 || finish != "stop" {
		t.Fatalf(`%q %+v %q; want "Whole", 3 tokens, stop`, text, usage, finish)
	}

	// A stream cut short ends with an error the SDK reports.
	cut := sdkClient(serveEndpoint(t, Completions, func(req *Request) backendReply {
		return backendReply{events: [][2]string{{"", `{"choices":[{"text":"Hi"}]}`}}}
	}))
	stream := cut.Completions.NewStreaming(t.Context(), params)
	for stream.Next() {
	}
	var se *ssestream.StreamError
	if err := stream.Err(); !errors.As(err, &se) || !strings.Contains(se.Message, "before it was complete") {
		t.Fatalf("%v, want a stream error saying before it was complete", err)
	}

	_, err = echo.Completions.New(t.Context(), sdk.CompletionNewParams{Model: "m"})
	var apiErr *sdk.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "prompt" {
		t.Fatalf("%v, want a 400 on prompt", err)
	}
}

// FuzzCompletions checks the reply and chunk normalizers: whatever they
// accept comes out as JSON an SDK can decode.
func FuzzCompletions(f *testing.F) {
	f.Add([]byte(`{"choices":[{"index":0,"text":"a","finish_reason":null}],"usage":null}`))
	f.Add([]byte(`{"choices":[{"text":5},{"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`))
	f.Add([]byte(`{"\u0063hoices":[{"text":"x"}], "model" : null, "created":"1"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st := Completions.NewStream(Meta{ID: "r", Model: "m"})
		out, err := st.Event(nil, nil, data)
		if err == nil && len(out) > 0 {
			var evs []event
			_ = collectEvents(t, &evs)(out)
			var c sdk.Completion
			if json.Unmarshal([]byte(evs[0].data), &c) != nil || c.ID != "r" {
				t.Fatalf("chunk %s gave %s, want a completion with id r", data, out)
			}
		}
		var evs []event
		if err := st.Finish(true, collectEvents(t, &evs)); err != nil || evs[len(evs)-1].data != "[DONE]" {
			t.Fatalf("finish %v %+v; want [DONE] last", err, evs)
		}
		if reply, _, err := Completions.Normalize(nil, data, Meta{ID: "r"}); err == nil {
			var c sdk.Completion
			if json.Unmarshal(reply, &c) != nil || c.ID != "r" || c.Object != "text_completion" {
				t.Fatalf("reply %s gave %s, want a text_completion with id r", data, reply)
			}
			evs = evs[:0]
			if err := Completions.NewStream(Meta{ID: "r"}).FromReply(reply, true, collectEvents(t, &evs)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzRequests checks every endpoint's request parser against
// encoding/json: it accepts only valid JSON objects, answers invalid
// JSON with invalid_json, and reads the same model and stream.
func FuzzRequests(f *testing.F) {
	f.Add(0, []byte(`{"model":"m","prompt":["a","b"],"suffix":"s","stream":true,"max_tokens":5}`))
	f.Add(1, []byte(`{"model":"m","input":[[1,2],[3]],"encoding_format":"base64"}`))
	f.Add(2, []byte(`{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],"previous_response_id":"resp_1","store":false}`))
	f.Add(3, []byte(`{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":3}`))
	f.Add(0, []byte(`{"prompt":[1,-2]}`))
	eps := []Endpoint{Completions, Embeddings, Responses, ChatCompletions}
	f.Fuzz(func(t *testing.T, which int, body []byte) {
		ep := eps[uint(which)%uint(len(eps))]
		req, e := ep.Parse(body)
		if (req == nil) == (e == nil) {
			t.Fatalf("req %v, err %v; want exactly one", req, e)
		}
		var raw map[string]json.RawMessage
		isObject := json.Unmarshal(body, &raw) == nil
		if e != nil {
			if e.Status != 400 || !json.Valid(e.JSON()) {
				t.Fatalf("bad error %+v, want 400 with valid JSON", e)
			}
			if e.Code == "invalid_json" && json.Valid(body) && utf8.Valid(body) {
				t.Fatalf("%q: invalid_json (%s), but it is valid", body, e.Message)
			}
			return
		}
		if !isObject {
			t.Fatalf("%q accepted, but it is not a JSON object", body)
		}
		var model *string
		_ = json.Unmarshal(raw["model"], &model)
		if model != nil && *model != req.Model {
			t.Fatalf("%q: model %q, encoding/json reads %q", body, req.Model, *model)
		}
		m := Meta{ID: "r", Model: "m"}
		if out, _ := ep.Echo(nil, req, m); !json.Valid(out) {
			t.Fatalf("echo %s, want valid JSON", out)
		}
		if req.Stream {
			var evs []event
			if _, err := ep.EchoStream(req, m, collectEvents(t, &evs)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func BenchmarkCompletionsEvent(b *testing.B) {
	data := []byte(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":null}]}`)
	st := Completions.NewStream(Meta{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11"})
	var out []byte
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		out, _ = st.Event(out[:0], nil, data)
	}
}
