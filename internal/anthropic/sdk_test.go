package anthropic

import (
	"encoding/json"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
)

// sdkAccumulate feeds the events of out through the official SDK's
// decoder and accumulator, as anthropic.Client.Messages.NewStreaming's
// caller does, and returns the message it builds.
func sdkAccumulate(t testing.TB, out []byte) anthropic.Message {
	t.Helper()
	var msg anthropic.Message
	for _, ev := range parseEvents(t, out) {
		if ev.name == "ping" {
			continue
		}
		var u anthropic.MessageStreamEventUnion
		if err := json.Unmarshal(ev.data, &u); err != nil {
			t.Fatalf("SDK cannot decode %s: %v", ev.data, err)
		}
		if u.Type != ev.name {
			t.Fatalf("SDK reads type %q for event %s, want %q", u.Type, ev.name, ev.name)
		}
		if err := msg.Accumulate(u); err != nil {
			t.Fatalf("SDK accumulator refuses %s: %v", ev.data, err)
		}
	}
	return msg
}

// checkSDKMessage checks that a message the SDK decoded or accumulated
// has every field the gateway sends, with the values of m.
func checkSDKMessage(t testing.TB, got anthropic.Message, m *Message) {
	t.Helper()
	// The accumulator keeps the raw JSON up to date, not the fields'
	// metadata: read that back from the JSON.
	var re anthropic.Message
	if err := json.Unmarshal([]byte(got.RawJSON()), &re); err != nil {
		t.Fatalf("SDK message %s: %v", got.RawJSON(), err)
	}
	if !re.JSON.ID.Valid() || !re.JSON.Model.Valid() || !re.JSON.Content.Valid() || !re.JSON.StopReason.Valid() || !re.JSON.Usage.Valid() ||
		!re.Usage.JSON.InputTokens.Valid() || !re.Usage.JSON.OutputTokens.Valid() {
		t.Errorf("SDK message misses fields: %s", got.RawJSON())
	}
	if got.ID != m.ID || string(got.Model) != m.Model || got.Role != "assistant" || got.Type != "message" ||
		string(got.StopReason) != m.StopReason || got.StopSequence != m.StopSequence ||
		got.Usage.InputTokens != m.Usage.InputTokens || got.Usage.OutputTokens != m.Usage.OutputTokens {
		t.Errorf("SDK message %s, want %+v", got.RawJSON(), m)
	}
	if len(got.Content) != len(m.Content) {
		t.Fatalf("SDK message has %d blocks, want %d: %s", len(got.Content), len(m.Content), got.RawJSON())
	}
	for i, b := range m.Content {
		g := got.Content[i]
		switch {
		case g.Type != b.Type:
			t.Errorf("block %d: type %q, want %q", i, g.Type, b.Type)
		case b.Type == "text" && g.Text != b.Text:
			t.Errorf("block %d: text %q, want %q", i, g.Text, b.Text)
		case b.Type == "tool_use" && (g.ID != b.ID || g.Name != b.Name || !jsonEqual(g.Input, b.Input)):
			t.Errorf("block %d: tool %s %s %s, want %s %s %s", i, g.ID, g.Name, g.Input, b.ID, b.Name, b.Input)
		}
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

func TestStreamSDK(t *testing.T) {
	tests := []struct {
		name string
		want *Message
	}{
		{"vllm_tools", &Message{ID: "msg_1", Model: "claude-x", StopReason: StopToolUse, Usage: Usage{InputTokens: 212, OutputTokens: 48},
			Content: []Block{
				{Type: "text", Text: "Let me check the weather."},
				{Type: "tool_use", ID: "chatcmpl-tool-5f1c", Name: "get_weather", Input: json.RawMessage(`{"city":"Paris","unit":"°C"}`)},
				{Type: "tool_use", ID: "chatcmpl-tool-77ab", Name: "get_time", Input: json.RawMessage(`{"zone":"Europe/Paris","note":"line\nbreak \"quoted\" 😀"}`)},
			}}},
		{"llamacpp_tools", &Message{ID: "msg_1", Model: "claude-x", StopReason: StopToolUse, Usage: Usage{InputTokens: 120, OutputTokens: 31},
			Content: []Block{{Type: "tool_use", ID: "Kx3vQm", Name: "read_file", Input: json.RawMessage(`{"path":"/etc/hosts","lines":[1,2,3],"opts":{"raw":true}}`)}}}},
		{"text_only", &Message{ID: "msg_1", Model: "claude-x", StopReason: StopEndTurn, Usage: Usage{InputTokens: 100, OutputTokens: 9},
			Content: []Block{{Type: "text", Text: "Hello, \"world\"\n<b>&</b> é"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Stream{ReplyOptions: ReplyOptions{ID: "msg_1", Model: "claude-x", PromptBytes: 400}}
			checkSDKMessage(t, sdkAccumulate(t, translate(s, readChunks(t, tt.name+".jsonl"))), tt.want)
		})
	}
}

func TestEchoSDK(t *testing.T) {
	r, e := ParseRequest([]byte(`{"model":"claude-echo","max_tokens":64,"messages":[{"role":"user","content":"first"},{"role":"assistant","content":"ok"},
		{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image","source":{"type":"url","url":"http://x/y.png"}},{"type":"text","text":"world <&>"}]}]}`))
	if e != nil {
		t.Fatal(e)
	}
	m := Echo(r, "req-1")
	if len(m.Content) != 1 || m.Content[0].Text != "Echo: hello\nworld <&>" || m.StopReason != StopEndTurn || m.Model != "claude-echo" {
		t.Fatalf(`echo %+v, want one block "Echo: hello\nworld <&>", end_turn, model claude-echo`, m)
	}
	var got anthropic.Message
	if err := json.Unmarshal(m.AppendJSON(nil), &got); err != nil {
		t.Fatal(err)
	}
	checkSDKMessage(t, got, m)
	checkSDKMessage(t, sdkAccumulate(t, AppendEvents(nil, m)), m)
	if _, err := checkStream(parseEvents(t, AppendEvents(nil, m))); err != nil {
		t.Error(err)
	}
}
