package chatgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

func histogramCount(t *testing.T, h prometheus.Observer) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestMetrics sends a known sequence of requests and checks what each
// metric gained.
func TestMetrics(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(upstreamBody(r), `"slow"`):
			<-r.Context().Done()
		case strings.Contains(upstreamBody(r), `"stream":true`):
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"a b"}}]}`)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":" c"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3}}`)
			sseEvent(w, "[DONE]")
		default:
			writeJSON(w, 200, `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":2}}`)
		}
	})
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models llama
		}
		backend %s {
			models dead
		}
	}`, be.URL, refusing(t)))
	m := &gatewayMetrics
	type counts struct{ ok, okStream, clientErr, upstreamErr, cancelled, promptTok, complTok, failReason float64 }
	read := func() counts {
		return counts{
			testutil.ToFloat64(m.requests.WithLabelValues("llama", "false", "ok", "", "chat_completions")),
			testutil.ToFloat64(m.requests.WithLabelValues("llama", "true", "ok", "", "chat_completions")),
			testutil.ToFloat64(m.requests.WithLabelValues("other", "false", "client_error", "", "chat_completions")),
			testutil.ToFloat64(m.requests.WithLabelValues("dead", "false", "upstream_error", "", "chat_completions")),
			testutil.ToFloat64(m.requests.WithLabelValues("llama", "false", "client_cancelled", "", "chat_completions")),
			testutil.ToFloat64(m.tokens.WithLabelValues("llama", "prompt", "")),
			testutil.ToFloat64(m.tokens.WithLabelValues("llama", "completion", "")),
			testutil.ToFloat64(m.upstreamErrors.WithLabelValues("upstream_unavailable")),
		}
	}
	before := read()
	ttftBefore := histogramCount(t, m.ttft.WithLabelValues("llama", "chat_completions"))
	overheadBefore := histogramCount(t, m.overhead)

	g.post(t, `{"model":"llama","messages":[{"role":"user","content":"x"}]}`)
	g.post(t, `{"model":"llama","messages":[{"role":"user","content":"x"}],"stream":true}`)
	g.post(t, `{"model":"secret-model-name","messages":"nope"}`)
	g.post(t, `{"model":"dead","messages":[{"role":"user","content":"x"}]}`)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "POST", g.URL+"/v1/chat/completions", strings.NewReader(`{"model":"llama","messages":[{"role":"user","content":"slow"}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-ID", "metrics-cancel")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	cancel()
	g.waitLog(t, "handled request", "metrics-cancel")

	after := read()
	want := counts{1, 1, 1, 1, 1, 7 + 10, 2 + 3, 1}
	got := counts{after.ok - before.ok, after.okStream - before.okStream, after.clientErr - before.clientErr, after.upstreamErr - before.upstreamErr,
		after.cancelled - before.cancelled, after.promptTok - before.promptTok, after.complTok - before.complTok, after.failReason - before.failReason}
	if got != want {
		t.Fatalf("metric deltas %+v, want %+v", got, want)
	}
	if n := histogramCount(t, m.ttft.WithLabelValues("llama", "chat_completions")) - ttftBefore; n != 2 {
		t.Errorf("ttft observed %d times, want 2", n)
	}
	if n := histogramCount(t, m.overhead) - overheadBefore; n != 5 {
		t.Errorf("overhead observed %d times, want 5", n)
	}
	if v := testutil.ToFloat64(m.inFlight); v != 0 {
		t.Errorf("in flight %v after all requests ended, want 0", v)
	}
}

// TestMetricsEndpointAcrossReloads loads configs with the metrics handler
// twice on one port and scrapes: no duplicate registration.
func TestMetricsEndpointAcrossReloads(t *testing.T) {
	port := freePort(t)
	var g *gateway
	for range 3 {
		g = loadGateway(t, port, "1ns", "metrics /metrics\nchat_gateway")
		g.post(t, `{"model":"echo","messages":[{"role":"user","content":"x"}],"stream":true}`)
	}
	resp, body := do(t, mustRequest("GET", g.URL+"/metrics"))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, body)
	}
	for _, name := range []string{"caddy_chat_gateway_requests_total{endpoint=\"chat_completions\",key=\"\",model=\"echo\",outcome=\"ok\",stream=\"true\"}",
		"caddy_chat_gateway_time_to_first_token_seconds_bucket", "caddy_chat_gateway_overhead_seconds_count", "caddy_chat_gateway_tokens_total"} {
		if !strings.Contains(body, name) {
			t.Errorf("scrape lacks %s", name)
		}
	}
	if strings.Contains(body, "secret-model-name") {
		t.Error("an unconfigured model became a label")
	}
}

