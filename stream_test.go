package chatgateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const helloStream = `{"model":"m","messages":[{"role":"user","content":"hello world"}],"stream":true}`
const helloStreamUsage = `{"model":"m","messages":[{"role":"user","content":"hello world"}],"stream":true,"stream_options":{"include_usage":true}}`

type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		Prompt     int `json:"prompt_tokens"`
		Completion int `json:"completion_tokens"`
		Total      int `json:"total_tokens"`
	} `json:"usage"`
	Error *struct{ Message, Type, Code string } `json:"error"`
}

// parseStream decodes every event but [DONE], which must come last if
// done is true and not at all otherwise.
func parseStream(t *testing.T, body string, done bool) []chunk {
	t.Helper()
	evs := events(body)
	if len(evs) == 0 {
		t.Fatalf("no events in %q", body)
	}
	if got := evs[len(evs)-1] == "[DONE]"; got != done {
		t.Fatalf("[DONE] at the end: %v, want %v:\n%s", got, done, body)
	}
	if done {
		evs = evs[:len(evs)-1]
	}
	var out []chunk
	for _, e := range evs {
		if e == "[DONE]" {
			t.Fatalf("[DONE] before the end:\n%s", body)
		}
		var c chunk
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatalf("event %q: %v", e, err)
		}
		out = append(out, c)
	}
	return out
}

// checkChunks asserts what every strict client needs of a stream.
func checkChunks(t *testing.T, chunks []chunk, id, content string, usage bool) {
	t.Helper()
	var text strings.Builder
	roleSeen, finish, usageChunks := false, false, 0
	for i, c := range chunks {
		if c.ID != id || c.Object != "chat.completion.chunk" || c.Created == 0 || c.Model == "" {
			t.Fatalf("chunk %d: %+v, want id %q, object chat.completion.chunk, created and model", i, c, id)
		}
		if c.Usage != nil {
			usageChunks++
			if len(c.Choices) != 0 || i != len(chunks)-1 || c.Usage.Total != c.Usage.Prompt+c.Usage.Completion {
				t.Fatalf("usage chunk %d: %+v, want it last, without choices, total = prompt + completion", i, c)
			}
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != "" && !roleSeen && ch.Delta.Role != "assistant" {
				t.Fatalf("first content delta without role: %+v", c)
			}
			roleSeen = roleSeen || ch.Delta.Role == "assistant"
			text.WriteString(ch.Delta.Content)
			if ch.FinishReason != nil {
				finish = true
			}
		}
	}
	if text.String() != content || !finish {
		t.Fatalf("content %.300q (want %.300q), finish_reason seen: %v (want true)", text.String(), content, finish)
	}
	if want := map[bool]int{true: 1, false: 0}[usage]; usageChunks != want {
		t.Fatalf("%d usage chunks, want %d", usageChunks, want)
	}
}

func TestEchoStream(t *testing.T) {
	g := newGateway(t, `chat_gateway`)
	resp, body := g.post(t, helloStreamUsage, "X-Request-ID", "s1")
	for h, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-ID": "s1"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	if resp.ContentLength != -1 {
		t.Errorf("Content-Length %d on a stream, want -1", resp.ContentLength)
	}
	chunks := parseStream(t, body, true)
	checkChunks(t, chunks, "s1", "Echo: hello world", true)
	if len(chunks) < 5 { // role, 3 words, finish, usage
		t.Fatalf("echo streamed %d chunks, want one per word", len(chunks))
	}
	_, body = g.post(t, helloStream, "X-Request-ID", "s2")
	checkChunks(t, parseStream(t, body, true), "s2", "Echo: hello world", false)
}

