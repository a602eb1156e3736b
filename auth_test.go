package chatgateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
)

// Test keys: alice's is configured in plain form (through an
// environment variable), bob's as its hash.
const (
	aliceKey = "sk-cg-alice-0123456789abcdefghijklmnop"
	bobKey   = "sk-cg-bob-0123456789abcdefghijklmnopqr"
	wrongKey = "sk-cg-wrong-0123456789abcdefghijklmnop"
)

// provisioned is a Handler set up from a chat_gateway Caddyfile block
// and provisioned in the running Caddy (reverse_proxy provisions only
// within an http app), for tests of ServeHTTP.
func provisioned(t testing.TB, config string) *Handler {
	t.Helper()
	tokens, err := caddyfile.Tokenize([]byte(config), "Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		t.Fatal(err)
	}
	var ctx caddy.Context
	var cancel context.CancelFunc
	if len(h.Backends) > 0 {
		newGateway(t, "chat_gateway")
		ctx, cancel = caddy.NewContext(caddy.ActiveContext())
	} else {
		ctx, cancel = caddy.NewContext(caddy.Context{Context: context.Background()})
	}
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// serve runs req through h.ServeHTTP as Caddy would, and returns the
// response and the request's placeholders.
func serve(t testing.TB, h *Handler, req *http.Request) (*httptest.ResponseRecorder, *caddy.Replacer) {
	t.Helper()
	w := httptest.NewRecorder()
	repl := caddy.NewReplacer()
	req = caddyhttp.PrepareRequest(req, repl, w, &caddyhttp.Server{})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	if err := h.ServeHTTP(w, req, next); err != nil {
		t.Fatal(err)
	}
	return w, repl
}

// keyed builds a request carrying a key in the given header form:
// "bearer", "x-api-key" or "api-key".
func keyed(method, path, body, form, key string) *http.Request {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	switch form {
	case "bearer":
		req.Header.Set("Authorization", "Bearer "+key)
	case "x-api-key", "api-key":
		req.Header.Set(form, key)
	}
	return req
}

func aliceBobConfig(t testing.TB, inside string) string {
	t.Setenv("CG_TEST_KEY", aliceKey)
	return fmt.Sprintf(`chat_gateway {
	%s
	auth {
		key {env.CG_TEST_KEY} {
			id alice
		}
		key %s {
			id bob
		}
		key %s {
			id expired
			expires 2020-01-01T00:00:00Z
		}
		key %s {
			id off
			disabled
		}
	}
}`, inside, keys.Hash(bobKey), keys.Hash("sk-cg-expired-0123456789abcdef"), keys.Hash("sk-cg-disabled-0123456789abcdef"))
}

// TestAuthHeaderForms: each key form is accepted in each header; the
// identity is set in the placeholders.
func TestAuthHeaderForms(t *testing.T) {
	h := provisioned(t, aliceBobConfig(t, "echo"))
	for _, form := range []string{"bearer", "x-api-key", "api-key"} {
		for key, id := range map[string]string{aliceKey: "alice", bobKey: "bob"} {
			req := keyed("POST", "/v1/chat/completions", hello, form, key)
			w, repl := serve(t, h, req)
			if w.Code != 200 || !strings.Contains(w.Body.String(), "Echo: hello world") {
				t.Fatalf("%s %s: %d %s, want 200 with Echo: hello world", form, id, w.Code, w.Body)
			}
			user, _ := repl.GetString("http.auth.user.id")
			keyID, _ := repl.GetString("http.chat_gateway.key_id")
			if user != id || keyID != id {
				t.Errorf("%s %s: user %q key_id %q, want both %q", form, id, user, keyID, id)
			}
		}
	}
}

// trapBody fails a test that reads it: a 401 is answered unread.
type trapBody struct{ t *testing.T }

func (b trapBody) Read([]byte) (int, error) {
	b.t.Error("the body of an unauthenticated request was read")
	return 0, io.EOF
}

// TestAuthRejects: no key, an unknown, expired or disabled one, or
// other credentials get OpenAI's 401, with the body unread; /healthz
// needs no key.
func TestAuthRejects(t *testing.T) {
	h := provisioned(t, aliceBobConfig(t, "echo"))
	incorrect := func(hint string) string {
		return `{"error":{"message":"Incorrect API key provided: ` + hint + `.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`
	}
	missing := `{"error":{"message":"You didn't provide an API key. Send it as Authorization: Bearer <key>, x-api-key: <key> or api-key: <key>.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`
	tests := []struct {
		name, path, form, key, want string
	}{
		{"no key", "/v1/chat/completions", "", "", missing},
		{"unknown", "/v1/chat/completions", "bearer", wrongKey, incorrect("sk-c****mnop")},
		{"unknown x-api-key", "/v1/chat/completions", "x-api-key", wrongKey, incorrect("sk-c****mnop")},
		{"short", "/v1/chat/completions", "api-key", "abc", incorrect("****")},
		{"the hash itself", "/v1/chat/completions", "bearer", keys.Hash(bobKey), incorrect("sha2****" + keys.Hash(bobKey)[71-4:])},
		{"expired", "/v1/chat/completions", "bearer", "sk-cg-expired-0123456789abcdef", incorrect("sk-c****cdef")},
		{"disabled", "/v1/chat/completions", "bearer", "sk-cg-disabled-0123456789abcdef", incorrect("sk-c****cdef")},
		{"models", "/v1/models", "", "", missing},
		{"models unknown", "/v1/models", "x-api-key", wrongKey, incorrect("sk-c****mnop")},
	}
	for _, tt := range tests {
		req := keyed("POST", tt.path, "", tt.form, tt.key)
		if tt.path == "/v1/models" {
			req.Method = "GET"
		}
		req.Body = io.NopCloser(trapBody{t})
		w, repl := serve(t, h, req)
		if w.Code != 401 || w.Body.String() != tt.want {
			t.Errorf("%s: %d %s\nwant 401 %s", tt.name, w.Code, w.Body, tt.want)
		}
		if w.Header().Get("WWW-Authenticate") != "Bearer" || w.Header().Get("Connection") != "close" || w.Header().Get("X-Request-ID") == "" {
			t.Errorf("%s: headers %v, want WWW-Authenticate: Bearer, Connection: close and an X-Request-ID", tt.name, w.Header())
		}
		if tt.key != "" && len(tt.key) > 8 && strings.Contains(w.Body.String(), tt.key) {
			t.Errorf("%s: the reply holds the key", tt.name)
		}
		if user, _ := repl.GetString("http.auth.user.id"); user != "" {
			t.Errorf("%s: user %q, want none", tt.name, user)
		}
	}
	// A request with Basic credentials only is not authenticated.
	req := keyed("POST", "/v1/chat/completions", hello, "", "")
	req.SetBasicAuth("alice", aliceKey)
	if w, _ := serve(t, h, req); w.Code != 401 || !strings.Contains(w.Body.String(), "didn't provide") {
		t.Errorf("basic: %d %s, want 401 didn't provide an API key", w.Code, w.Body)
	}

	if w, _ := serve(t, h, httptest.NewRequest("GET", "/healthz", nil)); w.Code != 200 {
		t.Errorf("healthz without a key: %d %s, want 200", w.Code, w.Body)
	}
	if w, _ := serve(t, h, httptest.NewRequest("GET", "/other", nil)); w.Code != http.StatusTeapot {
		t.Errorf("other paths go to next without a key: %d, want %d", w.Code, http.StatusTeapot)
	}
}

// TestAuthNoKeys: an auth block with no keys refuses every request.
func TestAuthNoKeys(t *testing.T) {
	h := provisioned(t, "chat_gateway {\n auth {\n }\n}")
	if w, _ := serve(t, h, keyed("POST", "/v1/chat/completions", hello, "bearer", aliceKey)); w.Code != 401 {
		t.Fatalf("%d %s, want 401", w.Code, w.Body)
	}
}

// TestAuthModels: a key's allow-list, with globs; a model it may not
// use gets the reply of a model nobody serves, byte for byte but the
// name, and never reaches the backend; /v1/models lists only what the
// key may use.
func TestAuthModels(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"hi"}}]}`)
	})
	t.Setenv("CG_TEST_KEY", aliceKey)
	h := provisioned(t, fmt.Sprintf(`chat_gateway {
	backend %s {
		models gpt-4o llama-3.1-8b
		alias gpt-4o-mini gpt-4o
	}
	auth {
		key {env.CG_TEST_KEY} {
			id alice
			models gpt-4o*
		}
		key %s
	}
}`, be.URL, keys.Hash(bobKey)))
	ask := func(key, model string) *httptest.ResponseRecorder {
		w, _ := serve(t, h, keyed("POST", "/v1/chat/completions", fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, model), "bearer", key))
		return w
	}
	for _, m := range []string{"gpt-4o", "gpt-4o-mini"} {
		if w := ask(aliceKey, m); w.Code != 200 {
			t.Fatalf("alice %s: %d %s, want 200", m, w.Code, w.Body)
		}
	}
	if w := ask(bobKey, "llama-3.1-8b"); w.Code != 200 {
		t.Fatalf("bob llama: %d %s, want 200", w.Code, w.Body)
	}
	sent := be.count()
	denied := ask(aliceKey, "llama-3.1-8b")
	unknown := ask(bobKey, "nobody-serves-this")
	if denied.Code != 404 || unknown.Code != 404 {
		t.Fatalf("denied %d %s / unknown %d %s, want 404 for both", denied.Code, denied.Body, unknown.Code, unknown.Body)
	}
	if got, want := denied.Body.String(), strings.ReplaceAll(unknown.Body.String(), "nobody-serves-this", "llama-3.1-8b"); got != want {
		t.Fatalf("denied model:\n%s\nwant the unknown model's reply:\n%s", got, want)
	}
	for _, name := range []string{"X-Request-Id", "Content-Length"} { // the id, and the name's length
		delete(denied.Header(), name)
		delete(unknown.Header(), name)
	}
	if fmt.Sprint(denied.Header()) != fmt.Sprint(unknown.Header()) {
		t.Fatalf("headers differ: %v / %v", denied.Header(), unknown.Header())
	}
	if e := apiError(t, denied.Body.String()); e["code"] != "model_not_found" || e["param"] != "model" {
		t.Fatalf("%v, want code model_not_found, param model", e)
	}
	if be.count() != sent {
		t.Fatal("a denied model reached the backend")
	}

	list := func(key string) []string {
		w, _ := serve(t, h, keyed("GET", "/v1/models", "", "x-api-key", key))
		var out struct{ Data []struct{ ID string } }
		if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &out) != nil {
			t.Fatalf("models: %d %s, want 200 with a model list", w.Code, w.Body)
		}
		var ids []string
		for _, m := range out.Data {
			ids = append(ids, m.ID)
		}
		return ids
	}
	if got := list(aliceKey); !slices.Equal(got, []string{"gpt-4o", "gpt-4o-mini"}) {
		t.Errorf("alice's models %v, want [gpt-4o gpt-4o-mini]", got)
	}
	if got := list(bobKey); !slices.Equal(got, []string{"gpt-4o", "llama-3.1-8b", "gpt-4o-mini"}) {
		t.Errorf("bob's models %v, want [gpt-4o llama-3.1-8b gpt-4o-mini]", got)
	}
}

// TestAuthModelsEcho: in echo mode the allow-list holds too; a request
// naming no model asks for the echo model.
func TestAuthModelsEcho(t *testing.T) {
	h := provisioned(t, fmt.Sprintf("chat_gateway {\n auth {\n key %s {\n models gpt-* echo\n }\n key %s {\n models gpt-*\n }\n }\n}", keys.Hash(aliceKey), keys.Hash(bobKey)))
	for _, tc := range []struct {
		key, body string
		want      int
	}{
		{aliceKey, `{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}`, 200},
		{aliceKey, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, 404},
		{aliceKey, `{"messages":[{"role":"user","content":"hi"}]}`, 200},
		{bobKey, `{"messages":[{"role":"user","content":"hi"}]}`, 404},
	} {
		if w, _ := serve(t, h, keyed("POST", "/v1/chat/completions", tc.body, "bearer", tc.key)); w.Code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.body, w.Code, w.Body, tc.want)
		}
	}
	w, _ := serve(t, h, keyed("GET", "/v1/models", "", "bearer", bobKey))
	if w.Body.String() != `{"object":"list","data":[]}` {
		t.Errorf("bob's models %s, want an empty list", w.Body)
	}
}

// TestAuthMetricsPerKey: the key label takes each identity up to the
// cap, then "other"; without metrics_per_key it stays empty.
func TestAuthMetricsPerKey(t *testing.T) {
	h := &Handler{MetricsPerKey: 2}
	base := func() int {
		keyLabels.Lock()
		defer keyLabels.Unlock()
		return keyLabels.n
	}()
	h.MetricsPerKey = base + 2
	ids := []string{"metrics-a", "metrics-b", "metrics-c", "metrics-a"}
	want := []string{"metrics-a", "metrics-b", "other", "metrics-a"}
	for i, id := range ids {
		if got := h.metricKey(id); got != want[i] {
			t.Errorf("metricKey(%s) = %s, want %s", id, got, want[i])
		}
	}
	if got := (&Handler{}).metricKey("metrics-a"); got != "" {
		t.Errorf("off: %q, want empty", got)
	}
	if got := h.metricKey(""); got != "" {
		t.Errorf("no identity: %q, want empty", got)
	}
}

// TestAuthCaddyfile: the auth block and metrics_per_key, and their
// errors.
func TestAuthCaddyfile(t *testing.T) {
	h, err := parse(t, `chat_gateway {
		auth {
			key sha256:`+strings.Repeat("ab", 32)+` {
				id team-a
				models gpt-4o* llama
				models qwen
				expires 2027-01-02T03:04:05Z
				disabled
			}
			key {env.TEAM_KEY}
			keys_file /etc/keys.json
		}
		metrics_per_key
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &Auth{Keys: []ClientKey{
		{Entry: keys.Entry{Key: "sha256:" + strings.Repeat("ab", 32), ID: "team-a", Models: []string{"gpt-4o*", "llama", "qwen"}, Expires: time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC), Disabled: true}},
		{Entry: keys.Entry{Key: "{env.TEAM_KEY}"}},
	}, KeysFile: "/etc/keys.json"}
	if fmt.Sprint(h.Auth) != fmt.Sprint(want) || h.MetricsPerKey != defaultMetricsPerKey {
		t.Fatalf("%+v %d, want %+v %d", h.Auth, h.MetricsPerKey, want, defaultMetricsPerKey)
	}
	if h, _ := parse(t, "chat_gateway {\n metrics_per_key 7\n}"); h.MetricsPerKey != 7 {
		t.Fatalf("metrics_per_key %d, want 7", h.MetricsPerKey)
	}
	for input, want := range map[string]string{
		"chat_gateway {\n auth {\n bogus\n }\n}":                          "unrecognized auth option 'bogus'",
		"chat_gateway {\n auth x\n}":                                      "wrong argument count",
		"chat_gateway {\n auth {\n key\n }\n}":                            "wrong argument count",
		"chat_gateway {\n auth {\n key a b\n }\n}":                        "wrong argument count",
		"chat_gateway {\n auth {\n key a {\n id\n }\n }\n}":               "wrong argument count",
		"chat_gateway {\n auth {\n key a {\n disabled yes\n }\n }\n}":     "wrong argument count",
		"chat_gateway {\n auth {\n key a {\n expires tomorrow\n }\n }\n}": "invalid expires 'tomorrow'",
		"chat_gateway {\n auth {\n key a {\n owner x\n }\n }\n}":          "unrecognized key option 'owner'",
		"chat_gateway {\n auth {\n keys_file a\n keys_file b\n }\n}":      "only one keys_file",
		"chat_gateway {\n metrics_per_key none\n}":                        "invalid metrics_per_key 'none'",
		"chat_gateway {\n metrics_per_key 1 2\n}":                         "wrong argument count",
	} {
		if _, err := parse(t, input); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", input, err, want)
		}
	}
}