// TestLogFieldsAndPlaceholders: the access log carries the gateway's
// fields; its placeholders work in header and log_append.
func TestLogFieldsAndPlaceholders(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":2}}`)
	})
	g := newGateway(t, fmt.Sprintf(`header >X-Gateway-Id {http.chat_gateway.request_id}
		header >X-Gateway-Tokens {http.chat_gateway.completion_tokens}
		header >X-Gateway-Outcome {http.chat_gateway.outcome}
		log_append gw_upstream {http.chat_gateway.upstream}
		chat_gateway %s {
			log_sizes
		}`, be.URL))
	resp, _ := g.post(t, `{"model":"llama","messages":[{"role":"user","content":"never logged"}]}`, "X-Request-ID", "obs-1")
	if resp.Header.Get("X-Gateway-Id") != "obs-1" || resp.Header.Get("X-Gateway-Tokens") != "2" || resp.Header.Get("X-Gateway-Outcome") != "ok" {
		t.Fatalf("placeholder headers: %v, want X-Gateway-Id obs-1, X-Gateway-Tokens 2, X-Gateway-Outcome ok", resp.Header)
	}
	if st := resp.Header.Get("Server-Timing"); !regexp.MustCompile(`^gateway;dur=[0-9.]+, upstream;dur=[0-9.]+$`).MatchString(st) {
		t.Fatalf("Server-Timing %q, want gateway;dur=N, upstream;dur=N", st)
	}
	l := g.waitLog(t, "handled request", "obs-1")
	upstream := strings.TrimPrefix(be.URL, "http://")
	for k, v := range map[string]any{"model": "llama", "stream": false, "prompt_tokens": 7.0, "completion_tokens": 2.0,
		"finish_reason": "length", "outcome": "ok", "upstream": upstream, "gw_upstream": upstream, "prompt_bytes": 14.0, "completion_bytes": 2.0} {
		if l[k] != v {
			t.Errorf("access log %s = %v, want %v", k, l[k], v)
		}
	}
	if _, ok := l["ttft"].(float64); !ok {
		t.Errorf("access log ttft = %v, want a number", l["ttft"])
	}
	if _, raw := g.logs(t); strings.Contains(raw, "never logged") {
		t.Fatal("the prompt was logged")
	}
}