// llamaStream is how llama.cpp streams: no role, usage in the last chunk.
func llamaStream(w http.ResponseWriter, r *http.Request) {
	startSSE(w)
	for _, tok := range []string{"Hel", "lo"} {
		sseEvent(w, fmt.Sprintf(`{"id":"x","object":"chat.completion.chunk","created":7,"model":"llama","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}]}`, tok))
	}
	sseEvent(w, `{"id":"x","object":"chat.completion.chunk","created":7,"model":"llama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5},"timings":{}}`)
	sseEvent(w, "[DONE]")
}

// openaiStream is how OpenAI streams with include_usage: a role chunk,
// content, finish, then a usage-only chunk; CRLF line ends and a ping.
func openaiStream(w http.ResponseWriter, r *http.Request) {
	startSSE(w)
	write := func(s string) { _, _ = io.WriteString(w, s); w.(http.Flusher).Flush() }
	write(": ping\r\n\r\n")
	write(`data: {"id":"c","object":"chat.completion.chunk","created":7,"model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\r\n\r\n")
	write(`data: {"id":"c","object":"chat.completion.chunk","created":7,"model":"gpt","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}` + "\r\n\r\n")
	write(`data: {"id":"c","object":"chat.completion.chunk","created":7,"model":"gpt","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}` + "\r\n\r\n")
	if strings.Contains(upstreamBody(r), `"include_usage":true`) {
		write(`data: {"id":"c","object":"chat.completion.chunk","created":7,"model":"gpt","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}` + "\r\n\r\n")
	}
	write("data: [DONE]\r\n\r\n")
}

func TestBackendStream(t *testing.T) {
	tests := []struct {
		name    string
		handle  http.HandlerFunc
		config  string
		body    string
		content string
		usage   bool
		wantUp  string // what the backend must have got in the body
	}{
		{"llama.cpp without usage asked", llamaStream, "", helloStream, "Hello", false, ""},
		{"llama.cpp with usage asked", llamaStream, "", helloStreamUsage, "Hello", true, ""},
		{"openai usage chunk", openaiStream, "", helloStreamUsage, "Hello", true, `"include_usage":true`},
		{"usage asked upstream, kept from client", openaiStream, "include_usage_upstream", helloStream, "Hello", false, `"stream_options":{"include_usage":true}`},
		{"split byte by byte", func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			s := `data: {"choices":[{"delta":{"content":"Hel"}}]}` + "\n\n" + `data:{"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}` + "\r\rdata: [DONE]\n\n"
			for i := range len(s) {
				_, _ = io.WriteString(w, s[i:i+1])
				w.(http.Flusher).Flush()
			}
		}, "", helloStreamUsage, "Hello", true, ""},
		{"no [DONE] but finished", func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":"stop"}]}`)
		}, "", helloStream, "Hello", false, ""},
		{"no finish_reason before [DONE]", func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hello"}}]}`)
			sseEvent(w, `[DONE]`)
		}, "", helloStream, "Hello", false, ""},
		{"backend answers JSON", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, `{"choices":[{"message":{"role":"assistant","content":"Hello"},"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}`)
		}, "", helloStreamUsage, "Hello", true, ""},
		{"big event", func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"`+strings.Repeat("x", 3<<20)+`"},"finish_reason":"stop"}]}`)
			sseEvent(w, `[DONE]`)
		}, "", helloStream, strings.Repeat("x", 3<<20), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := newFakeBackend(t, tt.handle)
			g := newGateway(t, fmt.Sprintf("chat_gateway %s {\n%s\n}", be.URL, tt.config))
			resp, body := g.post(t, tt.body, "X-Request-ID", "sid")
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("%d %v, want 200 text/event-stream", resp.StatusCode, resp.Header)
			}
			checkChunks(t, parseStream(t, body, true), "sid", tt.content, tt.usage)
			if up := be.last(t).Body; !strings.Contains(up, tt.wantUp) {
				t.Fatalf("upstream body %s lacks %s", up, tt.wantUp)
			}
			if tt.wantUp == "" && be.last(t).Body != tt.body {
				t.Fatalf("upstream body changed: %s", be.last(t).Body)
			}
		})
	}
}

func TestBackendStreamFailures(t *testing.T) {
	tests := []struct {
		name    string
		reply   script
		code    string
		outcome string
	}{
		{"cut without [DONE]", func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
			return nil
		}, "stream_truncated", "truncated"},
		{"cut mid event", func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
			_, _ = io.WriteString(w, `data: {"choices":[{"ind`)
			return nil
		}, "stream_truncated", "truncated"},
		{"connection reset", func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
			panic(http.ErrAbortHandler) // reverse_proxy, when the backend's body fails
		}, "stream_truncated", "truncated"},
		{"event: error frame", func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
			_, _ = io.WriteString(w, "event: error\ndata: {\"error\":{\"message\":\"model crashed\",\"type\":\"server_error\",\"code\":\"oom\"}}\n\n")
			return nil
		}, "oom", "upstream_error"},
		{"error data", func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
			scriptEvent(w, `{"error":{"message":"overloaded"}}`)
			return nil
		}, "", "upstream_error"},
		{"garbage event", func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"choices":[{"index":0,"delta":{"content":"Hel"}}]}`)
			scriptEvent(w, `<html>`)
			return nil
		}, "invalid_upstream_response", "upstream_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScripted(t, "chat_gateway http://backend", tt.reply)
			w, repl := s.post(t, "/v1/chat/completions", helloStream, "X-Request-ID", "fail-1")
			if w.Code != 200 {
				t.Fatalf("status %d, want 200 (the stream started): %s", w.Code, w.Body)
			}
			chunks := parseStream(t, w.Body.String(), false)
			last := chunks[len(chunks)-1]
			if last.Error == nil || last.Error.Message == "" || (tt.code != "" && last.Error.Code != tt.code) {
				t.Fatalf("last event %+v, want an error with code %q:\n%s", last, tt.code, w.Body)
			}
			if got := placeholder(repl, "outcome"); got != tt.outcome {
				t.Fatalf("outcome %q, want %s", got, tt.outcome)
			}
		})
	}
}

// TestStreamErrorsBeforeFirstByte: until the first event goes out, a
// stream fails with a status and a JSON error, as a non-stream would.
func TestStreamErrorsBeforeFirstByte(t *testing.T) {
	for name, tt := range map[string]struct {
		reply script
		code  string
	}{
		"error event first": {func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `{"error":{"message":"overloaded"}}`)
			return nil
		}, ""},
		"garbage first": {func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			scriptEvent(w, `<html>`)
			return nil
		}, "invalid_upstream_response"},
		"ends before any event": {func(w http.ResponseWriter, r *http.Request) error {
			scriptStream(w)
			return nil
		}, "stream_truncated"},
	} {
		t.Run(name, func(t *testing.T) {
			s := newScripted(t, "chat_gateway http://backend", tt.reply)
			w, _ := s.post(t, "/v1/chat/completions", helloStream)
			if e := errorOf(t, w); w.Code != 502 || (tt.code != "" && e["code"] != tt.code) {
				t.Fatalf("%d %s, want 502 with code %q", w.Code, w.Body, tt.code)
			}
		})
	}

	s := newScripted(t, "chat_gateway http://backend", func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Retry-After", "3")
		scriptJSON(w, 429, `{"error":{"message":"rate limited","type":"rate_limit_error","code":"rate_limit_exceeded"}}`)
		return nil
	})
	w, _ := s.post(t, "/v1/chat/completions", helloStream)
	if e := errorOf(t, w); w.Code != 429 || e["code"] != "rate_limit_exceeded" || w.Header().Get("Retry-After") != "3" {
		t.Fatalf("%d %v %s, want the backend's 429 with its Retry-After", w.Code, w.Header(), w.Body)
	}
	g := newGateway(t, "chat_gateway http://127.0.0.1:1")
	if resp, body := g.post(t, helloStream); resp.StatusCode != 502 || apiError(t, body)["code"] != "upstream_unavailable" {
		t.Fatalf("%d %s, want 502 upstream_unavailable", resp.StatusCode, body)
	}
}

// TestStreamNotBuffered proves each event reaches the client before the
// backend writes the next: the backend waits for the client to read the
// first event before it sends the rest.
func TestStreamNotBuffered(t *testing.T) {
	clientGotFirst := make(chan struct{})
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"first"}}]}`)
		select {
		case <-clientGotFirst:
		case <-time.After(10 * time.Second):
			return // the gateway buffered: the test fails below
		}
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":" second"},"finish_reason":"stop"}]}`)
		sseEvent(w, "[DONE]")
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	resp := g.open(t, helloStream)
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, `"content":"first"`) {
		t.Fatalf("first line %q, %v, want the first event", line, err)
	}
	close(clientGotFirst)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), `" second"`) || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Fatalf("rest: %s, want \" second\" and [DONE] at the end", rest)
	}
}

