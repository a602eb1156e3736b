package chatgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/redis/go-redis/v9"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// llm is a fake backend that answers each request with a reply (a
// stream when asked) naming how many it has answered, so that a reply
// from the cache shows as an earlier one; usage of 30 + 50 tokens.
type llm struct {
	*backend
	calls atomic.Int64
	delay time.Duration // before answering
	cut   atomic.Bool   // cut the next stream after its first content
}

func newLLM(t *testing.T) *llm {
	l := &llm{}
	l.backend = newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n := l.calls.Add(1)
		time.Sleep(l.delay)
		body := upstreamBody(r)
		if !strings.Contains(body, `"stream":true`) {
			writeJSON(w, 200, fmt.Sprintf(`{"id":"up-%d","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"answer %d"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":50,"total_tokens":80}}`, n, n))
			return
		}
		startSSE(w)
		sseEvent(w, `{"id":"up","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}`)
		sseEvent(w, fmt.Sprintf(`{"id":"up","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"content":"answer %d"}}]}`, n))
		if l.cut.CompareAndSwap(true, false) {
			panic(http.ErrAbortHandler)
		}
		time.Sleep(l.delay)
		sseEvent(w, `{"id":"up","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`)
		if strings.Contains(body, `"include_usage":true`) {
			sseEvent(w, `{"id":"up","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":50,"total_tokens":80}}`)
		}
		sseEvent(w, "[DONE]")
	})
	return l
}

const (
	greedy   = `{"model":"m","temperature":0,"messages":[{"role":"user","content":"What is 2+2?"}]}`
	sampled  = `{"model":"m","temperature":0.7,"messages":[{"role":"user","content":"Write a poem."}]}`
	streamed = `{"model":"m","temperature":0,"stream":true,"messages":[{"role":"user","content":"What is 2+2?"}]}`
)

// cached posts body and returns the reply's status, body and
// Cache-Status.
func cached(t *testing.T, g *gateway, body string, header ...string) (int, string, http.Header) {
	t.Helper()
	resp, got := g.post(t, body, header...)
	return resp.StatusCode, got, resp.Header
}

// A repeated greedy request is answered from the cache, with its own
// request id and Cache-Status and Age saying so; a request that differs
// in member order and whitespace only, or in stream_options, is the
// same request.
func TestCacheHit(t *testing.T) {
	l := newLLM(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache {\n ttl 1m\n }\n}", l.URL))
	status, first, h := cached(t, g, greedy, "X-Request-ID", "first")
	if status != 200 || !strings.Contains(first, "answer 1") || h.Get("Cache-Status") != "chat_gateway; fwd=miss" || h.Get("Server-Timing") == "" {
		t.Fatalf("first: %d %s, Cache-Status %q, Server-Timing %q, want 200 answer 1, a miss timed", status, first, h.Get("Cache-Status"), h.Get("Server-Timing"))
	}
	reordered := `{ "messages": [{"content":"What is 2+2?", "role":"user"}], "model":"m", "temperature": 0.0, "user": "u1" }`
	for i, body := range []string{greedy, reordered} {
		status, got, h := cached(t, g, body, "X-Request-ID", fmt.Sprint("again-", i))
		if status != 200 || !strings.Contains(got, "answer 1") || !strings.Contains(got, fmt.Sprintf(`"id":"again-%d"`, i)) {
			t.Fatalf("repeat %d: %d %s, want answer 1 from the cache with this request's id", i, status, got)
		}
		if cs := h.Get("Cache-Status"); !strings.HasPrefix(cs, "chat_gateway; hit; ttl=") || h.Get("Age") == "" || h.Get("Server-Timing") != "" {
			t.Fatalf("repeat %d: Cache-Status %q, Age %q, Server-Timing %q, want a hit, an Age and no backend's timing", i, cs, h.Get("Age"), h.Get("Server-Timing"))
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Fatalf("the backend answered %d requests, want 1", n)
	}
	// Another model or another content is another request.
	status, got, _ := cached(t, g, strings.Replace(greedy, "2+2", "3+3", 1))
	if status != 200 || !strings.Contains(got, "answer 2") {
		t.Fatalf("other content: %s, want the backend's second answer", got)
	}
}

// Two client keys sending the same request each get their own miss; a
// key never gets a reply made for the other; scope shared is the
// explicit way to share.
func TestCacheScope(t *testing.T) {
	const bobKey = "sk-cg-bob-0123456789abcdefghijklmnopq"
	for _, tc := range []struct {
		scope string
		calls int64
	}{{"", 2}, {"scope shared", 1}} {
		l := newLLM(t)
		g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n auth {\n key %s {\n id alice\n }\n key %s {\n id bob\n }\n }\n cache {\n %s\n }\n}",
			l.URL, keys.Hash(aliceKey), keys.Hash(bobKey), tc.scope))
		_, a, _ := cached(t, g, greedy, "Authorization", "Bearer "+aliceKey)
		_, b, hb := cached(t, g, greedy, "Authorization", "Bearer "+bobKey)
		_, a2, ha := cached(t, g, greedy, "Authorization", "Bearer "+aliceKey)
		if n := l.calls.Load(); n != tc.calls {
			t.Fatalf("%q: the backend answered %d requests, want %d", tc.scope, n, tc.calls)
		}
		if tc.scope == "" && (strings.Contains(b, "answer 1") || !strings.Contains(a, "answer 1") || !strings.Contains(a2, "answer 1") ||
			!strings.Contains(hb.Get("Cache-Status"), "fwd=miss") || !strings.Contains(ha.Get("Cache-Status"), "hit")) {
			t.Fatalf("per key: alice %s, bob %s (%s), alice again %s (%s): want bob's own answer and alice's from the cache",
				a, b, hb.Get("Cache-Status"), a2, ha.Get("Cache-Status"))
		}
	}
}