// TestPlaceholderValues: each {http.chat_gateway.*} placeholder is
// known once its value is, and the final ones keep the values they had
// when the reply started.
func TestPlaceholderValues(t *testing.T) {
	h := provisioned(t, "chat_gateway")
	get := func(repl *caddy.Replacer, name string) any {
		v, ok := repl.Get("http.chat_gateway." + name)
		if !ok {
			return "unknown"
		}
		return v
	}
	req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(hello))
	req.Header.Set("X-Request-Id", "ph-1")
	w, repl := serve(t, h, req)
	if w.Code != 200 {
		t.Fatalf("%d %s, want 200", w.Code, w.Body)
	}
	var reply struct {
		Usage struct {
			PromptTokens     int64 `json:"prompt_tokens"`
			CompletionTokens int64 `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal(w.Body.Bytes(), &reply); err != nil || reply.Usage.CompletionTokens == 0 {
		t.Fatalf("usage of %s: %v, want completion tokens", w.Body, err)
	}
	want := map[string]any{"request_id": "ph-1", "model": "m", "outcome": "ok", "key_id": "unknown", "upstream": "unknown",
		"prompt_tokens": reply.Usage.PromptTokens, "completion_tokens": reply.Usage.CompletionTokens}
	for name, v := range want {
		if got := get(repl, name); got != v {
			t.Errorf("%s = %#v, want %#v", name, got, v)
		}
	}
	if ttft, ok := get(repl, "ttft").(float64); !ok || ttft < 0 {
		t.Errorf("ttft = %#v, want a float64 of at least 0", get(repl, "ttft"))
	}

	_, repl = serve(t, h, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader("{")))
	for name, v := range map[string]any{"outcome": "client_error", "model": "unknown", "prompt_tokens": "unknown", "ttft": "unknown"} {
		if got := get(repl, name); got != v {
			t.Errorf("undecoded request: %s = %#v, want %#v", name, got, v)
		}
	}

	repl = caddy.NewReplacer()
	r := caddyhttp.PrepareRequest(httptest.NewRequest("POST", "/v1/chat/completions", nil), repl, httptest.NewRecorder(), &caddyhttp.Server{})
	x := h.newExchange(httptest.NewRecorder(), r, openai.ChatCompletions)
	if got := get(repl, "outcome"); got != "unknown" {
		t.Errorf("outcome before the reply = %#v, want \"unknown\"", got)
	}
	x.req, x.model = &openai.Request{}, "m"
	x.usage.CompletionTokens = 3
	x.publish()
	x.outcome, x.usage.CompletionTokens = outcomeClientCancelled, 9
	x.publish()
	if got := get(repl, "outcome"); got != "ok" {
		t.Errorf("outcome after a change that followed the reply = %#v, want \"ok\"", got)
	}
	if got := get(repl, "completion_tokens"); got != int64(3) {
		t.Errorf("completion_tokens after a change that followed the reply = %#v, want 3", got)
	}
}

// TestTraceContext: with Caddy's tracing directive, the backend request
// carries the gateway's span of the client's trace.
func TestTraceContext(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	got := make(chan http.Header, 1)
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		writeJSON(w, 200, `{"choices":[{"message":{"content":"hi"}}]}`)
	})
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	parent := "00-" + trace + "-00f067aa0ba902b7-01"
	for _, tracing := range []bool{false, true} {
		cfg := "chat_gateway " + be.URL
		if tracing {
			cfg = "tracing {\n span gateway\n}\n" + cfg
		}
		g := newGateway(t, cfg)
		g.post(t, hello, "Traceparent", parent, "Tracestate", "vendor=1")
		h := <-got
		tp := h.Get("Traceparent")
		if !strings.Contains(tp, trace) || h.Get("Tracestate") == "" {
			t.Fatalf("tracing %v: traceparent %q tracestate %q, want the client's trace and a tracestate", tracing, tp, h.Get("Tracestate"))
		}
		if tracing == (tp == parent) {
			t.Fatalf("tracing %v: traceparent %q (client sent %q): the gateway's span must be the parent exactly when tracing is on", tracing, tp, parent)
		}
	}
}

// TestDashboard checks that every metric the Grafana dashboard queries
// is one the gateway exports.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("examples/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	descs := make(chan *prometheus.Desc, 100)
	for _, c := range []prometheus.Collector{gatewayMetrics.requests, gatewayMetrics.inFlight, gatewayMetrics.duration, gatewayMetrics.ttft,
		gatewayMetrics.perToken, gatewayMetrics.tokens, gatewayMetrics.upstreamErrors, gatewayMetrics.retries, gatewayMetrics.overhead} {
		c.Describe(descs)
	}
	close(descs)
	for d := range descs {
		name := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String())[1]
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			exported[name+suffix] = true
		}
	}
	used := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range regexp.MustCompile(`caddy_chat_gateway_\w+`).FindAllString(tg.Expr, -1) {
				used++
				if !exported[name] {
					t.Errorf("panel %q queries %s, which the gateway does not export", p.Title, name)
				}
			}
		}
	}
	if used < 8 {
		t.Fatalf("the dashboard queries only %d metrics, want at least 8", used)
	}
}

// TestModuleLog captures the module's log with a zap observer: a failed
// request is one line with the access log's field names, at warn, or
// at debug for a client that left; a successful one is not logged
// there; no line holds the key or the prompt.
func TestModuleLog(t *testing.T) {
	const key, prompt = "sk-module-log-secret", "my module log prompt"
	var h Handler
	d := caddyfile.NewTestDispenser(fmt.Sprintf("chat_gateway {\n backend %s {\n api_key %s\n models llama\n }\n}", refusing(t), key))
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	// reverse_proxy provisions only within a running http app.
	newGateway(t, "chat_gateway")
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	serve := func(ctx context.Context, id, model string) int {
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"stream":true}`, model, prompt)
		req := httptest.NewRequestWithContext(ctx, "POST", "/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("X-Request-ID", id)
		w := httptest.NewRecorder()
		req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{Logs: &caddyhttp.ServerLogConfig{}})
		if err := h.ServeHTTP(w, req, nil); err != nil {
			t.Fatal(err)
		}
		return w.Code
	}
	if code := serve(context.Background(), "log-1", "llama"); code != 502 {
		t.Fatalf("status %d, want 502", code)
	}
	if code := serve(context.Background(), "log-2", "unknown"); code != 404 {
		t.Fatalf("status %d, want 404", code)
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	serve(gone, "log-3", "llama")

	entries := logs.AllUntimed()
	if len(entries) != 2 {
		t.Fatalf("%d lines, want 2 (the client error is not logged): %+v", len(entries), entries)
	}
	failed, left := entries[0], entries[1]
	fields := failed.ContextMap()
	want := map[string]any{"request_id": "log-1", "outcome": "upstream_error", "model": "llama", "stream": true,
		"status": int64(502), "code": "upstream_unavailable", "prompt_tokens": int64(0), "completion_tokens": int64(0), "finish_reason": ""}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("field %s = %#v, want %#v", k, fields[k], v)
		}
	}
	if failed.Message != "request failed" || failed.Level != zapcore.WarnLevel {
		t.Errorf("%s at %s, want request failed at warn", failed.Message, failed.Level)
	}
	if f := left.ContextMap(); left.Level != zapcore.DebugLevel || f["request_id"] != "log-3" || f["outcome"] != "client_cancelled" || f["status"] != int64(499) {
		t.Errorf("client gone: %s %v, want debug, request_id log-3, outcome client_cancelled, status 499", left.Level, f)
	}
	for _, e := range entries {
		if text := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(text, key) || strings.Contains(text, prompt) {
			t.Fatalf("a log line holds the key or the prompt: %s", text)
		}
	}
}

