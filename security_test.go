package chatgateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus/testutil"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

// rawExchange sends one raw HTTP/1.1 request, reads the response head,
// then writes more on the same socket, as a client would into a tunnel.
func rawExchange(t *testing.T, addr, request, after string) (status string, rest string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	status, err = br.ReadString('\n')
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	_, _ = io.WriteString(conn, after)
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	b, _ := io.ReadAll(br)
	return strings.TrimSpace(status), string(b)
}

func TestUpgradeNeverTunnels(t *testing.T) {
	const smuggled = "GET /admin/secret HTTP/1.1\r\nHost: backend\r\n\r\n"
	for mode, want := range map[fb.Mode]string{fb.Normal: "HTTP/1.1 200 OK", fb.SwitchProtocols: "HTTP/1.1 502 Bad Gateway"} {
		t.Run("backend mode "+string(mode), func(t *testing.T) {
			be := fb.New()
			defer be.Close()
			g := newGateway(t, "chat_gateway "+be.URL)
			addr := strings.TrimPrefix(g.URL, "http://")
			req := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"X-Fault: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, fb.Header(fb.Fault{Mode: mode}), len(hello), hello)
			status, rest := rawExchange(t, addr, req, smuggled)
			if status != want {
				t.Fatalf("status %q, want %q (body %q)", status, want, rest)
			}
			if strings.Contains(rest, "raw backend bytes") {
				t.Fatalf("the backend's raw bytes reached the client: %q", rest)
			}
			be.Close() // waits for the taken-over socket's handler to finish recording
			if tunneled := string(be.Tunneled()); strings.Contains(tunneled, "/admin/secret") {
				t.Fatalf("the client's next request went through a tunnel: %q", tunneled)
			}
			for _, r := range be.Requests() {
				if r.Path == "/admin/secret" {
					t.Fatal("the client's next request reached the backend")
				}
				for _, h := range []string{"Upgrade", "Connection"} {
					if r.Header.Get(h) != "" {
						t.Fatalf("%s forwarded upstream: %v", h, r.Header)
					}
				}
			}
		})
	}

	t.Run("models", func(t *testing.T) {
		be := fb.New()
		defer be.Close()
		g := newGateway(t, "chat_gateway "+be.URL)
		req, _ := http.NewRequest(http.MethodGet, g.URL+"/v1/models", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		resp, body := do(t, req)
		if resp.StatusCode != 200 || !strings.Contains(body, "fault-model") {
			t.Fatalf("%d %s, want 200 with fault-model", resp.StatusCode, body)
		}
		if got := be.Requests(); len(got) != 1 || got[0].Header.Get("Upgrade") != "" || got[0].Header.Get("Connection") != "" {
			t.Fatalf("the models request offered an upgrade: %+v, want one request without Upgrade or Connection", got)
		}
	})
}

func TestHopByHopNotForwarded(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"x"}}]}`)
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	resp, body := g.post(t, hello, "TE", "trailers", "Trailer", "X-T", "Proxy-Authorization", "Basic eA==",
		"Connection", "X-Hop, keep-alive", "X-Hop", "1")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, body)
	}
	got := be.last(t).Header
	for _, h := range []string{"Te", "Trailer", "Proxy-Authorization", "X-Hop", "Connection", "Upgrade"} {
		if v := got.Get(h); v != "" {
			t.Errorf("%s: %q forwarded upstream", h, v)
		}
	}
}

// TestIncrementalRequestAnswered: a client that marks its request
// "Incremental: ?1" is answered, with and without retry_on: the
// gateway forwards a body it read whole, which reverse_proxy, buffering
// it, would otherwise refuse with a 501.
func TestIncrementalRequestAnswered(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"x"}}]}`)
	})
	for _, cfg := range []string{"chat_gateway " + be.URL, "chat_gateway {\n\tbackend " + be.URL + " {\n\t\tretry_on 503\n\t}\n}"} {
		g := newGateway(t, cfg)
		resp, body := g.post(t, hello, "Incremental", "?1")
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s, want 200", cfg, resp.StatusCode, body)
		}
		if v := be.last(t).Header.Get("Incremental"); v != "" {
			t.Errorf("%s: Incremental: %q forwarded upstream", cfg, v)
		}
	}
}