// What is cached: greedy or seeded requests by default; a sampled one
// only when the client asks with max-age or the config says always.
// no-cache refreshes, no-store keeps the reply out, and a max-age older
// than the entry misses.
func TestCacheWhen(t *testing.T) {
	l := newLLM(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache\n}", l.URL))
	for range 3 {
		if _, _, h := cached(t, g, sampled); h.Get("Cache-Status") != "chat_gateway; fwd=bypass" {
			t.Fatalf("a sampled request: Cache-Status %q, want a bypass", h.Get("Cache-Status"))
		}
	}
	if n := l.calls.Load(); n != 3 {
		t.Fatalf("3 sampled requests reached the backend %d times, want 3", n)
	}
	seeded := strings.Replace(sampled, `"temperature":0.7`, `"seed":42`, 1)
	cached(t, g, seeded)
	if _, got, _ := cached(t, g, seeded); !strings.Contains(got, "answer 4") {
		t.Fatalf("a seeded request again: %s, want answer 4 from the cache", got)
	}
	cached(t, g, sampled, "Cache-Control", "max-age=60")
	if _, got, h := cached(t, g, sampled, "Cache-Control", "max-age=60"); !strings.Contains(got, "answer 5") || !strings.Contains(h.Get("Cache-Status"), "hit") {
		t.Fatalf("a sampled request with max-age again: %s (%s), want answer 5 from the cache", got, h.Get("Cache-Status"))
	}
	if _, got, h := cached(t, g, seeded, "Cache-Control", "no-cache"); !strings.Contains(got, "answer 6") || h.Get("Cache-Status") != "chat_gateway; fwd=request" {
		t.Fatalf("no-cache: %s (%s), want the backend's answer 6", got, h.Get("Cache-Status"))
	}
	if _, got, _ := cached(t, g, seeded); !strings.Contains(got, "answer 6") {
		t.Fatalf("after no-cache: %s, want its refreshed answer 6", got)
	}
	greedyNoStore := strings.Replace(greedy, "2+2", "4+4", 1)
	cached(t, g, greedyNoStore, "Cache-Control", "no-store")
	if _, got, _ := cached(t, g, greedyNoStore); !strings.Contains(got, "answer 8") {
		t.Fatalf("after no-store: %s, want the backend's answer 8", got)
	}
	time.Sleep(1100 * time.Millisecond) // the entry is now over a second old
	if _, got, _ := cached(t, g, greedyNoStore, "Cache-Control", "max-age=1"); !strings.Contains(got, "answer 9") {
		t.Fatalf("max-age=1 of an older entry: %s, want the backend's answer 9", got)
	}
}

