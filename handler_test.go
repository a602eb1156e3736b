package chatgateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/uuid"
)

const hello = `{"model":"m","messages":[{"role":"user","content":"hello world"}]}`

func TestEchoReply(t *testing.T) {
	g := newGateway(t, `chat_gateway`)
	resp, body := g.post(t, hello, "X-Request-ID", "my-req-1")
	if resp.StatusCode != 200 || resp.Header.Get("X-Request-ID") != "my-req-1" {
		t.Fatalf("%d %v %s, want 200 with X-Request-ID my-req-1", resp.StatusCode, resp.Header, body)
	}
	var r struct {
		ID, Object, Model string
		Created           int64
		Choices           []struct {
			Index        int
			Message      struct{ Role, Content string }
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			Prompt     int `json:"prompt_tokens"`
			Completion int `json:"completion_tokens"`
			Total      int `json:"total_tokens"`
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if r.ID != "my-req-1" || r.Object != "chat.completion" || r.Model != "m" || r.Created == 0 ||
		len(r.Choices) != 1 || r.Choices[0].Message.Role != "assistant" || r.Choices[0].Message.Content != "Echo: hello world" ||
		r.Choices[0].FinishReason != "stop" {
		t.Fatalf("reply: %s, want id my-req-1, a chat.completion of model m with created set, one assistant choice \"Echo: hello world\" finished stop", body)
	}
	// "hello world" as sent is 13 bytes of content: 4 tokens; the reply's 17 bytes: 5.
	if r.Usage.Prompt != 4 || r.Usage.Completion != 5 || r.Usage.Total != 9 {
		t.Fatalf("usage: %+v, want 4 prompt, 5 completion, 9 total tokens", r.Usage)
	}

	// Array content: text parts joined; no model named: "echo".
	_, body = g.post(t, `{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}]}`)
	if !strings.Contains(body, `"content":"Echo: a\nb"`) || !strings.Contains(body, `"model":"echo"`) {
		t.Fatalf("parts: %s, want content \"Echo: a\\nb\" and model echo", body)
	}
}

func TestRequestID(t *testing.T) {
	h := provisioned(t, `chat_gateway`)
	tests := []struct {
		name   string
		header []string
		want   string // empty: a fresh UUID
	}{
		{"given", []string{"X-Request-ID", "abc-123"}, "abc-123"},
		{"alternative header", []string{"Request-Id", "alt.456"}, "alt.456"},
		{"every allowed character", []string{"X-Request-ID", "AZaz09._:/+=@-"}, "AZaz09._:/+=@-"},
		{"128 bytes", []string{"X-Request-ID", strings.Repeat("b", 128)}, strings.Repeat("b", 128)},
		{"x-request-id wins", []string{"X-Request-ID", "first", "Request-Id", "second"}, "first"},
		{"invalid falls back to Request-Id", []string{"X-Request-ID", "has space", "Request-Id", "ok"}, "ok"},
		{"space", []string{"X-Request-ID", "has space"}, ""},
		{"too long", []string{"X-Request-ID", strings.Repeat("a", 129)}, ""},
		{"non-ascii", []string{"X-Request-ID", "é"}, ""},
		{"html", []string{"X-Request-ID", "<script>alert(1)</script>"}, ""},
		{"quotes", []string{"X-Request-ID", `a"b'c`}, ""},
		{"ampersand", []string{"X-Request-ID", "a&b"}, ""},
		{"braces", []string{"X-Request-ID", "{env.HOME}"}, ""},
		{"percent", []string{"X-Request-ID", "a%0d"}, ""},
		{"missing", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, body := range []string{hello, `{}`} { // success and error replies alike
				req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
				for i := 0; i+1 < len(tt.header); i += 2 {
					req.Header.Set(tt.header[i], tt.header[i+1])
				}
				w, repl := serve(t, h, req)
				b, got := w.Body.String(), w.Header().Get("X-Request-ID")
				if p := placeholder(repl, "request_id"); p != got {
					t.Fatalf("{http.chat_gateway.request_id} = %q, want the header's %q", p, got)
				}
				if tt.want != "" && got != tt.want {
					t.Fatalf("X-Request-ID = %q, want %q", got, tt.want)
				}
				if tt.want == "" {
					if _, err := uuid.Parse(got); err != nil {
						t.Fatalf("X-Request-ID = %q, want a UUID", got)
					}
				}
				if body == hello && !strings.Contains(b, `"id":"`+got+`"`) {
					t.Fatalf("body id differs from header %q: %s", got, b)
				}
			}
		})
	}
	// The id is in the module's log lines too.
	g2 := newGateway(t, `chat_gateway http://127.0.0.1:1`)
	g2.post(t, hello, "X-Request-ID", "logged-id")
	g2.waitLog(t, "request failed", "logged-id")
	g2.waitLog(t, "handled request", "logged-id") // the access log
}

func TestRequestErrors(t *testing.T) {
	g := newGateway(t, `chat_gateway {
		max_request_body 1KiB
	}`)
	big := `{"messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`
	tests := []struct {
		name, method, path, ctype, body string
		chunked                         bool
		status                          int
		code, param                     string
	}{
		{"get on completions", "GET", "/v1/chat/completions", "", "", false, 405, "method_not_allowed", ""},
		{"post on models", "POST", "/v1/models", "application/json", "{}", false, 405, "method_not_allowed", ""},
		{"form body", "POST", "/v1/chat/completions", "application/x-www-form-urlencoded", hello, false, 415, "unsupported_media_type", ""},
		{"too large", "POST", "/v1/chat/completions", "application/json", big, false, 413, "request_too_large", ""},
		{"too large chunked", "POST", "/v1/chat/completions", "application/json", big, true, 413, "request_too_large", ""},
		{"empty", "POST", "/v1/chat/completions", "application/json", "", false, 400, "invalid_json", ""},
		{"truncated", "POST", "/v1/chat/completions", "application/json", `{"messages":[`, false, 400, "invalid_json", ""},
		{"array body", "POST", "/v1/chat/completions", "", `[]`, false, 400, "invalid_type", ""},
		{"stream string", "POST", "/v1/chat/completions", "application/json; charset=utf-8", `{"messages":[{"role":"user","content":"x"}],"stream":"true"}`, false, 400, "invalid_type", "stream"},
		{"no messages", "POST", "/v1/chat/completions", "application/json", `{"model":"m"}`, false, 400, "missing_required_parameter", "messages"},
		{"bad content", "POST", "/v1/chat/completions", "application/json", `{"messages":[{"role":"user","content":1}]}`, false, 400, "invalid_type", "messages[0].content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body = strings.NewReader(tt.body)
			req, _ := http.NewRequest(tt.method, g.URL+tt.path, body)
			if tt.chunked {
				req.ContentLength = -1
				req.Body = io.NopCloser(struct{ io.Reader }{body}) // length hidden: sent chunked
			}
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, b := do(t, req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if resp.Header.Get("X-Request-ID") == "" || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("headers: %v, want an X-Request-ID and Content-Type application/json", resp.Header)
			}
			e := apiError(t, b)
			if e["code"] != tt.code || (tt.param != "" && e["param"] != tt.param) {
				t.Fatalf("error %v, want code %s param %s", e, tt.code, tt.param)
			}
			if tt.status == 405 && resp.Header.Get("Allow") == "" {
				t.Fatal("405 without Allow")
			}
		})
	}
}

