// Package faultbackend is an OpenAI-compatible chat backend that
// misbehaves on demand, for tests and benchmarks: slow, failing, cut,
// reset, stalled, malformed or oversized replies. It records what it
// received and whether each request's context was cancelled.
//
// The fault of a request is the JSON Fault in its X-Fault header; a
// request without one gets a correct reply.
package faultbackend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is a kind of misbehaviour.
type Mode string

// The modes. Stream modes apply to requests with "stream": true; the
// others to any request.
const (
	Normal      Mode = ""             // a correct reply, streamed when asked
	NeverAnswer Mode = "never_answer" // read the request, never answer
	HTML        Mode = "html"         // an HTML error page (Status, default 502)
	InvalidJSON Mode = "invalid_json" // 200 with a body that is not JSON
	HugeBody    Mode = "huge_body"    // a 200 JSON reply of Size bytes
	Cut         Mode = "cut"          // stream: Tokens chunks, then the end, without finish_reason or [DONE]
	Reset       Mode = "reset"        // stream: Tokens chunks, then a TCP reset
	Stall       Mode = "stall"        // stream: Tokens chunks, then silence until the client leaves
	Split       Mode = "split"        // stream: written one byte at a time
	CRLF        Mode = "crlf"         // stream: CRLF line ends
	Pings       Mode = "pings"        // stream: ": ping" comments between events
	ErrorEvent  Mode = "error_event"  // stream: Tokens chunks, then an "event: error" frame
	UsageChunk  Mode = "usage_chunk"  // stream: a usage-only chunk (choices: []) before [DONE]
	HugeEvent   Mode = "huge_event"   // stream: one content event of Size bytes
	// SwitchProtocols answers 101 Switching Protocols to any request and
	// keeps the socket, recording what arrives on it (Tunneled).
	SwitchProtocols Mode = "switch_protocols"
	// QuoteKey answers 401 with an error, and a rate-limit header, that
	// quote the Authorization header received in every field.
	QuoteKey Mode = "quote_key"
)

// Fault describes how to answer one request.
type Fault struct {
	Mode Mode `json:"mode,omitempty"`
	// Status, when not 0 or 200, is the status of an error reply, with
	// Body (default: an OpenAI error) and RetryAfter.
	Status     int    `json:"status,omitempty"`
	Body       string `json:"body,omitempty"`
	RetryAfter string `json:"retry_after,omitempty"`
	// HeaderDelay comes before the response headers, FirstTokenDelay
	// between them and the first event, TokenDelay between events.
	HeaderDelay     time.Duration `json:"header_delay,omitempty"`
	FirstTokenDelay time.Duration `json:"first_token_delay,omitempty"`
	TokenDelay      time.Duration `json:"token_delay,omitempty"`
	// Tokens is the number of content chunks (default 3).
	Tokens int `json:"tokens,omitempty"`
	// Size is the size of HugeBody and HugeEvent content (default 4 MiB).
	Size int `json:"size,omitempty"`
	// DeclareLength sends HugeBody with its Content-Length.
	DeclareLength bool `json:"declare_length,omitempty"`
}

// Request is what the backend received.
type Request struct {
	Method, Path string
	Header       http.Header
	Body         []byte
	// Cancelled is true when the request's context ended before the
	// backend finished answering: the client (the gateway) went away.
	Cancelled bool
}

// Server is a running fault backend.
type Server struct {
	*httptest.Server
	// Discard, when set, keeps no record of requests and finds the
	// request's stream flags by a byte search instead of decoding it, so
	// the backend costs little under load.
	Discard   bool
	mu        sync.Mutex
	requests  []*Request
	cancelled chan struct{} // receives once per cancelled request
	tunneled  []byte        // what arrived on sockets taken over by SwitchProtocols
}

// Tunneled returns what clients sent on the sockets SwitchProtocols took
// over: anything here went past the gateway.
func (s *Server) Tunneled() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.tunneled)
}

// New starts a fault backend on 127.0.0.1 answering correctly until
// told otherwise. Close it when done.
func New() *Server { return NewKeepAlive(KeepAlive{}) }