// A stream is stored and replayed event by event in the shape a live
// one has: the role first, the content, the finish, the usage chunk only
// when this client asks, [DONE]. A JSON reply stored answers a stream
// too. A stream the backend cut is never stored.
func TestCacheStreams(t *testing.T) {
	l := newLLM(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache\n}", l.URL))
	_, live, _ := cached(t, g, streamed)
	withUsage := strings.Replace(streamed, `"stream":true`, `"stream":true,"stream_options":{"include_usage":true}`, 1)
	for _, body := range []string{streamed, withUsage} {
		status, got, h := cached(t, g, body, "X-Request-ID", "replay")
		ev := events(got)
		if status != 200 || !strings.Contains(h.Get("Cache-Status"), "hit") || h.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("replay: %d %s (%s), want a stream from the cache", status, got, h.Get("Cache-Status"))
		}
		usage := strings.Contains(got, `"usage":{`)
		if len(ev) < 3 || !strings.Contains(ev[0], `"role":"assistant"`) || !strings.Contains(got, `"content":"answer 1"`) ||
			!strings.Contains(got, `"finish_reason":"stop"`) || ev[len(ev)-1] != "[DONE]" || usage != (body == withUsage) || !strings.Contains(ev[0], `"id":"replay"`) {
			t.Fatalf("replayed events %q, want role, content, finish, usage only when asked, [DONE], with this request's id", ev)
		}
	}
	if ev := events(live); !strings.Contains(ev[0], `"role":"assistant"`) || ev[len(ev)-1] != "[DONE]" {
		t.Fatalf("the live stream %q, want the role first and [DONE] last", ev)
	}

	other := strings.Replace(greedy, "2+2", "5+5", 1)
	cached(t, g, other)
	if _, got, h := cached(t, g, strings.Replace(other, `"temperature":0`, `"temperature":0,"stream":true`, 1)); !strings.Contains(h.Get("Cache-Status"), "hit") || events(got)[len(events(got))-1] != "[DONE]" {
		t.Fatalf("a stream after a JSON reply: %s (%s), want a stream from the stored reply", got, h.Get("Cache-Status"))
	}

	cut := strings.Replace(streamed, "2+2", "6+6", 1)
	l.cut.Store(true)
	cached(t, g, cut)
	calls := l.calls.Load()
	if _, got, h := cached(t, g, cut); l.calls.Load() != calls+1 || strings.Contains(h.Get("Cache-Status"), "hit") {
		t.Fatalf("after a cut stream: %s (%s), want a miss: a cut stream is never stored", got, h.Get("Cache-Status"))
	}
}

// 100 identical requests arriving together make one backend call; every
// one gets the reply, a stream as it comes.
func TestCacheCollapses(t *testing.T) {
	l := newLLM(t)
	l.delay = 300 * time.Millisecond
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache\n}", l.URL))
	for _, body := range []string{greedy, strings.Replace(streamed, "2+2", "8+8", 1)} {
		before := l.calls.Load()
		var wg sync.WaitGroup
		var bad atomic.Int64
		var collapsed atomic.Int64
		for range 100 {
			wg.Go(func() {
				req := g.request(body)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					bad.Add(1)
					return
				}
				defer resp.Body.Close()
				got, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || !strings.Contains(string(got), "answer") {
					bad.Add(1)
				}
				if strings.Contains(resp.Header.Get("Cache-Status"), "collapsed") {
					collapsed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := l.calls.Load() - before; n != 1 || bad.Load() != 0 {
			t.Fatalf("%s: 100 together made %d backend calls and %d bad replies, want 1 and 0", body, n, bad.Load())
		}
		if collapsed.Load() == 0 {
			t.Fatalf("%s: no reply said collapsed", body)
		}
	}
}

// A reply from the cache consumes a request from the limits but no
// tokens: a tokens limit that fits one reply lets any number of hits
// through.
func TestCacheHitUsesNoTokens(t *testing.T) {
	l := newLLM(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache\n limits {\n tokens 100/1h\n default_max_tokens 20\n }\n}", l.URL))
	for i := range 5 {
		if status, got, _ := cached(t, g, greedy); status != 200 {
			t.Fatalf("request %d: %d %s, want 200: hits use no tokens", i, status, got)
		}
	}
	if status, _, _ := cached(t, g, strings.Replace(greedy, "2+2", "7+7", 1)); status != 429 {
		t.Fatalf("a new request after 80 of 100 tokens used: %d, want 429 (its reservation does not fit)", status)
	}
}

// A backend that quotes its key: the reply is redacted for the client
// and never stored.
func TestCacheNeverKeepsUpstreamKey(t *testing.T) {
	const secret = "sk-upstream-secret-0123456789"
	var calls atomic.Int64
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		writeJSON(w, 200, `{"choices":[{"index":0,"message":{"role":"assistant","content":"my key is `+secret+`"},"finish_reason":"stop"}]}`)
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n api_key %s\n }\n cache\n}", be.URL, secret))
	for range 2 {
		if _, got, _ := cached(t, g, greedy); strings.Contains(got, secret) {
			t.Fatalf("reply %s carries the upstream key", got)
		}
	}
	if calls.Load() != 2 {
		t.Fatalf("the backend answered %d requests, want 2: a reply with the key is not stored", calls.Load())
	}
}