// TestBackendErrorLogged: the module log line of a request a backend
// failed with a 5xx carries what the backend said, its key redacted,
// cut to 512 bytes of valid UTF-8; the client sees none of it.
func TestBackendErrorLogged(t *testing.T) {
	const key = "sk-upstream-secret-0123456789"
	long := "CUDA out of memory; key " + key + "; " + strings.Repeat("é", 600)
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(upstreamBody(r), "html") {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(503)
			fmt.Fprint(w, "<html><body>upstream overloaded</body></html>\n")
			return
		}
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": long, "type": "server_error"}})
		writeJSON(w, 500, string(b))
	})
	g := newGateway(t, "chat_gateway "+be.URL+" {\n api_key "+key+"\n}")
	for _, tt := range []struct{ id, content, want string }{
		{"be-json", "json", "CUDA out of memory; key [redacted]; éé"},
		{"be-html", "html", "<html><body>upstream overloaded</body></html>"},
	} {
		resp, got := g.post(t, `{"model":"m","messages":[{"role":"user","content":"`+tt.content+`"}]}`, "X-Request-ID", tt.id)
		if resp.StatusCode != 502 || strings.Contains(got, "CUDA") || strings.Contains(got, "overloaded") {
			t.Fatalf("%s: %d %s, want 502 without the backend's text", tt.id, resp.StatusCode, got)
		}
		l := g.waitLog(t, "request failed", tt.id)
		text, _ := l["backend_error"].(string)
		if !strings.HasPrefix(text, tt.want) || len(text) > 512 || !utf8.ValidString(text) || strings.Contains(text, key) {
			t.Errorf("%s: backend_error %q (%d bytes), want it to start with %q, at most 512 bytes of UTF-8, no key", tt.id, text, len(text), tt.want)
		}
	}
	if _, raw := g.logs(t); strings.Contains(raw, key) {
		t.Fatal("the upstream key reached the logs")
	}
}

