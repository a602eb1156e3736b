package main

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

func TestEmbeddingsReply(t *testing.T) {
	b := embeddingsReply(embeddingVectors, embeddingDimensions)
	if len(b) < 35<<20 || len(b) > 50<<20 {
		t.Errorf("reply of %d bytes, want about 40 MB", len(b))
	}
	var reply struct {
		Object string `json:"object"`
		Data   []struct {
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			TotalTokens  int `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Object != "list" || len(reply.Data) != embeddingVectors || reply.Usage.PromptTokens != embeddingVectors || reply.Usage.TotalTokens != embeddingVectors {
		t.Fatalf("object %q, %d vectors, usage %+v; want list, %d vectors, %d tokens", reply.Object, len(reply.Data), reply.Usage, embeddingVectors, embeddingVectors)
	}
	distinct := map[float64]bool{}
	for i, d := range reply.Data {
		if d.Index != i || len(d.Embedding) != embeddingDimensions {
			t.Fatalf("vector %d: index %d, %d floats; want index %d, %d floats", i, d.Index, len(d.Embedding), i, embeddingDimensions)
		}
		for _, v := range d.Embedding {
			if v < -0.1 || v >= 0.1 {
				t.Fatalf("vector %d holds %v, out of [-0.1, 0.1)", i, v)
			}
			distinct[v] = true
		}
	}
	if len(distinct) < 1<<20 { // of 2,000,000 possible values

		t.Errorf("%d distinct floats: the sequence repeats, want at least %d", len(distinct), 1<<20)
	}
	var body struct {
		Model string   `json:"model"`
		Input []string `json:"input"`
	}
	if err := json.Unmarshal(embeddingsBody(embeddingVectors), &body); err != nil || len(body.Input) != embeddingVectors {
		t.Fatalf("embeddingsBody: %d inputs, %v; want %d", len(body.Input), err, embeddingVectors)
	}
}

// TestResponsesStream relays the mock's Response events through the
// gateway's own Responses stream, which must accept every one and read
// the usage from response.completed.
func TestResponsesStream(t *testing.T) {
	events := responsesStream(responsesDeltas)
	if len(events) != responsesEvents(responsesDeltas) {
		t.Fatalf("%d events, want %d", len(events), responsesEvents(responsesDeltas))
	}
	var names []string
	var p sse.Parser
	s := openai.Responses.NewStream(openai.Meta{ID: "req"})
	var out []byte
	for _, e := range events {
		err := p.Feed(e, func(ev sse.Event) error {
			names = append(names, string(ev.Type))
			var data struct{ Type string }
			if err := json.Unmarshal(ev.Data, &data); err != nil || data.Type != string(ev.Type) {
				t.Errorf("event %s: data type %q, %v; want %s", ev.Type, data.Type, err, ev.Type)
			}
			var err error
			out, err = s.Event(out, ev.Type, ev.Data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if names[0] != "response.created" || names[len(names)-1] != "response.completed" {
		t.Errorf("events %s ... %s, want response.created ... response.completed", names[0], names[len(names)-1])
	}
	for _, n := range names[1 : len(names)-1] {
		if n != "response.output_text.delta" {
			t.Fatalf("event %s between created and completed, want only response.output_text.delta", n)
		}
	}
	if !s.Complete() || !s.Content() {
		t.Fatalf("complete %v, content %v; want both", s.Complete(), s.Content())
	}
	if u := s.Result().Usage; u.Estimated || u.PromptTokens != 10 || u.CompletionTokens != responsesDeltas {
		t.Errorf("usage %+v, want 10 in, %d out", u, responsesDeltas)
	}
	if want := strings.Join(func() []string {
		var s []string
		for _, e := range events {
			s = append(s, string(e))
		}
		return s
	}(), ""); string(out) != want {
		t.Errorf("relayed stream differs from the mock's:\n%.300s\nwant\n%.300s", out, want)
	}
}

func TestEndpointMock(t *testing.T) {
	reply := []byte(`{"object":"list","data":[]}`)
	events := responsesStream(3)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "next") })
	srv := httptest.NewServer(endpointMock(reply, events, next))
	defer srv.Close()
	for _, c := range []struct{ method, path, want, contentType string }{
		{"POST", "/v1/embeddings", string(reply), "application/json"},
		{"POST", "/v1/responses", string(func() []byte {
			var b []byte
			for _, e := range events {
				b = append(b, e...)
			}
			return b
		}()), "text/event-stream"},
		{"POST", "/v1/chat/completions", "next", ""},
		{"GET", "/v1/embeddings", "next", ""},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(`{}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != c.want {
			t.Errorf("%s %s: %.100q, want %.100q", c.method, c.path, body, c.want)
		}
		if c.contentType != "" && resp.Header.Get("Content-Type") != c.contentType {
			t.Errorf("%s %s: Content-Type %q, want %q", c.method, c.path, resp.Header.Get("Content-Type"), c.contentType)
		}
	}
}

func TestPeakRSS(t *testing.T) {
	pid := os.Getpid()
	debug.FreeOSMemory() // what earlier tests left must not hold the pages touched below
	if err := resetPeakRSS(pid); err != nil {
		t.Skip("cannot reset the peak RSS here:", err)
	}
	before, err := peakRSSKiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Fresh anonymous pages, outside Go's heap: none can be resident
	// already (a heap allocation may reuse pages the runtime kept).
	const size = 64 << 20
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	grown, err := peakRSSKiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	if grown-before < size/1024*3/4 {
		t.Fatalf("peak RSS %d KiB -> %d KiB after touching 64 MiB, want at least %d KiB more", before, grown, size/1024*3/4)
	}
	if err := syscall.Munmap(b); err != nil {
		t.Fatal(err)
	}
	if err := resetPeakRSS(pid); err != nil {
		t.Fatal(err)
	}
	if after, _ := peakRSSKiB(pid); after > grown-size/1024/2 {
		t.Fatalf("peak RSS %d KiB after the reset, %d KiB before: not reset", after, grown)
	}
}

func TestEmbeddingsCopies(t *testing.T) {
	const reply = 40 << 20
	for _, c := range []struct{ gateway, proxy, want float64 }{
		{2, 2, 0},
		{2 + 4*40, 2, 1},
		{10 + 8*40, 10, 2},
	} {
		if got := embeddingsCopies(c.gateway, c.proxy, reply); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("embeddingsCopies(%v, %v) = %v, want %v", c.gateway, c.proxy, got, c.want)
		}
	}
}

