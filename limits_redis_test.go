package chatgateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"

	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// fakeClock is a limits.Clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// limitedEcho is an echo-mode Handler with limits l, provisioned outside
// a server, so tests can give it a fake clock.
func limitedEcho(t *testing.T, l *Limits) *Handler {
	t.Helper()
	h := &Handler{Limits: l}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// serveDirect sends body to h as the identity team.
func serveDirect(t *testing.T, h *Handler, body, team string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Team", team)
	w := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{})
	if err := h.ServeHTTP(w, req, nil); err != nil {
		t.Fatal(err)
	}
	return w
}

// A day's quota runs out, then comes back at midnight UTC.
func TestLimitsQuotaDay(t *testing.T) {
	quota := team("quota")
	clock := &fakeClock{now: time.Date(2030, 1, 1, 23, 0, 0, 0, time.UTC)}
	h := limitedEcho(t, &Limits{LimitSet: LimitSet{Quota: "1000/day"}, Per: "{http.request.header.X-Team}", clock: clock})
	// About 300 prompt tokens, echoed back: 600 used, 302 reserved.
	body := chatWith(299, `,"max_tokens":1`)
	for i := range 2 {
		if w := serveDirect(t, h, body, quota); w.Code != 200 {
			t.Fatalf("request %d: %d %s, want 200", i, w.Code, w.Body)
		}
	}
	w := serveDirect(t, h, body, quota)
	if w.Code != 429 || w.Header().Get("Retry-After") != "3600" {
		t.Fatalf("over quota: %d %v %s, want 429 with Retry-After 3600", w.Code, w.Header(), w.Body)
	}
	if e := apiError(t, w.Body.String()); e["code"] != "insufficient_quota" || e["type"] != "insufficient_quota" ||
		!strings.Contains(e["message"].(string), "on tokens per day: Limit 1000, Used ") {
		t.Fatalf("%s, want insufficient_quota on tokens per day, limit 1000", w.Body)
	}
	clock.advance(59 * time.Minute)
	if w := serveDirect(t, h, body, quota); w.Code != 429 || w.Header().Get("Retry-After") != "60" {
		t.Fatalf("a minute before midnight: %d %v, want 429 with Retry-After 60", w.Code, w.Header())
	}
	clock.advance(time.Minute)
	if w := serveDirect(t, h, body, quota); w.Code != 200 {
		t.Fatalf("after midnight: %d %s, want 200", w.Code, w.Body)
	}
}

// A lone request larger than the tokens limit passes, capped; what it
// used beyond its reservation is debt the next request waits for.
func TestLimitsLoneLargeRequest(t *testing.T) {
	lone := team("lone")
	clock := &fakeClock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	h := limitedEcho(t, &Limits{LimitSet: LimitSet{Tokens: "500/1m"}, Per: "{http.request.header.X-Team}", clock: clock})
	// ~400 prompt tokens echoed back: ~800 used, 500 reserved (capped).
	w := serveDirect(t, h, chatWith(399, `,"max_tokens":4000`), lone)
	if w.Code != 200 {
		t.Fatalf("%d %s, want 200", w.Code, w.Body)
	}
	w = serveDirect(t, h, chatWith(1, `,"max_tokens":10`), lone)
	if w.Code != 429 {
		t.Fatalf("next request: %d %s, want 429", w.Code, w.Body)
	}
	wait, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if err != nil || wait < 36 || wait > 40 { // ~300 tokens of debt + 12 at 500/min
		t.Fatalf("Retry-After %q, want 36 to 40 seconds", w.Header().Get("Retry-After"))
	}
	clock.advance(time.Duration(wait) * time.Second)
	if w := serveDirect(t, h, chatWith(1, `,"max_tokens":10`), lone); w.Code != 200 {
		t.Fatalf("after Retry-After: %d %s, want 200", w.Code, w.Body)
	}
}

// redisGateway loads a gateway with limits in Redis at addr.
func redisGateway(t *testing.T, backend, addr, limitLines, storeLines string) *gateway {
	t.Helper()
	return newGateway(t, `chat_gateway `+backend+` {
		limits {
			`+limitLines+`
			per {http.request.header.X-Team}
			store redis `+addr+` {
				`+storeLines+`
			}
		}
	}`)
}

