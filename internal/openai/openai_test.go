package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

func TestParseChatRequest(t *testing.T) {
	req, e := ParseChatRequest([]byte(`{"model":"m","stream":true,"stream_options":{"include_usage":true},"tools":[],
		"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"first"},
		{"role":"assistant","content":null,"tool_calls":[]},
		{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"world"}]}]}`))
	if e != nil {
		t.Fatal(e)
	}
	if req.Model != "m" || !req.Stream || !req.IncludeUsage || req.Prompt() != "hello\nworld" {
		t.Fatalf(`got %+v, want model m, stream, include usage, prompt "hello\nworld"`, req)
	}
	req, e = ParseChatRequest([]byte(`{"messages":[{"role":"user","content":"hi"}],"stream":null}`))
	if e != nil || req.Stream || req.Model != "" || req.Prompt() != "hi" || req.ContentBytes != 4 {
		t.Fatalf(`got %+v, %v; want no stream, no model, prompt "hi", 4 content bytes`, req, e)
	}
}

func TestParseChatRequestErrors(t *testing.T) {
	tests := []struct{ body, param, code string }{
		{``, "", "invalid_json"},
		{`{"messages":[`, "", "invalid_json"},
		{`[1,2]`, "", "invalid_type"},
		{`42`, "", "invalid_type"},
		{`{}`, "messages", "missing_required_parameter"},
		{`{"messages":[]}`, "messages", "empty_array"},
		{`{"messages":"hi"}`, "messages", "invalid_type"},
		{`{"messages":["hi"]}`, "messages", "invalid_type"},
		{`{"messages":[{"content":"hi"}]}`, "messages[0].role", "missing_required_parameter"},
		{`{"messages":[{"role":1,"content":"hi"}]}`, "messages[0].role", "invalid_type"},
		{`{"messages":[{"role":"wizard","content":"hi"}]}`, "messages[0].role", "invalid_value"},
		{`{"messages":[{"role":"user"}]}`, "messages[0].content", "missing_required_parameter"},
		{`{"messages":[{"role":"user","content":5}]}`, "messages[0].content", "invalid_type"},
		{`{"messages":[{"role":"user","content":{"a":1}}]}`, "messages[0].content", "invalid_type"},
		{`{"messages":[{"role":"user","content":["x"]}]}`, "messages[0].content", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"stream":"true"}`, "stream", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"model":7}`, "model", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"stream_options":true}`, "stream_options", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"max_tokens":"5"}`, "max_tokens", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}`, "max_tokens", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":1.5}`, "max_completion_tokens", "invalid_type"},
		{`{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"max_tokens":2}`, "max_tokens", "duplicate_key"},
		{`{"messages":[{"role":"user","content":"x"}],"stream":true,"stream":false}`, "stream", "duplicate_key"},
		// Escapes hide nothing: keys are compared as decoded (RFC 8259).
		{`{"model":"a","mod\u0065l":"b","messages":[{"role":"user","content":"x"}]}`, "model", "duplicate_key"},
		{`{"messages":[{"role":"user","content":"x"}],"str\u0065am":true,"stream":false}`, "stream", "duplicate_key"},
		{`{"\u006dessages":[{"role":"user","content":"x"}],"messages":[]}`, "messages", "duplicate_key"},
		{`{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":false,"include_\u0075sage":true}}`, "stream_options.include_usage", "duplicate_key"},
		{`{"messages":[{"role":"user","r\u006fle":"system","content":"x"}]}`, "messages[0].role", "duplicate_key"},
		{`{"messages":[{"role":"user","content":"x","c\u006fntent":[{"type":"text","text":"y"}]}]}`, "messages[0].content", "duplicate_key"},
		{"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", "", "invalid_json"},
		{strings.Repeat("[", 5<<20), "", "invalid_json"},
	}
	for _, tt := range tests {
		_, e := ParseChatRequest([]byte(tt.body))
		if e == nil {
			t.Errorf("%.60q: accepted", tt.body)
			continue
		}
		if e.Status != http.StatusBadRequest || e.Type != TypeInvalidRequest || e.Param != tt.param || e.Code != tt.code {
			t.Errorf("%.60q: got %d %s param=%q code=%q (%s), want 400 %s param=%q code=%q", tt.body, e.Status, e.Type, e.Param, e.Code, e.Message, TypeInvalidRequest, tt.param, tt.code)
		}
	}
}

