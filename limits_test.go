package chatgateway

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
)

// teams numbers the identities team hands out.
var teams atomic.Int64

// team returns name made unique to this call: the memory store lives as
// long as the process, so a test run again (-count) or another test
// would otherwise find its counters.
func team(name string) string { return name + "-" + strconv.FormatInt(teams.Add(1), 10) }

// chatWith is a chat request body with a prompt of about n tokens (4
// bytes each) and the given extra members.
func chatWith(promptTokens int, extra string) string {
	return fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q}]%s}`, strings.Repeat("abcd", promptTokens), extra)
}

// rateHeaders returns the x-ratelimit-* headers of a reply for kind
// (requests or tokens), checking that reset parses as a Go duration.
func rateHeaders(t *testing.T, resp *http.Response, kind string) (limit, remaining int64, reset time.Duration) {
	t.Helper()
	var err error
	if limit, err = strconv.ParseInt(resp.Header.Get("X-Ratelimit-Limit-"+kind), 10, 64); err != nil {
		t.Fatalf("x-ratelimit-limit-%s: %v (headers %v), want an integer", kind, err, resp.Header)
	}
	if remaining, err = strconv.ParseInt(resp.Header.Get("X-Ratelimit-Remaining-"+kind), 10, 64); err != nil {
		t.Fatalf("x-ratelimit-remaining-%s: %v, want an integer", kind, err)
	}
	if reset, err = time.ParseDuration(resp.Header.Get("X-Ratelimit-Reset-" + kind)); err != nil {
		t.Fatalf("x-ratelimit-reset-%s: %v, want a duration", kind, err)
	}
	return limit, remaining, reset
}

// Headers on 200 (plain and stream) and on 429, in OpenAI's words.
func TestLimitsHeaders(t *testing.T) {
	blue := team("blue")
	red := team("red")
	g := newGateway(t, `chat_gateway {
		limits {
			requests 3/1m
			tokens 100000/1m
			per {http.request.header.X-Team}
		}
	}`)
	resp, body := g.post(t, chatWith(10, ""), "X-Team", blue)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, body)
	}
	if l, rem, reset := rateHeaders(t, resp, "Requests"); l != 3 || rem != 2 || reset <= 0 || reset > 20*time.Second {
		t.Fatalf("requests headers %d %d %s, want limit 3, remaining 2, reset in (0, 20s]", l, rem, reset)
	}
	// 11 prompt tokens (the estimate counts the content's quotes too) +
	// 1024 default max_tokens reserved.
	if l, rem, _ := rateHeaders(t, resp, "Tokens"); l != 100000 || rem != 100000-1035 {
		t.Fatalf("tokens headers %d %d, want limit 100000, remaining 98965", l, rem)
	}
	resp, body = g.post(t, chatWith(10, `,"stream":true,"max_tokens":50`), "X-Team", blue)
	if resp.StatusCode != 200 || !strings.Contains(body, "[DONE]") {
		t.Fatalf("%d %s, want 200 ending in [DONE]", resp.StatusCode, body)
	}
	if _, rem, _ := rateHeaders(t, resp, "Requests"); rem != 1 {
		t.Fatalf("stream: remaining requests %d, want 1", rem)
	}
	// Another identity has its own bucket.
	if resp, _ := g.post(t, chatWith(10, ""), "X-Team", red); resp.Header.Get("X-Ratelimit-Remaining-Requests") != "2" {
		t.Fatalf("red: %v, want 2 requests remaining", resp.Header)
	}
	g.post(t, chatWith(10, ""), "X-Team", blue)
	resp, body = g.post(t, chatWith(10, ""), "X-Team", blue)
	if resp.StatusCode != 429 {
		t.Fatalf("4th request: %d %s, want 429", resp.StatusCode, body)
	}
	e := apiError(t, body)
	msg, _ := e["message"].(string)
	if e["type"] != "rate_limit_error" || e["code"] != "rate_limit_exceeded" ||
		!strings.HasPrefix(msg, "Rate limit reached for "+blue+" on requests per 1m: Limit 3, Used 3, Requested 1. Please try again in ") {
		t.Fatalf("429 body %s, want rate_limit_error, rate_limit_exceeded and a requests per 1m message (limit 3, used 3, requested 1)", body)
	}
	retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	ms, err2 := strconv.Atoi(resp.Header.Get("Retry-After-Ms"))
	if err != nil || err2 != nil || retry < 1 || retry > 20 || ms > retry*1000 || ms <= (retry-1)*1000 {
		t.Fatalf("Retry-After %q, retry-after-ms %q, want 1 to 20 seconds and ms within its last second", resp.Header.Get("Retry-After"), resp.Header.Get("Retry-After-Ms"))
	}
	if _, rem, _ := rateHeaders(t, resp, "Requests"); rem != 0 {
		t.Fatalf("429: remaining %d, want 0", rem)
	}
}

// A prompt larger than the whole tokens limit can never pass: 429
// without Retry-After. A large max_tokens is only capped.
func TestLimitsTooLarge(t *testing.T) {
	a := team("a")
	b := team("b")
	g := newGateway(t, `chat_gateway {
		limits {
			tokens 1000/1m
			per {http.request.header.X-Team}
		}
	}`)
	resp, body := g.post(t, chatWith(1200, ""), "X-Team", a)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("%d %v %s, want 429 without Retry-After", resp.StatusCode, resp.Header, body)
	}
	if msg := apiError(t, body)["message"].(string); !strings.HasPrefix(msg, "Request too large for "+a+" on tokens per 1m: Limit 1000, Requested 1201.") {
		t.Fatalf("message %q, want request too large on tokens per 1m (limit 1000, requested 1201)", msg)
	}
	resp, body = g.post(t, chatWith(10, `,"max_tokens":100000`), "X-Team", b)
	if resp.StatusCode != 200 {
		t.Fatalf("large max_tokens: %d %s, want 200", resp.StatusCode, body)
	}
	if _, rem, _ := rateHeaders(t, resp, "Tokens"); rem != 0 {
		t.Fatalf("capped reservation left %d, want 0", rem)
	}
}

// Burst: 50 concurrent streams of ~100-token prompts and max_tokens 500
// under tokens 10000/1m: at most 16 reach the backend, the rest get 429
// without reaching it.
func TestLimitsBurst(t *testing.T) {
	burst := team("burst")
	release := make(chan struct{})
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}`)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		sseEvent(w, `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":1}}`)
		sseEvent(w, `[DONE]`)
	})
	g := newGateway(t, `chat_gateway `+be.URL+` {
		limits {
			tokens 10000/1m
			per {http.request.header.X-Team}
		}
	}`)
	body := chatWith(100, `,"stream":true,"max_tokens":500`)
	begin := time.Now()
	admitted, refused := streamBurst(t, 50, func() *http.Request { return g.request(body, "X-Team", burst) }, release)
	t.Logf("admitted %d, refused %d", admitted, refused)
	// 10000 / (100 + 500) = 16.7; one minute of refill is far away.
	if admitted > 16 || admitted < 15 || admitted+refused != 50 {
		t.Fatalf("admitted %d, refused %d, want 15 or 16 admitted of 50", admitted, refused)
	}
	if n := be.count(); n != admitted {
		t.Fatalf("the backend got %d requests for %d admitted, want as many", n, admitted)
	}
	// Each admitted stream was charged its reported usage (101 tokens),
	// less what refilled since (10000/min).
	probe := `{"model":"m","messages":[{"role":"user","content":"ab"}],"max_tokens":1}` // 1 + 1 tokens
	resp, _ := g.post(t, probe, "X-Team", burst)
	_, rem, _ := rateHeaders(t, resp, "Tokens")
	charged := 10000 - 2 - rem
	refilled := int64(time.Since(begin).Seconds()*10000/60) + 1
	if want := int64(admitted) * 101; charged > want || charged < want-refilled {
		t.Fatalf("charged %d tokens, want %d less at most %d refilled", charged, want, refilled)
	}
}

