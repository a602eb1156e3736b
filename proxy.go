package chatgateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
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
	// The gateway reads the whole body before it sends any of it, so the
	// request it sends is not incremental (and reverse_proxy refuses one
	// that says it is with a 501 when it buffers bodies).
	"Incremental": true,
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
	var deadline time.Time // the request's timeout: streams have none
	if !x.req.Stream {
		deadline = time.Now().Add(time.Duration(h.Timeout))
	}
	var tried map[*Backend]bool // backends left for their fallback
	streamRetries := 0
	resent := false // sent again after a reused connection failed
	for {
		u, res := h.attempt(x, rt, body, deadline)
		e := res.err
		if e == nil {
			x.end(http.StatusOK, res)
			return
		}
		next, ok := route{}, false
		if !u.started() && x.r.Context().Err() == nil && e.Retryable() {
			switch {
			case u.staleConn && !resent:
				// The backend closed a kept-alive connection as the
				// request went out, and the transport could not send it
				// again itself (the body's write failed): once more, on
				// the connection the pool gives next.
				resent = true
				next, ok = rt, true
			case u.state != replyBuffered && rt.backend.RetryStream && streamRetries < rt.backend.streamRetries():
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
				if x.cache != nil {
					x.cache.rerouted = true // its reply is another model's
				}
			}
		}
		if !ok {
			u.fail(res)
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

// attempt makes one try of the request on rt's backend, by deadline if
// it has one, and says how it ended: well when a reply or a complete
// stream went to the client, else with the error to answer with, which
// has not been written unless u.started().
func (h *Handler) attempt(x *exchange, rt route, body []byte, deadline time.Time) (*upstreamWriter, result) {
	begin := time.Now()
	b := rt.backend
	model := rt.modelFor(x.req.Model)
	if rt.model != "" {
		body = openai.SetMember(body, "model", jsonString(rt.model))
	}
	x.servedModel = model
	if p := x.cache.embeddings(); p != nil {
		body = p.upstream(body) // only the inputs the cache lacks
	}
	path := strings.TrimPrefix(x.r.URL.Path, "/v1")
	if be, ok := x.ep.(openai.BackendEndpoint); ok {
		var e *openai.Error
		if path, body, e = be.Upstream(b.servesMessages(), model, body); e != nil {
			return &upstreamWriter{x: x, out: x.out}, result{err: e}
		}
	}
	if x.req.Stream && h.IncludeUsageUpstream && !x.req.IncludeUsage && x.ep.AsksStreamUsage() {
		opts := openai.Member(body, "stream_options")
		if len(opts) == 0 || opts[0] != '{' {
			opts = []byte("{}")
		}
		body = openai.SetMember(body, "stream_options", openai.SetMember(opts, "include_usage", []byte("true")))
	}

	// A Response this attempt's backend makes is claimed for the caller;
	// one a failed attempt made is not what the client gets.
	x.stateful, x.claimed = h.owners != nil && b.keepsResponses(), false
	if f := x.cache.capture(); f != nil {
		f.reset() // what a failed attempt brought is not the reply
	}
	ctx, cancel := context.WithCancelCause(x.r.Context())
	defer cancel(nil)
	if b.prompts {
		ctx = withPrompt(ctx, path, body)
	}
	u := x.upstreamWriter(begin, deadline)
	u.timer = time.AfterFunc(u.within(time.Duration(h.FirstTokenTimeout)), func() { u.expired(cancel) })
	defer u.stopTimer()

	stopKeepalive := func() {}
	if x.req.Stream && h.KeepaliveInterval > 0 {
		u.events() // made here: the keep-alives may use it
		stopKeepalive = u.keepalive(ctx, time.Duration(h.KeepaliveInterval))
	}
	var conns atomic.Int32 // connections the attempt used: more than one is a retry
	var reused atomic.Bool // the last of them had served a request before
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conns.Add(1)
		reused.Store(info.Reused)
	}})
	// The request is made only to be sent: a body reader never read
	// would keep the request's buffer from going back to its pool.
	var up *http.Request
	if !x.cache.follows() {
		up = x.upstreamRequest(ctx, b, http.MethodPost, path, body)
	}
	proxyStart := time.Now()
	x.addOwnTime(proxyStart.Sub(begin))
	var aborted, served bool
	var proxyErr error
	if x.cache.follows() {
		served, aborted = x.cache.replay(ctx, u)
	}
	if !served {
		if up == nil { // the request it followed failed first: on its own
			up = x.upstreamRequest(ctx, b, http.MethodPost, path, body)
		}
		aborted, proxyErr = serveProxy(b.proxy, u, up)
	}
	x.upstreamTime += time.Since(proxyStart)
	u.staleConn = proxyErr != nil && u.status == 0 && reused.Load()
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

// jsonString returns s as a JSON string.
func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
