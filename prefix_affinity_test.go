package chatgateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// inferenceReplica is a fake inference server that answers each route
// as such a server would, reports on /metrics the requests it queues
// (llama.cpp's gauges: queued sets requests_deferred), and holds a
// request whose body says HOLD until hold is closed.
type inferenceReplica struct {
	*backend
	queued  atomic.Int64
	hold    chan struct{}
	metrics atomic.Pointer[http.Header] // the headers of the last /metrics poll
}

func newInferenceReplica(t *testing.T) *inferenceReplica {
	r := &inferenceReplica{hold: make(chan struct{})}
	r.backend = newFakeBackend(t, func(w http.ResponseWriter, req *http.Request) {
		body := upstreamBody(req)
		if strings.Contains(body, "HOLD") {
			select {
			case <-r.hold:
			case <-req.Context().Done():
				return
			}
		}
		switch req.URL.Path {
		case "/metrics":
			h := req.Header.Clone()
			r.metrics.Store(&h)
			fmt.Fprintf(w, "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred %d\n", r.queued.Load())
		case "/v1/completions":
			writeJSON(w, 200, `{"choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}`)
		case "/v1/responses":
			writeJSON(w, 200, `{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"ok"}]}]}`)
		default:
			writeJSON(w, 200, `{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)
		}
	})
	return r
}

// prompted counts the API requests a replica got.
func (r *inferenceReplica) prompted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, req := range r.requests {
		if strings.HasPrefix(req.Path, "/v1/") {
			n++
		}
	}
	return n
}

// fleet is replicas behind one backend of a gateway.
type fleet []*inferenceReplica

func newFleet(t *testing.T, n int) fleet {
	f := make(fleet, n)
	for i := range f {
		f[i] = newInferenceReplica(t)
	}
	return f
}

func (f fleet) urls() string {
	var urls []string
	for _, r := range f {
		urls = append(urls, r.URL)
	}
	return strings.Join(urls, " ")
}

// send posts body to path and returns which replica got it: the one
// whose count of API requests grew. Requests are sent one at a time.
func (f fleet) send(t *testing.T, g *gateway, path, body string) int {
	t.Helper()
	before := make([]int, len(f))
	for i, r := range f {
		before[i] = r.prompted()
	}
	req, _ := http.NewRequest(http.MethodPost, g.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, got := do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s, want 200", path, resp.StatusCode, got)
	}
	for i, r := range f {
		if r.prompted() > before[i] {
			return i
		}
	}
	t.Fatalf("%s: no replica got the request", path)
	return -1
}

// conversationTurn is the body of turn n (from 1) of a conversation on
// route: a system prompt and, for each turn, a user message, with the
// assistant's answers between; last, if not empty, is the last
// message.
func conversationTurn(route, system string, n int, last string) string {
	var msgs []map[string]string
	for i := range n {
		if i > 0 {
			msgs = append(msgs, map[string]string{"role": "assistant", "content": fmt.Sprintf("answer %d", i)})
		}
		text := fmt.Sprintf("question %d, asked at some length, in enough words to fill a block of the prompt by itself", i+1)
		if i == n-1 && last != "" {
			text = last
		}
		msgs = append(msgs, map[string]string{"role": "user", "content": text})
	}
	var body map[string]any
	switch route {
	case "/v1/chat/completions":
		body = map[string]any{"model": "m", "messages": append([]map[string]string{{"role": "system", "content": system}}, msgs...)}
	case "/v1/completions":
		prompt := system
		for _, m := range msgs {
			prompt += "\n" + m["role"] + ": " + m["content"]
		}
		body = map[string]any{"model": "m", "prompt": prompt}
	case "/v1/responses":
		body = map[string]any{"model": "m", "instructions": system, "input": msgs}
	case "/v1/messages":
		body = map[string]any{"model": "m", "max_tokens": 10, "system": system, "messages": msgs}
	}
	out, _ := json.Marshal(body)
	return string(out)
}

var promptRoutes = []string{"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}

// TestPrefixAffinityFollowsConversation: through the gateway, on every
// route with a prompt (Messages translated to chat), each turn of a
// conversation reaches the replica its first turn reached, and
// conversations with different system prompts spread over the replicas.
func TestPrefixAffinityFollowsConversation(t *testing.T) {
	f := newFleet(t, 4)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			lb_policy prefix_affinity {
				block_size 64
			}
		}
	}`, f.urls()))
	used := map[int]bool{}
	for _, route := range promptRoutes {
		for c := range 4 {
			// A long system prompt places a conversation; a short one
			// leaves it to the messages.
			system := fmt.Sprintf("You are assistant %d of %s. ", c, route) + strings.Repeat("Keep to the facts. ", 30)
			if c%2 == 1 {
				system = fmt.Sprintf("Be brief (%d).", c)
			}
			home := f.send(t, g, route, conversationTurn(route, system, 1, ""))
			used[home] = true
			for turn := 2; turn <= 4; turn++ {
				if got := f.send(t, g, route, conversationTurn(route, system, turn, "")); got != home {
					t.Fatalf("%s, conversation %d: turn %d reached replica %d, want %d, where turn 1 went", route, c, turn, got, home)
				}
			}
		}
	}
	if len(used) < 3 {
		t.Errorf("16 conversations were placed on replicas %v, want them spread over at least 3 of 4", used)
	}
}

// TestPrefixAffinityAvoidsOverloaded: while the replica holding a
// conversation has a request in flight and the others none, it is over
// the load bound: the next turn goes to another replica, and the
// metrics say so; once both hold the conversation, either serves it.
func TestPrefixAffinityAvoidsOverloaded(t *testing.T) {
	f := newFleet(t, 4)
	g := newGateway(t, fmt.Sprintf(`metrics /metrics
	chat_gateway {
		backend %s {
			lb_policy prefix_affinity
		}
	}`, f.urls()))
	system := "You hold a long conversation. " + strings.Repeat("Answer in full sentences. ", 100)
	const route = "/v1/chat/completions"
	home := f.send(t, g, route, conversationTurn(route, system, 1, ""))
	before := scrape(t, g)

	held := make(chan int)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, g.URL+route, strings.NewReader(conversationTurn(route, system, 2, "HOLD")))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			held <- resp.StatusCode
			return
		}
		held <- 0
	}()
	waitFor(t, func() bool { return f[home].prompted() == 2 })
	load := scrape(t, g)
	addr := strings.TrimPrefix(f[home].URL, "http://")
	if got := load[`caddy_chat_gateway_routing_replica_load{replica="`+addr+`",source="in_flight"}`]; got != 1 {
		t.Errorf("in-flight load of the busy replica %v, want 1", got)
	}

	spill := f.send(t, g, route, conversationTurn(route, system, 2, "another question"))
	if spill == home {
		t.Fatalf("turn 2 reached replica %d, busy with a request while the others were idle, want another", home)
	}
	close(f[home].hold)
	if status := <-held; status != 200 {
		t.Fatalf("the held request: %d, want 200", status)
	}
	after := scrape(t, g)
	if d := after[`caddy_chat_gateway_routing_decisions_total{reason="overloaded"}`] - before[`caddy_chat_gateway_routing_decisions_total{reason="overloaded"}`]; d != 1 {
		t.Errorf("overloaded decisions grew by %v, want 1", d)
	}
	if d := after[`caddy_chat_gateway_routing_decisions_total{reason="matched"}`] - before[`caddy_chat_gateway_routing_decisions_total{reason="matched"}`]; d != 1 {
		t.Errorf("matched decisions grew by %v, want 1 (the held request)", d)
	}
	if got := f.send(t, g, route, conversationTurn(route, system, 3, "")); got != home && got != spill {
		t.Fatalf("turn 3 reached replica %d, want %d or %d, which hold its prefix", got, home, spill)
	}
}