// TestDisconnectCancelsUpstream closes the client at each phase and
// checks that the backend's request context ends.
func TestDisconnectCancelsUpstream(t *testing.T) {
	phases := []struct {
		name   string
		body   string
		handle func(w http.ResponseWriter, r *http.Request, sent chan<- struct{})
	}{
		{"waiting for headers", hello, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			close(sent)
			<-r.Context().Done()
		}},
		{"stream waiting for first token", helloStream, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			startSSE(w)
			close(sent)
			<-r.Context().Done()
		}},
		{"mid-stream", helloStream, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"a"}}]}`)
			close(sent)
			for r.Context().Err() == nil {
				sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"a"}}]}`)
				time.Sleep(5 * time.Millisecond)
			}
		}},
	}
	for _, ph := range phases {
		t.Run(ph.name, func(t *testing.T) {
			sent := make(chan struct{})
			be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { ph.handle(w, r, sent) })
			g := newGateway(t, "chat_gateway "+be.URL)
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "POST", g.URL+"/v1/chat/completions", strings.NewReader(ph.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Request-ID", "gone-1")
			go func() {
				<-sent
				time.Sleep(20 * time.Millisecond)
				cancel()
			}()
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			be.waitCancelled(t)
			// A stream already under way keeps its 200 in the access log;
			// the outcome, and the module's log, tell the client left.
			if l := g.waitLog(t, "handled request", "gone-1"); l["outcome"] != "client_cancelled" || (ph.body == hello && l["status"] != 499.0) {
				t.Fatalf("access log: status %v outcome %v, want outcome client_cancelled (and status 499 if not a stream)", l["status"], l["outcome"])
			}
			if l := g.waitLog(t, "request failed", "gone-1"); l["status"] != 499.0 {
				t.Fatalf("module log: status %v, want 499", l["status"])
			}
		})
	}
}

