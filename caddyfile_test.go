package chatgateway

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func parse(t *testing.T, input string) (*Handler, error) {
	t.Helper()
	tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	h := new(Handler)
	return h, h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
}

func TestUnmarshalCaddyfile(t *testing.T) {
	h, err := parse(t, `chat_gateway {
		echo
		echo_delay 20ms
		max_request_body 2MiB
		timeout 90s
		first_token_timeout 3m
		idle_timeout 45s
		include_usage_upstream
		max_concurrent 0
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Echo || h.EchoDelay != caddy.Duration(20*time.Millisecond) || h.MaxRequestBody != 2<<20 || h.Timeout != caddy.Duration(90*time.Second) ||
		h.FirstTokenTimeout != caddy.Duration(3*time.Minute) || h.IdleTimeout != caddy.Duration(45*time.Second) || !h.IncludeUsageUpstream || h.MaxConcurrent != 0 {
		t.Fatalf("%+v, want every option of the block set", h)
	}

	h, err = parse(t, `chat_gateway http://127.0.0.1:8081/v1 http://127.0.0.1:8082 {
		api_key sk-shared
		backend https://api.openai.com/v1 {
			models gpt-4o-mini
			alias gpt-4o gpt-4o-mini
			api_key {env.OPENAI_API_KEY}
		}
		backend http://10.0.0.1:8000 http://10.0.0.2:8000 {
			models llama-3.1-8b qwen2.5-7b
			lb_policy least_conn
			health_uri /health
			transport http {
				dial_timeout 2s
			}
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Backends) != 3 {
		t.Fatalf("%d backends, want 3", len(h.Backends))
	}
	b0, b1, b2 := h.Backends[0], h.Backends[1], h.Backends[2]
	if b0.BasePath != "/v1" || b0.APIKey != "sk-shared" || len(b0.Models) != 0 {
		t.Fatalf("inline backend %+v, want base path /v1, api_key sk-shared and no models", b0)
	}
	if b1.APIKey != "{env.OPENAI_API_KEY}" || b1.Aliases["gpt-4o"] != "gpt-4o-mini" || b1.Models[0] != "gpt-4o-mini" {
		t.Fatalf("openai backend %+v, want api_key {env.OPENAI_API_KEY}, model gpt-4o-mini and alias gpt-4o", b1)
	}
	var proxy map[string]any
	_ = json.Unmarshal(b2.ProxyRaw, &proxy)
	if proxy["handler"] != "reverse_proxy" || len(proxy["upstreams"].([]any)) != 2 || proxy["load_balancing"] == nil || proxy["health_checks"] == nil || proxy["transport"] == nil {
		t.Fatalf("reverse_proxy options lost: %s, want 2 upstreams, load_balancing, health_checks and transport", b2.ProxyRaw)
	}
	_ = json.Unmarshal(b1.ProxyRaw, &proxy)
	if tls := proxy["transport"].(map[string]any)["tls"]; tls == nil {
		t.Fatalf("https backend without TLS: %s", b1.ProxyRaw)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for input, want := range map[string]string{
		`chat_gateway { bogus }`:                                             "unrecognized chat_gateway option 'bogus'",
		`chat_gateway { timeout soon }`:                                      "invalid timeout 'soon'",
		"chat_gateway {\n idle_timeout\n}":                                   "wrong argument count",
		`chat_gateway { max_request_body lots }`:                             "invalid max_request_body 'lots'",
		`chat_gateway { echo now }`:                                          "wrong argument count",
		`chat_gateway ftp://x`:                                               "invalid backend URL 'ftp://x'",
		"chat_gateway {\n backend\n}":                                        "backend needs at least one URL",
		`chat_gateway { backend http://a:1/v1 http://b:1/other }`:            "must share one path",
		"chat_gateway {\n backend http://a:1 {\n alias x\n }\n}":             "alias takes a name",
		"chat_gateway {\n backend http://a:1 {\n lb_policy nope\n }\n}":      "nope",
		"chat_gateway {\n backend http://a:1 {\n handle_response\n }\n}":     "not supported",
		"chat_gateway {\n backend http://a:1 {\n api_key a b\n }\n}":         "wrong argument count",
		`chat_gateway http://a:1/v1/chat/completions`:                        "backend URL 'http://a:1/v1/chat/completions' is an endpoint, not a base URL: give the base URL as OpenAI SDKs take it, such as 'http://a:1/v1'",
		"chat_gateway {\n backend https://a/openai/v1/models/\n}":            "such as 'https://a/openai/v1'",
		"chat_gateway http://a:1 {\n lb_policy first\n}":                     "unrecognized chat_gateway option 'lb_policy': it is a reverse_proxy subdirective; put it in a 'backend <urls...> { ... }' block",
		"chat_gateway http://a:1 {\n transport http {\n }\n}":                "it is a reverse_proxy subdirective",
		`chat_gateway { max_concurrent -1 }`:                                 "invalid max_concurrent '-1': want a number, 0 for no cap",
		"chat_gateway {\n backend http://a:1 {\n messages\n }\n}":            "messages takes one argument, native",
		"chat_gateway {\n backend http://a:1 {\n messages translated\n }\n}": "messages takes one argument, native",
		"chat_gateway {\n backend http://a:1 {\n messages native x\n }\n}":   "messages takes one argument, native",
	} {
		_, err := parse(t, input)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", input, err, want)
		}
	}
}

