package chatgateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// Causes of an upstream request's cancellation by the gateway.
var (
	errFirstTokenTimeout = errors.New("first_token_timeout expired")
	errIdleTimeout       = errors.New("idle_timeout expired")
	errTimeout           = errors.New("timeout expired")
	errReplyTooLarge     = errors.New("backend reply larger than the gateway buffers")
)

// notForwarded are the client's request headers the backend never sees:
// its credentials, what the gateway sets or the transport decides, and
// the hop-by-hop headers. reverse_proxy would strip most hop-by-hop
// headers itself, but it keeps Connection/Upgrade to tunnel an upgrade
// and "TE: trailers": an upgrade would hand the client's socket to the
// backend, past everything the gateway checks, and the gateway never
// relays trailers.
var notForwarded = map[string]bool{
	"Authorization": true, "X-Api-Key": true, "Api-Key": true, "Openai-Organization": true, "Openai-Project": true, "Cookie": true,
	"Content-Length": true, "Content-Type": true, "Expect": true, "Request-Id": true, "X-Request-Id": true,
	"Connection": true, "Upgrade": true, "Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authorization": true, "Proxy-Authenticate": true, "Http2-Settings": true,
	// The transport negotiates and decodes gzip itself.
	"Accept-Encoding": true,
}

// errNoUpgrade is what the gateway's writers answer a hijack with: no
// upstream reply, a 101 included, ever takes over the client's socket.
var errNoUpgrade = errors.New("chat_gateway relays no protocol upgrade")

// forward sends the request to its backend through the backend's
// reverse proxy and relays the normalized reply. While nothing has gone
// to the client, a failed attempt may be retried: a stream that failed
// before its first content event, on the same backend when its retry_on
// has "stream", and any backend failure on the backend's fallback.
func (h *Handler) forward(x *exchange, rt route, body []byte) {
	ctx := x.r.Context()
	if !x.req.Stream {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, time.Duration(h.Timeout), errTimeout)
		defer stop()
	}
	var tried map[*Backend]bool // backends left for their fallback
	streamRetries := 0
	for {
		u, e := h.attempt(ctx, x, rt, body)
		if e == nil {
			return
		}
		next, ok := route{}, false
		if !u.out.started && x.r.Context().Err() == nil && retryable(e) {
			switch {
			case u.stream && rt.backend.RetryStream && streamRetries < rt.backend.streamRetries():
				streamRetries++
				next, ok = rt, true
			case rt.backend.fallback != nil && !tried[rt.backend.fallback.backend] &&
				(x.req.PreviousResponseID == "" || rt.backend.fallback.backend.keepsResponses()):
				if tried == nil {
					tried = make(map[*Backend]bool)
				}
				tried[rt.backend] = true
				streamRetries = 0
				next, ok = *rt.backend.fallback, true
			}
		}
		if !ok {
			u.fail(e)
			return
		}
		x.retries++
		h.clearPassedHeaders(x.w.Header()) // the failed attempt's rate limits are not the next one's
		if c := h.logger.Check(zapcore.DebugLevel, "retrying"); c != nil {
			c.Write(zap.String("request_id", x.id), zap.String("code", e.Code), zap.Int("status", e.Status), zap.Bool("fallback", next.backend != rt.backend))
		}
		rt = next
	}
}

// backendEndpoint is an endpoint whose upstream request depends on the
// backend: Messages go as they are to a backend that serves them, and
// translated to chat completions to the others.
type backendEndpoint interface {
	// upstream returns the path (under the backend's base path) and the
	// body of the request to b for model, given the client's body with
	// the model alias edited.
	upstream(b *Backend, model string, body []byte) (string, []byte, *openai.Error)
}

// retryable reports whether a failure is the backend's, so another try
// (or another backend) may succeed: not the client's, not the deadline's.
func retryable(e *openai.Error) bool {
	switch {
	case e.Status == 499 || e.Code == "timeout":
		return false
	case e.Status == http.StatusTooManyRequests || e.Status >= 500:
		return true
	}
	return false
}