// TestAuthProvision: keys_file is read and merged; bad keys fail the
// config naming the entry, never the key.
func TestAuthProvision(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/keys.json"
	if err := os.WriteFile(file, []byte(`{"keys":[{"key":"`+keys.Hash(bobKey)+`","id":"from-file","models":["m"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CG_KEYS_FILE", file)
	h := provisioned(t, fmt.Sprintf("chat_gateway {\n auth {\n key %s\n keys_file {env.CG_KEYS_FILE}\n }\n}", keys.Hash(aliceKey)))
	_, repl := serve(t, h, keyed("POST", "/v1/chat/completions", hello, "bearer", bobKey))
	if id, _ := repl.GetString("http.chat_gateway.key_id"); id != "from-file" {
		t.Fatalf("key id %q, want from-file", id)
	}
	_, repl = serve(t, h, keyed("POST", "/v1/chat/completions", hello, "bearer", aliceKey))
	if id, _ := repl.GetString("http.chat_gateway.key_id"); id != keys.DefaultID(aliceKey) {
		t.Fatalf("default key id %q, want %q", id, keys.DefaultID(aliceKey))
	}

	t.Setenv("CG_TEST_KEY", "")
	for config, want := range map[string]string{
		"auth {\n key {env.CG_TEST_KEY}\n }":                       "key 1: empty key",
		"auth {\n key {env.CG_TEST_KEY} {\n id team\n }\n }":       "key 1 (team): empty key: {env.CG_TEST_KEY} is unset or empty",
		"auth {\n key too-short\n }":                               "at least 16",
		"auth {\n key " + aliceKey + "\n key " + aliceKey + "\n }": "key 2: the same key is configured twice",
		"auth {\n keys_file " + dir + "/missing.json\n }":          "reading keys_file",
	} {
		if err := provisionError(t, config); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), aliceKey) {
			t.Errorf("%s: error %v, want %q, without the key", config, err, want)
		}
	}
}

// TestAuthSDK: the official SDK with a good key, and with a bad one
// (an *openai.Error with status 401 and code invalid_api_key).
func TestAuthSDK(t *testing.T) {
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n auth {\n key %s\n }\n}", keys.Hash(aliceKey)))
	good := openai.NewClient(option.WithBaseURL(g.URL+"/v1"), option.WithAPIKey(aliceKey), option.WithMaxRetries(0))
	c, err := good.Chat.Completions.New(context.Background(), sdkParams)
	if err != nil || c.Choices[0].Message.Content != "Echo: hello world" {
		t.Fatalf("%v %+v, want no error and Echo: hello world", err, c)
	}
	bad := openai.NewClient(option.WithBaseURL(g.URL+"/v1"), option.WithAPIKey(wrongKey), option.WithMaxRetries(0))
	_, err = bad.Chat.Completions.New(context.Background(), sdkParams)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "invalid_api_key" || apiErr.Type != "invalid_request_error" ||
		!strings.Contains(apiErr.Message, "Incorrect API key provided") {
		t.Fatalf("error %v, want a 401 invalid_request_error invalid_api_key, Incorrect API key provided", err)
	}
	if _, err := bad.Models.List(context.Background()); !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("models: %v, want a 401 *openai.Error", err)
	}
}

// accessLog returns the access log line of a request id.
func (g *gateway) accessLog(t *testing.T, requestID string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		lines, _ := g.logs(t)
		for _, l := range lines {
			if l["msg"] == "handled request" && l["request_id"] == requestID {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access log for %s", requestID)
		}
	}
}

// TestAuthComposition: without an auth block the identity is what
// basic_auth in front set; with one, the key decides and its id is
// Caddy's user_id. Both reach the access log.
func TestAuthComposition(t *testing.T) {
	// "pw" in bcrypt at its lowest cost: Caddy's default (14) takes a
	// second a comparison.
	const hash = "$2a$04$wNNBCH8ncfoCA6qEkWkoVugoOIuu03VxezOuFlR/3vpN.PkYYFkSC"
	if ok, err := (caddyauth.BcryptHash{}).Compare([]byte(hash), []byte("pw")); !ok || err != nil {
		t.Fatalf("the hash is not pw's: %v", err)
	}
	basic := fmt.Sprintf("basic_auth {\n\t\t\tcarol %s\n\t\t}", hash)
	g := newGateway(t, basic+"\n\t\tchat_gateway")
	req := g.request(hello, "X-Request-ID", "compose-1")
	req.SetBasicAuth("carol", "pw")
	if resp, body := do(t, req); resp.StatusCode != 200 {
		t.Fatalf("%d %s, want 200", resp.StatusCode, body)
	}
	if l := g.accessLog(t, "compose-1"); l["user_id"] != "carol" || l["key_id"] != "carol" {
		t.Fatalf("access log %v, want user_id and key_id carol", l)
	}
	if resp, _ := g.post(t, hello); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Basic realm="restricted"` {
		t.Fatalf("basic_auth did not answer: %d %v, want 401 with WWW-Authenticate: Basic realm=\"restricted\"", resp.StatusCode, resp.Header)
	}

	// The key id placeholder, in a deferred response header.
	g = newGateway(t, "header >X-Key-Id {http.chat_gateway.key_id}\n\t\t"+basic+fmt.Sprintf("\n\t\tchat_gateway {\n auth {\n key %s {\n id team-k\n }\n }\n }", keys.Hash(aliceKey)))
	req = g.request(hello, "X-Request-ID", "compose-2", "X-Api-Key", aliceKey)
	req.SetBasicAuth("carol", "pw")
	if resp, body := do(t, req); resp.StatusCode != 200 || resp.Header.Get("X-Key-Id") != "team-k" {
		t.Fatalf("%d %v %s, want 200 with X-Key-Id: team-k", resp.StatusCode, resp.Header, body)
	}
	if l := g.accessLog(t, "compose-2"); l["user_id"] != "team-k" || l["key_id"] != "team-k" {
		t.Fatalf("access log %v, want user_id and key_id team-k", l)
	}
	req = g.request(hello)
	req.SetBasicAuth("carol", "pw")
	if resp, body := do(t, req); resp.StatusCode != 401 || !strings.Contains(body, "invalid_api_key") {
		t.Fatalf("basic_auth alone passed the key check: %d %s", resp.StatusCode, body)
	}
}

// TestAuthReload: a reload with a changed key set applies to new
// requests at once, while a stream opened with a removed key runs to
// its end.
func TestAuthReload(t *testing.T) {
	release := make(chan struct{})
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"old "}}]}`)
		if strings.Contains(upstreamBody(r), "hold") {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"key"},"finish_reason":"stop"}]}`)
		sseEvent(w, "[DONE]")
	})
	port := freePort(t)
	config := func(key string) string {
		return fmt.Sprintf("chat_gateway %s {\n auth {\n key %s\n }\n }", be.URL, keys.Hash(key))
	}
	g := loadGateway(t, port, "10s", config(aliceKey))
	held := `{"model":"m","messages":[{"role":"user","content":"hold"}],"stream":true}`
	resp, err := http.DefaultClient.Do(g.request(held, "Authorization", "Bearer "+aliceKey))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 64)
	if _, err := io.ReadAtLeast(resp.Body, first, 10); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v, want 200 and the first bytes of the stream", resp.StatusCode, err)
	}

	loadGateway(t, port, "10s", config(bobKey))
	if resp, body := g.post(t, hello, "Authorization", "Bearer "+aliceKey); resp.StatusCode != 401 {
		t.Fatalf("removed key: %d %s, want 401", resp.StatusCode, body)
	}
	if resp, body := g.post(t, helloStream, "Authorization", "Bearer "+bobKey); resp.StatusCode != 200 || !strings.Contains(body, "[DONE]") {
		t.Fatalf("added key: %d %s, want 200 with [DONE]", resp.StatusCode, body)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if all := string(first) + string(rest); !strings.Contains(all, "key") || !strings.HasSuffix(all, "data: [DONE]\n\n") {
		t.Fatalf("the open stream did not finish: %s", all)
	}
}

