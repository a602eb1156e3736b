package chatgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// statefulBackend is a Responses backend that keeps what it makes: it
// continues any Response it made, whoever asks (it cannot tell callers
// apart: they all come with the gateway's key), and answers OpenAI's 400
// for an id it does not know.
func statefulBackend(t *testing.T) *backend {
	var mu sync.Mutex
	made := map[string]string{} // id -> its input
	n := 0
	return newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Input    string `json:"input"`
			Previous string `json:"previous_response_id"`
			Stream   bool   `json:"stream"`
		}
		_ = json.Unmarshal([]byte(upstreamBody(r)), &req)
		mu.Lock()
		history, known := made[req.Previous]
		n++
		id := fmt.Sprintf("resp_%d", n)
		made[id] = history + req.Input + ";"
		mu.Unlock()
		if req.Previous != "" && !known {
			writeJSON(w, 400, `{"error":{"message":"Previous response with id '`+req.Previous+`' not found.","type":"invalid_request_error","param":"previous_response_id","code":"previous_response_not_found"}}`)
			return
		}
		reply := `{"id":"` + id + `","object":"response","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"` +
			history + req.Input + `"}]}],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}`
		if !req.Stream {
			writeJSON(w, 200, reply)
			return
		}
		startSSE(w)
		for _, ev := range []string{
			`{"type":"response.created","sequence_number":0,"response":{"id":"` + id + `","object":"response","status":"in_progress","output":[]}}`,
			`{"type":"response.output_text.delta","sequence_number":1,"item_id":"m","output_index":0,"content_index":0,"delta":"x"}`,
			`{"type":"response.completed","sequence_number":2,"response":` + reply + `}`,
		} {
			var typ struct{ Type string }
			_ = json.Unmarshal([]byte(ev), &typ)
			_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ.Type, ev)
			w.(http.Flusher).Flush()
		}
	})
}

// idOf returns the Response id in a reply or stream.
func idOf(body string) string {
	m := regexp.MustCompile(`"id":"(resp_[0-9]+)"`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestResponsesOwned: a stored Response is its caller's. Another caller
// naming it as previous_response_id gets OpenAI's 400 for an unknown
// previous response, the same, request id aside, as for an id that
// never existed, and the backend never sees the request; its maker
// continues it, streamed or not. The caller is the key with auth, the
// limits' identity on an open gateway.
func TestResponsesOwned(t *testing.T) {
	be := statefulBackend(t)
	const alice, bob = "sk-cg-owner-alice-0123456789", "sk-cg-owner-bob-0123456789ab"
	for name, cfg := range map[string]struct {
		config  string
		callers [2][]string // header name and value of each caller
	}{
		"keys": {fmt.Sprintf("chat_gateway {\n backend %s {\n responses stateful\n }\n auth {\n key %s\n key %s\n }\n}", be.URL, keys.Hash(alice), keys.Hash(bob)),
			[2][]string{{"Authorization", "Bearer " + alice}, {"X-Api-Key", bob}}},
		"open, limits per team": {fmt.Sprintf("chat_gateway {\n backend %s {\n responses stateful\n }\n limits {\n requests 1000/1m\n per {http.request.header.X-Team}\n }\n}", be.URL),
			[2][]string{{"X-Team", "a"}, {"X-Team", "b"}}},
	} {
		t.Run(name, func(t *testing.T) {
			g := newGateway(t, cfg.config)
			post := func(caller int, body string) (int, string) {
				t.Helper()
				resp, got := g.postTo(t, "/v1/responses", body, cfg.callers[caller]...)
				return resp.StatusCode, got
			}
			for _, stream := range []string{"false", "true"} {
				status, made := post(0, `{"model":"m","input":"one","store":true,"stream":`+stream+`}`)
				id := idOf(made)
				if status != 200 || id == "" {
					t.Fatalf("stream %s: %d %s, want 200 with a response id", stream, status, made)
				}
				before := be.count()
				next := `{"model":"m","input":"two","previous_response_id":"` + id + `","stream":` + stream + `}`
				status, stolen := post(1, next)
				if e := apiError(t, stolen); status != 400 || e["code"] != "previous_response_not_found" || e["param"] != "previous_response_id" ||
					e["type"] != "invalid_request_error" || be.count() != before {
					t.Fatalf("another caller naming %s: %d %s (the backend got %d requests), want 400 invalid_request_error previous_response_not_found on previous_response_id, none at the backend", id, status, stolen, be.count()-before)
				}
				_, unknown := post(1, strings.Replace(next, id, "resp_404", 1))
				if strings.ReplaceAll(unknown, "resp_404", id) != stolen {
					t.Fatalf("refusals differ:\n%s\n%s\nwant the same but the id", stolen, unknown)
				}
				if status, got := post(0, next); status != 200 || !strings.Contains(got, "one;two") {
					t.Fatalf("its maker continuing %s: %d %s, want 200 with one;two", id, status, got)
				}
			}
			// conversation is state the gateway cannot tie to a caller.
			if status, got := post(0, `{"model":"m","input":"x","conversation":"conv_1"}`); status != 400 || apiError(t, got)["param"] != "conversation" {
				t.Fatalf("conversation: %d %s, want 400 on param conversation", status, got)
			}
		})
	}
}

// TestResponsesOwnedInRedis: with the limits in Redis, the record of who
// made a Response is there too, so every instance on that Redis refuses
// the others alike; a config reload keeps it.
func TestResponsesOwnedInRedis(t *testing.T) {
	srv := redistest.Start(t)
	be := statefulBackend(t)
	const alice, bob = "sk-cg-owner-alice-0123456789", "sk-cg-owner-bob-0123456789ab"
	config := fmt.Sprintf("chat_gateway {\n backend %s {\n responses stateful\n }\n auth {\n key %s {\n id alice\n }\n key %s {\n id bob\n }\n }\n limits {\n requests 1000/1m\n store redis %s {\n key_prefix owners-test:\n }\n }\n}",
		be.URL, keys.Hash(alice), keys.Hash(bob), srv.Addr)
	g := newGateway(t, config)
	resp, made := g.postTo(t, "/v1/responses", `{"model":"m","input":"one"}`, "Authorization", "Bearer "+alice)
	id := idOf(made)
	if resp.StatusCode != 200 || id == "" {
		t.Fatalf("%d %s, want 200 with a response id", resp.StatusCode, made)
	}
	other, err := limits.NewRedis(limits.RedisOptions{Address: srv.Addr, KeyPrefix: "owners-test:", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for owner, want := range map[string]bool{"key:alice": true, "key:bob": false} {
		if owns, err := other.Owns(context.Background(), id, owner); err != nil || owns != want {
			t.Fatalf("another instance: %s owns %s: %v %v, want %v and no error", owner, id, owns, err, want)
		}
	}
	g = newGateway(t, config) // reloaded
	next := `{"model":"m","input":"two","previous_response_id":"` + id + `"}`
	if resp, body := g.postTo(t, "/v1/responses", next, "Authorization", "Bearer "+bob); resp.StatusCode != 400 {
		t.Fatalf("bob after a reload: %d %s, want 400", resp.StatusCode, body)
	}
	if resp, body := g.postTo(t, "/v1/responses", next, "Authorization", "Bearer "+alice); resp.StatusCode != 200 {
		t.Fatalf("alice after a reload: %d %s, want 200", resp.StatusCode, body)
	}
}