// attempt makes one try of the request on rt's backend. It returns nil
// when a reply or a complete stream went to the client, else the error
// to answer with, which has not been written unless u.out.started.
func (h *Handler) attempt(parent context.Context, x *exchange, rt route, body []byte) (*upstreamWriter, *openai.Error) {
	begin := time.Now()
	b := rt.backend
	model := x.req.Model
	if rt.model != "" {
		model = rt.model
		body = openai.SetMember(body, "model", jsonString(rt.model))
	}
	path := strings.TrimPrefix(x.r.URL.Path, "/v1")
	if be, ok := x.ep.(backendEndpoint); ok {
		var e *openai.Error
		if path, body, e = be.upstream(b, model, body); e != nil {
			return &upstreamWriter{x: x, out: x.out}, e
		}
	}
	if x.req.Stream && h.IncludeUsageUpstream && !x.req.IncludeUsage && x.ep.AsksStreamUsage() {
		opts := openai.Member(body, "stream_options")
		if len(opts) == 0 || opts[0] != '{' {
			opts = []byte("{}")
		}
		body = openai.SetMember(body, "stream_options", openai.SetMember(opts, "include_usage", []byte("true")))
	}

	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	u := &upstreamWriter{x: x, out: x.out, idle: time.Duration(h.IdleTimeout), began: begin, meta: x.meta("")}
	if x.ep == openai.Embeddings {
		u.limit = maxEmbeddingsReply
	}
	u.timer = time.AfterFunc(time.Duration(h.FirstTokenTimeout), func() { u.expired(cancel) })
	defer u.stopTimer()

	stopKeepalive := func() {}
	if x.req.Stream && h.KeepaliveInterval > 0 {
		u.events() // made here: the keep-alives may use it
		stopKeepalive = u.keepalive(ctx, time.Duration(h.KeepaliveInterval))
	}
	var conns atomic.Int32 // connections the attempt used: more than one is a retry
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { conns.Add(1) }})
	up := x.upstreamRequest(ctx, b, http.MethodPost, path, body)
	proxyStart := time.Now()
	x.gw += proxyStart.Sub(begin)
	aborted, proxyErr := serveProxy(b.proxy, u, up)
	x.upstreamTime += time.Since(proxyStart)
	if n := int(conns.Load()); n > 1 {
		x.retries += n - 1 // the transport's or reverse_proxy's own retries
		if c := h.logger.Check(zapcore.DebugLevel, "retried within the proxy"); c != nil {
			c.Write(zap.String("request_id", x.id), zap.Int("connections", n))
		}
	}
	if b.cooldowns != nil {
		b.cooldowns.observe(x.repl, time.Now())
	}
	u.stopTimer()
	stopKeepalive()
	defer u.release()
	return u, u.settle(ctx, proxyErr, aborted)
}

// keepalive writes a keep-alive every interval until the backend's
// first event, so proxies in front do not close an idle stream. The
// first starts the client's stream (status 200). It returns a function
// that stops it and waits for it to end.
func (u *upstreamWriter) keepalive(ctx context.Context, interval time.Duration) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				if !u.ping() {
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// pinger is an EventStream with a keep-alive event of its own, sent
// before the backend's first event (Messages: message_start, then ping).
type pinger interface {
	ping() []byte
}

// ping writes one keep-alive unless the backend's first event has come:
// the stream's own event where it has one, else a ": keep-alive"
// comment. It reports false once keep-alives are over.
func (u *upstreamWriter) ping() bool {
	u.firstMu.Lock() // the stream is not used by onEvent meanwhile
	defer u.firstMu.Unlock()
	if u.firstEvent.Load() {
		return false
	}
	if p, ok := u.st.(pinger); ok {
		return u.out.event(p.ping()) == nil
	}
	return u.out.comment("keep-alive") == nil
}

// serveProxy runs the reverse proxy. The proxy aborts a response whose
// body fails after its headers went out with panic(http.ErrAbortHandler);
// here that is a normal end of an attempt, reported as aborted.
func serveProxy(p caddyhttp.MiddlewareHandler, w http.ResponseWriter, r *http.Request) (aborted bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
				panic(v)
			}
			aborted = true
		}
	}()
	return false, p.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil }))
}