// TestTargetsUnmeasured: a goal whose figure lacks chat_gateway (it
// failed) is not met and has no value, and measured goals are judged.
func TestTargetsUnmeasured(t *testing.T) {
	r := &Results{}
	cpu := r.figure("embeddings_cpu", "", "µs")
	cpu.add(embeddingsRow, "reverse_proxy", 100)
	r.fail("embeddings_cpu", "chat_gateway", "no reply completed")
	events := r.figure("responses_cpu_per_event", "", "µs")
	events.add(responsesRow, "reverse_proxy", 4)
	events.add(responsesRow, "chat_gateway", 5)
	r.checkTargets()
	found := 0
	for _, g := range r.Targets {
		switch g.Goal {
		case "CPU per embeddings reply, chat_gateway / reverse_proxy", "Copies of each embeddings reply in flight chat_gateway holds beyond reverse_proxy":
			found++
			if g.Met || g.Value != nil {
				t.Errorf("%s: met %v, value %v, with chat_gateway not measured; want not met, no value", g.Goal, g.Met, g.Value)
			}
		case "CPU per streamed Responses event, chat_gateway / reverse_proxy":
			found++
			if !g.Met || g.Value == nil || *g.Value != 1.25 {
				t.Errorf("%s: met %v, value %v, want 1.25 met", g.Goal, g.Met, g.Value)
			}
		}
	}
	if found != 3 {
		t.Fatalf("%d of the 3 endpoint goals checked", found)
	}
	if !strings.Contains(r.markdown(), "chat_gateway fails: no reply completed") {
		t.Error("markdown does not say chat_gateway fails")
	}
}
