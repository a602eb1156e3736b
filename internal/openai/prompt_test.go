package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/routing"
)

// promptBodies are, by path, requests of a conversation of turns
// (strings a user and an assistant said, in turn) as a client sends
// them to each route: the request of its next turn repeats this one's.
var promptBodies = map[string]func(system string, turns []string) []byte{
	"/chat/completions": func(system string, turns []string) []byte {
		msgs := []map[string]string{{"role": "system", "content": system}}
		for i, t := range turns {
			msgs = append(msgs, map[string]string{"role": [2]string{"user", "assistant"}[i%2], "content": t})
		}
		return marshal(map[string]any{"model": "m", "stream": true, "messages": msgs, "tools": []any{map[string]any{"type": "function", "function": map[string]string{"name": "f"}}}})
	},
	"/completions": func(system string, turns []string) []byte {
		prompt := system
		for _, t := range turns {
			prompt += "\n" + t
		}
		return marshal(map[string]any{"model": "m", "max_tokens": 5, "prompt": prompt})
	},
	"/responses": func(system string, turns []string) []byte {
		var input []map[string]string
		for i, t := range turns {
			input = append(input, map[string]string{"role": [2]string{"user", "assistant"}[i%2], "content": t})
		}
		return marshal(map[string]any{"model": "m", "instructions": system, "input": input})
	},
	"/messages": func(system string, turns []string) []byte {
		var msgs []map[string]string
		for i, t := range turns {
			msgs = append(msgs, map[string]string{"role": [2]string{"user", "assistant"}[i%2], "content": t})
		}
		return marshal(map[string]any{"model": "m", "max_tokens": 5, "system": system, "messages": msgs})
	},
}

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestPrompt(t *testing.T) {
	body := []byte(`{"messages":[{"role":"user","content":"hi"}],"stream":true,"model":"m","tools":[{"type":"function"}],"temperature":0}`)
	got := Prompt(nil, "/chat/completions", body)
	want := []string{`"m"`, `[{"type":"function"}]`, `[{"role":"user","content":"hi"}]`}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Fatalf("chat prompt %q, want %q: model, tools, messages in that order, whatever the body's order", got, want)
	}
	if got := Prompt(nil, "/embeddings", []byte(`{"model":"m","input":"x"}`)); len(got) != 0 {
		t.Fatalf("embeddings prompt %q, want none", got)
	}
	if got := Prompt(nil, "/messages/count_tokens", []byte(`{"model":"m","messages":[]}`)); len(got) != 0 {
		t.Fatalf("count_tokens prompt %q, want none", got)
	}
	// Members that do not change what the backend computes (stream,
	// temperature) do not change the prompt.
	other := []byte(`{"model":"m","temperature":1,"tools":[{"type":"function"}],"messages":[{"role":"user","content":"hi"}]}`)
	if a, b := bytes.Join(Prompt(nil, "/chat/completions", body), nil), bytes.Join(Prompt(nil, "/chat/completions", other), nil); !bytes.Equal(a, b) {
		t.Fatalf("prompts %s and %s differ, want the same", a, b)
	}
}

// FuzzPrompt: for every route, the next turn of a conversation shares
// the chain of hashes of this turn's prompt, all but its last partial
// block; and Prompt returns parts of any JSON body.
func FuzzPrompt(f *testing.F) {
	f.Add("be brief", "hello", "hi there", "and now?", uint8(16), []byte(`{"model":"m","messages":[]}`))
	f.Add("", "ünïcode \u2028", "\"quoted\"", "\\", uint8(1), []byte(`{"model":`))
	f.Fuzz(func(t *testing.T, system, a, b, c string, size uint8, raw []byte) {
		bs := int(size%64) + 1
		for path, build := range promptBodies {
			short := bytes.Join(Prompt(nil, path, build(system, []string{a, b})), nil)
			long := bytes.Join(Prompt(nil, path, build(system, []string{a, b, c})), nil)
			// The short prompt's last byte closes what the long one
			// continues.
			if !bytes.HasPrefix(long, short[:len(short)-1]) {
				t.Fatalf("%s: the next turn's prompt %q does not begin with this one's %q", path, long, short)
			}
			shared := (len(short) - 1) / bs
			s, l := routing.Chain(nil, bs, short), routing.Chain(nil, bs, long)
			for i := range min(shared, len(s)) {
				if s[i] != l[i] {
					t.Fatalf("%s: block %d of %d shared ones hashes apart", path, i, shared)
				}
			}
		}
		if !json.Valid(raw) { // as every body the gateway sends is
			return
		}
		for path := range promptMembers {
			for _, part := range Prompt(nil, path, raw) {
				if len(part) > 0 && !bytes.Contains(raw, part) {
					t.Fatalf("%s: part %q is not of the body %q", path, part, raw)
				}
			}
		}
	})
}