// upstreamRequest builds the request to the backend: the client's
// request with its body, path and credentials replaced.
func (x *exchange) upstreamRequest(ctx context.Context, b *Backend, method, path string, body []byte) *http.Request {
	up := x.r.WithContext(ctx)
	up.Method = method
	up.URL = &url.URL{Path: b.BasePath + path}
	up.Header = make(http.Header, len(x.r.Header)+3)
	connection := x.r.Header["Connection"]
	for k, v := range x.r.Header {
		if !notForwarded[k] && (connection == nil || !namedIn(connection, k)) {
			up.Header[k] = v // reverse_proxy copies the map before editing it
		}
	}
	up.Header["X-Request-Id"] = []string{x.id}
	// An empty idempotency key is not sent, but lets Go's transport send
	// the request again, on a new connection, when a reused one fails
	// before any reply: a backend closing an idle keep-alive connection
	// just as the request goes out (GetBody below replays the body).
	up.Header["X-Idempotency-Key"] = nil
	if b.apiKey != "" {
		up.Header["Authorization"] = []string{b.authorization}
		if b.servesMessages() { // as the Anthropic API takes it
			up.Header["X-Api-Key"] = []string{b.apiKey}
		}
	}
	up.Body, up.ContentLength = http.NoBody, 0
	if body != nil {
		up.Body, up.ContentLength = x.body.reader(body), int64(len(body))
		up.GetBody = func() (io.ReadCloser, error) { return x.body.reader(body), nil }
		up.Header["Content-Type"] = []string{"application/json"}
	}
	return up
}

// namedIn reports whether the Connection header values name the header
// k as hop-by-hop (RFC 9110 section 7.6.1).
func namedIn(connection []string, k string) bool {
	for _, v := range connection {
		for name := range strings.SplitSeq(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(name)) == k {
				return true
			}
		}
	}
	return false
}

// replyBuffer is a ResponseWriter for the reverse proxy that keeps the
// backend's reply, up to its limit, for the gateway to rewrite.
type replyBuffer struct {
	header   http.Header
	status   int
	limit    int   // the most it keeps; 0 for maxReplyBody
	declared int64 // the reply's Content-Length, if it had one
	body     []byte
	tooLarge bool
}

func (rb *replyBuffer) Header() http.Header {
	if rb.header == nil {
		rb.header = make(http.Header)
	}
	return rb.header
}

func (rb *replyBuffer) WriteHeader(code int) {
	if code >= 200 && rb.status == 0 { // 1xx are informational: not passed on
		rb.status = code
		if n, err := strconv.ParseInt(rb.header.Get("Content-Length"), 10, 64); err == nil {
			rb.declared = n
		}
	}
}

func (rb *replyBuffer) Write(p []byte) (int, error) {
	if rb.status == 0 {
		rb.WriteHeader(http.StatusOK)
	}
	limit := rb.limit
	if limit == 0 {
		limit = maxReplyBody
	}
	need := len(rb.body) + len(p)
	if need > limit || rb.declared > int64(limit) {
		// A declared length over the cap is refused before its body
		// is read.
		rb.tooLarge = true
		return 0, errReplyTooLarge
	}
	if need > cap(rb.body) {
		// Grow by doubling up to the cap, from the declared length when
		// there is one: at most one copy in use and one being made.
		size := min(max(need, 2*cap(rb.body), int(rb.declared)), limit)
		var grown []byte
		if size > limit/2 {
			grown = make([]byte, 0, size) // the pool's next class would overshoot the cap
		} else {
			grown = getBuffer(size)
		}
		grown = append(grown, rb.body...)
		rb.release()
		rb.body = grown
	}
	rb.body = append(rb.body, p...)
	return len(p), nil
}

// release gives the body's buffer back to the pool.
func (rb *replyBuffer) release() {
	if rb.body != nil {
		putBuffer(rb.body)
		rb.body = nil
	}
}

// Hijack refuses the proxy the client's connection: the gateway relays
// no upgrade (http.ResponseController finds this before Unwrap).
func (rb *replyBuffer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errNoUpgrade
}

