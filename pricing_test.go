package chatgateway

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
)

// TestCost: every route's cost, from each shape of usage a backend
// reports, at the price of the model it served, in the access log, the
// placeholder and the metric; worked out by hand in the comments.
func TestCost(t *testing.T) {
	chat := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body := upstreamBody(r)
		switch {
		case strings.Contains(r.URL.Path, "responses"):
			writeJSON(w, 200, `{"id":"resp_1","object":"response","status":"completed","model":"gpt","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":1000,"output_tokens":100,"total_tokens":1100,"input_tokens_details":{"cached_tokens":800}}}`)
		case strings.Contains(r.URL.Path, "embeddings"):
			writeJSON(w, 200, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],"model":"embed","usage":{"prompt_tokens":5000,"total_tokens":5000}}`)
		case strings.Contains(body, `"stream":true`):
			startSSE(w)
			sseEvent(w, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}`)
			sseEvent(w, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`)
			sseEvent(w, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":300,"total_tokens":312}}`)
			sseEvent(w, "[DONE]")
		case strings.Contains(body, `"model":"quiet"`):
			writeJSON(w, 200, `{"id":"c","object":"chat.completion","created":1,"model":"quiet","choices":[{"index":0,"message":{"role":"assistant","content":"four"},"finish_reason":"stop"}]}`)
		default:
			writeJSON(w, 200, `{"id":"c","object":"chat.completion","created":1,"model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400}}}`)
		}
	})
	native := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":100,"cache_read_input_tokens":2000,"cache_creation_input_tokens":1000,"output_tokens":50}}`)
	})
	g := newGateway(t, fmt.Sprintf(`metrics /metrics
header >X-Cost {http.chat_gateway.cost_usd}
chat_gateway {
	backend %s {
		models gpt gpt-mini embed quiet unpriced
		alias cheap gpt-mini
	}
	backend %s {
		models claude-x
		messages native
	}
	price gpt input 2.50 output 10 cached 1.25
	price gpt-* input 0.15 output 0.60
	price claude-* input 3 output 15 cached 0.30 cache_write 3.75
	price embed input 0.02 output 0
	price quiet input 1 output 2
}`, chat.URL, native.URL))
	for _, tc := range []struct {
		name, path, body, id string
		want                 float64 // -1: not priced
		estimated            bool
	}{
		// 600 uncached x $2.50 + 400 cached x $1.25 + 200 x $10, per million.
		{"chat with cached tokens", "/v1/chat/completions", `{"model":"gpt","messages":[{"role":"user","content":"hi"}]}`, "cost-chat", 0.004, false},
		// The alias is priced as the model it names: 12 x $0.15 + 300 x $0.60.
		{"a stream with its usage chunk", "/v1/chat/completions", `{"model":"cheap","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`, "cost-stream", 0.0001818, false},
		// 100 x $3 + 2,000 cache reads x $0.30 + 1,000 cache writes x
		// $3.75 + 50 x $15.
		{"Messages with cache reads and writes", "/v1/messages", `{"model":"claude-x","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, "cost-messages", 0.0054, false},
		// 200 uncached x $2.50 + 800 cached x $1.25 + 100 x $10.
		{"a Response with cached input tokens", "/v1/responses", `{"model":"gpt","input":"hi"}`, "cost-responses", 0.0025, false},
		// 5,000 x $0.02.
		{"embeddings, prompt tokens only", "/v1/embeddings", `{"model":"embed","input":"hello"}`, "cost-embed", 0.0001, false},
		// No usage: what the gateway's estimate of the tokens costs at $1/$2.
		{"no usage at all", "/v1/chat/completions", `{"model":"quiet","messages":[{"role":"user","content":"What is 2+2?"}]}`, "cost-quiet", -2, true},
		{"an unpriced model", "/v1/chat/completions", `{"model":"unpriced","messages":[{"role":"user","content":"hi"}]}`, "cost-unpriced", -1, false},
	} {
		req, _ := http.NewRequest("POST", g.URL+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", tc.id)
		req.Header.Set("Anthropic-Version", "2023-06-01")
		resp, body := do(t, req)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
		l := g.accessLog(t, tc.id)
		cost, logged := l["cost_usd"].(float64)
		unpriced, _ := l["unpriced"].(bool)
		switch {
		case tc.want == -1:
			if !logged || cost != 0 || !unpriced || resp.Header.Get("X-Cost") != "0" {
				t.Errorf("%s: cost_usd %v, unpriced %v, X-Cost %q: want 0 and unpriced", tc.name, l["cost_usd"], l["unpriced"], resp.Header.Get("X-Cost"))
			}
			continue
		case tc.want == -2: // estimated: what the log's own token counts cost
			tc.want = (l["prompt_tokens"].(float64)*1 + l["completion_tokens"].(float64)*2) / 1e6
		}
		if !logged || unpriced || math.Abs(cost-tc.want) > 1e-12 {
			t.Errorf("%s: cost_usd %v (unpriced %v), want %v", tc.name, l["cost_usd"], l["unpriced"], tc.want)
		}
		if est, _ := l["cost_estimated"].(bool); est != tc.estimated {
			t.Errorf("%s: cost_estimated %v, want %v", tc.name, l["cost_estimated"], tc.estimated)
		}
		// A reply relayed as it comes (a stream, embeddings) has its
		// placeholders set at its end, after the headers.
		if tc.path == "/v1/chat/completions" && !tc.estimated && !strings.Contains(tc.body, `"stream":true`) && resp.Header.Get("X-Cost") != fmt.Sprint(tc.want) {
			t.Errorf("%s: X-Cost %q, want %v", tc.name, resp.Header.Get("X-Cost"), tc.want)
		}
	}
	m := scrape(t, g)
	// gpt served the chat request and the Response: $0.004 + $0.0025.
	if v := m[`caddy_chat_gateway_cost_usd_total{key="",model="gpt"}`]; math.Abs(v-0.0065) > 1e-12 {
		t.Errorf("cost metric for gpt: %v, want 0.0065", v)
	}
	if v := m[`caddy_chat_gateway_unpriced_requests_total{model="unpriced"}`]; v != 1 {
		t.Errorf("unpriced requests: %v, want 1", v)
	}
}

// TestPricesFile: a model priced only in LiteLLM's published list is
// priced from it; a price line for a model takes precedence over the
// file's entry.
func TestPricesFile(t *testing.T) {
	be, _ := priced(t, nil) // 5 prompt and 5 completion tokens a reply
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
	backend %s
	price gpt-4o input 1000 output 1000
	prices_file internal/pricing/testdata/model_prices_and_context_window.json
}`, be.URL))
	// gpt-4o-mini from the file: 5 x $0.15 + 5 x $0.60 per million;
	// gpt-4o from its line: 10 x $1,000 per million.
	for model, want := range map[string]float64{"gpt-4o-mini": 5*0.15/1e6 + 5*0.60/1e6, "gpt-4o": 0.01} {
		id := "file-" + model
		if resp, body := g.post(t, strings.Replace(budgetRequest, `"model":"m"`, `"model":"`+model+`"`, 1), "X-Request-Id", id); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		if cost, _ := g.accessLog(t, id)["cost_usd"].(float64); math.Abs(cost-want) > 1e-12 {
			t.Errorf("%s: cost_usd %v, want %v", model, cost, want)
		}
	}
}