func TestOtherPathsGoToNext(t *testing.T) {
	g := newGateway(t, `chat_gateway`)
	for _, path := range []string{"/", "/completions", "/healthz/", "/v2/chat/completions"} {
		resp, body := do(t, mustRequest("GET", g.URL+path))
		if resp.StatusCode != 404 || body != "next" || resp.Header.Get("X-Request-ID") != "" {
			t.Errorf("%s: %d %q, want 404 \"next\" without X-Request-ID", path, resp.StatusCode, body)
		}
	}
	// The paths under /v1/ are the gateway's: one it has no route for
	// gets OpenAI's 404 in JSON, which SDKs read as an error, not what
	// follows (Caddy's empty 200 when nothing does)...
	for _, path := range []string{"/v1/audio/speech", "/v1/chat/completions/x", "/v1/models/", "/v1/"} {
		for _, method := range []string{"GET", "POST"} {
			resp, body := do(t, mustRequest(method, g.URL+path))
			if e := apiError(t, body); resp.StatusCode != 404 || e["code"] != "unknown_url" || e["type"] != "invalid_request_error" ||
				!strings.Contains(e["message"].(string), method+" "+path) || resp.Header.Get("X-Request-ID") == "" ||
				resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Should-Retry") != "false" {
				t.Errorf("%s %s: %d %v %s, want 404 unknown_url naming it, in JSON, with X-Request-ID and x-should-retry: false", method, path, resp.StatusCode, resp.Header, body)
			}
		}
	}
	// ...unless the site says otherwise.
	g = newGateway(t, "chat_gateway {\n pass_unknown_paths\n}")
	if resp, body := do(t, mustRequest("GET", g.URL+"/v1/audio/speech")); resp.StatusCode != 404 || body != "next" {
		t.Errorf("pass_unknown_paths: %d %q, want the next handler's 404 \"next\"", resp.StatusCode, body)
	}
	resp, body := do(t, mustRequest("GET", g.URL+"/healthz"))
	if resp.StatusCode != 200 || body != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s, want 200 {\"status\":\"ok\"}", resp.StatusCode, body)
	}
	resp, body = do(t, mustRequest("GET", g.URL+"/v1/models"))
	if resp.StatusCode != 200 || !strings.Contains(body, `"id":"echo"`) || !strings.Contains(body, `"object":"list"`) {
		t.Fatalf("models: %d %s, want 200, a list with echo", resp.StatusCode, body)
	}
}