// FlushError is called by the proxy through http.ResponseController;
// the gateway flushes its own output when it writes it.
func (rb *replyBuffer) FlushError() error { return nil }

// upstreamWriter is the ResponseWriter the reverse proxy writes the
// backend's reply to. At WriteHeader it chooses: an event stream is
// parsed and relayed event by event; anything else is buffered and
// rewritten when the proxy returns.
type upstreamWriter struct {
	replyBuffer
	x      *exchange
	out    *sseWriter
	stream bool // relaying an event stream

	meta   openai.Meta
	parser sse.Parser
	st     openai.EventStream // the endpoint's normalizer of this stream
	held   []byte             // framed events held before the first content
	ended  bool               // an error ended the stream: the rest is ignored
	failed *openai.Error      // the error event sent

	// timer first bounds the wait for the first event, then backend
	// silence: expired re-arms it while the backend is not silent.
	timer      *time.Timer
	firstEvent atomic.Bool
	firstMu    sync.Mutex // held by a keep-alive, and by the first event's arrival
	idle       time.Duration
	began      time.Time
	// writing is set while the proxy hands over what it read: time spent
	// there, writing to a slow client included, is not backend silence.
	writing  atomic.Bool
	lastRead atomic.Int64 // when the last Write returned, in ns since began
	stopped  atomic.Bool  // the attempt is over: the timer stays off
}

// expired runs when the timer fires: before the first event, that is
// first_token_timeout; after it, idle_timeout only if the backend has
// been silent for that long, since the end of the last Write.
func (u *upstreamWriter) expired(cancel context.CancelCauseFunc) {
	switch {
	case u.stopped.Load():
	case !u.firstEvent.Load():
		cancel(errFirstTokenTimeout)
	case u.writing.Load():
		u.timer.Reset(u.idle)
	default:
		if silent := time.Since(u.began) - time.Duration(u.lastRead.Load()); silent < u.idle {
			u.timer.Reset(u.idle - silent)
			return
		}
		cancel(errIdleTimeout)
	}
}

// stopTimer ends the attempt's deadlines.
func (u *upstreamWriter) stopTimer() {
	u.stopped.Store(true)
	u.timer.Stop()
}

// Unwrap gives http.ResponseController the client's writer.
func (u *upstreamWriter) Unwrap() http.ResponseWriter { return u.x.w }

func (u *upstreamWriter) WriteHeader(code int) {
	if code < 200 || u.status != 0 {
		return
	}
	u.replyBuffer.WriteHeader(code)
	if code/100 != 2 {
		return
	}
	if !isEventStream(u.header.Get("Content-Type")) {
		if !u.x.req.Stream {
			// The headers of a non-streamed reply are its first sign of
			// life; from here the request's own timeout applies.
			u.timer.Stop()
			return
		}
		// A JSON answer to a streaming request: streams have no total
		// deadline, so its body is bounded by idle_timeout.
		u.firstEvent.Store(true)
		u.timer.Reset(u.idle)
		return
	}
	// The client's headers wait for the first event, so a backend that
	// fails before it still gets a proper status.
	u.stream = true
	u.events()
	u.out.editHeader(func(h http.Header) { u.x.h.passHeaders(h, u.header) })
}

