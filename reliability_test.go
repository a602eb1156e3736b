package chatgateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/goleak"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

const faultKey = "sk-fault-backend-secret-key-0123456789"

// TestFailureBehaviour is the table of docs/failure-behaviour.md: each
// backend fault, streamed and not, and what the client gets.
func TestFailureBehaviour(t *testing.T) {
	be := fb.New()
	defer be.Close()
	g := newGateway(t, fmt.Sprintf(`chat_gateway %s {
		api_key %s
		first_token_timeout 250ms
		idle_timeout 250ms
	}`, be.URL, faultKey))
	host := strings.TrimPrefix(be.URL, "http://")

	type want struct {
		status  int    // of the reply; 200 with event means an error event
		code    string // error code, or "" for a clean reply
		event   bool   // the error comes as a final event of a stream
		content string // the content of a clean reply
	}
	const tokens = "tok0 tok1 tok2 " // the fault backend's reply, its default 3 tokens
	ok := want{200, "", false, tokens}
	tests := []struct {
		name      string
		fault     fb.Fault
		plain     want // non-streaming request
		streamed  want // streaming request
		cancelled bool // the backend sees its request cancelled
	}{
		{"healthy", fb.Fault{}, ok, ok, false},
		{"never answers", fb.Fault{Mode: fb.NeverAnswer}, want{504, "first_token_timeout", false, ""}, want{504, "first_token_timeout", false, ""}, true},
		{"slow headers", fb.Fault{HeaderDelay: 2 * time.Second}, want{504, "first_token_timeout", false, ""}, want{504, "first_token_timeout", false, ""}, true},
		{"slow first token", fb.Fault{FirstTokenDelay: 2 * time.Second}, ok, want{504, "first_token_timeout", false, ""}, true},
		{"slow between tokens", fb.Fault{TokenDelay: 2 * time.Second}, ok, want{200, "idle_timeout", true, ""}, true},
		{"429 with retry-after", fb.Fault{Status: 429, RetryAfter: "7"}, want{429, "fault", false, ""}, want{429, "fault", false, ""}, false},
		{"500 json", fb.Fault{Status: 500}, want{502, "upstream_error", false, ""}, want{502, "upstream_error", false, ""}, false},
		{"503 no body", fb.Fault{Status: 503, Body: " "}, want{502, "upstream_error", false, ""}, want{502, "upstream_error", false, ""}, false},
		{"404 json", fb.Fault{Status: 404}, want{404, "fault", false, ""}, want{404, "fault", false, ""}, false},
		{"html error page", fb.Fault{Mode: fb.HTML}, want{502, "upstream_error", false, ""}, want{502, "upstream_error", false, ""}, false},
		{"invalid json", fb.Fault{Mode: fb.InvalidJSON}, want{502, "invalid_upstream_response", false, ""}, want{502, "invalid_upstream_response", false, ""}, false},
		{"huge body", fb.Fault{Mode: fb.HugeBody, Size: maxReplyBody + 1}, want{502, "upstream_reply_too_large", false, ""}, want{502, "upstream_reply_too_large", false, ""}, false},
		{"stream cut", fb.Fault{Mode: fb.Cut}, ok, want{200, "stream_truncated", true, ""}, false},
		{"stream reset", fb.Fault{Mode: fb.Reset}, ok, want{200, "stream_truncated", true, ""}, false},
		{"stream stall", fb.Fault{Mode: fb.Stall}, ok, want{200, "idle_timeout", true, ""}, true},
		{"byte by byte", fb.Fault{Mode: fb.Split}, ok, ok, false},
		{"crlf", fb.Fault{Mode: fb.CRLF}, ok, ok, false},
		{"ping comments", fb.Fault{Mode: fb.Pings}, ok, ok, false},
		{"error event", fb.Fault{Mode: fb.ErrorEvent}, ok, want{200, "model_crashed", true, ""}, false},
		{"usage-only chunk", fb.Fault{Mode: fb.UsageChunk}, ok, ok, false},
		{"4 MiB event", fb.Fault{Mode: fb.HugeEvent, Size: 4 << 20}, ok, want{200, "", false, strings.Repeat("x", 4<<20) + tokens}, false},
		{"9 MiB event", fb.Fault{Mode: fb.HugeEvent, Size: 9 << 20}, ok, want{502, "event_too_large", false, ""}, false},
	}
	for _, tt := range tests {
		for _, stream := range []bool{false, true} {
			w := tt.plain
			if stream {
				w = tt.streamed
			}
			t.Run(fmt.Sprintf("%s stream=%v", tt.name, stream), func(t *testing.T) {
				body := `{"model":"m","messages":[{"role":"user","content":"my secret prompt"}]`
				if stream {
					body += `,"stream":true,"stream_options":{"include_usage":true}`
				}
				body += "}"
				start := time.Now()
				resp, got := g.post(t, body, "X-Fault", fb.Header(tt.fault), "X-Request-ID", "fault-1")
				// The timeouts are 250ms; a fault that outlasts them (2s)
				// must be cut by them. Other rows (32 MiB bodies under
				// -race) may take their time.
				outlasts := tt.fault.HeaderDelay > 0 || tt.fault.FirstTokenDelay > 0 || tt.fault.TokenDelay > 0 ||
					tt.fault.Mode == fb.NeverAnswer || tt.fault.Mode == fb.Stall
				if took := time.Since(start); outlasts && took > 1750*time.Millisecond {
					t.Fatalf("took %v, want under 1.75s: the 250ms timeouts must cut a 2s fault", took)
				}
				if resp.StatusCode != w.status || resp.Header.Get("X-Request-ID") != "fault-1" {
					t.Fatalf("status %d, X-Request-ID %q; want %d, fault-1: %.300s", resp.StatusCode, resp.Header.Get("X-Request-ID"), w.status, got)
				}
				for _, leak := range []string{faultKey, host, "my secret prompt"} {
					if strings.Contains(got, leak) {
						t.Fatalf("reply holds %q: %.300s", leak, got)
					}
				}
				switch {
				case w.event:
					chunks := parseStream(t, got, false)
					if last := chunks[len(chunks)-1]; last.Error == nil || last.Error.Code != w.code {
						t.Fatalf("last event %+v, want an error event with code %s", last, w.code)
					}
				case w.code != "":
					if e := apiError(t, got); e["code"] != w.code {
						t.Fatalf("error %v, want code %s", e, w.code)
					}
				case stream:
					checkChunks(t, parseStream(t, got, true), "fault-1", w.content, true)
				default:
					var reply struct {
						Choices []struct {
							Message      struct{ Content string }
							FinishReason string `json:"finish_reason"`
						}
					}
					if err := json.Unmarshal([]byte(got), &reply); err != nil || len(reply.Choices) != 1 ||
						reply.Choices[0].Message.Content != w.content || reply.Choices[0].FinishReason != "stop" {
						t.Fatalf("reply %.300s, want one choice with content %q and finish_reason stop", got, w.content)
					}
				}
				if tt.fault.RetryAfter != "" && resp.Header.Get("Retry-After") != tt.fault.RetryAfter {
					t.Fatalf("Retry-After %q, want the backend's %q", resp.Header.Get("Retry-After"), tt.fault.RetryAfter)
				}
				if tt.cancelled && w.code != "" && !be.WaitCancelled(5*time.Second) {
					t.Fatal("the backend's request was not cancelled")
				}
			})
		}
	}
	if _, raw := g.logs(t); strings.Contains(raw, faultKey) || strings.Contains(raw, "my secret prompt") {
		t.Fatal("the key or the prompt reached the logs")
	}

	refused := newGateway(t, fmt.Sprintf("chat_gateway %s {\n api_key %s\n}", fb.RefusingURL(), faultKey))
	resp, got := refused.post(t, hello, "X-Request-ID", "fault-2")
	if e := apiError(t, got); resp.StatusCode != 502 || e["code"] != "upstream_unavailable" || strings.Contains(got, "127.0.0.1") {
		t.Fatalf("refused connection: %d %s, want 502 upstream_unavailable naming no address", resp.StatusCode, got)
	}
	if _, raw := refused.logs(t); strings.Contains(raw, faultKey) {
		t.Fatal("the key reached the logs")
	}
}

