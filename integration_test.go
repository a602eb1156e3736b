package chatgateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// TestCaddyfiles loads the repository's Caddyfile and each example into
// the in-process Caddy with caddytest, backends replaced by fakes, and
// sends each a chat request where its gateway is mounted.
func TestCaddyfiles(t *testing.T) {
	llama := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"from llama"}}]}`)
	})
	llama2 := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"choices":[{"message":{"content":"from llama"}}]}`)
	})
	openaiBackend := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sk-test-key" {
			writeJSON(w, 401, `{"error":{"message":"no key"}}`)
			return
		}
		writeJSON(w, 200, `{"choices":[{"message":{"content":"from openai"}}]}`)
	})
	t.Setenv("OPENAI_API_KEY", "sk-test-key")
	// The client key of examples that require one; the others ignore it.
	const gatewayKey = "sk-cg-integration-0123456789abcdef"
	t.Setenv("GATEWAY_KEY", gatewayKey)
	t.Setenv("ADMIN_PORT", strconv.Itoa(adminPort))

	tests := []struct {
		file, path, model, want string
		env                     map[string]string
	}{
		{"Caddyfile", "/v1/chat/completions", "m", "Echo: hi", nil},
		{"Caddyfile", "/v1/chat/completions", "m", "from openai", map[string]string{"BACKEND_URL": openaiBackend.URL + "/v1", "BACKEND_API_KEY": "sk-test-key"}},
		{"examples/echo.Caddyfile", "/v1/chat/completions", "m", "Echo: hi", nil},
		{"examples/llama-cpp.Caddyfile", "/v1/chat/completions", "m", "from llama", nil},
		{"examples/openai.Caddyfile", "/v1/chat/completions", "gpt-4o-mini", "from openai", nil},
		{"examples/replicas-with-fallback.Caddyfile", "/v1/chat/completions", "qwen2.5-7b", "from llama", nil},
		{"examples/replicas-with-fallback.Caddyfile", "/v1/chat/completions", "gpt-4o", "from openai", nil},
		{"examples/replicas-with-fallback.Caddyfile", "/v1/chat/completions", "llama-3.1-8b", "from openai", map[string]string{"LLAMA_DOWN": "1"}},
		{"examples/mounted.Caddyfile", "/llm/v1/chat/completions", "m", "from llama", nil},
		{"examples/metrics.Caddyfile", "/v1/chat/completions", "m", "from llama", nil},
		{"examples/prefix-affinity.Caddyfile", "/v1/chat/completions", "m", "from llama", nil},
		{"examples/cache.Caddyfile", "/v1/chat/completions", "m", "from llama", nil},
		{"examples/budgets.Caddyfile", "/v1/chat/completions", "m", "from llama", nil},
		{"examples/budgets.Caddyfile", "/v1/chat/completions", "gpt-4o-mini", "from openai", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %s %s", filepath.Base(tt.file), tt.model, tt.env["BACKEND_URL"]), func(t *testing.T) {
			port := freePort(t)
			t.Setenv("PORT", fmt.Sprint(port))
			t.Setenv("BACKEND_URL", "")
			t.Setenv("BACKEND_API_KEY", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			raw, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			llamas := []string{llama.URL, llama2.URL}
			if tt.env["LLAMA_DOWN"] != "" {
				llamas = []string{refusing(t), refusing(t)}
			}
			cfg := strings.NewReplacer(
				":8080", fmt.Sprintf(":%d", port),
				"http://127.0.0.1:8081", llamas[0],
				"http://127.0.0.1:8082", llamas[1],
				"http://127.0.0.1:8083", llamas[0],
				"http://127.0.0.1:8084", llamas[1],
				"https://api.openai.com", openaiBackend.URL,
			).Replace(string(raw))
			if !strings.HasPrefix(strings.TrimSpace(stripComments(cfg)), "{") {
				cfg = globalOptions() + cfg
			}
			tester := caddytest.NewTester(t)
			tester.InitServer(cfg, "caddyfile")
			body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, tt.model)
			req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d%s", port, tt.path), strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Request-ID", "it-1")
			req.Header.Set("Authorization", "Bearer "+gatewayKey)
			resp := tester.AssertResponseCode(req, 200)
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(got), tt.want) || !strings.Contains(string(got), `"id":"it-1"`) {
				t.Fatalf("reply %s, want %q with id it-1", got, tt.want)
			}
			if strings.Contains(string(raw), "auth {") {
				req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d%s", port, tt.path), strings.NewReader(body))
				tester.AssertResponseCode(req, 401).Body.Close()
			}

			// Any other API path: OpenAI's 404 for unknown URLs, in JSON,
			// with the request id, not the empty 200 Caddy gives when no
			// handler answers (a caller with a key, where keys are needed).
			unknown := strings.TrimSuffix(tt.path, "/chat/completions") + "/audio/speech"
			req, _ = http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d%s", port, unknown), strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+gatewayKey)
			resp = tester.AssertResponseCode(req, 404)
			got, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			e := apiError(t, string(got))
			if resp.Header.Get("Content-Type") != "application/json" || e["code"] != "unknown_url" || e["type"] != "invalid_request_error" || e["message"] == "" ||
				resp.Header.Get("X-Request-ID") == "" {
				t.Fatalf("%s: %s %s, want OpenAI's unknown_url error in JSON with an X-Request-ID", unknown, resp.Header.Get("Content-Type"), got)
			}
		})
	}
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestShippedCaddyfilesKeepKeysOutOfLogs: Caddy writes the request's
// headers to the access log before any handler runs, and redacts only
// Authorization and cookies; the Anthropic SDKs and Claude Code send
// their key as x-api-key, Azure's SDK as api-key. So every shipped
// Caddyfile whose gateway site logs deletes those two headers from the
// log.
func TestShippedCaddyfilesKeepKeysOutOfLogs(t *testing.T) {
	checked := 0
	for _, file := range shippedCaddyfiles() {
		var cfg struct {
			Logging struct {
				Logs map[string]struct {
					Encoder struct {
						Format string                       `json:"format"`
						Fields map[string]map[string]string `json:"fields"`
					} `json:"encoder"`
				} `json:"logs"`
			} `json:"logging"`
			Apps struct {
				HTTP struct {
					Servers map[string]json.RawMessage `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		adaptInto(t, file, &cfg)
		for name, srv := range cfg.Apps.HTTP.Servers {
			var s struct {
				Logs *struct {
					LoggerNames map[string][]string `json:"logger_names"`
					DefaultName string              `json:"default_logger_name"`
				} `json:"logs"`
			}
			_ = json.Unmarshal(srv, &s)
			if s.Logs == nil || !strings.Contains(string(srv), `"handler":"chat_gateway"`) {
				continue
			}
			checked++
			loggers := []string{s.Logs.DefaultName}
			for _, names := range s.Logs.LoggerNames {
				loggers = append(loggers, names...)
			}
			for _, logger := range loggers {
				enc := cfg.Logging.Logs[logger].Encoder
				for _, h := range []string{"X-Api-Key", "Api-Key"} {
					if enc.Format != "filter" || enc.Fields["request>headers>"+h]["filter"] != "delete" {
						t.Errorf("%s: server %s logs to %q without deleting request>headers>%s", file, name, logger, h)
					}
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no shipped Caddyfile logs a gateway site: the test checks nothing")
	}
}

// TestExamplesSideBySide: every shipped Caddyfile takes its port and its
// admin port from PORT and ADMIN_PORT, as the repository's Caddyfile
// does, so an example runs beside the quick-start gateway; two of them
// run side by side here, as processes.
func TestExamplesSideBySide(t *testing.T) {
	for _, file := range shippedCaddyfiles() {
		port, admin := freePort(t), freePort(t)
		t.Setenv("PORT", strconv.Itoa(port))
		t.Setenv("ADMIN_PORT", strconv.Itoa(admin))
		var cfg struct {
			Admin struct {
				Listen string `json:"listen"`
			} `json:"admin"`
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Listen []string `json:"listen"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		adaptInto(t, file, &cfg)
		listens := []string{}
		for _, srv := range cfg.Apps.HTTP.Servers {
			listens = append(listens, srv.Listen...)
		}
		if cfg.Admin.Listen != fmt.Sprintf("localhost:%d", admin) || len(listens) != 1 || listens[0] != fmt.Sprintf(":%d", port) {
			t.Errorf("%s listens on %v, admin on %q; want :%d and localhost:%d, from PORT and ADMIN_PORT", file, listens, cfg.Admin.Listen, port, admin)
		}
	}

	for _, file := range []string{"Caddyfile", "examples/echo.Caddyfile"} {
		port, admin := freePort(t), freePort(t)
		url := fmt.Sprintf("http://127.0.0.1:%d", port)
		runCaddy(t, file, url, fmt.Sprintf("PORT=%d", port), fmt.Sprintf("ADMIN_PORT=%d", admin), "BACKEND_URL=")
		g := &gateway{URL: url}
		if resp, body := g.post(t, hello); resp.StatusCode != 200 || !strings.Contains(body, "Echo: hello world") {
			t.Fatalf("%s on %s: %d %s, want 200 Echo: hello world", file, url, resp.StatusCode, body)
		}
	}
}

// shippedCaddyfiles are the Caddyfiles users are given: the repo's and
// the examples.
func shippedCaddyfiles() []string {
	files, _ := filepath.Glob("examples/*.Caddyfile")
	return append(files, "Caddyfile")
}

// adaptInto adapts the Caddyfile at file to JSON, as caddy adapt would,
// and decodes that into cfg.
func adaptInto(t *testing.T, file string, cfg any) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(raw, map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if err := json.Unmarshal(adapted, cfg); err != nil {
		t.Fatal(err)
	}
}