// A gateway restarted mid-window keeps its counts in Redis.
func TestLimitsRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	load := func() *gateway { return redisGateway(t, "", srv.Addr, "requests 5/1h", "timeout 2s") }
	g := load()
	for range 3 {
		if resp, body := g.post(t, chatWith(1, ""), "X-Team", "restart"); resp.StatusCode != 200 {
			t.Fatalf("%d %s, want 200", resp.StatusCode, body)
		}
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	g = load()
	resp, body := g.post(t, chatWith(1, ""), "X-Team", "restart")
	if resp.StatusCode != 200 || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "1" {
		t.Fatalf("after restart: %d %v %s, want 200 with 1 request remaining", resp.StatusCode, resp.Header, body)
	}
}

// storeCalls counts the commands clients sent Redis: the scripts run,
// and all of them, connection setup included (INFO excepted; the
// commands the scripts run are not the clients').
func storeCalls(t *testing.T, c *redis.Client) (evals, all int64) {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, stats, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(stats, ",", 2)[0], 10, 64)
		switch strings.TrimPrefix(name, "cmdstat_") {
		case "evalsha", "eval":
			evals += n
			all += n
		case "hello", "auth", "select", "ping", "client|setinfo", "client|setname":
			all += n
		}
	}
	return evals, all
}

// Exactly one Redis round trip (a script) happens before the backend is
// contacted, and one more (the settlement) after the reply; connections
// are set up once and reused.
func TestLimitsRedisRoundTrips(t *testing.T) {
	srv := redistest.Start(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { raw.Close() })
	var atBackend []int64
	var mu sync.Mutex
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		evals, _ := storeCalls(t, raw)
		mu.Lock()
		atBackend = append(atBackend, evals)
		mu.Unlock()
		writeJSON(w, 200, `{"choices":[{"message":{"content":"Hello"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}`)
	})
	g := redisGateway(t, be.URL, srv.Addr, "requests 1000/1m\n tokens 100000/1m\n concurrent 10", "timeout 2s")
	settled := func() int64 { // waits for the settlements to land
		last, _ := storeCalls(t, raw)
		for {
			time.Sleep(50 * time.Millisecond)
			evals, _ := storeCalls(t, raw)
			if evals == last {
				return evals
			}
			last = evals
		}
	}
	g.post(t, chatWith(5, ""), "X-Team", "rt") // loads the scripts
	before := settled()
	for i := range 5 {
		if resp, body := g.post(t, chatWith(5, ""), "X-Team", "rt"); resp.StatusCode != 200 {
			t.Fatalf("%d %s, want 200", resp.StatusCode, body)
		}
		mu.Lock()
		got := atBackend[len(atBackend)-1] - before
		mu.Unlock()
		if got != 1 {
			t.Fatalf("request %d: %d Redis calls before the backend, want 1", i, got)
		}
		after := settled()
		if after-before != 2 {
			t.Fatalf("request %d: %d Redis calls in all, want 2", i, after-before)
		}
		before = after
	}
	evals, all := storeCalls(t, raw)
	if all-evals > 6 { // HELLO per connection (and the test's PING)
		t.Fatalf("%d scripts but %d Redis commands for 6 requests, want at most 6 besides the scripts", evals, all)
	}
}