func TestUpstreamKeyRedactedEverywhere(t *testing.T) {
	const key = "sk-upstream-secret-key-42"
	t.Run("faultbackend quote_key", func(t *testing.T) {
		be := fb.New()
		defer be.Close()
		g := newGateway(t, fmt.Sprintf("chat_gateway %s {\n\tapi_key %s\n}", be.URL, key))
		resp, got := g.post(t, hello, "X-Fault", fb.Header(fb.Fault{Mode: fb.QuoteKey}))
		if resp.StatusCode != 401 || strings.Contains(got, key) || !strings.Contains(got, "[redacted]") ||
			resp.Header.Get("X-Ratelimit-Limit-Requests") != "Bearer [redacted]" {
			t.Fatalf("%d %v %s, want 401, the key [redacted] and X-Ratelimit-Limit-Requests: Bearer [redacted]", resp.StatusCode, resp.Header, got)
		}
	})
	leaky := `{"error":{"message":"bad key ` + key + `","type":"` + key + `","param":"` + key + `","code":"Bearer ` + key + `"}}`
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Ratelimit-Remaining-Requests", key)
		w.Header().Set("Retry-After", "1, "+key)
		if strings.Contains(upstreamBody(r), `"stream":true`) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"hi"}}]}`)
			_, _ = io.WriteString(w, "event: error\ndata: "+leaky+"\n\n")
			return
		}
		writeJSON(w, 401, leaky)
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway %s {\n\tapi_key %s\n}", be.URL, key))
	for _, body := range []string{hello, helloStream} {
		resp, got := g.post(t, body)
		if resp.StatusCode == 200 && !strings.Contains(got, "[redacted]") {
			t.Fatalf("%s: the backend's error did not come through: %s", body, got)
		}
		if strings.Contains(got, key) {
			t.Errorf("%s: the upstream key is in the reply: %s", body, got)
		}
		for k, v := range resp.Header {
			if strings.Contains(strings.Join(v, " "), key) {
				t.Errorf("%s: the upstream key is in the reply header %s: %v", body, k, v)
			}
		}
		if resp.Header.Get("X-Ratelimit-Remaining-Requests") != "[redacted]" {
			t.Errorf("%s: rate-limit header %q, want it passed on, redacted", body, resp.Header.Get("X-Ratelimit-Remaining-Requests"))
		}
	}
}

// A client that stops reading for longer than idle_timeout, while the
// backend streams as fast as it can, gets the whole stream: the time
// the gateway's writes wait on the client is not backend silence.
func TestIdleTimeoutIgnoresSlowClient(t *testing.T) {
	be := fb.New()
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL+" {\n\tidle_timeout 1s\n}")
	addr := strings.TrimPrefix(g.URL, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const tokens = 100000 // ~15 MB: more than the socket buffers hold
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-Fault: %s\r\nContent-Length: %d\r\n\r\n%s",
		addr, fb.Header(fb.Fault{Tokens: tokens}), len(helloStream), helloStream)
	br := bufio.NewReader(conn)
	if _, err := br.Peek(1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // the gateway's writes block meanwhile
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	if strings.Contains(string(body), "idle_timeout") || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("the stream did not end cleanly: %d %v ...%s, want no idle_timeout and data: [DONE] at the end", resp.StatusCode, resp.Header, body[max(0, len(body)-300):])
	}
	if got := strings.Count(string(body), `"content":"`); got < tokens {
		t.Fatalf("%d content chunks, want %d", got, tokens)
	}
}

// rawRequest sends head (and body, if any) on a new connection and
// returns the connection and a reader of its responses.
func rawRequest(t *testing.T, g *gateway, head, body string) (net.Conn, *bufio.Reader) {
	t.Helper()
	addr := strings.TrimPrefix(g.URL, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, strings.ReplaceAll(head, "{host}", addr)+body); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// readResponse reads one response and its body from br.
func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	return resp, string(b)
}

// closed reports whether the server closes conn without sending more.
func closed(conn net.Conn, br *bufio.Reader) bool {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := br.ReadByte()
	return err == io.EOF
}