func (u *upstreamWriter) Write(p []byte) (int, error) {
	if u.status == 0 {
		u.WriteHeader(http.StatusOK)
	}
	u.writing.Store(true)
	defer u.endWrite()
	if !u.stream {
		return u.replyBuffer.Write(p)
	}
	if u.ended {
		return len(p), nil
	}
	if err := u.parser.Feed(p, u.onEvent); err != nil {
		if errors.Is(err, sse.ErrLineTooLong) {
			u.failStream(&openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "event_too_large",
				Message: "The backend sent a stream line longer than the gateway accepts (8 MiB)."})
		}
		return 0, err
	}
	// The events of this read go out now, together: nothing waits for
	// more input, and a burst costs one write, as with reverse_proxy.
	if u.out.started {
		if err := u.out.send(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// endWrite notes that the proxy goes back to reading the backend:
// silence is counted from here, however long the write to the client took.
func (u *upstreamWriter) endWrite() {
	u.lastRead.Store(int64(time.Since(u.began)))
	u.writing.Store(false)
}

// onEvent relays one upstream event, normalized by the endpoint.
func (u *upstreamWriter) onEvent(ev sse.Event) error {
	if !u.firstEvent.Load() { // later events are timed by Write
		u.firstMu.Lock() // a keep-alive being written ends first
		u.firstEvent.Store(true)
		u.firstMu.Unlock()
		u.timer.Reset(u.idle)
	}
	if u.ended {
		return nil
	}
	begin := time.Now()
	n := len(u.held)
	var err error
	u.held, err = u.st.Event(u.held, ev.Type, ev.Data)
	u.x.gw += time.Since(begin)
	if e, ok := errors.AsType[*openai.Error](err); ok {
		u.held = u.held[:n]
		u.x.fromUpstream = true
		u.failStream(u.x.upstreamErrorDefaults(e, http.StatusBadGateway))
		return nil
	}
	if err != nil {
		u.held = u.held[:n]
		u.failStream(&openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "invalid_upstream_response",
			Message: "The backend sent a stream event this route cannot read (" + u.x.r.URL.Path + ")."})
		return nil
	}
	if len(u.held) == n || !u.out.started && !u.st.Content() && len(u.held) < maxHeld {
		// Until content flows, the attempt can still be retried: hold
		// the role chunk and its like.
		return nil
	}
	if u.st.Content() {
		u.x.markFirstToken()
	}
	if !u.out.started {
		err = u.out.event(u.held) // the first: headers and events go out at once
	} else {
		u.out.queue(u.held)
	}
	u.held = u.held[:0]
	return err
}

// maxHeld bounds the events held before the first content.
const maxHeld = 64 << 10

// events returns the endpoint's normalizer of this attempt's stream.
func (u *upstreamWriter) events() openai.EventStream {
	if u.st == nil {
		u.st = u.x.ep.NewStream(u.meta)
	}
	return u.st
}

// failStream ends the stream with e: an error event once the stream
// has started, else an error reply when the proxy returns.
func (u *upstreamWriter) failStream(e *openai.Error) {
	u.failed, u.ended = e, true
	if u.out.started {
		_ = u.events().Fail(e, u.out.event)
	}
}

// settle ends an attempt once the proxy returned. A stream that
// completed is closed ([DONE]); a buffered 2xx reply is answered. It
// returns the failure otherwise; a failure after the stream started has
// been sent as an error event already.
func (u *upstreamWriter) settle(ctx context.Context, proxyErr error, aborted bool) *openai.Error {
	x := u.x
	x.upstreamErr = proxyErr
	cause := context.Cause(ctx)
	if u.stream { // what was generated, a client that left included
		x.setResult(u.st.Result())
	}
	if x.r.Context().Err() != nil || u.out.err != nil {
		return &openai.Error{Status: 499, Type: openai.TypeInvalidRequest, Code: "client_closed_request", Message: "The client closed the request."}
	}
	if u.stream {
		if u.failed == nil {
			switch {
			case errors.Is(cause, errFirstTokenTimeout):
				u.failStream(firstTokenTimeout())
			case errors.Is(cause, errIdleTimeout):
				u.failStream(timeoutError("idle_timeout", "The backend sent nothing for longer than idle_timeout; the stream was ended."))
			case aborted || u.parser.Pending() || !u.st.Complete():
				u.failStream(&openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "stream_truncated",
					Message: "The backend ended the stream before it was complete."})
			}
		}
		if u.failed != nil {
			return u.failed
		}
		x.status = http.StatusOK
		if len(u.held) > 0 {
			u.out.queue(u.held)
		}
		if u.st.Finish(x.req.IncludeUsage, u.out.event) != nil {
			x.outcome, x.status = outcomeClientCancelled, 499
		}
		return nil
	}

	switch {
	case errors.Is(cause, errFirstTokenTimeout):
		return firstTokenTimeout()
	case errors.Is(cause, errTimeout):
		return timeoutError("timeout", "The backend did not answer within the request timeout.")
	case u.tooLarge:
		return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_reply_too_large",
			Message: "The backend's reply is larger than the gateway accepts."}
	case proxyErr != nil || u.status == 0:
		return proxyError(proxyErr)
	case aborted:
		return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_reply_incomplete",
			Message: "The backend's reply was cut short."}
	case u.status/100 == 2:
		return u.reply()
	}
	x.h.passHeaders(x.w.Header(), u.header)
	x.fromUpstream = true
	if u.status >= 500 {
		x.backendError = x.h.redactUpstreamKeys(backendErrorText(u.body))
	}
	return x.upstreamErrorDefaults(upstreamStatusError(u.status, u.body), u.status)
}