// TestPrefixAffinityReportedLoad: with load_metrics, a replica whose
// /metrics reports a queue is over the bound though this gateway sends
// it nothing, and the poll carries the backend's api_key.
func TestPrefixAffinityReportedLoad(t *testing.T) {
	f := newFleet(t, 2)
	g := newGateway(t, fmt.Sprintf(`metrics /metrics
	chat_gateway {
		backend %s {
			api_key upstream-secret
			lb_policy prefix_affinity {
				load_metrics llamacpp 100ms
			}
		}
	}`, f.urls()))
	system := "A system prompt that fills its blocks. " + strings.Repeat("Be precise. ", 100)
	const route = "/v1/chat/completions"
	home := f.send(t, g, route, conversationTurn(route, system, 1, ""))
	f[home].queued.Store(5)
	addr := strings.TrimPrefix(f[home].URL, "http://")
	waitFor(t, func() bool {
		return scrape(t, g)[`caddy_chat_gateway_routing_replica_load{replica="`+addr+`",source="reported"}`] == 5
	})
	if h := f[home].metrics.Load(); h == nil || h.Get("Authorization") != "Bearer upstream-secret" {
		t.Fatalf("the /metrics poll had headers %v, want the backend's api_key", h)
	}
	if got := f.send(t, g, route, conversationTurn(route, system, 2, "")); got == home {
		t.Fatalf("turn 2 reached replica %d, which reports 5 requests queued, want the idle one", home)
	}
	f[home].queued.Store(0)
	waitFor(t, func() bool {
		return scrape(t, g)[`caddy_chat_gateway_routing_replica_load{replica="`+addr+`",source="reported"}`] == 0
	})
	if got := f.send(t, g, route, conversationTurn(route, system, 3, "")); got != home && f[got].prompted() < 2 {
		t.Fatalf("turn 3 reached replica %d, which holds none of it", got)
	}
}