func TestOversizedBodyRefusedAtOnce(t *testing.T) {
	g := newGateway(t, "chat_gateway {\n\tmax_request_body 1MiB\n}")
	for _, expect := range []string{"", "Expect: 100-continue\r\n"} {
		// The declared 100 MB never comes: only the head is sent.
		conn, br := rawRequest(t, g, "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"+
			expect+"Content-Length: 100000000\r\n\r\n", `{"messages":`)
		resp, body := readResponse(t, br)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || apiError(t, body)["code"] != "request_too_large" {
			t.Fatalf("%q: %d %s, want 413 request_too_large at once (no 100 Continue)", expect, resp.StatusCode, body)
		}
		if !resp.Close || !closed(conn, br) { // resp.Close: the reply said Connection: close
			t.Fatalf("%q: the connection stays open after a refused body: %v", expect, resp.Header)
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Fatalf("%q: no request id", expect)
		}
	}
}

func TestContentLengthWithTransferEncodingCloses(t *testing.T) {
	g := newGateway(t, "chat_gateway")
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hello), hello)
	smuggled := "GET /v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n"
	conn, br := rawRequest(t, g, "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"+
		"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", chunked+strings.ReplaceAll(smuggled, "{host}", "x"))
	resp, body := readResponse(t, br)
	if resp.StatusCode != 200 || !strings.Contains(body, "Echo: hello world") {
		t.Fatalf("%d %s, want 200 with Echo: hello world", resp.StatusCode, body)
	}
	if !resp.Close || !closed(conn, br) {
		t.Fatal("the connection stays open after a request with Content-Length and Transfer-Encoding: the pipelined request would be served")
	}
}

func TestSlowBodyTimesOutAndHoldsNoSlot(t *testing.T) {
	g := newGateway(t, "chat_gateway {\n\tmax_concurrent 1\n\tread_body_timeout 1s\n}")
	// A client that sends its head and one byte, then nothing.
	conn, br := rawRequest(t, g, fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(hello)), hello[:1])
	time.Sleep(100 * time.Millisecond) // its handler is reading the body
	for i := range 3 {
		if resp, body := g.post(t, hello); resp.StatusCode != 200 {
			t.Fatalf("request %d beside a slow upload: %d %s, want 200", i, resp.StatusCode, body)
		}
	}
	start := time.Now()
	resp, body := readResponse(t, br)
	if resp.StatusCode != http.StatusRequestTimeout || apiError(t, body)["code"] != "request_timeout" {
		t.Fatalf("slow upload: %d %s, want 408 request_timeout", resp.StatusCode, body)
	}
	if waited := time.Since(start); waited > 15*time.Second {
		t.Fatalf("408 after %v, want it within 15s", waited)
	}
	if !resp.Close || !closed(conn, br) {
		t.Fatal("the connection stays open after a body that timed out")
	}
}

// A request sent on a kept-alive connection just as the backend closes
// it fails before any reply; the gateway sends it again on a new one.
func TestReusedConnectionClosedIsRetried(t *testing.T) {
	// Deterministic: the second request on the first connection finds
	// it closed, as when the backend's idle timeout and the request cross.
	type served struct{}
	var closedOne atomic.Bool
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := r.Context().Value(served{}).(*atomic.Int32).Add(1); n == 2 && closedOne.CompareAndSwap(false, true) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		if r.Header["X-Idempotency-Key"] != nil {
			t.Errorf("the idempotency marker went out: %q", r.Header["X-Idempotency-Key"])
		}
		writeJSON(w, 200, `{"choices":[{"message":{"content":"fine"}}]}`)
	}))
	be.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, served{}, new(atomic.Int32))
	}
	be.Start()
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL)
	before := testutil.ToFloat64(gatewayMetrics.retries)
	for i := range 3 {
		if resp, body := g.post(t, hello, "X-Request-ID", fmt.Sprint("reuse-", i)); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s, want 200", i, resp.StatusCode, body)
		}
	}
	if got := testutil.ToFloat64(gatewayMetrics.retries) - before; got != 1 {
		t.Fatalf("%v retries counted, want 1 (the second request, sent again on a new connection)", got)
	}
	if l := g.waitLog(t, "handled request", "reuse-1"); l["retries"] != 1.0 {
		t.Fatalf("access log of the retried request: retries %v, want 1", l["retries"])
	}
}