// mustRequest builds a request without a body, with the given header
// name/value pairs.
func mustRequest(method, url string, header ...string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		panic(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return req
}

func TestBackendForwarding(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"llama-3",
			"choices":[{"index":0,"message":{"role":"assistant","content":"Hi!","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],
			"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":2}},"system_fingerprint":"fp1"}`)
	})
	g := newGateway(t, fmt.Sprintf(`chat_gateway %s/v1 {
		api_key sk-upstream-secret
	}`, be.URL))
	sent := `{"model":"m",  "messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"temperature":0.2,"x_unknown":{"keep":true}}`
	resp, body := g.post(t, sent, "X-Request-ID", "rid-1", "Authorization", "Bearer client-key", "X-Api-Key", "client-key",
		"OpenAI-Organization", "org", "Cookie", "a=b", "Connection", "X-Secret", "X-Secret", "hop", "Keep-Alive", "timeout=5")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, body)
	}
	got := be.last(t)
	if got.Body != sent {
		t.Fatalf("body changed on the way:\n got %s\nwant %s", got.Body, sent)
	}
	if got.Method != "POST" || got.Path != "/v1/chat/completions" {
		t.Fatalf("%s %s, want POST /v1/chat/completions", got.Method, got.Path)
	}
	if got.Header.Get("Authorization") != "Bearer sk-upstream-secret" || got.Header.Get("X-Request-ID") != "rid-1" {
		t.Fatalf("upstream headers: %v, want Authorization with the backend's key and X-Request-ID rid-1", got.Header)
	}
	for _, h := range []string{"X-Api-Key", "Openai-Organization", "Cookie", "X-Secret", "Keep-Alive"} {
		if got.Header.Get(h) != "" {
			t.Errorf("%s forwarded upstream", h)
		}
	}
	var r map[string]any
	_ = json.Unmarshal([]byte(body), &r)
	c := r["choices"].([]any)[0].(map[string]any)
	if r["id"] != "rid-1" || r["model"] != "llama-3" || r["system_fingerprint"] != "fp1" || c["finish_reason"] != "tool_calls" ||
		c["message"].(map[string]any)["tool_calls"] == nil || r["usage"].(map[string]any)["prompt_tokens_details"] == nil {
		t.Fatalf("reply: %s, want id rid-1 with the backend's model llama-3, system_fingerprint, finish_reason tool_calls, tool_calls and prompt_tokens_details", body)
	}
	if strings.Contains(body, "sk-upstream-secret") {
		t.Fatal("key in the reply")
	}
}