// The Messages route, translated for a chat backend and to a native
// one: a greedy request is answered from the cache, streams replayed as
// the events Anthropic's SDK accumulates into the same message; the
// OpenAI SDK's accumulator takes a replayed chat stream likewise.
func TestCacheSDKs(t *testing.T) {
	l := newLLM(t)
	var nativeCalls atomic.Int64
	native := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		nativeCalls.Add(1)
		if !strings.Contains(upstreamBody(r), `"stream":true`) {
			writeJSON(w, 200, nativeReply)
			return
		}
		startSSE(w)
		for _, ev := range nativeEvents {
			_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev[0], ev[1])
			w.(http.Flusher).Flush()
		}
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n models m\n }\n backend %s {\n models native-model\n messages native\n }\n cache\n}", l.URL, native.URL))
	client := anthropicClient(g, "client-key")
	for _, tc := range []struct {
		model string
		calls func() int64
		text  string
	}{{"m", l.calls.Load, "answer 1"}, {"native-model", nativeCalls.Load, "Native hello"}} {
		// The SDK sends no temperature: the client asks for caching.
		params, optIn := messageParams(tc.model, "What is 2+2?"), aoption.WithHeader("Cache-Control", "max-age=600")
		var live, replayed anthropic.Message
		for i, into := range []*anthropic.Message{&live, &replayed} {
			var resp *http.Response
			msg, err := accumulate(t, client, params, optIn, aoption.WithResponseInto(&resp))
			if err != nil {
				t.Fatalf("%s stream %d: %v", tc.model, i, err)
			}
			*into = msg
			if i == 1 && !strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
				t.Fatalf("%s: the second stream's Cache-Status %q, want a hit", tc.model, resp.Header.Get("Cache-Status"))
			}
		}
		if len(replayed.Content) != 1 || replayed.Content[0].Text != tc.text || replayed.Content[0].Text != live.Content[0].Text ||
			replayed.StopReason != live.StopReason || replayed.Usage.OutputTokens != live.Usage.OutputTokens {
			t.Fatalf("%s: replayed %s, live %s: want the same message", tc.model, replayed.RawJSON(), live.RawJSON())
		}
		// A JSON reply is stored apart from a stream: the first is a miss.
		var texts []string
		for range 2 {
			msg, err := client.Messages.New(context.Background(), params, optIn)
			if err != nil || len(msg.Content) != 1 {
				t.Fatalf("%s: %v, %v, want one block", tc.model, msg, err)
			}
			texts = append(texts, msg.Content[0].Text)
		}
		if n := tc.calls(); n != 2 || texts[0] != texts[1] {
			t.Fatalf("%s: the backend answered %d requests and the replies said %q, want 2 (one stream, one reply) and the second reply from the cache", tc.model, n, texts)
		}
	}

	oai := sdkClient(g)
	params := openai.ChatCompletionNewParams{Model: "m", Temperature: openai.Float(0), Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("And 3+3?")}}
	var accs [2]openai.ChatCompletionAccumulator
	for i := range accs {
		stream := oai.Chat.Completions.NewStreaming(context.Background(), params)
		for stream.Next() {
			if !accs[i].AddChunk(stream.Current()) {
				t.Fatalf("stream %d: the accumulator refused %s", i, stream.Current().RawJSON())
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if len(accs[1].Choices) != 1 || accs[1].Choices[0].Message.Content != accs[0].Choices[0].Message.Content || accs[1].Choices[0].FinishReason != "stop" {
		t.Fatalf("replayed %+v, live %+v: want the same completion", accs[1].Choices, accs[0].Choices)
	}
}

// Responses are cached only without stored state: a request that asks
// the backend to store it (store true, or by default on a backend that
// keeps Responses) is not.
func TestCacheResponses(t *testing.T) {
	var calls atomic.Int64
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		writeJSON(w, 200, fmt.Sprintf(`{"id":"resp_%d","object":"response","status":"completed","model":"m","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"answer %d"}]}],"usage":{"input_tokens":5,"output_tokens":5,"total_tokens":10}}`, n, n))
	})
	post := func(g *gateway, body string) (string, string) {
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1/responses", strings.NewReader(body))
		resp, got := do(t, req)
		return got, resp.Header.Get("Cache-Status")
	}
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache\n}", be.URL))
	const greedyResponse = `{"model":"m","temperature":0,"input":"What is 2+2?"}`
	post(g, greedyResponse)
	if got, cs := post(g, greedyResponse); !strings.Contains(got, "answer 1") || !strings.Contains(cs, "hit") {
		t.Fatalf("a greedy Response again: %s (%s), want answer 1 from the cache", got, cs)
	}
	stored := strings.Replace(greedyResponse, `"temperature":0`, `"temperature":0,"store":true`, 1)
	if _, cs := post(g, stored); cs != "chat_gateway; fwd=bypass" {
		t.Fatalf("store true: Cache-Status %q, want a bypass", cs)
	}
	g = newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n responses stateful\n }\n cache\n}", be.URL))
	if _, cs := post(g, greedyResponse); cs != "chat_gateway; fwd=bypass" {
		t.Fatalf("a backend that keeps Responses, store unset: Cache-Status %q, want a bypass", cs)
	}
	unstored := strings.Replace(greedyResponse, `"temperature":0`, `"temperature":0,"store":false`, 1)
	post(g, unstored)
	if got, cs := post(g, unstored); !strings.Contains(cs, "hit") {
		t.Fatalf("store false on a stateful backend again: %s (%s), want a hit", got, cs)
	}
}

