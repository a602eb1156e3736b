package anthropic

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// TestFromCompletion is the golden table of the reply translation.
func TestFromCompletion(t *testing.T) {
	opts := ReplyOptions{ID: "req-9", Model: "claude-x", StopSequences: []string{"###", "END"}, PromptBytes: 40}
	tests := []struct {
		name, body string
		want       *Message
	}{
		{"text, stop", `{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi <there>"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "Hi <there>"}}, StopReason: StopEndTurn, Usage: Usage{InputTokens: 12, OutputTokens: 3}}},
		{"cached prompt tokens, in Anthropic's terms", `{"choices":[{"message":{"content":"abc"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "abc"}}, StopReason: StopEndTurn, Usage: Usage{InputTokens: 4, CacheReadTokens: 8, OutputTokens: 3}}},
		{"length", `{"choices":[{"message":{"content":"abc"},"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "abc"}}, StopReason: StopMaxTokens, Usage: Usage{InputTokens: 1, OutputTokens: 2}}},
		{"content_filter", `{"choices":[{"message":{"content":null,"refusal":"I can't."},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "I can't."}}, StopReason: StopRefusal, Usage: Usage{InputTokens: 1, OutputTokens: 2}}},
		{"stop sequence named by vLLM", `{"choices":[{"message":{"content":"a list"},"finish_reason":"stop","stop_reason":"END"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "a list"}}, StopReason: StopSequence, StopSequence: "END", Usage: Usage{InputTokens: 1, OutputTokens: 2}}},
		{"stop sequence left in the text", `{"choices":[{"message":{"content":"a list###"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "a list###"}}, StopReason: StopSequence, StopSequence: "###", Usage: Usage{InputTokens: 1, OutputTokens: 2}}},
		{"vLLM stop token id is no sequence", `{"choices":[{"message":{"content":"done"},"finish_reason":"stop","stop_reason":128009}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "done"}}, StopReason: StopEndTurn, Usage: Usage{InputTokens: 1, OutputTokens: 2}}},
		{"tool calls", `{"choices":[{"message":{"content":"Checking.","tool_calls":[
				{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},
				{"type":"function","function":{"name":"now","arguments":""}},
				{"id":"call_1","type":"function","function":{"name":"again","arguments":{"k":[true]}}}]},"finish_reason":"tool_calls"}],
				"usage":{"prompt_tokens":30,"completion_tokens":20}}`,
			&Message{ID: "req-9", Model: "claude-x", StopReason: StopToolUse, Usage: Usage{InputTokens: 30, OutputTokens: 20}, Content: []Block{
				{Type: "text", Text: "Checking."},
				{Type: "tool_use", ID: "call_1", Name: "get_weather", Input: json.RawMessage(`{"city": "Paris"}`)},
				{Type: "tool_use", ID: "(minted)", Name: "now", Input: json.RawMessage(`{}`)},
				{Type: "tool_use", ID: "(minted)", Name: "again", Input: json.RawMessage(`{"k":[true]}`)}}}},
		{"tool calls though finish says stop, no usage", `{"choices":[{"message":{"content":null,"tool_calls":[{"id":"c","function":{"name":"f","arguments":"null"}}]},"finish_reason":"stop"}]}`,
			&Message{ID: "req-9", Model: "claude-x", StopReason: StopToolUse, Usage: Usage{InputTokens: 10, OutputTokens: 1, Estimated: true},
				Content: []Block{{Type: "tool_use", ID: "c", Name: "f", Input: json.RawMessage(`{}`)}}}},
		{"text parts, no finish", `{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
			&Message{ID: "req-9", Model: "claude-x", Content: []Block{{Type: "text", Text: "ab"}}, StopReason: StopEndTurn, Usage: Usage{InputTokens: 1, OutputTokens: 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, e := FromCompletion([]byte(tt.body), opts)
			if e != nil {
				t.Fatal(e)
			}
			ids := map[string]bool{}
			for i, b := range m.Content {
				if b.Type != "tool_use" {
					continue
				}
				if ids[b.ID] {
					t.Errorf("tool id %s used twice", b.ID)
				}
				ids[b.ID] = true
				if tt.want.Content[i].ID == "(minted)" {
					if !strings.HasPrefix(b.ID, "toolu_") || len(b.ID) != len("toolu_")+24 {
						t.Errorf("minted id %q, want toolu_ and 24 characters", b.ID)
					}
					tt.want.Content[i].ID = b.ID
				}
			}
			gotJSON, wantJSON := m.AppendJSON(nil), tt.want.AppendJSON(nil)
			if !jsonEqual(gotJSON, wantJSON) || m.Usage != tt.want.Usage {
				t.Errorf("got  %s %+v\nwant %s %+v", gotJSON, m.Usage, wantJSON, tt.want.Usage)
			}
			var sdk anthropic.Message
			if err := json.Unmarshal(gotJSON, &sdk); err != nil {
				t.Fatal(err)
			}
			checkSDKMessage(t, sdk, m)
			// The same reply streamed: what a JSON answer to a streaming request becomes.
			events := AppendEvents(nil, m)
			if _, err := checkStream(parseEvents(t, events)); err != nil {
				t.Error(err)
			}
			checkSDKMessage(t, sdkAccumulate(t, events), m)
		})
	}
}

func TestFromCompletionErrors(t *testing.T) {
	for _, body := range []string{
		``, `[]`, `{"choices":[]}`, `{"choices":"x"}`,
		`{"choices":[{"message":{"content":5}}]}`,
		`{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":"}}]}}]}`,
		`{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1,2]"}}]}}]}`,
		`{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"not json"}}]}}]}`,
		`{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"arguments":"{}"}}]}}]}`,
	} {
		m, e := FromCompletion([]byte(body), ReplyOptions{ID: "r"})
		if e == nil {
			t.Errorf("%s: translated to %s", body, m.AppendJSON(nil))
			continue
		}
		if e.Status != http.StatusBadGateway || ErrorType(e.Status) != TypeAPI || e.Message == "" {
			t.Errorf("%s: %+v, want 502 api_error with a message", body, e)
		}
	}
}

func TestStreamStopReasons(t *testing.T) {
	tests := []struct {
		chunks []string
		stops  []string
		reason string
		seq    string
	}{
		{[]string{`{"choices":[{"delta":{"content":"a"},"finish_reason":"length"}]}`}, nil, StopMaxTokens, ""},
		{[]string{`{"choices":[{"delta":{"content":"a"},"finish_reason":"content_filter"}]}`}, nil, StopRefusal, ""},
		{[]string{`{"choices":[{"delta":{"content":"x"}}]}`, `{"choices":[{"delta":{},"finish_reason":"stop","stop_reason":"STOP"}]}`}, []string{"STOP"}, StopSequence, "STOP"},
		{[]string{`{"choices":[{"delta":{"content":"abc</a"}}]}`, `{"choices":[{"delta":{"content":"ns\u003e"}}]}`, `{"choices":[{"delta":{},"finish_reason":"stop"}]}`}, []string{"x", "</ans>"}, StopSequence, "</ans>"},
		{[]string{`{"choices":[{"delta":{"content":"abc"}}]}`, `{"choices":[{"delta":{},"finish_reason":"stop"}]}`}, []string{"zz"}, StopEndTurn, ""},
		{[]string{`{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}`, `{"choices":[{"delta":{},"finish_reason":"stop"}]}`}, nil, StopToolUse, ""},
		{[]string{`{"choices":[{"index":1,"delta":{"content":"other choice"}},{"index":0,"delta":{"refusal":"no"},"finish_reason":"stop"}]}`}, nil, StopEndTurn, ""},
	}
	for i, tt := range tests {
		s := &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m", StopSequences: tt.stops}}
		var chunks [][]byte
		for _, c := range tt.chunks {
			chunks = append(chunks, []byte(c))
		}
		out := translate(s, chunks)
		res, err := checkStream(parseEvents(t, out))
		if err != nil || res.stopReason != tt.reason || res.stopSeq != tt.seq {
			t.Errorf("%d: %v %+v, want stop %q, sequence %q\n%s", i, err, res, tt.reason, tt.seq, out)
		}
		if i == len(tests)-1 && res.text != "no" {
			t.Errorf("text from another choice: %q, want \"no\"", res.text)
		}
	}
}

func TestStreamErrors(t *testing.T) {
	s := &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m"}}
	out, e := s.Chunk(nil, []byte(`{"choices":[{"delta":{"content":"a"}}]}`))
	if e != nil {
		t.Fatal(e)
	}
	if _, e = s.Chunk(out, []byte(`{"choices":[`)); e == nil || e.Status != http.StatusBadGateway {
		t.Fatalf("invalid chunk: %v, want a 502", e)
	}
	res, err := checkStream(parseEvents(t, AppendErrorEvent(out, e)))
	if err != nil || res.failed != TypeAPI || res.text != "a" {
		t.Fatalf("%v %+v, want text a, then an api_error", err, res)
	}

	s = &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m"}, MaxToolBytes: 10}
	out, e = s.Chunk(nil, []byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{\"k\":\""}}]}}]}`))
	if e != nil {
		t.Fatal(e)
	}
	if _, e = s.Chunk(out, []byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"0123456789"}}]}}]}`)); e == nil || e.Code != "tool_call_too_large" {
		t.Fatalf("tool arguments past the bound: %v, want tool_call_too_large", e)
	}

	// A stream with no chunk at all still has Anthropic's sequence.
	s = &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m", PromptBytes: 8}}
	out, e = s.Finish(AppendPing(s.Start(nil)))
	if e != nil {
		t.Fatal(e)
	}
	res, err = checkStream(parseEvents(t, out))
	if err != nil || res.stopReason != StopEndTurn || res.usage != [2]int64{2, 0} || s.Finished() || s.HasContent() {
		t.Fatalf("%v %+v, want end_turn, usage [2 0], not finished, no content\n%s", err, res, out)
	}
	checkSDKMessage(t, sdkAccumulate(t, out), &Message{ID: "r", Model: "m", StopReason: StopEndTurn, Usage: Usage{InputTokens: 2}})
}