func TestErrorJSON(t *testing.T) {
	got := string((&Error{Message: "m", Type: "t"}).JSON())
	if got != `{"error":{"message":"m","type":"t","param":null,"code":null}}` {
		t.Fatalf(`%s, want {"error":{"message":"m","type":"t","param":null,"code":null}}`, got)
	}
	e, ok := ParseError([]byte(`{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":429}}`))
	if !ok || e.Message != "slow down" || e.Type != "rate_limit_error" || e.Code != "429" {
		t.Fatalf("%+v %v, want slow down, rate_limit_error, code 429", e, ok)
	}
	if e, ok := ParseError([]byte(`{"error":"model not loaded"}`)); !ok || e.Message != "model not loaded" {
		t.Fatalf("%+v %v, want message model not loaded", e, ok)
	}
	if _, ok := ParseError([]byte(`<html>bad gateway</html>`)); ok {
		t.Fatal("html taken as an error body")
	}
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

func TestAppendNormalizedCompletion(t *testing.T) {
	m := Meta{ID: "req-1", Model: "asked", Created: 99, PromptBytes: 40}
	// llama.cpp style: no usage details beyond counts, extra fields.
	in := `{"id":"chatcmpl-x","object":"chat.completion","created":5,"model":"llama","system_fingerprint":"fp",
		"choices":[{"index":0,"message":{"role":"assistant","content":"hi","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],
		"usage":{"prompt_tokens":3,"completion_tokens":4}}`
	out, rep, err := AppendNormalizedCompletion(nil, []byte(in), m)
	if err != nil {
		t.Fatal(err)
	}
	got := decode(t, out)
	if got["id"] != "req-1" || got["object"] != "chat.completion" || got["created"] != 5.0 || got["model"] != "llama" || got["system_fingerprint"] != "fp" {
		t.Fatalf("top level: %s, want id req-1, chat.completion, created 5, model llama, fingerprint fp", out)
	}
	c := got["choices"].([]any)[0].(map[string]any)
	if c["finish_reason"] != "tool_calls" || c["message"].(map[string]any)["tool_calls"] == nil {
		t.Fatalf("choice: %s, want finish_reason tool_calls and the tool calls", out)
	}
	if u := got["usage"].(map[string]any); u["total_tokens"] != 7.0 || rep.Usage.PromptTokens != 3 || rep.Usage.Estimated || rep.FinishReason != "tool_calls" {
		t.Fatalf("usage: %s %+v, want total 7, prompt 3, not estimated, tool_calls", out, rep)
	}

	// A minimal server: no id, model, created, index, role, finish_reason or usage.
	out, rep, err = AppendNormalizedCompletion(nil, []byte(`{"choices":[{"message":{"content":"12345678"}}]}`), m)
	if err != nil {
		t.Fatal(err)
	}
	got = decode(t, out)
	want := map[string]any{"id": "req-1", "object": "chat.completion", "created": 99.0, "model": "asked",
		"choices": []any{map[string]any{"index": 0.0, "message": map[string]any{"role": "assistant", "content": "12345678"}, "finish_reason": "stop"}},
		"usage":   map[string]any{"prompt_tokens": 10.0, "completion_tokens": 2.0, "total_tokens": 12.0}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %s, want %v", out, want)
	}
	if !rep.Usage.Estimated || rep.FinishReason != "stop" {
		t.Fatalf("%+v, want estimated usage, stop", rep)
	}

	for _, bad := range []string{``, `<html>`, `[]`, `{"choices":{}}`, `{"object":"list"}`, `{"choices":[`} {
		if _, _, err := AppendNormalizedCompletion(nil, []byte(bad), m); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStreamChunks(t *testing.T) {
	s := Stream{Meta: Meta{ID: "req-1", Model: "asked", Created: 1, PromptBytes: 8}}
	var out []string
	feed := func(data string) {
		t.Helper()
		b, err := s.AppendChunk(nil, []byte(data))
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		out = append(out, string(b))
	}
	// llama.cpp: no role on the first delta, usage inside the last chunk.
	feed(`{"id":"x","object":"chat.completion.chunk","created":7,"model":"llama","choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
	feed(`{"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}`)
	feed(`{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4},"timings":{"n":1}}`)
	if out[0] != `{"id":"req-1","object":"chat.completion.chunk","created":7,"model":"llama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}` {
		t.Fatalf("first chunk: %s, want id req-1, created 7, model llama, role assistant added", out[0])
	}
	second := decode(t, []byte(out[1]))
	if second["created"] != 7.0 || second["model"] != "llama" {
		t.Fatalf("second chunk: %s, want created 7, model llama", out[1])
	}
	if c := second["choices"].([]any)[0].(map[string]any); c["index"] != 0.0 || c["delta"].(map[string]any)["role"] != nil {
		t.Fatalf("second chunk: %s, want index 0, no role", out[1])
	}
	if last := decode(t, []byte(out[2])); last["usage"] != nil || last["timings"] == nil {
		t.Fatalf("usage not taken out of %s, want no usage, timings kept", out[2])
	}
	if !s.Finished() || s.FinishReason != "stop" || s.Usage() != (Usage{PromptTokens: 2, CompletionTokens: 2}) {
		t.Fatalf("state: %+v, want finished, stop, usage 2 and 2", s)
	}
	u := decode(t, s.AppendUsageChunk(nil))
	if len(u["choices"].([]any)) != 0 || u["usage"].(map[string]any)["total_tokens"] != 4.0 || u["id"] != "req-1" {
		t.Fatalf("usage chunk: %v, want no choices, total 4, id req-1", u)
	}

	// OpenAI: a usage-only chunk is held back; tool_calls keep their index.
	s = Stream{Meta: Meta{ID: "r"}}
	b, _ := s.AppendChunk(nil, []byte(`{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"c","function":{"arguments":""}}]}}]}`))
	if !strings.Contains(string(b), `"tool_calls":[{"index":0,"id":"c"`) || strings.Count(string(b), `"role"`) != 1 {
		t.Fatalf("tool call chunk: %s, want the call at index 0 and one role", b)
	}
	b, _ = s.AppendChunk(b[:0], []byte(`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}`))
	if len(b) != 0 || s.Usage().Estimated {
		t.Fatalf("usage-only chunk passed on: %q, want it held back, its usage taken", b)
	}
	if s.Finished() {
		t.Fatal("finished without finish_reason")
	}
	if u := s.Unfinished(); len(u) != 1 || u[0] != 0 {
		t.Fatalf("unfinished: %v, want [0]", u)
	}
	fin := decode(t, s.AppendDelta(nil, 0, "", "", "stop"))
	if fin["choices"].([]any)[0].(map[string]any)["finish_reason"] != "stop" || !s.Finished() {
		t.Fatalf("finish chunk: %v, want finish_reason stop, finished", fin)
	}

	for _, bad := range []string{`data`, `[1]`, `"x"`, `{"choices":[`} {
		if _, err := s.AppendChunk(nil, []byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStreamEstimate(t *testing.T) {
	s := Stream{Meta: Meta{ID: "r", Model: "echo", PromptBytes: 12}}
	var b []byte
	b = s.AppendDelta(b, 0, "assistant", "", "")
	b = s.AppendDelta(b, 0, "", "12345678", "")
	b = s.AppendDelta(b, 0, "", "", "stop")
	if u := s.Usage(); !u.Estimated || u.PromptTokens != 3 || u.CompletionTokens != 2 {
		t.Fatalf("%+v, want estimated, 3 prompt, 2 completion tokens", u)
	}
	if !s.Finished() || !json.Valid(b[:strings.Index(string(b), "}{")+1]) {
		t.Fatalf("%s, want finished, valid JSON", b)
	}
}

// FuzzErrorJSON: the hand-written error JSON is valid and says what
// encoding/json would: the same members with the same values (invalid
// UTF-8 replaced alike), the message first.
func FuzzErrorJSON(f *testing.F) {
	f.Add("Rate limit reached for alice on requests per 1m: Limit 60, Used 60.", "requests", "model", "rate_limit_exceeded")
	f.Add("quote \" back\\ slash <html> & \u2028 \x00 \xff é", "", "", "")
	f.Fuzz(func(t *testing.T, message, typ, param, code string) {
		got := (&Error{Message: message, Type: typ, Param: param, Code: code}).JSON()
		opt := func(s string) *string {
			if s == "" {
				return nil
			}
			return &s
		}
		want, err := json.Marshal(map[string]any{"error": struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		}{message, typ, opt(param), opt(code)}})
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(got) {
			t.Fatalf("invalid JSON %q", got)
		}
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
		if !bytes.HasPrefix(got, []byte(`{"error":{"message":`)) {
			t.Fatalf("the message is not first: %s", got)
		}
	})
}

// FuzzChatRequest checks the request decoder against encoding/json: it
// accepts exactly the valid JSON, and reads the same values.
func FuzzChatRequest(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"stream":true}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi\u00e9\n"}],"stream_options":{"include_usage":true}}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":"x"}],"n":-1.5e+3,"t":[true,false,null,{}]}`))
	f.Add([]byte(` [1, "2"] `))
	f.Add([]byte(`{"messages":[{"role":"user","content":"x"}],"max_tokens":500,"max_completion_tokens":null}`))
	f.Add([]byte(`{"model":"a","mod\u0065l":"b","messages":[{"role":"user","r\u006fle":"user","content":"x"}]}`))
	f.Add([]byte(`{"str\u0065am":true,"stream_options":{"include_\u0075sage":true},"messages":[{"\u0072ole":"user","content":"x"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, e := ParseChatRequest(body)
		if (req == nil) == (e == nil) {
			t.Fatalf("req %v, err %v; want exactly one", req, e)
		}
		valid := json.Valid(body) && utf8.Valid(body)
		if e != nil {
			if e.Status != 400 || !json.Valid(e.JSON()) {
				t.Fatalf("bad error %+v, want 400 with valid JSON", e)
			}
			if (e.Code == "invalid_json") == valid && len(body) > 0 {
				t.Fatalf("%q: code %s (%s), but json.Valid says %v", body, e.Code, e.Message, valid)
			}
			return
		}
		if !valid {
			t.Fatalf("%q accepted, but it is not valid JSON", body)
		}
		var std struct {
			Model  *string
			Stream *bool
		}
		var raw map[string]json.RawMessage
		if json.Unmarshal(body, &raw) != nil {
			t.Fatalf("%q accepted but not an object", body)
		}
		if dup := duplicateTopKey(body); dup != "" {
			t.Fatalf("%q accepted, but it names %q twice", body, dup)
		}
		_ = json.Unmarshal(raw["model"], &std.Model)
		_ = json.Unmarshal(raw["stream"], &std.Stream)
		if (std.Model != nil && *std.Model != req.Model) || (std.Stream != nil && *std.Stream != req.Stream) {
			t.Fatalf("%q: read model %q stream %v, encoding/json reads %v %v", body, req.Model, req.Stream, std.Model, std.Stream)
		}
		_ = req.Prompt()
	})
}

// duplicateTopKey returns a top-level key of the JSON object body that
// encoding/json decodes to the same name as an earlier one, or "".
func duplicateTopKey(body []byte) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := tok.(string)
		if seen[key] {
			return key
		}
		seen[key] = true
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return ""
		}
	}
	return ""
}

func FuzzNormalize(f *testing.F) {
	f.Add([]byte(`{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":null}`))
	f.Add([]byte(`{"choices":[{"message":{"role":null,"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`))
	f.Add([]byte(`{"\u0063hoices":[{"delta":{"tool_calls":[{"index":0}]}}], "x" : [ "]" , "}" ] }`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := Stream{Meta: Meta{ID: "r", Model: "m"}}
		if out, err := s.AppendChunk(nil, data); err == nil && len(out) > 0 && !json.Valid(out) {
			t.Fatalf("chunk %s gave invalid JSON %s", data, out)
		}
		if out, _, err := AppendNormalizedCompletion(nil, data, Meta{ID: "r"}); err == nil && !json.Valid(out) {
			t.Fatalf("reply %s gave invalid JSON %s", data, out)
		}
		if out := s.AppendUsageChunk(nil); !json.Valid(out) {
			t.Fatalf("usage chunk %s, want valid JSON", out)
		}
	})
}

func BenchmarkParseChatRequest(b *testing.B) {
	for _, size := range []int{100, 10 << 10, 1 << 20} {
		body := fmt.Appendf(nil, `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":%q}]}`, strings.Repeat("a", size))
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, e := ParseChatRequest(body); e != nil {
					b.Fatal(e)
				}
			}
		})
	}
}