// TestMalformedRequests: bad input gets a fast 400 naming the parameter,
// and the backend is never contacted.
func TestMalformedRequests(t *testing.T) {
	be := fb.New()
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL)
	bad := map[string]string{
		"truncated":         `{"model":"m","messages":[{"role":"user"`,
		"empty":             ``,
		"array":             `[{"role":"user","content":"x"}]`,
		"scalar":            `"hello"`,
		"stream string":     `{"messages":[{"role":"user","content":"x"}],"stream":"true"}`,
		"messages object":   `{"messages":{"role":"user","content":"x"}}`,
		"content number":    `{"messages":[{"role":"user","content":42}]}`,
		"content object":    `{"messages":[{"role":"user","content":{"text":"x"}}]}`,
		"unknown role":      `{"messages":[{"role":"hacker","content":"x"}]}`,
		"duplicate key":     `{"messages":[{"role":"user","content":"x"}],"model":"a","model":"b"}`,
		"invalid utf-8":     "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}",
		"5 MB nested array": strings.Repeat("[", 5<<20),
	}
	for name, body := range bad {
		start := time.Now()
		resp, got := g.post(t, body)
		e := apiError(t, got)
		if resp.StatusCode != 400 || e["type"] != "invalid_request_error" || e["message"] == "" {
			t.Errorf("%s: %d %s, want 400 invalid_request_error with a message", name, resp.StatusCode, got)
		}
		if name != "empty" && name != "truncated" && name != "5 MB nested array" && name != "invalid utf-8" && name != "scalar" && name != "array" && e["param"] == nil {
			t.Errorf("%s: no param in %s", name, got)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %v, want under 2s", name, d)
		}
	}
	if be.Count() != 0 {
		t.Fatalf("the backend got %d requests, want none", be.Count())
	}
}