// TestAuthKeysNeverLeak: keys used in requests, good and bad, in each
// header form, appear in no reply, no log line (debug level, the access
// log filtered as the README says), no metric and no backend request.
func TestAuthKeysNeverLeak(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(upstreamBody(r), `"stream":true`) {
			llamaStream(w, r)
			return
		}
		writeJSON(w, 200, `{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}`)
	})
	t.Setenv("CG_LEAK_KEY", aliceKey)
	port := freePort(t)
	logFile := t.TempDir() + "/caddy.log"
	text := globalOptions(fmt.Sprintf("http_port %d", port), "log {\n\toutput file "+logFile+"\n\tformat json\n\tlevel DEBUG\n}") + fmt.Sprintf(`http://127.0.0.1:%d {
	log {
		output file %s
		format filter {
			wrap json
			request>headers>X-Api-Key delete
			request>headers>Api-Key delete
		}
	}
	metrics /metrics
	chat_gateway %s {
		auth {
			key {env.CG_LEAK_KEY} {
				id leak-a
				models m
			}
			key %s {
				id leak-b
			}
		}
		metrics_per_key
	}
}`, port, logFile, be.URL, keys.Hash(bobKey))
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	waitListeners(t, port)
	http.DefaultClient.CloseIdleConnections()
	g := &gateway{URL: fmt.Sprintf("http://127.0.0.1:%d", port), logFile: logFile}

	var seen strings.Builder
	send := func(method, path, body, header, value string, want int) {
		req, _ := http.NewRequest(method, g.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(header, value)
		resp, got := do(t, req)
		if resp.StatusCode != want {
			t.Fatalf("%s %s %s: %d %s, want %d", method, path, header, resp.StatusCode, got, want)
		}
		fmt.Fprintln(&seen, resp.Header, got)
	}
	forms := map[string]string{"Authorization": "Bearer ", "X-Api-Key": "", "Api-Key": ""}
	for header, prefix := range forms {
		for _, key := range []string{aliceKey, bobKey} {
			send("POST", "/v1/chat/completions", hello, header, prefix+key, 200)
			send("POST", "/v1/chat/completions", helloStream, header, prefix+key, 200)
			send("GET", "/v1/models", "", header, prefix+key, 200)
		}
		send("POST", "/v1/chat/completions", `{"model":"denied","messages":[{"role":"user","content":"x"}]}`, header, prefix+aliceKey, 404)
		send("POST", "/v1/chat/completions", hello, header, prefix+wrongKey, 401)
		send("GET", "/v1/models", "", header, prefix+wrongKey, 401)
	}
	_, metrics := do(t, mustRequest("GET", g.URL+"/metrics"))
	if !strings.Contains(metrics, `key="leak-a"`) || !strings.Contains(metrics, `key="leak-b"`) {
		t.Fatalf("no key label in the metrics")
	}
	var logs string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, logs = g.logs(t)
		if strings.Count(logs, `"key_id":"leak-b"`) >= 9 || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(logs, `"key_id":"leak-a"`) || !strings.Contains(logs, `"user_id":"leak-b"`) || !strings.Contains(logs, `"level":"debug"`) {
		t.Fatalf("the logs lack the key ids or debug lines:\n%s", logs)
	}
	be.mu.Lock()
	upstream := fmt.Sprint(be.requests)
	be.mu.Unlock()
	for _, key := range []string{aliceKey, bobKey, wrongKey} {
		for where, text := range map[string]string{"a reply": seen.String(), "the logs": logs, "the metrics": metrics, "a backend request": upstream} {
			if strings.Contains(text, key) {
				t.Errorf("%s holds key %s...", where, key[:10])
			}
		}
	}
}

