package anthropic

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/routing"
)

// FuzzTranslatedPrompt: a Messages conversation translated to chat
// completions keeps its prompt's prefix from one turn to the next, as
// the backend sees it, so prefix_affinity sends the next turn where
// this one went; so does the Messages body a native backend gets.
func FuzzTranslatedPrompt(f *testing.F) {
	f.Add("be brief", "hello", "hi there", "and now?", uint8(16), false)
	f.Add("", "ünïcode \u2028", "\"quoted\"", "\\", uint8(1), true)
	f.Fuzz(func(t *testing.T, system, a, b, c string, size uint8, blocks bool) {
		bs := int(size%64) + 1
		body := func(turns ...string) []byte {
			var msgs []map[string]any
			for i, text := range turns {
				var content any = text
				if blocks {
					content = []map[string]string{{"type": "text", "text": text}}
				}
				msgs = append(msgs, map[string]any{"role": [2]string{"user", "assistant"}[i%2], "content": content})
			}
			out, _ := json.Marshal(map[string]any{"model": "m", "max_tokens": 5, "system": system, "messages": msgs,
				"tools": []map[string]any{{"name": "f", "input_schema": map[string]string{"type": "object"}}}})
			return out
		}
		prompt := func(turns ...string) (native, translated []byte, ok bool) {
			raw := body(turns...)
			r, e := ParseRequest(raw)
			if e != nil {
				return nil, nil, false
			}
			chat, e := r.ChatBody()
			if e != nil {
				return nil, nil, false
			}
			return bytes.Join(openai.Prompt(nil, "/messages", raw), nil), bytes.Join(openai.Prompt(nil, "/chat/completions", chat), nil), true
		}
		shortN, shortT, ok1 := prompt(a, b)
		longN, longT, ok2 := prompt(a, b, c)
		if !ok1 || !ok2 {
			return // refused: empty text, say
		}
		for _, p := range []struct {
			route       string
			short, long []byte
		}{{"native", shortN, longN}, {"translated", shortT, longT}} {
			if !bytes.HasPrefix(p.long, p.short[:len(p.short)-1]) {
				t.Fatalf("%s: the next turn's prompt %q does not begin with this one's %q", p.route, p.long, p.short)
			}
			s, l := routing.Chain(nil, bs, p.short), routing.Chain(nil, bs, p.long)
			for i := range min((len(p.short)-1)/bs, len(s)) {
				if s[i] != l[i] {
					t.Fatalf("%s: block %d hashes apart", p.route, i)
				}
			}
		}
	})
}
