package anthropic

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzNativeMessages feeds a native backend's events and replies to
// what reads them: no panic; an event that is accepted is relayed as one
// SSE event under its name with its data, and a reply that is accepted
// has the usage it declares.
func FuzzNativeMessages(f *testing.F) {
	f.Add("message_start", `{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":21,"output_tokens":1}}}`)
	f.Add("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello"}}`)
	f.Add("message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}`)
	f.Add("message_stop", `{"type":"message_stop"}`)
	f.Add("", `{"type":"message_delta","usage":{"input_tokens":5,"output_tokens":-1}}`)
	f.Add("error", `{"type":"error","error":{"type":"overloaded_error","message":"x"}}`)
	f.Add("message", `{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":21,"output_tokens":3}}`)
	f.Add("content_block_delta", "{\"delta\":{\"text\":\"a\nb\"}}")
	f.Fuzz(func(t *testing.T, name, data string) {
		s := &nativeMessagesStream{m: &Endpoint{}}
		out, err := s.Event(nil, []byte(name), []byte(data))
		switch {
		case err != nil:
			if len(out) != 0 {
				t.Fatalf("output %q with error %v, want none", out, err)
			}
		case !json.Valid([]byte(data)):
			t.Fatalf("relayed invalid JSON %q", data)
		default:
			typ := name
			if typ == "" {
				var ev struct{ Type string }
				_ = json.Unmarshal([]byte(data), &ev)
				typ = ev.Type
			}
			if typ != "" && !strings.HasPrefix(string(out), "event: "+typ+"\n") || !strings.HasSuffix(string(out), "\n\n") ||
				!strings.Contains(string(out), "data: ") {
				t.Fatalf("event %q %q relayed as %q, want one SSE event under its name with its data", name, data, out)
			}
		}
		if msg, err := parseMessage([]byte(data)); err == nil {
			var n nativeMessage
			_ = json.Unmarshal([]byte(data), &n)
			if n.Usage.OutputTokens != nil && msg.Usage.OutputTokens != *n.Usage.OutputTokens {
				t.Fatalf("usage %+v from %s, want output tokens %d", msg.Usage, data, *n.Usage.OutputTokens)
			}
		}
	})
}