// TestLimits: request bodies and concurrent requests are capped; headers
// past Caddy's limit are refused by Caddy.
func TestLimits(t *testing.T) {
	be := fb.New()
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL+" {\n max_request_body 64KiB\n max_concurrent 2\n}")

	big := `{"messages":[{"role":"user","content":"` + strings.Repeat("x", 100<<10) + `"}]}`
	for _, chunked := range []bool{false, true} {
		var body io.Reader = strings.NewReader(big)
		if chunked {
			body = struct{ io.Reader }{body}
		}
		req, _ := http.NewRequest("POST", g.URL+"/v1/chat/completions", body)
		req.Header.Set("Content-Type", "application/json")
		resp, got := do(t, req)
		if resp.StatusCode != 413 || apiError(t, got)["code"] != "request_too_large" {
			t.Fatalf("chunked=%v: %d %s, want 413 request_too_large", chunked, resp.StatusCode, got)
		}
	}

	// Two stalled streams hold both slots; a third request is refused
	// at once, and served again once a slot frees.
	ctx, cancel := context.WithCancel(context.Background())
	var held sync.WaitGroup
	for range 2 {
		held.Add(1)
		go func() {
			defer held.Done()
			req, _ := http.NewRequestWithContext(ctx, "POST", g.URL+"/v1/chat/completions", strings.NewReader(helloStream))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Fault", fb.Header(fb.Fault{Mode: fb.Stall}))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	waitFor(t, func() bool { return be.Count() == 2 })
	resp, got := g.post(t, hello)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" || apiError(t, got)["code"] != "too_many_concurrent_requests" {
		t.Fatalf("over the cap: %d %v %s, want 429 too_many_concurrent_requests with Retry-After: 1", resp.StatusCode, resp.Header, got)
	}
	cancel()
	held.Wait()
	waitFor(t, func() bool { resp, _ := g.post(t, hello); return resp.StatusCode == 200 })

	// Caddy (net/http) refuses header sets over 1 MiB before any handler.
	req, _ := http.NewRequest("POST", g.URL+"/v1/chat/completions", strings.NewReader(hello))
	for i := range 40 {
		req.Header.Set("X-Big-"+strconv.Itoa(i), strings.Repeat("h", 32<<10))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("huge headers: %v, want a 431 reply", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("huge headers: %d, want 431", resp.StatusCode)
	}
}

// waitFor polls ok until it holds, failing after 30 s: long enough for
// a loaded machine, which only slows what is awaited.
func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHostileHeaders: request ids that cannot be reflected safely are
// replaced; hop-by-hop headers do not cross the gateway either way; the
// backend's Date does.
func TestHostileHeaders(t *testing.T) {
	const backendDate = "Mon, 02 Jan 2006 15:04:05 GMT"
	hop := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Set-Cookie", "backend=1")
		w.Header().Set("X-Ratelimit-Remaining-Requests", "9")
		w.Header().Set("Date", backendDate)
		writeJSON(w, 200, `{"choices":[{"message":{"content":"x"}}]}`)
	})
	g := newGateway(t, "chat_gateway "+hop.URL+" {\n api_key "+faultKey+"\n}")
	for _, id := range []string{strings.Repeat("a", 10<<10), "has space", "tab\there", "ünï", ""} {
		resp, got := g.post(t, hello, "X-Request-ID", id)
		rid := resp.Header.Get("X-Request-ID")
		if rid == id || (id != "" && strings.Contains(got, id)) || len(rid) != 36 {
			t.Errorf("id %.20q reflected or not replaced: %q, want a new 36-character id", id, rid)
		}
		// Caddy's access log lists the request's headers, JSON-escaped;
		// every field of the gateway's own carries the replacement.
		l := g.waitLog(t, "handled request", rid)
		delete(l, "request")
		if b, _ := json.Marshal(l); id != "" && strings.Contains(string(b), id) {
			t.Errorf("id %.20q logged as the gateway's", id)
		}
	}
	// Control characters and CR/LF: sent raw, they never reach a handler.
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-Request-ID: a\x01b\rInjected: 1\r\nContent-Length: %d\r\n\r\n%s",
		strings.TrimPrefix(g.URL, "http://"), len(hello), hello)
	status, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if !strings.Contains(status, "400") {
		t.Errorf("raw control characters: %q, want a 400 status line", status)
	}

	resp, _ := g.post(t, hello, "Connection", "X-Client-Hop", "X-Client-Hop", "secret", "Proxy-Authorization", "Basic eA==", "Te", "gzip", "Upgrade", "websocket")
	for _, h := range []string{"X-Hop", "Keep-Alive", "Set-Cookie"} {
		if resp.Header.Get(h) != "" {
			t.Errorf("response header %s crossed the gateway", h)
		}
	}
	if resp.Header.Get("X-Ratelimit-Remaining-Requests") != "9" {
		t.Error("rate-limit header lost")
	}
	if resp.Header.Get("Date") != backendDate {
		t.Errorf("Date %q, want the backend's", resp.Header.Get("Date"))
	}
	up := hop.last(t).Header
	for _, h := range []string{"X-Client-Hop", "Proxy-Authorization", "Te", "Upgrade"} {
		if up.Get(h) != "" {
			t.Errorf("request header %s reached the backend", h)
		}
	}
}

