package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The simulated replica computes what its cache lacks: all of a new
// prompt, none of one repeated but its last partial block, only the
// added turns of a longer one; a prompt evicted by others is computed
// again.
func TestSimReplicaCache(t *testing.T) {
	r, err := startSimReplica(simConfig{Slots: 2, Prefill: time.Microsecond, Decode: time.Microsecond, CacheTokens: 1024, BlockTokens: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	send := func(msgs ...string) (sent, computed int64) {
		t.Helper()
		var m []map[string]string
		for i, text := range msgs {
			m = append(m, map[string]string{"role": [2]string{"user", "assistant"}[i%2], "content": text})
		}
		body, _ := json.Marshal(map[string]any{"messages": m, "max_tokens": 3, "stream": true})
		s0, c0 := r.sent.Load(), r.computed.Load()
		resp, err := http.Post(r.url+"/v1/chat/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(out), `"prompt_tokens"`) || !strings.HasSuffix(string(out), "data: [DONE]\n\n") {
			t.Fatalf("reply %q, want a stream ending with usage and [DONE]", out)
		}
		return r.sent.Load() - s0, r.computed.Load() - c0
	}
	doc := strings.Repeat("a document of many words. ", 80) // ~2 KB, 520 tokens
	if sent, computed := send(doc); computed != sent {
		t.Fatalf("a new prompt: computed %d of %d tokens, want all", computed, sent)
	}
	if sent, computed := send(doc); computed >= 16 || sent < 500 {
		t.Fatalf("the same prompt again: computed %d of %d tokens, want less than a block", computed, sent)
	}
	if sent, computed := send(doc, "an answer", "a question of a few words"); computed >= 40 || sent < 500 {
		t.Fatalf("a next turn: computed %d of %d tokens, want only the new turns", computed, sent)
	}
	for i := range 4 { // 4 other documents: past the cache's 1,024 tokens
		send(strings.Repeat(string(rune('b'+i))+" other words ", 170))
	}
	if sent, computed := send(doc); computed != sent {
		t.Fatalf("an evicted prompt: computed %d of %d tokens, want all", computed, sent)
	}
}