func BenchmarkStreamChunk(b *testing.B) {
	data := []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}`)
	s := Stream{Meta: Meta{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11"}}
	var out []byte
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		s.shape.clear() // read in full, as a chunk unlike the one before
		out, _ = s.AppendChunk(out[:0], data)
	}
}

func BenchmarkAppendNormalizedCompletion(b *testing.B) {
	body := []byte(`{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}`)
	m := Meta{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11"}
	var out []byte
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		out, _, _ = AppendNormalizedCompletion(out[:0], body, m)
	}
}

func TestSetMember(t *testing.T) {
	tests := []struct{ in, key, val, want string }{
		{`{"model":"a","x":[1, 2]}`, "model", `"b"`, `{"model":"b","x":[1, 2]}`},
		{`{"x":1}`, "model", `"b"`, `{"x":1,"model":"b"}`},
		{`{ }`, "model", `"b"`, `{ "model":"b"}`},
		{`{"stream_options":{"include_usage":false},"m":"\"model\""}`, "stream_options", `{"include_usage":true}`, `{"stream_options":{"include_usage":true},"m":"\"model\""}`},
	}
	for _, tt := range tests {
		if got := string(SetMember([]byte(tt.in), tt.key, []byte(tt.val))); got != tt.want {
			t.Errorf("SetMember(%s, %s) = %s, want %s", tt.in, tt.key, got, tt.want)
		}
	}
	if string(Member([]byte(`{"a":{"b":1},"b":2}`), "b")) != "2" {
		t.Error("Member found a nested key")
	}
}

func TestKeyIs(t *testing.T) {
	for key, want := range map[string]bool{
		`"choices"`:           true,
		`"\u0063hoices"`:      true, // escaped first byte
		`"cho\u0069ces"`:      true, // escaped later byte
		`"\u0063ho\u0069ces"`: true,
		`"choice"`:            false,
		`"choicesx"`:          false,
		`"xchoices"`:          false,
		`"cho\nces"`:          false,
		`""`:                  false,
	} {
		if got := jsonwalk.KeyIs([]byte(key), "choices"); got != want {
			t.Errorf("jsonwalk.KeyIs(%s, choices) = %v, want %v", key, got, want)
		}
	}
}

func TestFieldName(t *testing.T) {
	for key, want := range map[string]string{
		`"usage"`:              "usage",
		`"\u0075sage"`:         "usage", // a backend may escape any byte
		`"fin\u0069sh_reason"`: "finish_reason",
		`"usagex"`:             "",
		`"Usage"`:              "",
		`"us\nage"`:            "",
		`""`:                   "",
		`"\u0022"`:             "",
	} {
		if got := fieldName([]byte(key)); got != want {
			t.Errorf("fieldName(%s) = %q, want %q", key, got, want)
		}
	}
	// An escaped key is the member it spells: its usage is read and it
	// is not copied as another member.
	s := Stream{Meta: Meta{ID: "r"}}
	out, err := s.AppendChunk(nil, []byte(`{"choices":[{"index":0,"delta":{"content":"a"}}],"\u0075sage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`))
	if err != nil || strings.Contains(string(out), "sage") || s.Usage() != (Usage{PromptTokens: 3, CompletionTokens: 4}) {
		t.Errorf("escaped usage: %s %v %+v; want no usage member, usage 3 and 4", out, err, s.Usage())
	}
}

