package anthropic

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

func TestParseRequest(t *testing.T) {
	r, e := ParseRequest([]byte(`{"model":"claude-3","max_tokens":1024,"stream":true,"system":"be brief","stop_sequences":["END"],
		"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":[{"type":"text","text":"again"}]}],
		"tools":[],"unknown_field":{"kept":"by the client's bytes"}}`))
	if e != nil {
		t.Fatal(e)
	}
	if r.Model != "claude-3" || r.MaxTokens != 1024 || !r.Stream || len(r.StopSequences) != 1 || r.Prompt() != "again" {
		t.Fatalf("got %+v, want claude-3, max_tokens 1024, stream, 1 stop sequence, prompt again", r)
	}
	if want := len(`"hi"`) + len(`"hello"`) + len(`[{"type":"text","text":"again"}]`) + len(`"be brief"`) + len(`[]`); r.PromptBytes != want {
		t.Errorf("PromptBytes %d, want %d", r.PromptBytes, want)
	}
	if r.EstimateTokens() != openai.EstimateTokens(r.PromptBytes) {
		t.Error("EstimateTokens differs from the chat estimate")
	}
	if got := string(r.AppendCountTokens(nil)); got != `{"input_tokens":14}` {
		t.Errorf(`count_tokens %s, want {"input_tokens":14}`, got)
	}

	r, e = ParseCountTokens([]byte(`{"model":"m","messages":[{"role":"user","content":"abcdefgh"}]}`))
	if e != nil || r.MaxTokens != 0 || string(r.AppendCountTokens(nil)) != `{"input_tokens":3}` {
		t.Fatalf(`count_tokens: %+v %v; want no max_tokens and {"input_tokens":3}`, r, e)
	}
	if _, e := ParseRequest([]byte(`{"model":"m","messages":[{"role":"user","content":"x"}]}`)); e == nil || e.Param != "max_tokens" {
		t.Fatalf("max_tokens missing: %v, want an error on max_tokens", e)
	}
}