// TestSlowReader: a client that reads nothing holds one stream's worth
// of memory, not the backend's whole output, and other streams go on.
func TestSlowReader(t *testing.T) {
	be := fb.New()
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	// 200,000 chunks of ~150 bytes: 30 MB the client never reads.
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	fault := fb.Header(fb.Fault{Tokens: 200000})
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-Fault: %s\r\nContent-Length: %d\r\n\r\n%s",
		strings.TrimPrefix(g.URL, "http://"), fault, len(helloStream), helloStream)
	waitFor(t, func() bool { return be.Count() == 1 })
	time.Sleep(500 * time.Millisecond) // the backend writes until TCP pushes back
	if inFlight() != 1 {
		t.Fatalf("the slow stream is not in flight: %v", inFlight())
	}

	start := time.Now()
	resp, body := g.post(t, helloStream)
	if resp.StatusCode != 200 || !strings.HasSuffix(body, "data: [DONE]\n\n") || time.Since(start) > 2*time.Second {
		t.Fatalf("another stream beside the slow one: %d in %v, want a whole 200 stream within 2s", resp.StatusCode, time.Since(start))
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 8<<20 {
		t.Fatalf("heap grew %d MiB with a stalled reader, want at most 8", grown>>20)
	}
	conn.Close()
	if !be.WaitCancelled(5 * time.Second) {
		t.Fatalf("closing the slow client did not cancel the backend; in flight %v; requests %d", inFlight(), be.Count())
	}
}

