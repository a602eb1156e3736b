package chatgateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// replica is a fake backend that answers as name; fail decides, per
// request number (from 1), whether it fails instead, and how.
func replica(t *testing.T, name string, fail func(n int64, w http.ResponseWriter, r *http.Request) bool) *backend {
	var n atomic.Int64
	return newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if fail != nil && fail(n.Add(1), w, r) {
			return
		}
		if strings.Contains(upstreamBody(r), `"stream":true`) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"role":"assistant"}}]}`)
			sseEvent(w, fmt.Sprintf(`{"choices":[{"index":0,"delta":{"content":"from %s"},"finish_reason":"stop"}]}`, name))
			sseEvent(w, "[DONE]")
			return
		}
		writeJSON(w, 200, fmt.Sprintf(`{"choices":[{"message":{"content":"from %s"}}]}`, name))
	})
}

func refusing(t *testing.T) string {
	return fmt.Sprintf("http://127.0.0.1:%d", freePort(t)) // nothing listens there
}

func unavailable(n int64, w http.ResponseWriter, r *http.Request) bool {
	w.Header().Set("Retry-After", "1")
	writeJSON(w, 503, `{"error":{"message":"loading model"}}`)
	return true
}

// TestFailover: one replica refuses connections, one answers 503, one is
// healthy; every request is answered by the healthy one, with the body
// the client sent.
func TestFailover(t *testing.T) {
	healthy := replica(t, "healthy", nil)
	busy := replica(t, "busy", unavailable)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s %s %s {
			lb_policy round_robin
			retry_on 5xx
		}
	}`, refusing(t), busy.URL, healthy.URL))
	sent := `{"model":"m","messages":[{"role":"user","content":"intact body ✓"}],"temperature":0.5}`
	for i := range 12 {
		body := sent
		if i%2 == 1 {
			body = strings.Replace(sent, `"temperature"`, `"stream":true,"temperature"`, 1)
		}
		resp, got := g.post(t, body)
		if resp.StatusCode != 200 || !strings.Contains(got, "from healthy") {
			t.Fatalf("request %d: %d %s, want 200 from healthy", i, resp.StatusCode, got)
		}
		if healthy.last(t).Body != body {
			t.Fatalf("body re-sent changed: %s, want %s", healthy.last(t).Body, body)
		}
	}
	if busy.count() > 2 {
		t.Errorf("the 503 replica got %d requests: it should be marked down after its first", busy.count())
	}
	if _, raw := g.logs(t); strings.Contains(raw, "UNLIMITED BUFFERING") {
		t.Error("Caddy warns of unlimited request buffering: retry_on must set a bounded request_buffers")
	}
}