// TestCaddyfileAdapt compares the JSON of each testdata/caddyfile_adapt
// file's Caddyfile with the JSON after its "----------" line.
func TestCaddyfileAdapt(t *testing.T) {
	files, _ := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if len(files) == 0 {
		t.Fatal("no adapt tests")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		in, want, ok := strings.Cut(string(raw), "----------")
		if !ok {
			t.Fatalf("%s: no ---------- line", f)
		}
		if !caddytest.CompareAdapt(t, f, in, "caddyfile", strings.TrimSpace(want)) {
			t.Errorf("%s: adapted JSON differs", f)
		}
	}
}

func FuzzCaddyfile(f *testing.F) {
	f.Add("chat_gateway http://a:1/v1 {\n backend http://b:2 {\n models x\n lb_policy first\n }\n timeout 1s\n}")
	f.Add("chat_gateway {\n echo\n max_request_body 1KiB\n}")
	f.Add("chat_gateway {\n backend http://b:2 {\n messages native\n responses stateful\n }\n}")
	f.Add("chat_gateway {\n auth {\n key sha256:ab {\n id a\n models x* y\n expires 2027-01-01T00:00:00Z\n disabled\n }\n keys_file k.json\n }\n metrics_per_key 3\n}")
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		_ = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)) // must not panic
	})
}

// TestProvisionErrorsNameBackends: a config error names the backends by
// their URLs, not by their position.
func TestProvisionErrorsNameBackends(t *testing.T) {
	newGateway(t, "chat_gateway") // reverse_proxy provisions within a running config
	for input, want := range map[string]string{
		"chat_gateway {\n backend http://a:1 {\n models x\n }\n backend https://b {\n models x\n }\n}": `backend https://b:443/v1: model "x" is served by backend http://a:1/v1 already`,
		"chat_gateway {\n backend http://a:1/api http://c:3/api\n backend http://b:2\n}":               `backend http://b:2/v1: only one backend may leave out models, it serves the models no other lists, and backend http://a:1/api http://c:3/api does already`,
		"chat_gateway {\n backend http://a:1 {\n models x\n fallback y\n }\n}":                         `backend http://a:1/v1: no backend serves fallback model "y"`,
	} {
		h, err := parse(t, input)
		if err != nil {
			t.Fatalf("%q: %v", input, err)
		}
		ctx, cancel := caddy.NewContext(caddy.ActiveContext())
		err = h.Provision(ctx)
		cancel()
		if err == nil || err.Error() != want {
			t.Errorf("%q: error %v, want %q", input, err, want)
		}
	}
}