// FuzzBackendErrorText: whatever a backend sends, the logged text is at
// most 512 bytes of valid UTF-8, and a short OpenAI message is kept whole.
func FuzzBackendErrorText(f *testing.F) {
	f.Add([]byte(`{"error":{"message":"CUDA out of memory","type":"server_error"}}`))
	f.Add([]byte(`{"error":"plain text"}`))
	f.Add([]byte("<html>\xff\xfe" + strings.Repeat("é", 300) + "</html>"))
	f.Fuzz(func(t *testing.T, body []byte) {
		text := backendErrorText(body)
		if len(text) > maxBackendErrorLog || !utf8.ValidString(text) {
			t.Fatalf("%q -> %q (%d bytes), want at most %d bytes of UTF-8", body, text, len(text), maxBackendErrorLog)
		}
		if e, ok := openai.ParseError(body); ok && e.Message != "" && len(e.Message) <= maxBackendErrorLog && utf8.ValidString(e.Message) && text != e.Message {
			t.Fatalf("%q -> %q, want the message %q", body, text, e.Message)
		}
	})
}

// countingObject is a log field value that counts its encodings.
type countingObject struct{ n *int }

func (c countingObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	*c.n++
	enc.AddString("method", "POST")
	return nil
}

// TestLazyProxyFields: the fields reverse_proxy gives its logger With
// are encoded only for an entry written at a level the log keeps, and
// such an entry has them; a provisioned backend's proxy logs so.
func TestLazyProxyFields(t *testing.T) {
	var out bytes.Buffer
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&out), zapcore.InfoLevel)
	logger := zap.New(core).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return lazyCore{c} }))
	encoded := 0
	l := logger.With(zap.Object("request", countingObject{&encoded})).With(zap.String("upstream", "u"))
	if c := l.Check(zapcore.DebugLevel, "upstream roundtrip"); c != nil || encoded != 0 {
		t.Fatalf("a debug entry at info level: checked %v, fields encoded %d times, want unchecked and none", c != nil, encoded)
	}
	l.Info("handling response")
	l.Info("response finalized")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if encoded != 1 || len(lines) != 2 {
		t.Fatalf("fields encoded %d times for %d entries, want once for 2", encoded, len(lines))
	}
	for _, line := range lines {
		if !strings.Contains(line, `"request":{"method":"POST"},"upstream":"u"`) {
			t.Fatalf("entry without the fields given With: %s", line)
		}
	}

	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"x"}}]}`)
	})
	h := provisioned(t, "chat_gateway "+be.URL)
	proxyLogger := unexported[*zap.Logger](reflect.ValueOf(h.Backends[0].proxy).Elem(), "logger")
	if proxyLogger == nil {
		t.Fatal("Caddy's reverseproxy.Handler has no logger field of type *zap.Logger: lazyFields does nothing")
	}
	if _, ok := (*proxyLogger).Core().(lazyCore); !ok {
		t.Fatal("the backend's reverse_proxy logger does not defer its fields: Caddy's Handler.logger moved?")
	}
}

// TestClientGoneLoggedAlike: a client that leaves is logged as
// client_closed_request with status 499 whichever path noticed it: an
// echo stream here, a backend's stream in TestModuleLog.
func TestClientGoneLoggedAlike(t *testing.T) {
	h := provisioned(t, "chat_gateway {\n echo_delay 20ms\n}")
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequestWithContext(ctx, "POST", "/v1/chat/completions",
		strings.NewReader(`{"messages":[{"role":"user","content":"`+strings.Repeat("word ", 50)+`"}],"stream":true}`))
	w := &cancellingRecorder{ResponseRecorder: httptest.NewRecorder(), after: 3, cancel: cancel}
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{Logs: &caddyhttp.ServerLogConfig{}})
	if err := h.ServeHTTP(w, req, nil); err != nil {
		t.Fatal(err)
	}
	entries := logs.FilterMessage("request failed").AllUntimed()
	if len(entries) != 1 {
		t.Fatalf("%d lines, want 1: %+v", len(entries), logs.AllUntimed())
	}
	if f := entries[0].ContextMap(); f["outcome"] != "client_cancelled" || f["status"] != int64(499) || f["code"] != "client_closed_request" {
		t.Fatalf("logged %v, want outcome client_cancelled, status 499, code client_closed_request", f)
	}
}

// cancellingRecorder cancels the request (its client leaves) after a
// number of writes.
type cancellingRecorder struct {
	*httptest.ResponseRecorder
	after  int
	cancel context.CancelFunc
}

func (c *cancellingRecorder) Write(p []byte) (int, error) {
	if c.after--; c.after == 0 {
		c.cancel()
	}
	return c.ResponseRecorder.Write(p)
}

// TestProvisionAnnounced: each handler says at load what it serves: echo
// mode (and why, when no backend is set), or its backends and their
// models; its keys and limits; and warns when it is open.
func TestProvisionAnnounced(t *testing.T) {
	find := func(g *gateway, msg string) map[string]any {
		t.Helper()
		lines, raw := g.logs(t)
		for _, l := range lines {
			if strings.HasPrefix(fmt.Sprint(l["msg"]), msg) && l["logger"] == "http.handlers.chat_gateway" {
				return l
			}
		}
		t.Fatalf("no log line %q from chat_gateway, want one:\n%s", msg, raw)
		return nil
	}
	g := newGateway(t, "chat_gateway")
	if l := find(g, "serving in echo mode: no backend is configured (an unset BACKEND_URL?)"); l["level"] != "info" || l["echo"] != true {
		t.Errorf("echo mode: %v, want an info line with echo true", l)
	}
	if l := find(g, "no auth block: anyone who can reach this gateway can use it"); l["level"] != "warn" {
		t.Errorf("open gateway: %v, want a warning", l)
	}

	g = newGateway(t, fmt.Sprintf(`chat_gateway {
		backend http://127.0.0.1:9/v1 {
			models llama qwen
		}
		backend http://127.0.0.1:8/v1 http://127.0.0.1:7/v1 {
			lb_policy prefix_affinity
		}
		auth {
			key %s
		}
		limits {
			requests 10/1m
		}
	}`, keys.Hash(aliceKey)))
	l := find(g, "serving")
	want := []any{"backend http://127.0.0.1:9/v1: llama qwen", "backend http://127.0.0.1:8/v1 http://127.0.0.1:7/v1: every model no other backend lists (lb_policy prefix_affinity)"}
	if l["msg"] != "serving" || l["echo"] != false || fmt.Sprint(l["backends"]) != fmt.Sprint(want) || l["keys"] != float64(1) || l["limits"] != "memory" {
		t.Errorf("%v, want serving, echo false, backends %v, keys 1, limits memory", l, want)
	}
	lines, _ := g.logs(t) // each gateway logs to a file of its own
	for _, l := range lines {
		if strings.HasPrefix(fmt.Sprint(l["msg"]), "no auth block") {
			t.Errorf("a gateway with keys warned it is open: %v, want no warning", l)
		}
	}
}