func TestStreamUsage(t *testing.T) {
	s := &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m", PromptBytes: 100}}
	out := translate(s, [][]byte{[]byte(`{"choices":[{"delta":{"content":"12345678"},"finish_reason":"stop"}]}`)})
	if u := s.Usage(); u != (Usage{InputTokens: 25, OutputTokens: 2, Estimated: true}) || !s.Finished() || !s.HasContent() {
		t.Errorf("estimated usage %+v, want 25 in, 2 out, estimated, finished with content", u)
	}
	res, _ := checkStream(parseEvents(t, out))
	if res.usage != [2]int64{25, 2} {
		t.Errorf("message_delta usage %v, want [25 2]", res.usage)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		status int
		typ    string
	}{
		{400, TypeInvalidRequest}, {401, TypeAuthentication}, {402, TypeBilling}, {403, TypePermission}, {404, TypeNotFound},
		{405, TypeInvalidRequest}, {413, TypeRequestTooLarge}, {429, TypeRateLimit}, {500, TypeAPI}, {502, TypeAPI},
		{503, TypeOverloaded}, {504, TypeTimeout}, {529, TypeOverloaded}, {0, TypeAPI},
	}
	for _, tt := range tests {
		e := &openai.Error{Status: tt.status, Type: openai.TypeUpstream, Code: "c", Message: "Something \"broke\"."}
		var got struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(ErrorJSON(e), &got); err != nil {
			t.Fatal(err)
		}
		if got.Type != "error" || got.Error.Type != tt.typ || got.Error.Message != e.Message {
			t.Errorf("%d: %s, want an error of type %s with its message", tt.status, ErrorJSON(e), tt.typ)
		}
		if tt.status == 0 && ErrorStatus(e) != 500 || tt.status != 0 && ErrorStatus(e) != tt.status {
			t.Errorf("%d: ErrorStatus %d, want the status, 500 for 0", tt.status, ErrorStatus(e))
		}
		if m := ErrorJSON(&openai.Error{Status: tt.status}); !strings.Contains(string(m), `"message":"`) || strings.Contains(string(m), `"message":""`) {
			t.Errorf("%d: no default message: %s", tt.status, m)
		}
	}
	ev := parseEvents(t, AppendErrorEvent(nil, &openai.Error{Status: 529, Message: "busy"}))
	if len(ev) != 1 || ev[0].name != "error" || string(ev[0].data) != `{"type":"error","error":{"type":"overloaded_error","message":"busy"}}` {
		t.Errorf(`error event %+v, want one: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}`, ev)
	}
	// The SDK reads the error body as Anthropic's.
	var sdkErr struct {
		Error anthropic.ErrorObjectUnion `json:"error"`
	}
	if err := json.Unmarshal(ErrorJSON(&openai.Error{Status: 429, Message: "slow down"}), &sdkErr); err != nil || sdkErr.Error.Type != "rate_limit_error" || sdkErr.Error.Message != "slow down" {
		t.Errorf("SDK reads %+v (%v), want rate_limit_error, slow down", sdkErr, err)
	}

	e, ok := ParseError([]byte(`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`), 529)
	if !ok || e.Status != 529 || e.Type != TypeOverloaded || e.Message != "Overloaded" {
		t.Errorf("ParseError: %+v %v, want 529 overloaded_error Overloaded, true", e, ok)
	}
	for _, body := range []string{``, `{}`, `{"error":{"message":"openai shape"}}`, `{"type":"error"}`} {
		if _, ok := ParseError([]byte(body), 500); ok {
			t.Errorf("ParseError accepted %s", body)
		}
	}
}

func TestStreamInvalidUTF8(t *testing.T) {
	s := &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m"}}
	out := translate(s, [][]byte{
		[]byte("{\"choices\":[{\"delta\":{\"content\":\"a\xffb\",\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"k\\\":\\\"\xfe\\\"}\"}}]},\"finish_reason\":\"tool_calls\"}]}"),
	})
	if !utf8.Valid(out) {
		t.Fatalf("invalid UTF-8 out: %q", out)
	}
	res, err := checkStream(parseEvents(t, out))
	if err != nil || res.text != "a\uFFFDb" || len(res.tools) != 1 || res.tools[0].Input != "{\"k\":\"\uFFFD\"}" {
		t.Fatalf("%v %+v, want U+FFFD for the invalid bytes in the text and the one tool's input", err, res)
	}
}