// Edge: requests 100/1m, 100 requests at t and 100 more at t+0.2s: 100
// admitted, then at most what refilled (1).
func TestLimitsEdge(t *testing.T) {
	edge := team("edge")
	g := newGateway(t, `chat_gateway {
		limits {
			requests 100/1m
			per {http.request.header.X-Team}
		}
	}`)
	send := func() int32 {
		var ok atomic.Int32
		var wg sync.WaitGroup
		jobs := make(chan struct{})
		for range 10 {
			wg.Go(func() {
				for range jobs {
					resp, _ := g.post(t, chatWith(1, ""), "X-Team", edge)
					if resp.StatusCode == 200 {
						ok.Add(1)
					}
				}
			})
		}
		for range 100 {
			jobs <- struct{}{}
		}
		close(jobs)
		wg.Wait()
		return ok.Load()
	}
	start := time.Now()
	first := send()
	time.Sleep(200 * time.Millisecond)
	second := send()
	elapsed := time.Since(start)
	refill := int32(elapsed.Seconds()*100/60) + 1
	t.Logf("admitted %d, then %d, in %s", first, second, elapsed)
	if first < 100 || first+second > 100+refill {
		t.Fatalf("admitted %d then %d in %s, want 100 then at most %d refilled", first, second, elapsed, refill)
	}
}