// embedder is a fake embeddings backend: each input's vector is made
// of its text, so a reply shows which input each vector is for; it
// records the inputs it was sent.
type embedder struct {
	*backend
	mu     sync.Mutex
	inputs []string // every input it was sent, in order
}

func newEmbedder(t *testing.T) *embedder {
	e := &embedder{}
	e.backend = newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Input json.RawMessage `json:"input"`
		}
		_ = json.Unmarshal([]byte(upstreamBody(r)), &req)
		var inputs []string
		if json.Unmarshal(req.Input, &inputs) != nil {
			var one string
			_ = json.Unmarshal(req.Input, &one)
			inputs = []string{one}
		}
		e.mu.Lock()
		e.inputs = append(e.inputs, inputs...)
		e.mu.Unlock()
		var data []string
		for i, in := range inputs {
			data = append(data, fmt.Sprintf(`{"object":"embedding","index":%d,"embedding":%s}`, i, vectorOf(in)))
		}
		writeJSON(w, 200, fmt.Sprintf(`{"object":"list","data":[%s],"model":"e","usage":{"prompt_tokens":%d,"total_tokens":%d}}`,
			strings.Join(data, ","), 3*len(inputs), 3*len(inputs)))
	})
	return e
}

// vectorOf is the vector the embedder gives input.
func vectorOf(input string) string {
	return fmt.Sprintf("[%d.5,%d]", len(input), int(input[len(input)-1]))
}

func (e *embedder) sent() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.inputs...)
}