func TestStreamFromCompletion(t *testing.T) {
	reply := `{"id":"r","object":"chat.completion","created":3,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`
	s := Stream{Meta: Meta{ID: "r"}}
	var chunks []map[string]any
	err := s.FromCompletion([]byte(reply), func(c []byte) error {
		chunks = append(chunks, decode(t, c))
		return nil
	})
	if err != nil || len(chunks) != 2 {
		t.Fatalf("%v %v, want 2 chunks", err, chunks)
	}
	delta := chunks[0]["choices"].([]any)[0].(map[string]any)["delta"].(map[string]any)
	call := delta["tool_calls"].([]any)[0].(map[string]any)
	if delta["role"] != "assistant" || call["index"] != 0.0 || call["id"] != "c1" || chunks[0]["model"] != "m" {
		t.Fatalf("delta %v, want role assistant, call c1 at index 0, model m", chunks[0])
	}
	if chunks[1]["choices"].([]any)[0].(map[string]any)["finish_reason"] != "tool_calls" || !s.Finished() || s.Usage().CompletionTokens != 2 {
		t.Fatalf("finish %v, want tool_calls, finished, 2 completion tokens", chunks[1])
	}
}

// valid reports whether b is one JSON value with the gateway's scanner,
// for comparison with json.Valid.
func valid(b []byte) bool {
	end, err := scanValue(b, jsonwalk.SkipSpace(b, 0), 0)
	return err == nil && jsonwalk.SkipSpace(b, end) == len(b)
}

// FuzzValid checks the scanner the request and reply decoders share
// against json.Valid.
func FuzzValid(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5e-3,"x\u00e9\n",true,false,null]}`, ` "s" `, `[`, `{"a":}`, `01`, `-`, `1.`, `"\x"`, "\"\x01\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if valid(b) != json.Valid(b) {
			t.Fatalf("%q: valid %v, json.Valid %v", b, valid(b), json.Valid(b))
		}
	})
}

// Members finds each key's first value in one pass, escaped names
// included, and nil for a key that is not there.
func TestMembers(t *testing.T) {
	got := Members([]byte(`{"temperature":0,"messages":[{"seed":1}],"st\u006fre":true,"temperature":1}`), "seed", "store", "temperature")
	if got[0] != nil || string(got[1]) != "true" || string(got[2]) != "0" {
		t.Fatalf("%q, want [nil true 0]: seed only nested, store escaped, the first temperature", got)
	}
}