func TestBackendReplyNormalized(t *testing.T) {
	// A minimal server: no id, created, model, index, role, finish_reason or usage.
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"12345678"}}]}`)
	})
	g := newGateway(t, `chat_gateway `+be.URL)
	_, body := g.post(t, hello, "X-Request-ID", "r1")
	var r map[string]any
	_ = json.Unmarshal([]byte(body), &r)
	c := r["choices"].([]any)[0].(map[string]any)
	if r["id"] != "r1" || r["object"] != "chat.completion" || r["model"] != "m" || r["created"] == nil ||
		c["index"] != 0.0 || c["finish_reason"] != "stop" || c["message"].(map[string]any)["role"] != "assistant" {
		t.Fatalf("reply: %s, want id r1, object chat.completion, model m, created, index 0, finish_reason stop and role assistant", body)
	}
	if u := r["usage"].(map[string]any); u["completion_tokens"] != 2.0 || u["total_tokens"] != 6.0 {
		t.Fatalf("usage: %v, want 2 completion and 6 total tokens", u)
	}
}

func TestBackendErrors(t *testing.T) {
	const key = "sk-upstream-secret-key"
	tests := []struct {
		name   string
		reply  script
		status int
		code   string
		typ    string
	}{
		{"4xx passed on", func(w http.ResponseWriter, r *http.Request) error {
			scriptJSON(w, 400, `{"error":{"message":"context too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}`)
			return nil
		}, 400, "context_length_exceeded", "invalid_request_error"},
		{"429 with retry-after", func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Retry-After", "7")
			scriptJSON(w, 429, `{"error":{"message":"slow down"}}`)
			return nil
		}, 429, "", "rate_limit_error"},
		{"401 key echoed", func(w http.ResponseWriter, r *http.Request) error {
			scriptJSON(w, 401, `{"error":{"message":"Incorrect API key provided: `+key+`"}}`)
			return nil
		}, 401, "", "authentication_error"},
		{"4xx html", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(404)
			_, _ = w.Write([]byte("<html>not found</html>"))
			return nil
		}, 404, "", "invalid_request_error"},
		{"5xx", func(w http.ResponseWriter, r *http.Request) error {
			scriptJSON(w, 503, `{"error":{"message":"overloaded at 10.0.0.7"}}`)
			return nil
		}, 502, "upstream_error", "upstream_error"},
		{"200 not json", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(200)
			_, _ = w.Write([]byte("<html>hello</html>"))
			return nil
		}, 502, "invalid_upstream_response", "upstream_error"},
		{"200 wrong json", func(w http.ResponseWriter, r *http.Request) error {
			scriptJSON(w, 200, `{"object":"list"}`)
			return nil
		}, 502, "invalid_upstream_response", "upstream_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScripted(t, fmt.Sprintf("chat_gateway http://backend {\n api_key %s\n}", key), tt.reply)
			w, _ := s.post(t, "/v1/chat/completions", hello)
			body := w.Body.String()
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.status, body)
			}
			e := errorOf(t, w)
			if (tt.code != "" && e["code"] != tt.code) || e["type"] != tt.typ {
				t.Fatalf("error %v, want code %q type %q", e, tt.code, tt.typ)
			}
			if strings.Contains(body, key) || strings.Contains(body, "10.0.0.7") || strings.Contains(body, "hello world") {
				t.Fatalf("the key, the backend's address or the prompt in %s", body)
			}
			if tt.status == 429 && w.Header().Get("Retry-After") != "7" {
				t.Fatalf("Retry-After %q, want the backend's 7", w.Header().Get("Retry-After"))
			}
			if w.Header().Get("X-Request-ID") == "" {
				t.Fatal("no X-Request-ID header")
			}
			for _, l := range s.logs.All() {
				if text := fmt.Sprint(l.Message, l.ContextMap()); strings.Contains(text, key) || strings.Contains(text, "hello world") {
					t.Fatalf("the key or the prompt logged: %s", text)
				}
			}
		})
	}

	t.Run("refused", func(t *testing.T) {
		g := newGateway(t, `chat_gateway http://127.0.0.1:1`)
		resp, body := g.post(t, hello)
		if e := apiError(t, body); resp.StatusCode != 502 || e["code"] != "upstream_unavailable" || strings.Contains(body, "127.0.0.1") {
			t.Fatalf("%d %s, want 502 upstream_unavailable without the backend's address", resp.StatusCode, body)
		}
	})
}