// The official SDK, retries on, gets through after one 429.
func TestLimitsSDKRetry(t *testing.T) {
	g := newGateway(t, `chat_gateway {
		limits {
			requests 1/2s
			per `+team("sdk-retry")+`
		}
	}`)
	client := openai.NewClient(option.WithBaseURL(g.URL+"/v1"), option.WithAPIKey("k"), option.WithMaxRetries(2))
	if _, err := client.Chat.Completions.New(context.Background(), sdkParams); err != nil {
		t.Fatal(err)
	}
	var httpResp *http.Response
	start := time.Now()
	c, err := client.Chat.Completions.New(context.Background(), sdkParams, option.WithResponseInto(&httpResp))
	if err != nil {
		t.Fatalf("after a 429: %v", err)
	}
	if c.Choices[0].Message.Content != "Echo: hello world" || time.Since(start) < time.Second {
		t.Fatalf("%+v after %s, want \"Echo: hello world\" after at least 1s", c, time.Since(start))
	}
}

// Each kind of reply settles its reservation: a reply and a stream are
// charged their usage, a failure before content is refunded, a client
// that leaves mid-stream pays what was generated.
func TestLimitsReconcile(t *testing.T) {
	rec := team("rec")
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("X-Mode") {
		case "reply":
			writeJSON(w, 200, `{"choices":[{"message":{"content":"Hello"}}],"usage":{"prompt_tokens":30,"completion_tokens":20}}`)
		case "stream":
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}`)
			sseEvent(w, `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":20}}`)
			sseEvent(w, `[DONE]`)
		case "hang":
			startSSE(w)
			// 400 bytes of content: 100 tokens estimated.
			sseEvent(w, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"`+strings.Repeat("abcd", 100)+`"}}]}`)
			<-r.Context().Done()
		default:
			writeJSON(w, 500, `{"error":{"message":"down"}}`)
		}
	})
	g := newGateway(t, `chat_gateway `+be.URL+` {
		limits {
			tokens 100000/365d
			per {http.request.header.X-Team}
		}
	}`)
	const limit, reserve = 100000, 11 + 100 // prompt estimate + max_tokens
	body := chatWith(10, `,"max_tokens":100`)
	// probe fails at the backend (refunded) and returns the level the
	// identity's bucket was at.
	probe := func() int64 {
		resp, _ := g.post(t, body, "X-Team", rec, "X-Mode", "fail")
		if resp.StatusCode != 502 {
			t.Fatalf("probe: %d, want 502", resp.StatusCode)
		}
		_, rem, _ := rateHeaders(t, resp, "Tokens")
		return limit - reserve - rem
	}
	if lvl := probe(); lvl != 0 {
		t.Fatalf("fresh level %d, want 0", lvl)
	}
	if lvl := probe(); lvl != 0 {
		t.Fatalf("a failure was charged: level %d", lvl)
	}
	if resp, b := g.post(t, body, "X-Team", rec, "X-Mode", "reply"); resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, b)
	}
	if lvl := probe(); lvl != 50 {
		t.Fatalf("after a reply of 50 tokens: level %d, want 50", lvl)
	}
	if resp, b := g.post(t, chatWith(10, `,"max_tokens":100,"stream":true`), "X-Team", rec, "X-Mode", "stream"); resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, b)
	}
	if lvl := probe(); lvl != 100 {
		t.Fatalf("after a stream of 50 tokens: level %d, want 100", lvl)
	}
	req := g.request(chatWith(10, `,"max_tokens":1000,"stream":true`), "X-Team", rec, "X-Mode", "hang")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := resp.Body.Read(buf); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v, want 200 and a first read", resp.StatusCode, err)
	}
	resp.Body.Close()
	be.waitCancelled(t)
	// 11 prompt + 100 completion tokens estimated, of 1011 reserved.
	deadline := time.Now().Add(5 * time.Second)
	for lvl := probe(); lvl != 211; lvl = probe() {
		if lvl != 100+1011 || time.Now().After(deadline) {
			t.Fatalf("after a client left mid-stream: level %d, want 211", lvl)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The backend's own rate-limit headers are renamed, never mixed with the
// gateway's.
func TestLimitsUpstreamHeaders(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Ratelimit-Remaining-Requests", "7")
		writeJSON(w, 200, `{"choices":[{"message":{"content":"Hello"}}]}`)
	})
	g := newGateway(t, `chat_gateway `+be.URL+` {
		limits {
			requests 10/1m
			per `+team("upstream-headers")+`
		}
	}`)
	resp, body := g.post(t, chatWith(1, ""))
	if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Ratelimit-Remaining-Requests") != "7" || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "9" {
		t.Fatalf("%d %v %s, want 200, x-upstream-ratelimit-remaining-requests 7 and x-ratelimit-remaining-requests 9", resp.StatusCode, resp.Header, body)
	}
}

// concurrent bounds the requests in flight per identity.
func TestLimitsConcurrent(t *testing.T) {
	c := team("c")
	other := team("other")
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		writeJSON(w, 200, `{"choices":[{"message":{"content":"Hello"}}]}`)
	})
	g := newGateway(t, `chat_gateway `+be.URL+` {
		limits {
			concurrent 2
			per {http.request.header.X-Team}
		}
	}`)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if resp, body := g.post(t, chatWith(1, ""), "X-Team", c); resp.StatusCode != 200 {
				t.Errorf("%d %s, want 200", resp.StatusCode, body)
			}
		})
	}
	<-arrived
	<-arrived
	resp, body := g.post(t, chatWith(1, ""), "X-Team", c)
	if e := apiError(t, body); resp.StatusCode != 429 || e["code"] != "too_many_concurrent_requests" || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("third: %d %v %s, want 429 too_many_concurrent_requests with Retry-After 1", resp.StatusCode, resp.Header, body)
	}
	wg.Go(func() { // another identity has its own two slots
		if resp, body := g.post(t, chatWith(1, ""), "X-Team", other); resp.StatusCode != 200 {
			t.Errorf("another identity: %d %s, want 200", resp.StatusCode, body)
		}
	})
	<-arrived
	close(release)
	wg.Wait()
	if resp, body := g.post(t, chatWith(1, ""), "X-Team", c); resp.StatusCode != 200 {
		t.Fatalf("after the first two: %d %s, want 200", resp.StatusCode, body)
	}
}

func TestLimitsCaddyfileErrors(t *testing.T) {
	for input, want := range map[string]string{
		"chat_gateway {\n limits {\n requests 10\n }\n}":                            "invalid requests '10'",
		"chat_gateway {\n limits {\n tokens 10/y\n }\n}":                            "invalid tokens '10/y'",
		"chat_gateway {\n limits {\n quota 10/year\n }\n}":                          "invalid quota '10/year'",
		"chat_gateway {\n limits {\n concurrent 0\n }\n}":                           "invalid concurrent '0'",
		"chat_gateway {\n limits {\n default_max_tokens -1\n }\n}":                  "invalid default_max_tokens",
		"chat_gateway {\n limits {\n on_store_error maybe\n }\n}":                   "invalid on_store_error 'maybe'",
		"chat_gateway {\n limits {\n store disk\n }\n}":                             "unrecognized store 'disk'",
		"chat_gateway {\n limits {\n store redis\n }\n}":                            "needs an address",
		"chat_gateway {\n limits {\n store redis a:1 {\n db x\n }\n }\n}":           "invalid db 'x'",
		"chat_gateway {\n limits {\n store redis a:1 {\n key_prefix a{b\n }\n }\n}": "must not contain",
		"chat_gateway {\n limits {\n store redis a:1 {\n sentinel x\n }\n }\n}":     "unrecognized redis option 'sentinel'",
		"chat_gateway {\n limits {\n model llama* {\n per x\n }\n }\n}":             "unrecognized model limit 'per'",
		"chat_gateway {\n limits {\n model llama*\n }\n}":                           "no limits given",
		"chat_gateway {\n limits {\n burst 5\n }\n}":                                "unrecognized limits option 'burst'",
		"chat_gateway {\n limits {\n requests 5/1m 6/1m\n }\n}":                     "wrong argument count",
	} {
		_, err := parse(t, input)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", input, err, want)
		}
	}
	h, err := parse(t, "chat_gateway {\n limits {\n store memory\n requests 5/1m\n }\n}")
	if err != nil || h.Limits.Redis != nil || h.Limits.Requests != "5/1m" {
		t.Fatalf("%+v %v, want the memory store and requests 5/1m", h.Limits, err)
	}
}

// FuzzLimitsCaddyfile: whatever limits block the Caddyfile parser
// accepts provisions, its rates and quotas included.
func FuzzLimitsCaddyfile(f *testing.F) {
	f.Add("requests 600/1m\ntokens 2000/30s\nconcurrent 3\nquota 100/week\nmodel l* {\ntokens 5/s\n}\nstore redis a:1 {\ntls\ndb 1\n}")
	f.Add("per {http.auth.user.id}\ndefault_max_tokens 9\non_store_error deny\nstore memory")
	f.Fuzz(func(t *testing.T, body string) {
		tokens, err := caddyfile.Tokenize([]byte("chat_gateway {\nlimits {\n"+body+"\n}\n}"), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		if h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)) != nil || h.Limits == nil {
			return
		}
		if _, err := h.Limits.LimitSet.parse(); err != nil {
			t.Fatalf("accepted %q, then: %v, want it to provision", body, err)
		}
		for _, m := range h.Limits.Models {
			if _, err := m.LimitSet.parse(); err != nil || m.Pattern == "" {
				t.Fatalf("accepted model %+v, then: %v, want it to provision with a pattern", m, err)
			}
		}
	})
}

// FuzzGlobMatch checks the model pattern matcher against regexp.
func FuzzGlobMatch(f *testing.F) {
	f.Add("llama*", "llama3")
	f.Add("*/Llama-*-8B*", "meta-llama/Llama-3.1-8B-Instruct")
	f.Add("a*a*a", "aaa")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		re, err := regexp.Compile(`^(?s:` + strings.Join(parts, ".*") + `)$`)
		if err != nil || !utf8.ValidString(s) || !utf8.ValidString(pattern) {
			return
		}
		if got, want := globMatch(pattern, s), re.MatchString(s); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, regexp says %v", pattern, s, got, want)
		}
	})
}

// Model limits count per model across identities; other models pass.
func TestLimitsModel(t *testing.T) {
	llama, llama2 := team("llama-model"), team("llama-model")
	h := limitedEcho(t, &Limits{Per: "{http.request.header.X-Team}", Models: []*ModelLimits{
		{Pattern: "llama*", LimitSet: LimitSet{Requests: "1/1h"}},
	}})
	model := func(name string) string {
		return `{"model":"` + name + `","messages":[{"role":"user","content":"hi"}]}`
	}
	if w := serveDirect(t, h, model(llama), team("a")); w.Code != 200 {
		t.Fatalf("%d %s, want 200", w.Code, w.Body)
	}
	w := serveDirect(t, h, model(llama), team("b"))
	if w.Code != 429 || !strings.Contains(w.Body.String(), "Rate limit reached for model "+llama+" on requests per 1h") {
		t.Fatalf("same model, another identity: %d %s, want 429 for the model on requests per 1h", w.Code, w.Body)
	}
	if w := serveDirect(t, h, model(llama2), team("b")); w.Code != 200 {
		t.Fatalf("another matching model: %d %s, want 200", w.Code, w.Body)
	}
	if w := serveDirect(t, h, model("qwen"), team("b")); w.Code != 200 || w.Header().Get("X-Ratelimit-Limit-Requests") != "" {
		t.Fatalf("an unlimited model: %d %v, want 200 without x-ratelimit-limit-requests", w.Code, w.Header())
	}
}

// The memory store's counts survive a config reload.
func TestLimitsMemoryReload(t *testing.T) {
	cfg := `chat_gateway {
		limits {
			requests 5/1h
			per ` + team("memory-reload") + `
		}
	}`
	g := newGateway(t, cfg)
	for range 2 {
		g.post(t, chatWith(1, ""))
	}
	g = newGateway(t, cfg+"\n# reloaded")
	if resp, body := g.post(t, chatWith(1, "")); resp.StatusCode != 200 || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "2" {
		t.Fatalf("after a reload: %d %v %s, want 200 with 2 requests remaining", resp.StatusCode, resp.Header, body)
	}
}

// A key's own limits replace the limits block's per-identity ones for
// that key, from the Caddyfile and from a keys_file alike.
func TestLimitsPerKey(t *testing.T) {
	a, b, c := team("key-a"), team("key-b"), team("key-c")
	const keyA, keyB, keyC = "sk-cg-perkey-aaaaaaaaaaaaaaaa", "sk-cg-perkey-bbbbbbbbbbbbbbbb", "sk-cg-perkey-cccccccccccccccc"
	file := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(file, []byte(`{"keys":[{"key":"`+keys.Hash(keyC)+`","id":"`+c+`","requests":"1/1h"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		auth {
			key %s {
				id %s
				requests 2/1h
			}
			key %s {
				id %s
			}
			keys_file %s
		}
		limits {
			requests 4/1h
		}
	}`, keyA, a, keyB, b, file))
	admitted := func(key string, n int) (int, string) {
		for i := range n {
			resp, body := g.post(t, hello, "Authorization", "Bearer "+key)
			if resp.StatusCode != 200 {
				return i, body
			}
		}
		return n, ""
	}
	for _, tt := range []struct {
		key, id string
		limit   int
	}{{keyA, a, 2}, {keyB, b, 4}, {keyC, c, 1}} {
		got, body := admitted(tt.key, tt.limit+1)
		if got != tt.limit || !strings.Contains(body, fmt.Sprintf("Rate limit reached for %s on requests per 1h: Limit %d,", tt.id, tt.limit)) {
			t.Errorf("%s: %d admitted, want %d; then %s", tt.id, got, tt.limit, body)
		}
	}

	_, err := parse(t, "chat_gateway {\n auth {\n key "+keyA+" {\n requests 1/bogus\n }\n }\n}")
	if err == nil || !strings.Contains(err.Error(), "invalid requests '1/bogus'") {
		t.Fatalf("bad per-key rate: %v, want invalid requests '1/bogus'", err)
	}
	h, err := parse(t, "chat_gateway {\n auth {\n key "+keyA+" {\n requests 1/1m\n }\n }\n}")
	if err != nil {
		t.Fatal(err)
	}
	h.logger = zap.NewNop()
	if err := h.provisionAuth(caddy.Context{}, caddy.NewReplacer()); err == nil || !strings.Contains(err.Error(), "no limits block") {
		t.Fatalf("per-key limits without a limits block: %v, want a no limits block error", err)
	}
}

// The reservation covers the largest completion budget a backend could
// honour: max_completion_tokens over a smaller max_tokens (OpenAI and
// vLLM honour it), and the whole budget for each of n choices.
func TestLimitsReserveLargestBudget(t *testing.T) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	h := limitedEcho(t, &Limits{LimitSet: LimitSet{Tokens: "100000/1m"}, Per: "{http.request.header.X-Team}", clock: clock})
	tests := []struct {
		extra    string
		reserved int64 // 10 prompt tokens (40 bytes) and the budget
	}{
		{`,"max_tokens":1,"max_completion_tokens":2000`, 2010},
		{`,"max_completion_tokens":2000,"max_tokens":1`, 2010},
		{`,"max_tokens":300,"n":4`, 1210},
		{`,"n":3`, 10 + 3*defaultMaxTokensReserve},
	}
	for _, tt := range tests {
		w := serveDirect(t, h, chatWith(9, tt.extra), team("budget"))
		remaining, err := strconv.ParseInt(w.Header().Get("X-Ratelimit-Remaining-Tokens"), 10, 64)
		if w.Code != 200 || err != nil || 100000-remaining != tt.reserved {
			t.Errorf("%s: %d, remaining %q, want %d reserved", tt.extra, w.Code, w.Header().Get("X-Ratelimit-Remaining-Tokens"), tt.reserved)
		}
	}
}