// An embeddings batch is split by what the cache holds: only the inputs
// it lacks reach the backend, the reply has every vector in the
// request's order, and its usage counts what the backend computed.
// 10,000 inputs of which 100 changed send 100.
func TestCacheEmbeddings(t *testing.T) {
	e := newEmbedder(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache {\n max_size 256MiB\n }\n}", e.URL))
	embed := func(inputs ...string) (map[string]any, http.Header) {
		t.Helper()
		in, _ := json.Marshal(inputs)
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1/embeddings", strings.NewReader(`{"model":"e","input":`+string(in)+`}`))
		resp, body := do(t, req)
		var out map[string]any
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &out) != nil {
			t.Fatalf("%d %s, want 200 and JSON", resp.StatusCode, body)
		}
		data := out["data"].([]any)
		if len(data) != len(inputs) {
			t.Fatalf("%d vectors for %d inputs", len(data), len(inputs))
		}
		for i, d := range data {
			item := d.(map[string]any)
			got, _ := json.Marshal(item["embedding"])
			if item["index"] != float64(i) || string(got) != vectorOf(inputs[i]) {
				t.Fatalf("vector %d: %v, want index %d and %s, the vector of %q", i, item, i, vectorOf(inputs[i]), inputs[i])
			}
		}
		return out, resp.Header
	}
	embed("alpha", "beta", "gamma")
	before := len(e.sent())
	out, h := embed("beta", "delta", "alpha", "epsilon")
	if sent := e.sent()[before:]; fmt.Sprint(sent) != "[delta epsilon]" {
		t.Fatalf("the backend was sent %v, want only [delta epsilon]: the others are cached", sent)
	}
	if usage := out["usage"].(map[string]any); usage["prompt_tokens"] != float64(6) || !strings.Contains(h.Get("Cache-Status"), `detail="2 of 4 inputs cached"`) {
		t.Fatalf("usage %v, Cache-Status %q: want the 6 tokens of the 2 inputs computed, and 2 of 4 cached", usage, h.Get("Cache-Status"))
	}
	before = len(e.sent())
	if _, h := embed("gamma", "delta"); len(e.sent()) != before || !strings.Contains(h.Get("Cache-Status"), "hit") {
		t.Fatalf("every input cached: the backend was sent %v, Cache-Status %q, want nothing sent and a hit", e.sent()[before:], h.Get("Cache-Status"))
	}

	docs := make([]string, 10000)
	for i := range docs {
		docs[i] = fmt.Sprintf("document %d", i)
	}
	embed(docs...)
	for i := 0; i < len(docs); i += 100 {
		docs[i] += " (edited)"
	}
	before = len(e.sent())
	embed(docs...)
	if n := len(e.sent()) - before; n != 100 {
		t.Fatalf("10,000 inputs of which 100 changed sent %d to the backend, want 100", n)
	}
}