// TestRetryResendsLargestBody: with retry_on, a body of max_request_body
// bytes, grown by an alias's longer model name, is sent again whole after
// a 503: the request buffer is bounded but holds the largest body.
func TestRetryResendsLargestBody(t *testing.T) {
	flaky := replica(t, "flaky", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		return n == 1 && unavailable(n, w, r)
	})
	long := strings.Repeat("m", 200)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			alias a %s
			retry_on 503
		}
		max_request_body 2KiB
	}`, flaky.URL, long))
	head := `{"model":"a","messages":[{"role":"user","content":"`
	body := head + strings.Repeat("x", 2048-len(head)-len(`"}]}`)) + `"}]}`
	resp, got := g.post(t, body)
	if resp.StatusCode != 200 || !strings.Contains(got, "from flaky") {
		t.Fatalf("%d %s, want 200 from the second attempt", resp.StatusCode, got)
	}
	want := strings.Replace(body, `"model":"a"`, `"model":"`+long+`"`, 1)
	if flaky.count() != 2 || flaky.last(t).Body != want {
		t.Fatalf("%d requests, last body %d bytes; want 2 requests, the second with the whole %d-byte body", flaky.count(), len(flaky.last(t).Body), len(want))
	}
	if _, raw := g.logs(t); strings.Contains(raw, "UNLIMITED BUFFERING") {
		t.Error("Caddy warns of unlimited request buffering")
	}
}

// TestRetryAfterKeepsUpstreamDown: a replica that answers 429 with
// Retry-After stays out of rotation that long, though fail_duration is
// far shorter, and comes back after.
func TestRetryAfterKeepsUpstreamDown(t *testing.T) {
	var limitedAt atomic.Int64
	limited := replica(t, "limited", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n > 1 {
			return false
		}
		limitedAt.Store(time.Now().UnixNano())
		w.Header().Set("Retry-After", "2")
		writeJSON(w, 429, `{"error":{"message":"slow down","code":"rate_limit_exceeded"}}`)
		return true
	})
	other := replica(t, "other", nil)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s %s {
			lb_policy round_robin
			retry_on 429
			fail_duration 50ms
		}
	}`, limited.URL, other.URL))
	for limited.count() == 0 {
		if resp, body := g.post(t, hello); resp.StatusCode != 200 || !strings.Contains(body, "from other") {
			t.Fatalf("%d %s, want 200 from other", resp.StatusCode, body)
		}
	}
	// Round robin would send every other request to the limited replica
	// once fail_duration is over.
	for time.Since(time.Unix(0, limitedAt.Load())) < 1500*time.Millisecond {
		if resp, body := g.post(t, hello); resp.StatusCode != 200 || !strings.Contains(body, "from other") {
			t.Fatalf("during Retry-After: %d %s, want 200 from other", resp.StatusCode, body)
		}
		if n := limited.count(); n != 1 {
			t.Fatalf("the limited replica got %d requests within its Retry-After, want 1", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for deadline := time.Now().Add(5 * time.Second); limited.count() == 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the limited replica never came back")
		}
		g.post(t, hello)
	}
	if wait := time.Since(time.Unix(0, limitedAt.Load())); wait < 2*time.Second {
		t.Fatalf("back after %v, before its Retry-After, want at least 2s", wait)
	}
}

// TestCoolingSelection follows the placeholders reverse_proxy sets
// across attempts: a 429 with Retry-After from A, then a dial error on
// B, then a reply from C. Only A cools; every upstream cooling selects
// none.
func TestCoolingSelection(t *testing.T) {
	c := &cooldowns{statuses: []int{429, 503}, until: map[string]time.Time{}}
	sel := coolingSelection{reverseproxy.FirstSelection{}, c}
	pool := reverseproxy.UpstreamPool{{Dial: "a:1"}, {Dial: "b:1"}, {Dial: "c:1"}}
	repl := caddy.NewReplacer()
	r := httptest.NewRequest("POST", "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	attempt := func(want string) {
		t.Helper()
		u := sel.Select(pool, r, nil)
		if u == nil || u.Dial != want {
			t.Fatalf("selected %v, want %s", u, want)
		}
		repl.Set("http.reverse_proxy.upstream.hostport", u.Dial)
	}

	attempt("a:1")
	repl.Set("http.reverse_proxy.status_code", 429)
	repl.Set("http.reverse_proxy.header.Retry-After", "30")
	attempt("b:1") // a cools
	// b: a dial error, so no status of its own; a still cools
	attempt("b:1")
	c.observe(repl, time.Now()) // the proxy returned
	if c.cooling("b:1", time.Now()) {
		t.Fatal("b cools on a's Retry-After")
	}
	if !c.cooling("a:1", time.Now()) || c.cooling("a:1", time.Now().Add(31*time.Second)) {
		t.Fatal("a's cooldown is not its Retry-After")
	}

	for _, addr := range []string{"b:1", "c:1"} {
		repl.Set("http.reverse_proxy.upstream.hostport", addr)
		repl.Set("http.reverse_proxy.status_code", 503)
		c.observe(repl, time.Now())
	}
	if u := sel.Select(pool, r, nil); u != nil {
		t.Fatalf("selected %s while every upstream cools", u.Dial)
	}
}

// TestRetryAfter: the values a backend may send, and the cap.
func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for value, want := range map[string]time.Duration{
		"":                              0,
		" 7 ":                           7 * time.Second,
		"0":                             0,
		"-3":                            0,
		"1.5":                           0,
		"soon":                          0,
		"99999999999999999999":          maxCooldown,
		"86400":                         maxCooldown,
		"Thu, 26 Nov 2026 12:00:30 GMT": 30 * time.Second,
		"Thu, 26 Nov 2026 11:59:00 GMT": 0,
		"Fri, 27 Nov 2026 12:00:00 GMT": maxCooldown,
	} {
		if got := retryAfter(value, now); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", value, got, want)
		}
	}
}

// TestNoRetryAfterFirstByte: a stream cut after content went out ends
// with an error event; no other replica is tried.
func TestNoRetryAfterFirstByte(t *testing.T) {
	cut := replica(t, "cut", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"partial"}}]}`)
		return true
	})
	other := replica(t, "other", nil)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s %s {
			lb_policy first
			retry_on 5xx stream
			fallback spare
		}
		backend %s {
			models spare
		}
	}`, cut.URL, other.URL, other.URL))
	resp, body := g.post(t, helloStream)
	chunks := parseStream(t, body, false)
	if last := chunks[len(chunks)-1]; resp.StatusCode != 200 || last.Error == nil || last.Error.Code != "stream_truncated" {
		t.Fatalf("%d %s, want 200 ending in a stream_truncated error event", resp.StatusCode, body)
	}
	if !strings.Contains(body, "partial") || other.count() != 0 {
		t.Fatalf("retried after the first byte: other got %d requests, want the partial content and none", other.count())
	}
}

// TestRetryStreamBeforeContent: a stream that fails before its first
// content (role chunk, then cut) is tried again on the next replica; the
// client sees one clean stream.
func TestRetryStreamBeforeContent(t *testing.T) {
	flaky := replica(t, "flaky", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"role":"assistant"}}]}`)
		return true
	})
	good := replica(t, "good", nil)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s %s {
			lb_policy round_robin
			retry_on stream
		}
	}`, flaky.URL, good.URL))
	for range 4 {
		resp, body := g.post(t, helloStream, "X-Request-ID", "retry-1")
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s, want 200", resp.StatusCode, body)
		}
		checkChunks(t, parseStream(t, body, true), "retry-1", "from good", false)
		if strings.Count(body, `"role"`) != 1 {
			t.Fatalf("two role chunks: %s, want one", body)
		}
	}
	if flaky.count() == 0 {
		t.Fatal("the flaky replica was never tried")
	}

	// Without retry_on stream, the failure is the client's answer.
	g = newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n }\n}", flaky.URL))
	if resp, body := g.post(t, helloStream); resp.StatusCode != 502 || apiError(t, body)["code"] != "stream_truncated" {
		t.Fatalf("%d %s, want 502 stream_truncated", resp.StatusCode, body)
	}
}

// TestFallback: a local backend that is down, rate limited or too slow
// to its first token hands the request to its fallback model's backend,
// under that model's name.
func TestFallback(t *testing.T) {
	cloud := replica(t, "cloud", nil)
	slow := replica(t, "slow", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return true
	})
	limited := replica(t, "limited", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "30")
		writeJSON(w, 429, `{"error":{"message":"slow down"}}`)
		return true
	})
	for name, local := range map[string]string{"down": refusing(t), "slow": slow.URL, "rate limited": limited.URL} {
		t.Run(name, func(t *testing.T) {
			g := newGateway(t, fmt.Sprintf(`chat_gateway {
				backend %s {
					models llama
					fallback gpt-4o-mini
				}
				backend %s {
					models gpt-4o-mini
				}
				first_token_timeout 200ms
			}`, local, cloud.URL))
			for _, body := range []string{
				`{"model":"llama","messages":[{"role":"user","content":"x"}]}`,
				`{"model":"llama","messages":[{"role":"user","content":"x"}],"stream":true}`,
			} {
				resp, got := g.post(t, body)
				if resp.StatusCode != 200 || !strings.Contains(got, "from cloud") {
					t.Fatalf("%d %s, want 200 from cloud", resp.StatusCode, got)
				}
				if resp.Header.Get("Retry-After") != "" {
					t.Fatal("the failed attempt's Retry-After reached the fallback's reply")
				}
				if up := cloud.last(t).Body; !strings.Contains(up, `"model":"gpt-4o-mini"`) {
					t.Fatalf("fallback sent %s, want model gpt-4o-mini", up)
				}
			}
		})
	}

	// A client error is not the backend's failure: no fallback.
	bad := replica(t, "bad", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		writeJSON(w, 400, `{"error":{"message":"context too long","code":"context_length_exceeded"}}`)
		return true
	})
	before := cloud.count()
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n models llama\n fallback gpt-4o-mini\n }\n backend %s {\n models gpt-4o-mini\n }\n}", bad.URL, cloud.URL))
	if resp, body := g.post(t, `{"model":"llama","messages":[{"role":"user","content":"x"}]}`); resp.StatusCode != 400 || cloud.count() != before {
		t.Fatalf("%d %s (cloud got %d), want 400 and no fallback", resp.StatusCode, body, cloud.count()-before)
	}
}

// TestHealthRecovers: a replica marked down by a 503 is used again after
// fail_duration.
func TestHealthRecovers(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	a := replica(t, "a", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if down.Load() { // no Retry-After: fail_duration alone applies
			writeJSON(w, 503, `{"error":{"message":"loading model"}}`)
			return true
		}
		return false
	})
	b := replica(t, "b", nil)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s %s {
			lb_policy first
			retry_on 5xx
			fail_duration 300ms
		}
	}`, a.URL, b.URL))
	for range 3 {
		if _, body := g.post(t, hello); !strings.Contains(body, "from b") {
			t.Fatalf("while a is down: %s, want from b", body)
		}
	}
	if a.count() != 1 {
		t.Fatalf("a got %d requests while marked down, want 1", a.count())
	}
	down.Store(false)
	time.Sleep(400 * time.Millisecond)
	if _, body := g.post(t, hello); !strings.Contains(body, "from a") {
		t.Fatalf("a did not recover: %s", body)
	}
}