func TestResponsesOption(t *testing.T) {
	h, err := parse(t, "chat_gateway {\n backend http://127.0.0.1:9 {\n responses stateful\n }\n}")
	if err != nil || !h.Backends[0].keepsResponses() {
		t.Fatalf("%v %+v, want no error and a backend keeping responses", err, h)
	}
	for _, bad := range []string{"responses", "responses yes", "responses stateful more"} {
		if _, err := parse(t, "chat_gateway {\n backend http://127.0.0.1:9 {\n "+bad+"\n }\n}"); err == nil || !strings.Contains(err.Error(), "responses takes one argument, stateful") {
			t.Errorf("%q: %v, want \"responses takes one argument, stateful\"", bad, err)
		}
	}
	if err := (&Handler{Backends: []*Backend{{Responses: "yes", ProxyRaw: []byte(`{"upstreams":[{"dial":"127.0.0.1:9"}]}`)}}}).Validate(); err == nil {
		t.Error("responses \"yes\" in JSON passed validation")
	}
}

// TestRequestBuffersDefault: a backend's proxy buffers small bodies
// unless its config says otherwise, so Go's transport writes a small
// request in one piece; a request_buffers of the config's own is kept.
func TestRequestBuffersDefault(t *testing.T) {
	for config, want := range map[string]int64{
		"chat_gateway http://127.0.0.1:9":                                             defaultRequestBuffers,
		"chat_gateway {\n backend http://127.0.0.1:9 {\n request_buffers 1MiB\n }\n}": 1 << 20,
	} {
		h := provisioned(t, config)
		if got := h.Backends[0].proxy.(*reverseproxy.Handler).RequestBuffers; got != want {
			t.Errorf("%q: request_buffers %d, want %d", config, got, want)
		}
	}
}