// KeepAlive is how a backend ends keep-alive connections, as real ones
// do: llama.cpp (cpp-httplib) and uvicorn (vLLM) close a connection idle
// for 5 s, and cpp-httplib one that served a number of requests.
type KeepAlive struct {
	// IdleTimeout closes a connection idle this long, without notice:
	// a request sent on it at that moment fails before any reply.
	IdleTimeout time.Duration
	// MaxRequests closes a connection after this many requests; the
	// last reply says Connection: close.
	MaxRequests int
}

// connRequests counts the requests served on one connection.
type connRequests struct{}

// NewKeepAlive is New with keep-alive connections ended as ka says.
func NewKeepAlive(ka KeepAlive) *Server {
	s := &Server{cancelled: make(chan struct{}, 1024)}
	handler := http.HandlerFunc(s.serve)
	if ka.MaxRequests > 0 {
		handler = func(w http.ResponseWriter, r *http.Request) {
			if n := r.Context().Value(connRequests{}).(*atomic.Int32).Add(1); int(n) >= ka.MaxRequests {
				w.Header().Set("Connection", "close")
			}
			s.serve(w, r)
		}
	}
	s.Server = httptest.NewUnstartedServer(handler)
	s.Config.IdleTimeout = ka.IdleTimeout
	s.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connRequests{}, new(atomic.Int32))
	}
	s.Start()
	return s
}

// Requests returns copies of what the backend received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
	}
	return out
}

// Count is the number of requests received.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// WaitCancelled waits up to d for a request to be cancelled.
func (s *Server) WaitCancelled(d time.Duration) bool {
	select {
	case <-s.cancelled:
		return true
	case <-time.After(d):
		return false
	}
}