// maxBackendErrorLog bounds the backend's error text in the module log.
const maxBackendErrorLog = 512

// backendErrorText is what a backend's failed reply says, for the log:
// its OpenAI error message, else its body, cut to maxBackendErrorLog
// bytes of valid UTF-8.
func backendErrorText(body []byte) string {
	text := strings.TrimSpace(string(body))
	if e, ok := openai.ParseError(body); ok && e.Message != "" {
		text = e.Message
	}
	if len(text) > maxBackendErrorLog {
		text = text[:maxBackendErrorLog]
		for !utf8.ValidString(text) {
			text = text[:len(text)-1]
		}
	}
	return strings.ToValidUTF8(text, "")
}

// reply answers from a buffered 2xx reply: normalized JSON, or the same
// as a stream when the client asked for one and the backend did not.
func (u *upstreamWriter) reply() *openai.Error {
	x := u.x
	begin := time.Now()
	var out []byte
	var rep openai.Reply
	var err error
	if x.ep == openai.Embeddings {
		// Vectors are large: the reply is edited where it lies, and the
		// buffer it ends in goes back to the pool with the reply's.
		out, rep, err = x.ep.Normalize(nil, u.body, u.meta)
		u.body = out
	} else {
		out, rep, err = x.ep.Normalize(getBuffer(len(u.body)+512), u.body, u.meta)
		defer putBuffer(out)
	}
	x.gw += time.Since(begin)
	if err != nil {
		return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "invalid_upstream_response",
			Message: "The backend's reply is not valid for this route (" + x.r.URL.Path + ")."}
	}
	x.setResult(rep)
	x.markFirstToken()
	x.h.passHeaders(x.w.Header(), u.header)
	if !x.req.Stream {
		x.writeJSON(http.StatusOK, out)
		return nil
	}
	// The backend answered a streaming request with one JSON reply: send
	// it as the stream it would have been.
	if u.events().FromReply(out, x.req.IncludeUsage, u.out.event) != nil {
		x.outcome, x.status = outcomeClientCancelled, 499
	}
	return nil
}

// fail answers with e: an error reply while nothing has gone to the
// client, else (keep-alive comments went out) a final error event.
func (u *upstreamWriter) fail(e *openai.Error) {
	x := u.x
	if !u.out.started {
		x.fail(e)
		return
	}
	x.status, x.code, x.outcome = http.StatusOK, e.Code, outcomeOf(e)
	switch {
	case e.Status == 499:
		x.status = 499
	case u.failed != e: // a stream's own failure went out as it happened
		_ = u.events().Fail(e, u.out.event)
	}
}

// firstTokenTimeout is the error of a backend that did not start
// answering in time, streamed or not.
func firstTokenTimeout() *openai.Error {
	return timeoutError("first_token_timeout", "The backend did not start answering within first_token_timeout.")
}

func timeoutError(code, msg string) *openai.Error {
	return &openai.Error{Status: http.StatusGatewayTimeout, Type: openai.TypeTimeout, Code: code, Message: msg}
}