// TestPrefixAffinityAcrossReloads: the record of what each replica was
// sent outlives a reload, and a replica removed by one is never chosen.
func TestPrefixAffinityAcrossReloads(t *testing.T) {
	f := newFleet(t, 3)
	config := func(replicas fleet) string {
		return fmt.Sprintf("metrics /metrics\nchat_gateway {\n backend %s {\n lb_policy prefix_affinity\n }\n}", replicas.urls())
	}
	g := newGateway(t, config(f))
	system := "Reloads keep what was learnt. " + strings.Repeat("Be kind. ", 200)
	const route = "/v1/chat/completions"
	home := f.send(t, g, route, conversationTurn(route, system, 1, ""))

	g = newGateway(t, config(f))
	before := scrape(t, g)[`caddy_chat_gateway_routing_decisions_total{reason="matched"}`]
	if got := f.send(t, g, route, conversationTurn(route, system, 2, "")); got != home {
		t.Fatalf("after a reload, turn 2 reached replica %d, want %d", got, home)
	}
	if after := scrape(t, g)[`caddy_chat_gateway_routing_decisions_total{reason="matched"}`]; after != before+1 {
		t.Fatalf("after a reload, matched decisions went from %v to %v, want one more: the index was lost", before, after)
	}

	var rest fleet
	for i, r := range f {
		if i != home {
			rest = append(rest, r)
		}
	}
	g = newGateway(t, config(rest))
	gone := f[home].prompted()
	for turn := 3; turn <= 5; turn++ {
		f.send(t, g, route, conversationTurn(route, system, turn, ""))
	}
	if f[home].prompted() != gone {
		t.Fatal("a replica removed by a reload was sent requests")
	}
}

// scrape reads the gateway's Prometheus page into series -> value.
func scrape(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	resp, body := do(t, mustRequest("GET", g.URL+"/metrics"))
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	out := map[string]float64{}
	line := regexp.MustCompile(`(?m)^(caddy_chat_gateway_\S+) (\S+)$`)
	for _, m := range line.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		out[m[1]] = v
	}
	return out
}

// TestPrefixAffinityInPlainProxy: in a reverse_proxy of its own, with no
// prompt to read, the policy is least-loaded: idle replicas take turns.
func TestPrefixAffinityInPlainProxy(t *testing.T) {
	f := newFleet(t, 2)
	g := newGateway(t, fmt.Sprintf("reverse_proxy %s {\n lb_policy prefix_affinity\n }", f.urls()))
	for range 6 {
		if resp, body := do(t, mustRequest("GET", g.URL+"/v1/models")); resp.StatusCode != 200 {
			t.Fatalf("%d %s, want 200", resp.StatusCode, body)
		}
	}
	if a, b := f[0].prompted(), f[1].prompted(); a == 0 || b == 0 {
		t.Fatalf("replicas got %d and %d of 6 requests, want both some", a, b)
	}
}