func TestParseRequestErrors(t *testing.T) {
	const msgs = `"messages":[{"role":"user","content":"x"}]`
	tests := []struct{ body, param, code string }{
		{``, "", "invalid_json"},
		{`  `, "", "invalid_json"},
		{`{"model":`, "", "invalid_json"},
		{"{\"model\":\"\xff\"}", "", "invalid_json"},
		{`[1]`, "", "invalid_type"},
		{`"x"`, "", "invalid_type"},
		{`{"max_tokens":1,` + msgs + `}`, "model", "missing_required_parameter"},
		{`{"model":7,"max_tokens":1,` + msgs + `}`, "model", "invalid_type"},
		{`{"model":"","max_tokens":1,` + msgs + `}`, "model", "invalid_type"},
		{`{"model":"m","max_tokens":1}`, "messages", "missing_required_parameter"},
		{`{"model":"m","max_tokens":1,"messages":{}}`, "messages", "invalid_type"},
		{`{"model":"m","max_tokens":1,"messages":[]}`, "messages", "empty_array"},
		{`{"model":"m","max_tokens":1,"messages":["hi"]}`, "messages", "invalid_type"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"tool","content":"x"}]}`, "messages.0.role", "invalid_value"},
		{`{"model":"m","max_tokens":1,"messages":[{"content":"x"}]}`, "messages.0.role", "invalid_value"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"},{"role":"assistant"}]}`, "messages.1.content", "missing_required_parameter"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":5}]}`, "messages.0.content", "invalid_type"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":["x"]}]}`, "messages.0.content", "invalid_type"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"text":"x"}]}]}`, "messages.0.content.0.type", "missing_required_parameter"},
		{`{"model":"m",` + msgs + `}`, "max_tokens", "missing_required_parameter"},
		{`{"model":"m","max_tokens":0,` + msgs + `}`, "max_tokens", "invalid_value"},
		{`{"model":"m","max_tokens":1.5,` + msgs + `}`, "max_tokens", "invalid_value"},
		{`{"model":"m","max_tokens":"9",` + msgs + `}`, "max_tokens", "invalid_value"},
		{`{"model":"m","max_tokens":1,"stream":"yes",` + msgs + `}`, "stream", "invalid_type"},
		{`{"model":"m","max_tokens":1,"system":5,` + msgs + `}`, "system", "invalid_type"},
		{`{"model":"m","max_tokens":1,"stop_sequences":"END",` + msgs + `}`, "stop_sequences", "invalid_type"},
		{`{"model":"m","max_tokens":1,"temperature":"hot",` + msgs + `}`, "temperature", "invalid_type"},
		{`{"model":"m","max_tokens":1,"top_k":true,` + msgs + `}`, "top_k", "invalid_type"},
		{`{"model":"m","max_tokens":1,"tools":{},` + msgs + `}`, "tools", "invalid_type"},
		// One reading: a name twice (escapes decoded) or a read name in
		// another case, which encoding/json would take for it, is refused.
		{`{"model":"secret","Model":"pub","max_tokens":1,` + msgs + `}`, "Model", "unknown_parameter"},
		{`{"model":"m","max_tokens":4000,"MAX_TOKENS":1,` + msgs + `}`, "MAX_TOKENS", "unknown_parameter"},
		{`{"model":"a","model":"b","max_tokens":1,` + msgs + `}`, "model", "duplicate_key"},
		{`{"model":"a","mod\u0065l":"b","max_tokens":1,` + msgs + `}`, "model", "duplicate_key"},
		{`{"model":"m","max_tokens":1,"stream":false,"stream":true,` + msgs + `}`, "stream", "duplicate_key"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"user","ROLE":"assistant","content":"x"}]}`, "messages.0.ROLE", "unknown_parameter"},
		{`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}]}`, "messages.0.content.0.text", "duplicate_key"},
	}
	for _, tt := range tests {
		_, e := ParseRequest([]byte(tt.body))
		if e == nil {
			t.Errorf("%.80s: accepted", tt.body)
			continue
		}
		if e.Status != http.StatusBadRequest || e.Type != openai.TypeInvalidRequest || e.Param != tt.param || e.Code != tt.code {
			t.Errorf("%.80s: got %d %s %q %s (%s), want 400 %s %q %s", tt.body, e.Status, e.Type, e.Param, e.Code, e.Message, openai.TypeInvalidRequest, tt.param, tt.code)
		}
		if tt.param != "" && !strings.HasPrefix(e.Message, tt.param+": ") {
			t.Errorf("%.80s: message %q does not name %s", tt.body, e.Message, tt.param)
		}
	}
}

// TestChatBody is the golden table of the request translation.
func TestChatBody(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"minimal", `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`,
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`},
		{"system string, sampling, stop, user, stream", `{"model":"m","max_tokens":10,"system":"be <brief> & kind","temperature":0.5,"top_p":0.9,"top_k":40,
			"stop_sequences":["END","###"],"metadata":{"user_id":"u-42"},"stream":true,"thinking":{"type":"enabled","budget_tokens":2000},
			"messages":[{"role":"user","content":"hi"}]}`,
			`{"model":"m","messages":[{"role":"system","content":"be <brief> & kind"},{"role":"user","content":"hi"}],"max_tokens":10,
			"stop":["END","###"],"temperature":0.5,"top_p":0.9,"top_k":40,"user":"u-42","stream":true,"stream_options":{"include_usage":true}}`},
		{"system blocks", `{"model":"m","max_tokens":1,"system":[{"type":"text","text":"one","cache_control":{"type":"ephemeral"}},{"type":"text","text":"two"}],
			"messages":[{"role":"user","content":"hi"}],"metadata":{}}`,
			`{"model":"m","messages":[{"role":"system","content":"one\ntwo"},{"role":"user","content":"hi"}],"max_tokens":1}`},
		{"text blocks joined, thinking dropped", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
			{"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"c"}]}]}`,
			`{"model":"m","messages":[{"role":"user","content":"a\nb"},{"role":"assistant","content":"c"}],"max_tokens":1}`},
		{"images and documents", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[
			{"type":"text","text":"look"},
			{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
			{"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"}},
			{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="},"title":"report.pdf"},
			{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi1="}},
			{"type":"document","source":{"type":"text","media_type":"text/plain","data":"plain doc"}},
			{"type":"document","source":{"type":"content","content":[{"type":"text","text":"c1"},{"type":"text","text":"c2"}]}}]}]}`,
			`{"model":"m","messages":[{"role":"user","content":[
			{"type":"text","text":"look"},
			{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
			{"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}},
			{"type":"file","file":{"filename":"report.pdf","file_data":"data:application/pdf;base64,JVBERi0="}},
			{"type":"file","file":{"filename":"document.pdf","file_data":"data:application/pdf;base64,JVBERi1="}},
			{"type":"text","text":"plain doc"},
			{"type":"text","text":"c1\nc2"}]}],"max_tokens":1}`},
		{"tool use and results", `{"model":"m","max_tokens":1,"messages":[
			{"role":"user","content":"weather?"},
			{"role":"assistant","content":[{"type":"text","text":"checking"},
				{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}},
				{"type":"tool_use","id":"toolu_2","name":"now","input":{}}]},
			{"role":"user","content":[
				{"type":"tool_result","tool_use_id":"toolu_1","content":"18C"},
				{"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"noon"},{"type":"text","text":"UTC"},
					{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/"}}],"is_error":false},
				{"type":"tool_result","tool_use_id":"toolu_3"},
				{"type":"text","text":"thanks"}]}]}`,
			`{"model":"m","messages":[{"role":"user","content":"weather?"},
			{"role":"assistant","content":"checking","tool_calls":[
				{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
				{"id":"toolu_2","type":"function","function":{"name":"now","arguments":"{}"}}]},
			{"role":"tool","tool_call_id":"toolu_1","content":"18C"},
			{"role":"tool","tool_call_id":"toolu_2","content":"noon\nUTC"},
			{"role":"tool","tool_call_id":"toolu_3","content":""},
			{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/"}}]},
			{"role":"user","content":"thanks"}],"max_tokens":1}`},
		{"tool use only", `{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":[1,"<"]}}]}]}`,
			`{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":[1,\"<\"]}"}}]}],"max_tokens":1}`},
		{"tools and auto", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],
			"tools":[{"name":"get_weather","description":"Weather now","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}},
				{"type":"custom","name":"noop","input_schema":{"type":"object"}}],
			"tool_choice":{"type":"auto"}}`,
			`{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1,
			"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
				{"type":"function","function":{"name":"noop","parameters":{"type":"object"}}}],
			"tool_choice":"auto"}`},
		{"tool_choice any", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"any","disable_parallel_tool_use":true}}`,
			`{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1,"tool_choice":"required","parallel_tool_calls":false}`},
		{"tool_choice tool", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"tool","name":"get_weather"}}`,
			`{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1,"tool_choice":{"type":"function","function":{"name":"get_weather"}}}`},
		{"tool_choice none", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"none"}}`,
			`{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1,"tool_choice":"none"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, e := ParseRequest([]byte(tt.in))
			if e != nil {
				t.Fatal(e)
			}
			out, e := r.ChatBody()
			if e != nil {
				t.Fatal(e)
			}
			if !jsonEqual(out, []byte(tt.want)) {
				t.Errorf("got  %s\nwant %s", out, compact(tt.want))
			}
			if _, e := openai.ParseChatRequest(out); e != nil {
				t.Errorf("the chat request is refused by the chat route's own validation: %v", e)
			}
		})
	}
}

func compact(s string) string {
	var v any
	if json.Unmarshal([]byte(s), &v) != nil {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestChatBodyErrors(t *testing.T) {
	const user = `{"role":"user","content":"x"}`
	tests := []struct{ body, param string }{
		{`{"messages":[{"role":"user","content":[{"type":"server_tool_use","id":"x"}]}]}`, "messages.0.content.0.type"},
		{`{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://x/a.pdf"}}]}]}`, "messages.0.content.0.source.type"},
		{`{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}`, "messages.0.content.0.source.type"},
		{`{"messages":[{"role":"user","content":[{"type":"image"}]}]}`, "messages.0.content.0.source"},
		{`{"messages":[{"role":"user","content":[{"type":"text"}]}]}`, "messages.0.content.0.text"},
		{`{"messages":[{"role":"user","content":[{"type":"text","text":5}]}]}`, "messages.0.content"},
		{`{"messages":[{"role":"user","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}]}`, "messages.0.content.0.type"},
		{`{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","input":{}}]}]}`, "messages.0.content.0"},
		{`{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":[1]}]}]}`, "messages.0.content.0.input"},
		{`{"messages":[{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"t"}]}]}`, "messages.0.content.0.type"},
		{`{"messages":[{"role":"user","content":[{"type":"tool_result","content":"x"}]}]}`, "messages.0.content.0.tool_use_id"},
		{`{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"video"}]}]}]}`, "messages.0.content.0.content.0.type"},
		{`{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"x"}]}]}`, "messages"},
		{`{"system":[{"type":"image"}],"messages":[` + user + `]}`, "system.0"},
		{`{"messages":[` + user + `,{"role":"system","content":[{"type":"image","source":{"type":"url","url":"https://x/a.png"}}]}]}`, "messages.1.content.0"},
		{`{"system":[1],"messages":[` + user + `]}`, "system"},
		{`{"metadata":[],"messages":[` + user + `]}`, "metadata"},
		{`{"tools":[{"type":"web_search_20250305","name":"web_search"}],"messages":[` + user + `]}`, "tools.0.type"},
		{`{"tools":[{"input_schema":{}}],"messages":[` + user + `]}`, "tools.0.name"},
		{`{"tools":[{"name":"f"}],"messages":[` + user + `]}`, "tools.0.input_schema"},
		{`{"tools":[1],"messages":[` + user + `]}`, "tools"},
		{`{"tool_choice":"auto","messages":[` + user + `]}`, "tool_choice"},
		{`{"tool_choice":{"type":"sometimes"},"messages":[` + user + `]}`, "tool_choice.type"},
		{`{"tool_choice":{"type":"tool"},"messages":[` + user + `]}`, "tool_choice.name"},
	}
	for _, tt := range tests {
		body := `{"model":"m","max_tokens":1,` + tt.body[1:]
		r, e := ParseRequest([]byte(body))
		if e != nil {
			t.Errorf("%.90s: refused by ParseRequest: %v", tt.body, e)
			continue
		}
		_, e = r.ChatBody()
		if e == nil {
			t.Errorf("%.90s: translated", tt.body)
			continue
		}
		if e.Status != http.StatusBadRequest || e.Param != tt.param || !strings.HasPrefix(e.Message, tt.param+": ") {
			t.Errorf("%.90s: got %d %q %q, want 400 %q, the message starting with it", tt.body, e.Status, e.Param, e.Message, tt.param)
		}
	}
}

// FuzzRequest checks that ParseRequest and ChatBody never panic, that
// what they accept translates to a chat request the chat route accepts,
// with the model, output budget and streaming the client asked for, and
// that what ParseRequest accepts is a JSON object.
func FuzzRequest(f *testing.F) {
	f.Add(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)
	f.Add(`{"model":"m","max_tokens":5,"stream":true,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="}}]},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"x":1}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"r"}]}]}],"tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"any"},"stop_sequences":["x"],"metadata":{"user_id":"u"}}`)
	f.Add(`{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t"}]}]}`)
	f.Add(`{"model":"\u006d","max_tokens":1e2,"messages":[{"role":"user","content":[]}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		r, e := ParseRequest([]byte(body))
		if e != nil {
			if e.Status != http.StatusBadRequest || e.Message == "" {
				t.Fatalf("bad error %+v, want 400 with a message", e)
			}
			return
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal([]byte(body), &obj) != nil || r.Model == "" || r.MaxTokens < 1 {
			t.Fatalf("accepted %q as %+v, want only a JSON object with a model and max_tokens of at least 1", body, r)
		}
		out, e := r.ChatBody()
		if e != nil {
			if e.Status != http.StatusBadRequest || !strings.HasPrefix(e.Message, e.Param+": ") {
				t.Fatalf("bad error %+v, want 400 with a message starting with its param", e)
			}
			return
		}
		chat, ce := openai.ParseChatRequest(out)
		if ce != nil {
			t.Fatalf("translated %q into %s, which the chat route refuses: %v", body, out, ce)
		}
		var got struct {
			MaxTokens int64 `json:"max_tokens"`
		}
		_ = json.Unmarshal(out, &got)
		if chat.Model != r.Model || chat.Stream != r.Stream || chat.IncludeUsage != r.Stream || got.MaxTokens != r.MaxTokens {
			t.Fatalf("translated %q into %s, want the model, stream, usage and max_tokens kept", body, out)
		}
	})
}

// Claude Code sends instructions mid-conversation as a message with role
// "system"; chat templates take one system message, first. System
// messages before the conversation join the leading one; a later one
// joins the user message next to it, earlier messages untouched.
func TestChatBodySystemMessage(t *testing.T) {
	const tool = `{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},` +
		`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"42"}]}`
	tests := []struct{ messages, want string }{
		{`{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"system","content":[{"type":"text","text":"now in French"}]}`,
			"[{system be brief} {user hi\n\nnow in French}]"},
		{`{"role":"system","content":"first"},{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"system","content":"later"},{"role":"user","content":"and?"}`,
			"[{system be brief\n\nfirst} {user hi} {assistant yo} {user later\n\nand?}]"},
		{`{"role":"user","content":"hi"},` + tool + `,{"role":"system","content":"after the tool"}`,
			"[{system be brief} {user hi} {assistant <nil>} {tool 42} {user after the tool}]"},
		{`{"role":"user","content":[{"type":"text","text":"see"},{"type":"image","source":{"type":"url","url":"https://x/a.png"}}]},{"role":"system","content":"reminder"}`,
			"[{system be brief} {user [map[text:see type:text] map[image_url:map[url:https://x/a.png] type:image_url] map[text:reminder type:text]]}]"},
	}
	for _, tt := range tests {
		r, e := ParseRequest([]byte(`{"model":"m","max_tokens":5,"system":"be brief","messages":[` + tt.messages + `]}`))
		if e != nil {
			t.Fatal(e)
		}
		body, e := r.ChatBody()
		if e != nil {
			t.Fatal(e)
		}
		var chat struct {
			Messages []struct {
				Role    string `json:"role"`
				Content any    `json:"content"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(body, &chat); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(chat.Messages); got != tt.want {
			t.Errorf("%s:\nmessages %q\nwant     %q", tt.messages, got, tt.want)
		}
	}
}