// proxyError maps an error of the reverse proxy, which may name the
// backend's address, to one that names nothing.
func proxyError(err error) *openai.Error {
	status := http.StatusBadGateway
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok && he.StatusCode != 0 {
		status = he.StatusCode
	}
	if de, ok := errors.AsType[reverseproxy.DialError](err); ok {
		// DialError hides its cause (and reverse_proxy reports it as a
		// 502); a dial that ran out of time says so in its text.
		if strings.Contains(de.Error(), "i/o timeout") {
			return timeoutError("dial_timeout", "The backend could not be connected to within dial_timeout.")
		}
		status = http.StatusBadGateway
	}
	switch status {
	case http.StatusGatewayTimeout:
		return timeoutError("upstream_timeout", "The backend did not answer in time.")
	case http.StatusServiceUnavailable:
		return &openai.Error{Status: http.StatusServiceUnavailable, Type: openai.TypeUpstream, Code: "no_upstream_available",
			Message: "No backend is available to serve the request."}
	}
	return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_unavailable",
		Message: "The backend could not be reached."}
}

// upstreamStatusError reads a backend's non-2xx reply. A 4xx passes on
// with its status and the backend's message; a 5xx becomes a 502.
func upstreamStatusError(status int, body []byte) *openai.Error {
	if status >= 500 {
		return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_error",
			Message: fmt.Sprintf("The backend failed to answer (status %d).", status)}
	}
	e, ok := openai.ParseError(body)
	if !ok {
		e = &openai.Error{Message: fmt.Sprintf("The backend refused the request (status %d).", status)}
	}
	e.Status = status
	return e
}

// upstreamErrorDefaults fills what a backend's error left out and takes
// the upstream key out of its message.
func (x *exchange) upstreamErrorDefaults(e *openai.Error, status int) *openai.Error {
	if e.Status == 0 {
		e.Status = status
	}
	if e.Message == "" {
		e.Message = "The backend reported an error."
	}
	if e.Type == "" {
		switch e.Status {
		case http.StatusUnauthorized, http.StatusForbidden:
			e.Type = openai.TypeAuthentication
		case http.StatusTooManyRequests:
			e.Type = openai.TypeRateLimit
		default:
			if e.Status >= 500 {
				e.Type = openai.TypeUpstream
			} else {
				e.Type = openai.TypeInvalidRequest
			}
		}
	}
	e.Message, e.Type, e.Param, e.Code = x.h.redactUpstreamKeys(e.Message), x.h.redactUpstreamKeys(e.Type), x.h.redactUpstreamKeys(e.Param), x.h.redactUpstreamKeys(e.Code)
	return e
}

// redactUpstreamKeys replaces every backend's api_key in s, which came
// from a backend (it may quote the credential it was sent anywhere),
// with "[redacted]".
func (h *Handler) redactUpstreamKeys(s string) string {
	for _, b := range h.Backends {
		if len(b.apiKey) >= 8 && strings.Contains(s, b.apiKey) {
			s = strings.ReplaceAll(s, b.apiKey, "[redacted]")
		}
	}
	return s
}

// passHeaders copies the backend's response headers a client may rely
// on, rate-limit information, redacted. Everything else stays behind.
// The backend's X-Ratelimit-* headers become X-Upstream-Ratelimit-* when
// the gateway has limits of its own.
func (h *Handler) passHeaders(dst, src http.Header) {
	prefix := h.upstreamRateLimitPrefix()
	for k, v := range src {
		name, ok := k, k == "Retry-After"
		if rest, limit := strings.CutPrefix(k, "X-Ratelimit-"); limit {
			name, ok = prefix+rest, true
		}
		if !ok {
			continue
		}
		for i, s := range v {
			if r := h.redactUpstreamKeys(s); r != s {
				v = slices.Clone(v)
				v[i] = r
			}
		}
		dst[name] = v
	}
}

// clearPassedHeaders removes what passHeaders copied.
func (h *Handler) clearPassedHeaders(hdr http.Header) {
	prefix := h.upstreamRateLimitPrefix()
	for k := range hdr {
		if k == "Retry-After" || strings.HasPrefix(k, prefix) {
			delete(hdr, k)
		}
	}
}

// upstreamRateLimitPrefix starts the names under which the backend's
// X-Ratelimit-* headers reach the client.
func (h *Handler) upstreamRateLimitPrefix() string {
	if h.Limits != nil {
		return "X-Upstream-Ratelimit-"
	}
	return "X-Ratelimit-"
}

func isEventStream(contentType string) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt == "text/event-stream"
}

// jsonString returns s as a JSON string.
func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