// TestCommands runs the built caddy's chat-gateway subcommands, and
// uses the key and block new-key prints.
func TestCommands(t *testing.T) {
	// run runs `caddy <args>` as the command line would, through the
	// command registered with Caddy, its output in a buffer.
	run := func(stdin string, args ...string) (string, error) {
		registered, ok := caddycmd.Commands()[args[0]]
		if !ok {
			t.Fatalf("no command %q registered", args[0])
		}
		cmd := &cobra.Command{Use: registered.Name, SilenceUsage: true, SilenceErrors: true}
		registered.CobraFunc(cmd)
		var stdout strings.Builder
		cmd.SetArgs(args[1:])
		cmd.SetIn(strings.NewReader(stdin))
		cmd.SetOut(&stdout)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		return stdout.String(), err
	}

	out, err := run("", "chat-gateway", "new-key", "--id", "team-a")
	if err != nil {
		t.Fatal(err)
	}
	key, block, ok := strings.Cut(out, "\n\n")
	if !ok || !regexp.MustCompile(`^sk-cg-[0-9A-Za-z]{43}$`).MatchString(key) {
		t.Fatalf("new-key printed %q, want sk-cg- and 43 letters or digits, a blank line and a block", out)
	}
	if want := "key " + keys.Hash(key) + " {\n\tid team-a\n}\n"; block != want {
		t.Fatalf("block %q, want %q", block, want)
	}
	out, err = run("", "chat-gateway", "new-key")
	if k, block, _ := strings.Cut(out, "\n\n"); err != nil || !strings.Contains(block, "\tid "+keys.DefaultID(k)+"\n") || k == key {
		t.Fatalf("new-key without --id: %q %v, want no error, a new key and a block with its default id", out, err)
	}
	if _, err := run("", "chat-gateway", "new-key", "--id", "two words"); err == nil {
		t.Fatal("an id with a space was taken")
	}

	for stdin, want := range map[string]string{key + "\n": keys.Hash(key), key + "\r\n": keys.Hash(key), key: keys.Hash(key), "a b \n": keys.Hash("a b ")} {
		if out, err := run(stdin, "chat-gateway", "hash-key"); err != nil || out != want+"\n" {
			t.Errorf("hash-key of %q: %q %v, want %q and a newline", stdin, out, err, want)
		}
	}
	if _, err := run("\n", "chat-gateway", "hash-key"); err == nil {
		t.Error("hash-key took an empty key")
	}

	g := newGateway(t, "chat_gateway {\n auth {\n "+strings.ReplaceAll(block, "\n", "\n ")+"}\n }")
	if resp, body := g.post(t, hello, "Authorization", "Bearer "+key); resp.StatusCode != 200 {
		t.Fatalf("the new key: %d %s, want 200", resp.StatusCode, body)
	}
}

