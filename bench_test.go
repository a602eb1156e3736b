package chatgateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// echoHandler is an echo-mode Handler provisioned outside a server, for
// benchmarks of the gateway's own work.
func echoHandler(b *testing.B) *Handler {
	h := new(Handler)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	return h
}

func chatBody(size int) string {
	return fmt.Sprintf(`{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":%q}]}`, strings.Repeat("a", size))
}

// BenchmarkEcho measures a whole echo request through ServeHTTP.
func BenchmarkEcho(b *testing.B) {
	h := echoHandler(b)
	for _, tc := range []struct {
		name string
		body string
	}{
		{"small", chatBody(64)},
		{"stream", `{"messages":[{"role":"user","content":"one two three four five six seven eight"}],"stream":true,"stream_options":{"include_usage":true}}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.body)))
			for b.Loop() {
				req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(tc.body))
				req.Header.Set("Content-Type", "application/json")
				w := httptest.NewRecorder()
				req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{})
				if err := h.ServeHTTP(w, req, nil); err != nil || w.Code != 200 {
					b.Fatal(w.Code, err)
				}
			}
		})
	}
}

// BenchmarkForward measures a request through the in-process Caddy and
// the gateway to a local backend, end to end over loopback.
func BenchmarkForward(b *testing.B) {
	reply := `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		writeJSON(w, 200, reply)
	}))
	defer be.Close()
	g := newGateway(b, "chat_gateway "+be.URL)
	for _, size := range []int{100, 10 << 10, 1 << 20} {
		body := chatBody(size)
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				resp, err := http.Post(g.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}

// BenchmarkRelay measures the gateway's work per streamed event: parse,
// normalize, frame and write, with one event per upstream read, and
// with 100 events per read (a fast backend; the proxy reads 32 KiB).
func BenchmarkRelay(b *testing.B) {
	event := []byte(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}` + "\n\n")
	for _, perRead := range []int{1, 100} {
		b.Run(fmt.Sprintf("%d_per_read", perRead), func(b *testing.B) {
			read := bytes.Repeat(event, perRead)
			w := httptest.NewRecorder()
			h := &Handler{IdleTimeout: caddy.Duration(time.Minute)}
			x := &exchange{h: h, w: w, r: httptest.NewRequest("POST", "/", nil), id: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11", out: newSSEWriter(w, upstreamKeys{}),
				ep: openai.ChatCompletions, req: &openai.Request{Stream: true}}
			u := &upstreamWriter{x: x, out: x.out, idle: time.Minute, timer: time.NewTimer(time.Hour)}
			u.Header().Set("Content-Type", "text/event-stream")
			u.WriteHeader(200)
			u.Write(event) // the first event starts the stream
			b.SetBytes(int64(len(read)))
			b.ReportAllocs()
			for b.Loop() {
				w.Body.Reset()
				if _, err := u.Write(read); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perRead), "ns/event")
		})
	}
}

// BenchmarkCacheHit measures a request answered from the memory cache
// next to the same 4 KiB reply from echo, through the in-process Caddy
// over loopback: the "a hit costs at most 1.2x an echo reply".
func BenchmarkCacheHit(b *testing.B) {
	body := `{"model":"m","temperature":0,"messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 340) + `"}]}`
	var reply atomic.Value
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		writeJSON(w, 200, reply.Load().(string))
	}))
	defer be.Close()
	g := newGateway(b, "@echo header X-Echo 1\nchat_gateway @echo\nchat_gateway {\n\tbackend "+be.URL+"\n\tcache\n}")
	post := func(echo bool) string {
		req, _ := http.NewRequest("POST", g.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if echo {
			req.Header.Set("X-Echo", "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status, string(out))
		}
		return string(out)
	}
	reply.Store(post(true))
	post(false) // stores the reply
	for _, c := range []struct {
		name string
		echo bool
	}{{"echo", true}, {"hit", false}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				post(c.echo)
			}
		})
	}
}