// Redis gone: under allow, requests pass within the timeout; under
// deny, 503; either way service resumes by itself when Redis is back.
func TestLimitsRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	for _, mode := range []string{"allow", "deny"} {
		t.Run(mode, func(t *testing.T) {
			g := redisGateway(t, "", srv.Addr, "requests 1000/1m\n on_store_error "+mode, "timeout 100ms")
			if resp, _ := g.post(t, chatWith(1, ""), "X-Team", mode); resp.StatusCode != 200 || resp.Header.Get("X-Ratelimit-Limit-Requests") != "1000" {
				t.Fatalf("with Redis: %d %v, want 200 with a requests limit of 1000", resp.StatusCode, resp.Header)
			}
			srv.Pause() // accepts, never answers: the timeout must cut in
			for range 3 {
				start := time.Now()
				resp, body := g.post(t, chatWith(1, ""), "X-Team", mode)
				took := time.Since(start)
				if took > 100*time.Millisecond+time.Second {
					t.Fatalf("answered in %s with Redis paused, want at most 1.1s", took)
				}
				switch {
				case mode == "allow" && (resp.StatusCode != 200 || resp.Header.Get("X-Ratelimit-Limit-Requests") != ""):
					t.Fatalf("allow: %d %v, want 200 without x-ratelimit-limit-requests", resp.StatusCode, resp.Header)
				case mode == "deny" && (resp.StatusCode != 503 || apiError(t, body)["code"] != "rate_limits_unavailable"):
					t.Fatalf("deny: %d %s, want 503 rate_limits_unavailable", resp.StatusCode, body)
				}
			}
			lines, _ := g.logs(t)
			logged := 0
			for _, l := range lines {
				if l["msg"] == "limits store failed" {
					logged++
				}
			}
			if logged != 1 {
				t.Fatalf("3 store errors logged %d times, want once per burst", logged)
			}
			srv.Resume()
			srv.Kill() // refused connections
			resp, _ := g.post(t, chatWith(1, ""), "X-Team", mode)
			if want := map[string]int{"allow": 200, "deny": 503}[mode]; resp.StatusCode != want {
				t.Fatalf("Redis killed: %d, want %d", resp.StatusCode, want)
			}
			srv.Restart()
			deadline := time.Now().Add(5 * time.Second)
			for {
				resp, _ := g.post(t, chatWith(1, ""), "X-Team", mode)
				if resp.StatusCode == 200 && resp.Header.Get("X-Ratelimit-Limit-Requests") == "1000" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no recovery within 5s of Redis restarting: %d %v, want 200 with a requests limit of 1000", resp.StatusCode, resp.Header)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// The example loads and limits with its Redis.
func TestTeamLimitsExample(t *testing.T) {
	srv := redistest.Start(t)
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"from llama"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}`)
	})
	t.Setenv("REDIS_ADDR", srv.Addr)
	raw, err := os.ReadFile("examples/team-limits.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	t.Setenv("PORT", strconv.Itoa(port))
	t.Setenv("ADMIN_PORT", strconv.Itoa(adminPort))
	cfg := strings.NewReplacer("http://127.0.0.1:8081", be.URL).Replace(string(raw))
	caddytest.NewTester(t).InitServer(cfg, "caddyfile")
	g := &gateway{URL: fmt.Sprintf("http://127.0.0.1:%d", port)}
	resp, body := g.post(t, chatWith(2, ""), "X-Team", "example")
	if resp.StatusCode != 200 || !strings.Contains(body, "from llama") || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "599" {
		t.Fatalf("%d %v %s, want 200 from llama with 599 requests remaining", resp.StatusCode, resp.Header, body)
	}
	keys, err := redis.NewClient(&redis.Options{Addr: srv.Addr}).Keys(context.Background(), "chat_gateway:{id:example}:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("no counters in Redis: %v %v", keys, err)
	}
}

// Three gateway processes sharing one Redis enforce one limit: 300
// requests round-robin admit what one instance would (100, plus the
// refill while they run, ±1).
func TestLimitsCluster(t *testing.T) {
	srv := redistest.Start(t)
	var urls []string
	for range 3 {
		g, _ := startProcess(t, fmt.Sprintf(`chat_gateway {
	limits {
		requests 100/1m
		per {http.request.header.X-Team}
		store redis %s {
			timeout 1s
		}
	}
}`, srv.Addr))
		urls = append(urls, g.URL)
	}
	admitted := 0
	start := time.Now()
	var first, last time.Time
	for i := range 300 {
		g := &gateway{URL: urls[i%3]}
		sent := time.Now()
		resp, body := g.post(t, chatWith(1, ""), "X-Team", "cluster")
		switch resp.StatusCode {
		case 200:
			if admitted == 0 {
				first = sent
			}
			admitted++
			last = sent
		case 429:
		default:
			t.Fatalf("%d %s, want 200 or 429", resp.StatusCode, body)
		}
		// Spread the requests over ~6 s, as traffic would come.
		if wait := time.Duration(i+1)*20*time.Millisecond - time.Since(start); wait > 0 {
			time.Sleep(wait)
		}
	}
	elapsed := last.Sub(first)
	if elapsed > 10*time.Second {
		t.Fatalf("the requests took %s, want at most 10s", elapsed)
	}
	refill := elapsed.Seconds() * 100 / 60
	t.Logf("admitted %d of 300 in %s across 3 instances; one instance admits %.1f", admitted, elapsed, 100+refill)
	if want := 100 + refill; float64(admitted) < want-1 || float64(admitted) > want+1 {
		t.Fatalf("admitted %d in %s across 3 instances, want %.1f ±1, what one instance admits", admitted, elapsed, want)
	}
}

// BenchmarkLimits measures what the limits add to an echo request: in
// memory, and in a Redis on loopback (one script before the reply, one
// after it, off the request's path).
func BenchmarkLimits(b *testing.B) {
	set := LimitSet{Requests: "1000000000000/1m", Tokens: "1000000000000/1m", Concurrent: 1000}
	srv := redistest.Start(b)
	for _, tc := range []struct {
		name   string
		limits *Limits
	}{
		{"none", nil},
		{"memory", &Limits{LimitSet: set}},
		{"redis", &Limits{LimitSet: set, Redis: &RedisStore{Address: srv.Addr, Timeout: caddy.Duration(time.Second)}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := &Handler{Limits: tc.limits}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := h.Provision(ctx); err != nil {
				b.Fatal(err)
			}
			defer h.Cleanup()
			body := chatBody(64)
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				w := httptest.NewRecorder()
				req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{})
				if err := h.ServeHTTP(w, req, nil); err != nil || w.Code != 200 {
					b.Fatalf("%d %v, want 200", w.Code, err)
				}
			}
		})
	}
}

// TestLimitsRedisPartition: under concurrent 1, a request that ends
// while the gateway is cut off from Redis frees its slot once Redis
// answers again (its settlement is sent again), not an hour later; and
// a request that runs longer than the slot's lease keeps its slot, the
// lease renewed as it runs.
func TestLimitsRedisPartition(t *testing.T) {
	srv := redistest.Start(t)
	release := make(chan struct{})
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"held"}}]}`)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		sseEvent(w, `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`)
		sseEvent(w, "[DONE]")
	})
	g := redisGateway(t, be.URL, srv.Addr, "concurrent 1", "timeout 100ms")
	held := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`
	resp, err := http.DefaultClient.Do(g.request(held, "X-Team", "cut"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v, want 200", resp, err)
	}
	defer resp.Body.Close()
	if resp, body := g.post(t, chatWith(1, ""), "X-Team", "cut"); resp.StatusCode != 429 {
		t.Fatalf("a second request under concurrent 1: %d %s, want 429", resp.StatusCode, body)
	}

	srv.Pause()
	close(release)
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !settleFailed(t, g) {
		if time.Now().After(deadline) {
			t.Fatal("the settlement did not fail with Redis paused")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(600 * time.Millisecond) // the cut the review made
	srv.Resume()
	back := time.Now()
	for {
		resp, body := g.post(t, chatWith(1, ""), "X-Team", "cut")
		if resp.StatusCode == 200 {
			t.Logf("the slot was free %s after Redis answered again", time.Since(back).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after Redis came back: %d %s, want 200", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settleFailed reports whether g logged a failed settlement.
func settleFailed(t *testing.T, g *gateway) bool {
	lines, _ := g.logs(t)
	return slices.ContainsFunc(lines, func(l map[string]any) bool { return l["msg"] == "limits store failed" && l["op"] == "settle" })
}

// TestLimitsRedisLeaseRenewed: a request in flight renews its slot's
// lease while it runs; the slot's score (when its lease ends) moves on.
func TestLimitsRedisLeaseRenewed(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "renew" + strconv.Itoa(freePort(t)) + ":"
	h := limitedEcho(t, &Limits{LimitSet: LimitSet{Concurrent: 1}, Per: "{http.request.header.X-Team}", lease: 300 * time.Millisecond,
		Redis: &RedisStore{Address: srv.Addr, KeyPrefix: prefix, Timeout: caddy.Duration(time.Second)}})
	h.EchoDelay = caddy.Duration(50 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveDirect(t, h, `{"messages":[{"role":"user","content":"`+strings.Repeat("word ", 40)+`"}],"stream":true}`, "renew")
	}()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	key := prefix + "{id:renew}:concurrent"
	var scores []float64
	for deadline := time.Now().Add(30 * time.Second); len(scores) < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("lease ends seen: %v, want three, each later", scores)
		}
		z, err := c.ZRangeWithScores(context.Background(), key, 0, -1).Result()
		if err != nil || len(z) != 1 {
			continue
		}
		if len(scores) == 0 || z[0].Score > scores[len(scores)-1] {
			scores = append(scores, z[0].Score)
		}
	}
	<-done
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) { // settled off the request's path
		n, err := c.ZCard(context.Background(), key).Result()
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the request: %d slots held (%v), want 0", n, err)
		}
	}
}