// RefusingURL returns an http URL on 127.0.0.1 where nothing listens.
func RefusingURL() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &Request{Method: r.Method, Path: r.URL.Path}
	s.mu.Lock()
	if !s.Discard {
		rec.Header, rec.Body = r.Header.Clone(), body
		s.requests = append(s.requests, rec)
	}
	s.mu.Unlock()
	var f Fault
	if h := r.Header.Get("X-Fault"); h != "" {
		if err := json.Unmarshal([]byte(h), &f); err != nil {
			http.Error(w, "bad X-Fault: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	gone := false // a write failed: the client left
	defer func() {
		if gone || r.Context().Err() != nil {
			s.mu.Lock()
			rec.Cancelled = true
			s.mu.Unlock()
			select {
			case s.cancelled <- struct{}{}:
			default:
			}
		}
	}()
	if !sleep(r, f.HeaderDelay) {
		return
	}
	if f.Mode == SwitchProtocols {
		s.switchProtocols(w)
		return
	}
	if r.Method == http.MethodGet {
		writeJSON(w, 200, `{"object":"list","data":[{"id":"fault-model","object":"model","created":0,"owned_by":"faultbackend"}]}`)
		return
	}
	var req struct {
		Model         string `json:"model"`
		Stream        bool   `json:"stream"`
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if s.Discard {
		req.Stream = bytes.Contains(body, []byte(`"stream":true`))
		req.StreamOptions.IncludeUsage = bytes.Contains(body, []byte(`"include_usage":true`))
	} else {
		_ = json.Unmarshal(body, &req)
	}
	if f.Tokens == 0 {
		f.Tokens = 3
	}
	if f.Size == 0 {
		f.Size = 4 << 20
	}
	switch {
	case f.Mode == NeverAnswer:
		<-r.Context().Done()
		return
	case f.Mode == HTML:
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(orDefault(f.Status, http.StatusBadGateway))
		io.WriteString(w, "<html><body><h1>502 Bad Gateway</h1></body></html>")
		return
	case f.Status != 0 && f.Status != http.StatusOK:
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		writeJSON(w, f.Status, orDefaultString(f.Body, fmt.Sprintf(`{"error":{"message":"fault %d","type":"server_error","param":null,"code":"fault"}}`, f.Status)))
		return
	case f.Mode == InvalidJSON:
		writeJSON(w, 200, `{"choices":[{"message":{"content":"cut`)
		return
	case f.Mode == QuoteKey:
		key := r.Header.Get("Authorization")
		w.Header().Set("X-Ratelimit-Limit-Requests", key)
		q, _ := json.Marshal(key)
		writeJSON(w, http.StatusUnauthorized, fmt.Sprintf(`{"error":{"message":"bad key %s","type":%s,"param":%s,"code":%s}}`, strings.Trim(string(q), `"`), q, q, q))
		return
	case f.Mode == HugeBody:
		reply := `{"choices":[{"message":{"role":"assistant","content":"` + strings.Repeat("x", f.Size) + `"},"finish_reason":"stop"}]}`
		if f.DeclareLength {
			w.Header().Set("Content-Length", fmt.Sprint(len(reply)))
		}
		writeJSON(w, 200, reply)
		return
	case !req.Stream:
		writeJSON(w, 200, completion(req.Model, f.Tokens))
		return
	}
	gone = !s.stream(w, r, f, req.Model, req.StreamOptions.IncludeUsage || f.Mode == UsageChunk)
}

// switchProtocols takes the socket over with a 101 and records what the
// client sends on it, for up to two seconds.
func (s *Server) switchProtocols(w http.ResponseWriter) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw backend bytes")
	_ = rw.Flush()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, _ := io.ReadAll(rw)
	s.mu.Lock()
	s.tunneled = append(s.tunneled, got...)
	s.mu.Unlock()
}

// stream writes an event stream with the fault's misbehaviour. It
// reports false when a write failed: the client left.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, f Fault, model string, usage bool) (ok bool) {
	ok = true
	rc := http.NewResponseController(w)
	eol := "\n"
	if f.Mode == CRLF {
		eol = "\r\n"
	}
	write := func(text string) bool {
		if f.Mode == Split {
			for i := range len(text) {
				if _, err := io.WriteString(w, text[i:i+1]); err != nil || rc.Flush() != nil {
					ok = false
					return false
				}
			}
			return true
		}
		_, err := io.WriteString(w, text)
		ok = err == nil && rc.Flush() == nil
		return ok
	}
	event := func(data string) bool {
		if f.Mode == Pings && !write(": ping"+eol+eol) {
			return false
		}
		return write("data: " + data + eol + eol)
	}
	var huge string // built before the stream starts, so it arrives without a pause
	if f.Mode == HugeEvent {
		huge = chunk(model, `{"content":"`+strings.Repeat("x", f.Size)+`"}`, "null")
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc.Flush()
	if !sleep(r, f.FirstTokenDelay) {
		return ok
	}
	if !event(chunk(model, `{"role":"assistant","content":""}`, "null")) {
		return ok
	}
	if huge != "" && !event(huge) {
		return ok
	}
	for i := range f.Tokens {
		if i > 0 && !sleep(r, f.TokenDelay) {
			return ok
		}
		if !event(chunk(model, fmt.Sprintf(`{"content":"tok%d "}`, i), "null")) {
			return ok
		}
	}
	switch f.Mode {
	case Cut:
		return ok
	case Reset:
		conn, _, err := rc.Hijack()
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0) // close sends RST
			}
			conn.Close()
		}
		return ok
	case Stall:
		<-r.Context().Done()
		return ok
	case ErrorEvent:
		write("event: error" + eol + `data: {"error":{"message":"the model crashed","type":"server_error","param":null,"code":"model_crashed"}}` + eol + eol)
		return ok
	}
	if !event(chunk(model, `{}`, `"stop"`)) {
		return ok
	}
	if usage {
		if !event(fmt.Sprintf(`{"id":"chatcmpl-fault","object":"chat.completion.chunk","created":1,"model":%q,"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}`, model, f.Tokens, 5+f.Tokens)) {
			return ok
		}
	}
	event("[DONE]")
	return ok
}

func chunk(model, delta, finish string) string {
	return fmt.Sprintf(`{"id":"chatcmpl-fault","object":"chat.completion.chunk","created":1,"model":%q,"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}`, model, delta, finish)
}

func completion(model string, tokens int) string {
	var content strings.Builder
	for i := range tokens {
		fmt.Fprintf(&content, "tok%d ", i)
	}
	return fmt.Sprintf(`{"id":"chatcmpl-fault","object":"chat.completion","created":1,"model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":%q},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}`,
		model, content.String(), tokens, 5+tokens)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// sleep waits d, or less if the request ends; it reports whether the
// request is still on.
func sleep(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return r.Context().Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func orDefaultString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Header returns the X-Fault header value for f.
func Header(f Fault) string {
	b, _ := json.Marshal(f)
	return string(b)
}