// goroutineLeaks fails t if goroutines started since ignore are left,
// beyond pooled keep-alive connections, which belong to Caddy's
// transport and the servers, not to a request.
func goroutineLeaks(t *testing.T, ignore goleak.Option) {
	t.Helper()
	http.DefaultClient.CloseIdleConnections()
	if v := gatewayMetrics.inFlight; v != nil {
		waitFor(t, func() bool { return inFlight() == 0 })
	}
	goleak.VerifyNone(t, ignore,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1"),
	)
}

// TestSoak sends SOAK_REQUESTS (default 600) requests, mixed streaming
// and not, healthy and faulty, with random client aborts; then no
// goroutine is left and the heap is back within bounds.
func TestSoak(t *testing.T) {
	n := 600
	if s := os.Getenv("SOAK_REQUESTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	be := fb.New()
	be.Discard = true // the backend's own records would grow with n
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL+" {\n first_token_timeout 500ms\n idle_timeout 250ms\n}")
	faults := []fb.Fault{{}, {}, {}, {TokenDelay: time.Millisecond, Tokens: 20}, {Mode: fb.Cut}, {Mode: fb.ErrorEvent}, {Status: 500},
		{Mode: fb.Reset}, {Mode: fb.Stall}, {Mode: fb.NeverAnswer}, {Mode: fb.Split}, {Mode: fb.UsageChunk}}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	send := func(i int) {
		body := hello
		if i%2 == 0 {
			body = helloStreamUsage
		}
		f := faults[rand.IntN(len(faults))]
		abort := 400 * time.Millisecond // stalls and silences end with the client
		if rand.IntN(3) == 0 {
			abort = time.Duration(rand.IntN(20)) * time.Millisecond
		}
		ctx, cancel := context.WithTimeout(context.Background(), abort)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", g.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Fault", fb.Header(f))
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	for i := range 32 { // warm up pools and lazily started goroutines
		send(i)
	}
	client.CloseIdleConnections()
	waitFor(t, func() bool { return inFlight() == 0 })
	baseline := goleak.IgnoreCurrent()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	var wg sync.WaitGroup
	jobs := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				send(i)
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	client.CloseIdleConnections()

	goroutineLeaks(t, baseline)
	runtime.GC()
	runtime.GC() // a second cycle empties the pools' victim caches
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 16<<20 {
		t.Fatalf("heap grew %d MiB over %d requests, want at most 16", grown>>20, n)
	}
	t.Logf("%d requests; heap in use %d -> %d KiB", n, before.HeapInuse>>10, after.HeapInuse>>10)
}