func TestStreamTimeouts(t *testing.T) {
	t.Run("first token", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			<-r.Context().Done()
		})
		g := newGateway(t, "chat_gateway "+be.URL+" {\n first_token_timeout 100ms\n}")
		resp, body := g.post(t, helloStream)
		if e := apiError(t, body); resp.StatusCode != 504 || e["code"] != "first_token_timeout" || e["type"] != "timeout_error" {
			t.Fatalf("%d %s, want 504 first_token_timeout timeout_error", resp.StatusCode, body)
		}
		be.waitCancelled(t)
	})
	t.Run("first token non-stream", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		g := newGateway(t, "chat_gateway "+be.URL+" {\n first_token_timeout 100ms\n}")
		resp, body := g.post(t, hello)
		if e := apiError(t, body); resp.StatusCode != 504 || e["code"] != "first_token_timeout" {
			t.Fatalf("%d %s, want 504 first_token_timeout", resp.StatusCode, body)
		}
	})
	t.Run("total timeout non-stream", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			_, _ = io.WriteString(w, `{"choices":[`)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		})
		g := newGateway(t, "chat_gateway "+be.URL+" {\n timeout 150ms\n}")
		resp, body := g.post(t, hello)
		if e := apiError(t, body); resp.StatusCode != 504 || e["code"] != "timeout" {
			t.Fatalf("%d %s, want 504 timeout", resp.StatusCode, body)
		}
	})
	t.Run("total timeout before the first token", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		g := newGateway(t, "chat_gateway "+be.URL+" {\n timeout 150ms\n first_token_timeout 1m\n}")
		resp, body := g.post(t, hello)
		if e := apiError(t, body); resp.StatusCode != 504 || e["code"] != "timeout" {
			t.Fatalf("%d %s, want 504 timeout", resp.StatusCode, body)
		}
		be.waitCancelled(t)
	})
	t.Run("idle", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"a"}}]}`)
			<-r.Context().Done()
		})
		g := newGateway(t, "chat_gateway "+be.URL+" {\n idle_timeout 100ms\n}")
		resp, body := g.post(t, helloStream, "X-Request-ID", "idle-1")
		chunks := parseStream(t, body, false)
		if last := chunks[len(chunks)-1]; resp.StatusCode != 200 || last.Error == nil || last.Error.Code != "idle_timeout" {
			t.Fatalf("%d %s, want 200 ending in an idle_timeout error", resp.StatusCode, body)
		}
		if l := g.waitLog(t, "handled request", "idle-1"); l["outcome"] != "timeout" {
			t.Fatalf("outcome %v, want timeout", l["outcome"])
		}
		be.waitCancelled(t)
	})
}

func TestStreamLineTooLong(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"a"}}]}`)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"`+strings.Repeat("x", 9<<20)+`"}}]}`)
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	_, body := g.post(t, helloStream)
	chunks := parseStream(t, body, false)
	if last := chunks[len(chunks)-1]; last.Error == nil || last.Error.Code != "event_too_large" {
		t.Fatalf("last event %+v, want an event_too_large error", last)
	}
}

func TestStreamKeepalive(t *testing.T) {
	release := make(chan struct{})
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select { // a slow first token: not even headers yet
		case <-release:
		case <-r.Context().Done():
			return
		}
		startSSE(w)
		sseEvent(w, `{"choices":[{"index":0,"delta":{"content":"late"},"finish_reason":"stop"}]}`)
		sseEvent(w, "[DONE]")
	})
	g := newGateway(t, "chat_gateway "+be.URL+" {\n keepalive_interval 20ms\n}")
	resp := g.open(t, helloStream)
	br := bufio.NewReader(resp.Body)
	if line, _ := br.ReadString('\n'); line != ": keep-alive\n" {
		t.Fatalf("first line %q, want \": keep-alive\\n\"", line)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	checkChunks(t, parseStream(t, string(rest), true), resp.Header.Get("X-Request-ID"), "late", false)

	// Once keep-alives went out, a backend error is an error event.
	be2 := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond)
		writeJSON(w, 429, `{"error":{"message":"busy","code":"rate_limit_exceeded"}}`)
	})
	g = newGateway(t, "chat_gateway "+be2.URL+" {\n keepalive_interval 20ms\n}")
	resp2, body := g.post(t, helloStream)
	chunks := parseStream(t, body, false)
	if last := chunks[len(chunks)-1]; resp2.StatusCode != 200 || !strings.HasPrefix(body, ": keep-alive") || last.Error == nil || last.Error.Code != "rate_limit_exceeded" {
		t.Fatalf("%d %s, want 200, keep-alives first, ending in a rate_limit_exceeded error", resp2.StatusCode, body)
	}
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, "text/event-stream; charset=utf-8": true, "Text/Event-Stream ;charset=UTF-8": true,
		"application/json": false, "": false, "text/event-streams": false, "text/plain; x=text/event-stream": false,
	} {
		if got := isEventStream(ct); got != want {
			t.Errorf("isEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}