// Two gateway processes on one redis-server share the cache: a reply
// one stored answers the other, per client key still, streams and
// embeddings included.
func TestCacheCluster(t *testing.T) {
	srv := redistest.Start(t)
	l, e := newLLM(t), newEmbedder(t)
	const bobKey = "sk-cg-bob-0123456789abcdefghijklmnopq"
	var gws []*gateway
	for range 2 {
		g, _ := startProcess(t, fmt.Sprintf(`chat_gateway {
	backend %s {
		models m
	}
	backend %s {
		models e
	}
	auth {
		key %s
		key %s
	}
	cache {
		store redis %s {
			timeout 1s
		}
	}
}`, l.URL, e.URL, keys.Hash(aliceKey), keys.Hash(bobKey), srv.Addr))
		gws = append(gws, g)
	}
	alice, bob := []string{"Authorization", "Bearer " + aliceKey}, []string{"Authorization", "Bearer " + bobKey}
	for _, body := range []string{greedy, strings.Replace(streamed, "2+2", "9+9", 1)} {
		_, first, _ := cached(t, gws[0], body, alice...)
		_, again, h := cached(t, gws[1], body, alice...)
		if !strings.Contains(h.Get("Cache-Status"), "hit") || !strings.Contains(again, "answer") || strings.Contains(first, "answer 2") != strings.Contains(again, "answer 2") {
			t.Fatalf("%s on the other gateway: %s (%s), want the first gateway's reply from Redis", body, again, h.Get("Cache-Status"))
		}
		if _, _, h := cached(t, gws[1], body, bob...); strings.Contains(h.Get("Cache-Status"), "hit") {
			t.Fatalf("%s from another key on the other gateway: %s, want a miss", body, h.Get("Cache-Status"))
		}
	}
	embed := func(g *gateway, inputs string) {
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1/embeddings", strings.NewReader(`{"model":"e","input":`+inputs+`}`))
		req.Header.Set(alice[0], alice[1])
		if resp, body := do(t, req); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	embed(gws[0], `["one","two"]`)
	before := len(e.sent())
	embed(gws[1], `["two","three","one"]`)
	if sent := e.sent()[before:]; fmt.Sprint(sent) != "[three]" {
		t.Fatalf("the other gateway sent %v to the backend, want [three]", sent)
	}
}

// A stored reply the gateway does not read as a reply (written by
// another version, or not by a gateway) is a miss, replaced by the
// backend's reply; never an error. An embeddings batch made of such
// vectors goes to the backend whole.
func TestCacheUnreadableEntry(t *testing.T) {
	srv := redistest.Start(t)
	l, e := newLLM(t), newEmbedder(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n models m\n }\n backend %s {\n models e\n }\n cache {\n store redis %s\n }\n}", l.URL, e.URL, srv.Addr))
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	// spoil replaces the body of every entry stored since the keys seen,
	// returning the keys now stored.
	spoil := func(seen map[string]bool, body string) map[string]bool {
		t.Helper()
		stored, err := rdb.Keys(ctx, "chat_gateway:cache:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		all := map[string]bool{}
		for _, k := range stored {
			all[k] = true
			if seen[k] {
				continue
			}
			v, err := rdb.Get(ctx, k).Bytes()
			if err != nil {
				t.Fatal(err)
			}
			header := 19 + int(v[17]) // version, times, the content type's length and the content type
			if err := rdb.Set(ctx, k, append(v[:header:header], body...), time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if len(all) == len(seen) {
			t.Fatalf("no entry stored since %v", seen)
		}
		return all
	}

	cached(t, g, greedy)
	seen := spoil(nil, `{"not":"a reply"}`)
	for i, body := range []string{streamed, greedy} { // a stream falls back on the JSON entry
		status, got, h := cached(t, g, body)
		if want := fmt.Sprint("answer ", i+2); status != 200 || !strings.Contains(got, want) || h.Get("Cache-Status") != "chat_gateway; fwd=miss" || h.Get("Age") != "" {
			t.Fatalf("%s over an unreadable entry: %d %s, Cache-Status %q, Age %q; want %s from the backend, a miss", body, status, got, h.Get("Cache-Status"), h.Get("Age"), want)
		}
	}
	if _, got, h := cached(t, g, greedy); !strings.Contains(got, "answer 3") || !strings.Contains(h.Get("Cache-Status"), "hit") {
		t.Fatalf("after the miss: %s (%s), want its reply, answer 3, from the cache", got, h.Get("Cache-Status"))
	}

	embed := func() (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1/embeddings", strings.NewReader(`{"model":"e","input":["one","two"]}`))
		return do(t, req)
	}
	embed()
	spoil(seen, `[1,`)
	resp, got := embed()
	if resp.StatusCode != 200 || !strings.Contains(got, vectorOf("two")) || resp.Header.Get("Cache-Status") != "chat_gateway; fwd=bypass" {
		t.Fatalf("embeddings over unreadable vectors: %d %s, Cache-Status %q; want the backend's vectors, bypassing the cache", resp.StatusCode, got, resp.Header.Get("Cache-Status"))
	}
	if sent := e.sent(); fmt.Sprint(sent) != "[one two one two]" {
		t.Fatalf("the backend was sent %v, want both inputs twice", sent)
	}
}

// A config reload keeps the memory store: a reply stored before it is
// served after it.
func TestCacheAcrossReloads(t *testing.T) {
	l := newLLM(t)
	config := "chat_gateway {\n backend %s\n cache {\n max_size 3MiB\n ttl %s\n }\n}"
	g := newGateway(t, fmt.Sprintf(config, l.URL, "10m"))
	cached(t, g, greedy)
	g = newGateway(t, fmt.Sprintf(config, l.URL, "20m")) // another config: a reload
	if _, got, h := cached(t, g, greedy); !strings.Contains(got, "answer 1") || !strings.Contains(h.Get("Cache-Status"), "hit") || l.calls.Load() != 1 {
		t.Fatalf("after a reload: %s (%s), %d backend calls, want answer 1 from the cache", got, h.Get("Cache-Status"), l.calls.Load())
	}
}

// openaiNodeVersion is the official OpenAI Node SDK TestCacheNodeSDK
// runs: the newest that supports Node 20, Debian's and this machine's.
const openaiNodeVersion = "6.30.1"

// TestCacheNodeSDK: the official OpenAI Node SDK's stream helper
// (chat.completions.stream, which checks each chunk as it folds it into
// a completion) accepts replayed streams, with the usage chunk only when
// the request asks for it. The SDK is installed with npm once into the
// user's cache directory; without node and npm the test is skipped
// (.ci/run installs them).
func TestCacheNodeSDK(t *testing.T) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: the Node SDK test needs Node and npm", tool)
		}
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = t.TempDir()
	}
	dir := filepath.Join(base, "chat-gateway-test", "openai-node-"+openaiNodeVersion)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err != nil {
		out, err := exec.Command("npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "openai@"+openaiNodeVersion).CombinedOutput()
		if err != nil {
			t.Fatalf("npm install openai@%s: %v\n%s", openaiNodeVersion, err, out)
		}
	}
	script := filepath.Join(dir, "replayed-streams.mjs")
	if err := os.WriteFile(script, []byte(`import OpenAI from 'openai';
const statuses = [];
const client = new OpenAI({
  baseURL: process.env.BASE_URL, apiKey: 'client-key', maxRetries: 0,
  fetch: async (url, init) => { const r = await fetch(url, init); statuses.push(r.headers.get('cache-status')); return r; },
});
const out = [];
for (const usage of [true, true, false]) {
  const params = { model: 'm', temperature: 0, messages: [{ role: 'user', content: 'And 3+3?' }] };
  if (usage) params.stream_options = { include_usage: true };
  const stream = client.chat.completions.stream(params);
  let usageChunks = 0;
  stream.on('chunk', (c) => { if (c.usage) usageChunks++; });
  const final = await stream.finalChatCompletion();
  out.push({ content: final.choices[0].message.content, role: final.choices[0].message.role, finish: final.choices[0].finish_reason, usageChunks, usage: final.usage ?? null });
}
console.log(JSON.stringify({ statuses, out }));
`), 0o600); err != nil {
		t.Fatal(err)
	}
	l := newLLM(t)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s\n cache\n}", l.URL))
	cmd := exec.Command("node", script)
	cmd.Env = append(os.Environ(), "BASE_URL="+g.URL+"/v1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s%s", err, out, stderr.String())
	}
	var got struct {
		Statuses []string
		Out      []struct {
			Content, Role, Finish string
			UsageChunks           int
			Usage                 *struct {
				TotalTokens int `json:"total_tokens"`
			}
		}
	}
	if err := json.Unmarshal(out, &got); err != nil || len(got.Out) != 3 || len(got.Statuses) != 3 {
		t.Fatalf("%s: %v", out, err)
	}
	if !strings.Contains(got.Statuses[0], "fwd=miss") || !strings.Contains(got.Statuses[1], "hit") || !strings.Contains(got.Statuses[2], "hit") || l.calls.Load() != 1 {
		t.Fatalf("Cache-Status %q, %d backend calls: want a miss, then two hits", got.Statuses, l.calls.Load())
	}
	for i, o := range got.Out {
		wantUsage := i < 2
		if o.Content != "answer 1" || o.Role != "assistant" || o.Finish != "stop" || (o.UsageChunks == 1) != wantUsage || (o.Usage != nil && o.Usage.TotalTokens == 80) != wantUsage {
			t.Errorf("stream %d: %+v, want answer 1 from the assistant, stop, usage (80 tokens) %v", i, o, wantUsage)
		}
	}
}