// A slip in a Caddyfile is caught when it loads, and the error points at
// the fix: a misspelt option gets the nearest one (the gateway's before
// reverse_proxy's in a backend), an option given twice is refused rather
// than the last silently kept, and a backend URL that names any
// endpoint the gateway appends is refused.
func TestCaddyfileSlips(t *testing.T) {
	for input, want := range map[string]string{
		"chat_gateway {\n first_token_timout 10m\n}":                                                                       "unrecognized chat_gateway option 'first_token_timout': did you mean 'first_token_timeout'?",
		"chat_gateway {\n max_concurent 4\n}":                                                                              "did you mean 'max_concurrent'?",
		"chat_gateway {\n backend http://a:1 {\n model x\n }\n}":                                                           "unrecognized backend option 'model': did you mean 'models'?",
		"chat_gateway {\n backend http://a:1 {\n fallbak y\n }\n}":                                                         "did you mean 'fallback'?",
		"chat_gateway {\n auth {\n kye sk-0123456789abcdef\n }\n}":                                                         "unrecognized auth option 'kye': did you mean 'key'?",
		"chat_gateway {\n limits {\n request 5/1m\n }\n}":                                                                  "unrecognized limits option 'request': did you mean 'requests'?",
		"chat_gateway {\n limits {\n store redis a:1 {\n pasword x\n }\n }\n}":                                             "unrecognized redis option 'pasword': did you mean 'password'?",
		"chat_gateway {\n timeout 1m\n timeout 2m\n}":                                                                      "only one timeout line may be given here",
		"chat_gateway {\n limits {\n requests 1/1m\n }\n limits {\n tokens 1/1m\n }\n}":                                    "only one limits line",
		"chat_gateway {\n backend http://a:1 {\n api_key a\n api_key b\n }\n}":                                             "only one api_key line",
		"chat_gateway {\n backend http://a:1 {\n alias x y\n alias x z\n }\n}":                                             "alias x already specified",
		"chat_gateway {\n auth {\n key sk-0123456789abcdef {\n id a\n id b\n }\n }\n}":                                     "only one id line",
		"chat_gateway {\n auth {\n keys_file a\n }\n auth {\n keys_file b\n }\n}":                                          "only one keys_file",
		"chat_gateway http://a:1/v1/embeddings":                                                                            "is an endpoint, not a base URL: give the base URL as OpenAI SDKs take it, such as 'http://a:1/v1'",
		"chat_gateway http://a:1/v1/completions":                                                                           "such as 'http://a:1/v1'",
		"chat_gateway http://a:1/v1/responses":                                                                             "such as 'http://a:1/v1'",
		"chat_gateway http://a:1/v1/messages":                                                                              "such as 'http://a:1/v1'",
		"chat_gateway http://a:1/v1/messages/count_tokens":                                                                 "such as 'http://a:1/v1'",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity {\n block_siz 64\n }\n }\n}":                    "unrecognized prefix_affinity option 'block_siz': did you mean 'block_size'?",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity {\n block_size 8\n }\n }\n}":                    "invalid block_size '8': want an integer from 16 to 1048576",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity {\n load_factor 1\n }\n }\n}":                   "invalid load_factor '1': want a number above 1",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity {\n load_metrics tgi\n }\n }\n}":                "unknown load_metrics 'tgi': want llamacpp, vllm or sglang",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity {\n load_metrics vllm 10ms\n }\n }\n}":          "invalid load_metrics interval '10ms'",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity {\n index_blocks 1\n index_blocks 2\n }\n }\n}": "only one index_blocks line",
		"chat_gateway {\n backend http://a:1 {\n lb_policy prefix_affinity 4\n }\n}":                                       "wrong argument count",
		"chat_gateway {\n cache {\n tll 1m\n }\n}":                                                                         "unrecognized cache option 'tll': did you mean 'ttl'?",
		"chat_gateway {\n cache {\n max_size 10KB\n }\n}":                                                                  "invalid max_size '10KB': want a size of at least 1MiB",
		"chat_gateway {\n cache {\n scope global\n }\n}":                                                                   "invalid scope 'global': want key or shared",
		"chat_gateway {\n cache {\n when sometimes\n }\n}":                                                                 "invalid when 'sometimes': want deterministic or always",
		"chat_gateway {\n cache {\n store disk\n }\n}":                                                                     "unrecognized store 'disk': want memory or redis",
		"chat_gateway {\n cache 5m\n}":                                                                                     "wrong argument count",
		"chat_gateway {\n price m input x output 1\n}":                                                                     "price m: invalid input 'x': want US dollars per million tokens, such as 2.50",
		"chat_gateway {\n price m output 1\n}":                                                                             "price m: input and output are both needed",
		"chat_gateway {\n price m input 1 output 2 input 3\n}":                                                             "price m: unexpected 'input'",
		"chat_gateway {\n price m input 1 outptu 2\n}":                                                                     "price m: unexpected 'outptu'",
		"chat_gateway {\n price\n}":                                                                                        "price: want price <model pattern> input <USD per 1M tokens>",
		"chat_gateway {\n prices_file a b\n}":                                                                              "wrong argument count",
		"chat_gateway {\n limits {\n budget 0/day\n }\n}":                                                                  "invalid budget '0/day'",
		"chat_gateway {\n limits {\n budget 5/year\n }\n}":                                                                 "period must be day, week or month",
		"chat_gateway {\n limits {\n budget 1.0000001/day\n }\n}":                                                          "at most six decimals",
	} {
		_, err := parse(t, input)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", input, err, want)
		}
	}
	// No suggestion for what is nothing like an option; reverse_proxy's
	// own subdirectives still pass through a backend block.
	if _, err := parse(t, "chat_gateway {\n zzzzzz 1\n}"); err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("a word like no option: %v, want no suggestion", err)
	}
	if _, err := parse(t, "chat_gateway {\n backend http://a:1 http://a:2 {\n lb_policy first\n models m\n models n\n }\n}"); err != nil {
		t.Errorf("lb_policy and two models lines in a backend: %v, want them accepted", err)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"key", "key", 0}, {"kye", "key", 1}, {"ke", "key", 1}, {"keys", "key", 1},
		{"first_token_timout", "first_token_timeout", 1}, {"model", "models", 1}, {"abc", "xyz", 3}, {"", "abc", 3},
		{"ca", "abc", 3}, {"zzzzzz", "log_sizes", 8},
	} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := editDistance(tt.b, tt.a); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.b, tt.a, got, tt.want)
		}
	}
}