// Under load, a backend that closes idle connections after a short
// time and every few requests costs clients nothing.
func TestBackendKeepAliveClosesAbsorbed(t *testing.T) {
	// 300ms: long enough that a connection the gateway just opened is
	// used before the backend gives up on it, even on a loaded machine
	// (only reused connections can be sent again).
	be := fb.NewKeepAlive(fb.KeepAlive{IdleTimeout: 300 * time.Millisecond, MaxRequests: 7})
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failures := map[int]int{}
	for c := range 16 {
		wg.Go(func() {
			for i := range 12 {
				// Gaps around the backend's idle timeout.
				time.Sleep(time.Duration(220+(c*7+i*13)%160) * time.Millisecond)
				body := hello
				if i%2 == 1 {
					body = helloStream
				}
				req := g.request(body)
				resp, err := http.DefaultClient.Do(req)
				status := 0
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				if status != 200 {
					mu.Lock()
					failures[status]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("failed requests by status: %v", failures)
	}
}

func TestUpstreamIdleConnsShorterThanBackends(t *testing.T) {
	for cfg, want := range map[string]time.Duration{
		"chat_gateway http://127.0.0.1:9": defaultUpstreamIdle,
		"chat_gateway {\n\tbackend http://127.0.0.1:9 {\n\t\ttransport http {\n\t\t\tkeepalive 30s\n\t\t}\n\t}\n}": 30 * time.Second,
	} {
		h, err := parse(t, cfg)
		if err != nil {
			t.Fatal(err)
		}
		// reverse_proxy provisions only within a running http app.
		newGateway(t, "chat_gateway")
		ctx, cancel := caddy.NewContext(caddy.ActiveContext())
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		rp := h.Backends[0].proxy.(*reverseproxy.Handler)
		if got := rp.Transport.(*reverseproxy.HTTPTransport).Transport.IdleConnTimeout; got != want {
			t.Errorf("%s: idle upstream connections kept %v, want %v", cfg, got, want)
		}
		cancel()
	}
}

func TestDeclaredHugeReplyRefusedUnread(t *testing.T) {
	be := fb.New()
	defer be.Close()
	g := newGateway(t, "chat_gateway "+be.URL)
	fault := fb.Header(fb.Fault{Mode: fb.HugeBody, Size: 100 << 20, DeclareLength: true})
	resp, body := g.post(t, hello, "X-Fault", fault)
	if resp.StatusCode != 502 || apiError(t, body)["code"] != "upstream_reply_too_large" {
		t.Fatalf("%d %s, want 502 upstream_reply_too_large", resp.StatusCode, body)
	}
}

// The upstream key a backend quotes in a 2xx reply (a Response that
// failed, non-streamed and as its response.failed event) is taken out
// too; and no log line, debug included, carries the key the gateway
// sends a backend that serves Messages as X-Api-Key.
func TestUpstreamKeyRedactedInRepliesAndLogs(t *testing.T) {
	const key = "sk-upstream-secret-key-43"
	failed := `{"id":"resp_1","object":"response","status":"failed","error":{"code":"server_error","message":"upstream rejected Bearer ` + key + `"},"output":[]}`
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/messages":
			writeJSON(w, 200, nativeReply)
		case strings.Contains(upstreamBody(r), `"stream":true`):
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\"}}\n\n")
			_, _ = io.WriteString(w, "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":"+failed+"}\n\n")
		default:
			writeJSON(w, 200, failed)
		}
	})
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n api_key %s\n messages native\n }\n}", be.URL, key))
	for _, body := range []string{`{"model":"m","input":"hi"}`, `{"model":"m","input":"hi","stream":true}`} {
		req := g.request(body)
		req.URL.Path = "/v1/responses"
		resp, got := do(t, req)
		if resp.StatusCode != 200 || strings.Contains(got, key) || !strings.Contains(got, "Bearer [redacted]") {
			t.Errorf("%s: %d %s, want 200 with Bearer [redacted] and no key", body, resp.StatusCode, got)
		}
	}
	if resp, got := do(t, messagesRequest(g, `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)); resp.StatusCode != 200 {
		t.Fatalf("messages: %d %s, want 200", resp.StatusCode, got)
	}
	if be.last(t).Header.Get("X-Api-Key") != key {
		t.Fatalf("the native backend got X-Api-Key %q, want the api_key", be.last(t).Header.Get("X-Api-Key"))
	}
	_, logs := g.logs(t)
	if !strings.Contains(logs, `"upstream roundtrip"`) {
		t.Fatal("no debug line of reverse_proxy's in the log: the test checks nothing")
	}
	if strings.Contains(logs, key) {
		t.Fatalf("the upstream key is in the log:\n%s", logs)
	}
}