// TestAuthModuleLog: the module's log lines name the caller's key id,
// never its key.
func TestAuthModuleLog(t *testing.T) {
	h := provisioned(t, fmt.Sprintf("chat_gateway %s {\n auth {\n key %s {\n id alice\n }\n }\n}", refusing(t), keys.Hash(aliceKey)))
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	if w, _ := serve(t, h, keyed("POST", "/v1/chat/completions", hello, "x-api-key", aliceKey)); w.Code != 502 {
		t.Fatalf("%d %s, want 502", w.Code, w.Body)
	}
	entries := logs.AllUntimed()
	if len(entries) != 1 || entries[0].ContextMap()["key_id"] != "alice" {
		t.Fatalf("%+v, want one entry with key_id alice", entries)
	}
	if text := fmt.Sprint(entries[0].Message, entries[0].ContextMap()); strings.Contains(text, aliceKey) {
		t.Fatalf("the log holds the key: %s", text)
	}
}

// TestKeysFileWatched: editing keys_file takes effect for new requests
// within seconds, with no config reload (Caddy skips reloading an
// unchanged Caddyfile): a removed key is refused, a disabled one too, a
// key's models change, while a stream opened with a removed key runs to
// its end; a broken file keeps the last good keys, and says so in the
// log.
func TestKeysFileWatched(t *testing.T) {
	defer func(d time.Duration) { keysFileInterval = d }(keysFileInterval)
	keysFileInterval = 20 * time.Millisecond
	release := make(chan struct{})
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"old "}}]}`)
		if strings.Contains(upstreamBody(r), "hold") {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"key"},"finish_reason":"stop"}]}`)
		sseEvent(w, "[DONE]")
	})
	file := t.TempDir() + "/keys.json"
	write := func(content string) {
		t.Helper()
		// Written aside and renamed in, as editors and Kubernetes do.
		if err := os.WriteFile(file+".new", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(key, extra string) string {
		return `{"key":"` + keys.Hash(key) + `"` + extra + `}`
	}
	write(`{"keys":[` + entry(aliceKey, `,"id":"alice"`) + `,` + entry(bobKey, `,"id":"bob"`) + `]}`)
	g := newGateway(t, fmt.Sprintf("chat_gateway %s {\n auth {\n keys_file %s\n }\n }", be.URL, file))
	// waitStatus polls until key gets status for model, or fails.
	waitStatus := func(key, model string, status int) {
		t.Helper()
		body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, got := g.post(t, body, "Authorization", "Bearer "+key)
			if resp.StatusCode == status {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s on %s: still %d %s, want %d", key[:9], model, resp.StatusCode, got, status)
			}
		}
	}
	waitStatus(aliceKey, "m", 200)
	held := `{"model":"m","messages":[{"role":"user","content":"hold"}],"stream":true}`
	resp, err := http.DefaultClient.Do(g.request(held, "Authorization", "Bearer "+aliceKey))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 64)
	if _, err := io.ReadAtLeast(resp.Body, first, 10); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v, want 200 and the first bytes of the stream", resp.StatusCode, err)
	}

	write(`{"keys":[` + entry(bobKey, `,"id":"bob","models":["small"]`) + `]}`)
	waitStatus(aliceKey, "m", 401)
	waitStatus(bobKey, "m", 404)
	waitStatus(bobKey, "small", 200)
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if all := string(first) + string(rest); !strings.HasSuffix(all, "data: [DONE]\n\n") {
		t.Fatalf("the stream opened with the removed key did not finish: %s", all)
	}

	write(`{"keys":[` + entry(bobKey, `,"id":"bob","modles":["m"]`) + `]}`) // a typo: refused
	deadline := time.Now().Add(30 * time.Second)
	for {
		lines, _ := g.logs(t)
		if slices.ContainsFunc(lines, func(l map[string]any) bool {
			return l["msg"] == "keys_file not reloaded: the last good keys stay in use"
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no log line for the broken keys_file")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitStatus(bobKey, "small", 200)
	waitStatus(bobKey, "m", 404)

	write(`{"keys":[` + entry(bobKey, `,"id":"bob","disabled":true`) + `]}`)
	waitStatus(bobKey, "small", 401)
}