// TestStallMidStream: a replica that stalls after content is cut by
// idle_timeout, with no retry.
func TestStallMidStream(t *testing.T) {
	stall := replica(t, "stall", func(n int64, w http.ResponseWriter, r *http.Request) bool {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"a"}}]}`)
		<-r.Context().Done()
		return true
	})
	other := replica(t, "other", nil)
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s %s {\n lb_policy first\n retry_on stream 5xx\n }\n idle_timeout 150ms\n}", stall.URL, other.URL))
	_, body := g.post(t, helloStream)
	chunks := parseStream(t, body, false)
	if last := chunks[len(chunks)-1]; last.Error == nil || last.Error.Code != "idle_timeout" || other.count() != 0 {
		t.Fatalf("%s (other got %d), want an idle_timeout error event and none", body, other.count())
	}
}

// TestReload: a stream open across a config reload finishes on the old
// config; new requests use the new one.
func TestReload(t *testing.T) {
	release := make(chan struct{})
	old := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"old "}}]}`)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"config"},"finish_reason":"stop"}]}`)
		sseEvent(w, "[DONE]")
	})
	fresh := replica(t, "new", nil)
	port := freePort(t)
	g := loadGateway(t, port, "10s", "chat_gateway "+old.URL)

	resp := g.open(t, helloStream)
	first := make([]byte, 64)
	if _, err := io.ReadAtLeast(resp.Body, first, 10); err != nil {
		t.Fatal(err)
	}

	loadGateway(t, port, "10s", "chat_gateway "+fresh.URL)
	if _, body := g.post(t, hello); !strings.Contains(body, "from new") {
		t.Fatalf("after reload: %s, want from new", body)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	all := string(first) + string(rest)
	if !strings.Contains(all, "config") || !strings.HasSuffix(all, "data: [DONE]\n\n") {
		t.Fatalf("the open stream did not finish: %s", all)
	}
}

// timeoutErr is a net.Error that timed out, as a dial past its deadline.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestProxyErrorCodes: each transport failure reverse_proxy reports
// becomes its own error, naming no address.
func TestProxyErrorCodes(t *testing.T) {
	dial := reverseproxy.NewDialError(&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}})
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{caddyhttp.Error(502, dial), 504, "dial_timeout"}, // as reverse_proxy reports it
		{caddyhttp.Error(502, reverseproxy.NewDialError(errors.New("dial tcp 10.0.0.1:80: connection refused"))), 502, "upstream_unavailable"},
		{caddyhttp.Error(504, timeoutErr{}), 504, "upstream_timeout"},
		{caddyhttp.Error(503, errors.New("no upstreams available")), 503, "no_upstream_available"},
		{nil, 502, "upstream_unavailable"},
	}
	for _, tt := range tests {
		e := proxyError(tt.err)
		if e.Status != tt.status || e.Code != tt.code || strings.Contains(e.Message, "10.0.0.1") {
			t.Errorf("%v: got %d %s %q, want %d %s naming no address", tt.err, e.Status, e.Code, e.Message, tt.status, tt.code)
		}
	}
}

// TestReadyz: /readyz is 200 while every backend has a healthy upstream
// and in echo mode, 503 in OpenAI's error shape once a backend's
// upstreams are all marked down.
func TestReadyz(t *testing.T) {
	ready := func(g *gateway) (int, string) {
		resp, body := do(t, mustRequest("GET", g.URL+"/readyz"))
		if resp.Header.Get("X-Request-ID") == "" || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("readyz headers %v, want X-Request-ID and JSON", resp.Header)
		}
		return resp.StatusCode, body
	}
	if status, body := ready(newGateway(t, "chat_gateway")); status != 200 || body != `{"status":"ready"}` {
		t.Fatalf("echo mode: %d %s, want 200 {\"status\":\"ready\"}", status, body)
	}

	healthy := replica(t, "healthy", nil)
	up := newGateway(t, fmt.Sprintf("chat_gateway %s", healthy.URL))
	if status, body := ready(up); status != 200 || body != `{"status":"ready"}` {
		t.Fatalf("a backend that answers: %d %s, want 200 ready", status, body)
	}
	// No health checks configured, no request made: the gateway's own
	// probe finds that neither replica of a backend accepts a
	// connection (a wrong port), within seconds.
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models up
		}
		backend %s %s {
			models down
		}
	}`, healthy.URL, refusing(t), refusing(t)))
	var status int
	var body string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if status, body = ready(g); status == 503 || time.Now().After(deadline) {
			break
		}
	}
	if e := apiError(t, body); status != 503 || e["code"] != "no_healthy_upstream" || e["type"] != "upstream_error" || strings.Contains(body, "127.0.0.1") {
		t.Fatalf("with a backend nobody can reach: %d %s, want 503 no_healthy_upstream naming no address", status, body)
	}
	if resp, body := g.post(t, `{"model":"up","messages":[{"role":"user","content":"x"}]}`); resp.StatusCode != 200 {
		t.Fatalf("the backend that answers, meanwhile: %d %s, want 200", resp.StatusCode, body)
	}
	if resp, _ := do(t, mustRequest("POST", g.URL+"/readyz")); resp.StatusCode != 405 {
		t.Fatalf("POST /readyz: %d, want 405", resp.StatusCode)
	}
}

// Several backends with active health checks are provisioned one after
// another; each proxy's health checker starts during its Provision.
// Under -race this failed while the backends' proxies shared one slot of
// the module lineage (see clipLineage).
func TestProvisionBackendsWithActiveHealthChecks(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"healthy"}}]}`)
	})
	var cfg strings.Builder
	cfg.WriteString("chat_gateway {\n")
	for _, m := range []string{"a", "b", "c", "d"} {
		fmt.Fprintf(&cfg, "\tbackend %s {\n\t\tmodels %s\n\t\thealth_uri /health\n\t\thealth_interval 20ms\n\t}\n", be.URL, m)
	}
	cfg.WriteString("}")
	for range 3 {
		newGateway(t, cfg.String())
	}
	g := newGateway(t, cfg.String())
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, body := g.post(t, `{"model":"c","messages":[{"role":"user","content":"x"}]}`)
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s, want 200 within 10s", resp.StatusCode, body)
		}
	}
}