func TestModelRouting(t *testing.T) {
	reply := func(text string) script {
		return func(w http.ResponseWriter, r *http.Request) error {
			if r.Method == "GET" {
				scriptJSON(w, 200, `{"object":"list","data":[{"id":"served-by-a","object":"model","created":1,"owned_by":"a"}]}`)
				return nil
			}
			scriptJSON(w, 200, `{"choices":[{"message":{"content":"`+text+`"}}]}`)
			return nil
		}
	}
	s := newScripted(t, `chat_gateway {
		backend http://b {
			models llama qwen
			alias gpt-4o llama
		}
		backend http://a/api/v1
	}`, reply("from b"), reply("from a"))
	b, a := s.proxies[0], s.proxies[1]
	for model, want := range map[string]string{"llama": "from b", "gpt-4o": "from b", "anything": "from a"} {
		w, _ := s.post(t, "/v1/chat/completions", `{"model":"`+model+`","messages":[{"role":"user","content":"x"}]}`)
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("%s: %s, want the reply %q", model, w.Body, want)
		}
	}
	got := b.requests()
	if last := got[len(got)-1].Body; !strings.Contains(last, `"model":"llama"`) {
		t.Fatalf("alias not rewritten upstream: %s, want model llama", last)
	}
	if got := a.requests(); got[0].Path != "/api/v1/chat/completions" {
		t.Fatalf("base path: %s, want /api/v1/chat/completions", got[0].Path)
	}
	models := func() string {
		w, _ := serve(t, s.Handler, httptest.NewRequest("GET", "/v1/models", nil))
		return w.Body.String()
	}
	body := models()
	for _, id := range []string{"llama", "qwen", "gpt-4o", "served-by-a"} {
		if !strings.Contains(body, `"id":"`+id+`"`) {
			t.Errorf("models list lacks %s: %s", id, body)
		}
	}
	for range 3 {
		models()
	}
	if n := len(a.requests()) - 1; n != 1 { // a served one chat request; its list is fetched once
		t.Errorf("the model list was fetched %d times, want 1 (cached)", n)
	}

	only := newScripted(t, "chat_gateway {\n backend http://b {\n models llama\n }\n}", reply("from b"))
	w, _ := only.post(t, "/v1/chat/completions", `{"model":"gpt-5","messages":[{"role":"user","content":"x"}]}`)
	if e := errorOf(t, w); w.Code != 404 || e["code"] != "model_not_found" || e["param"] != "model" {
		t.Fatalf("%d %s, want 404 model_not_found naming model", w.Code, w.Body)
	}
}