// TestReloadUnderTraffic reloads the config 100 times while requests
// flow: every reply that arrives is whole, a stream open across the
// reloads finishes, nothing leaks, an invalid config is refused and the
// running one keeps serving.
//
// Connections refused or reset while listeners are swapped are counted,
// not failed: on Linux, Caddy binds each config's listener with
// SO_REUSEPORT, and connections queued on the listener being closed are
// reset by the kernel; that is Caddy's, with or without the gateway.
func TestReloadUnderTraffic(t *testing.T) {
	be := fb.New()
	defer be.Close()
	port := freePort(t)
	configs := make([][]byte, 2)
	for i := range configs {
		text := globalOptions(fmt.Sprintf("http_port %d", port), "grace_period 5s") + fmt.Sprintf(`http://127.0.0.1:%d {
	chat_gateway {
		backend %s {
			transport http {
				keepalive 300ms
			}
		}
		timeout %ds
	}
}`, port, be.URL, 60+i)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
		if err != nil {
			t.Fatal(err)
		}
		configs[i] = cfg
	}
	if err := caddy.Load(configs[0], true); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", port)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	post := func(body string, header ...string) (int, string, error) {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	for range 8 {
		post(helloStream)
	}
	before := runtime.NumGoroutine()
	runtime.GC()
	var heapBefore runtime.MemStats
	runtime.ReadMemStats(&heapBefore)

	// A stream of 40 tokens 10ms apart stays open across the reloads.
	open := make(chan string, 1)
	go func() {
		_, body, err := post(helloStream, "X-Fault", fb.Header(fb.Fault{Tokens: 40, TokenDelay: 10 * time.Millisecond}))
		if err != nil {
			body = err.Error()
		}
		open <- body
	}()
	waitFor(t, func() bool { return inFlight() == 1 })

	stop := make(chan struct{})
	var bad, connErrs, served int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, body, err := post(helloStream)
				mu.Lock()
				switch {
				case err != nil && status == 0:
					connErrs++
				case status != 200 || !strings.HasSuffix(body, "data: [DONE]\n\n"):
					bad++
					t.Logf("during reloads: %d %v %.200s", status, err, body)
				default:
					served++
				}
				mu.Unlock()
			}
		})
	}
	for i := range 100 {
		if err := caddy.Load(configs[i%2], true); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d replies whole, %d bad, %d connections refused or reset by listener swaps", served, bad, connErrs)
	if served == 0 || bad > 0 {
		t.Fatalf("%d replies broken, %d whole during reloads, want none broken and some whole", bad, served)
	}
	if body := <-open; !strings.Contains(body, "tok39 ") || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("the stream open across reloads: %.300s, want it whole through tok39 and [DONE]", body)
	}

	bad1 := []byte(strings.Replace(string(configs[0]), `"timeout"`, `"no_such_option":1,"timeout"`, 1))
	bad2 := []byte(strings.Replace(string(configs[0]), `"base_path":"/v1"`, `"base_path":"/v1","fallback":"nowhere"`, 1))
	for _, cfg := range [][]byte{bad1, bad2} {
		if err := caddy.Load(cfg, true); err == nil {
			t.Fatalf("invalid config accepted: %s", cfg)
		}
	}
	if status, body, err := post(hello); status != 200 {
		t.Fatalf("after a refused config: %d %v %s, want 200 from the running config", status, err, body)
	}
	// Each config has its own app goroutines (servers, admin, metrics),
	// so compare counts: one config's worth, not a hundred. Upstream
	// connections busy when their config was cleaned up return to its
	// pool and close at the keep-alive idle timeout (300ms here, 2m by
	// default): reverse_proxy's behaviour, waited for here.
	deadline := time.Now().Add(10 * time.Second)
	for inFlight() != 0 || runtime.NumGoroutine() > before+5 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d, before the reloads %d; in flight %v; want at most 5 more and none in flight\n%s", runtime.NumGoroutine(), before, inFlight(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if stacks := gatewayGoroutines(); stacks != "" {
		t.Fatalf("goroutines in the gateway's code after the reloads:\n%s", stacks)
	}
	runtime.GC()
	var heapAfter runtime.MemStats
	runtime.ReadMemStats(&heapAfter)
	if grown := int64(heapAfter.HeapInuse) - int64(heapBefore.HeapInuse); grown > 16<<20 {
		t.Fatalf("heap grew %d MiB over 100 reloads, want at most 16", grown>>20)
	}
}

// gatewayGoroutines returns the stacks of goroutines other than the
// caller's that run the gateway's own (non-test) code.
func gatewayGoroutines() string {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n")[1:] {
		if strings.Contains(g, "caddy-chat-gateway.") && !strings.Contains(g, "_test.go") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
