package chatgateway

// The writer reverse_proxy writes a backend's reply to: at WriteHeader it
// decides between relaying an event stream (relay.go), normalizing a
// large reply as it arrives (replystream.go) and buffering a reply
// (replybuffer.go) to normalize when the proxy returns.

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// relayState is where an attempt's reply stands. It only moves forward:
// buffered -> holding (WriteHeader of an event stream) -> relaying
// (content, or the client's stream already open) -> ended (an error
// event); holding may also go straight to ended. A 2xx reply of an
// endpoint that normalizes replies as they come goes from buffered to
// streaming, and stays there.
type relayState uint8

const (
	// replyBuffered: no event stream; a reply, if any, goes to the reply
	// buffer, to be answered when the proxy returns.
	replyBuffered relayState = iota
	// streamHolding: an event stream whose events are held until content
	// flows, while the attempt may still be retried.
	streamHolding
	// streamRelaying: events go to the client as they come.
	streamRelaying
	// streamEnded: an error ended the stream; what the backend sends
	// after it is dropped.
	streamEnded
	// replyStreaming: a 2xx reply normalized and written as it arrives
	// (embeddings), by js.
	replyStreaming
)

// upstreamWriter is the ResponseWriter the reverse proxy writes the
// backend's reply to. At WriteHeader it chooses: an event stream is
// parsed and relayed event by event; a 2xx reply of an endpoint that is
// an openai.ReplyStreamer is normalized as it arrives; anything else is
// buffered and rewritten when the proxy returns.
type upstreamWriter struct {
	replyBuffer
	x     *exchange
	out   *sseWriter
	state relayState

	meta   openai.Meta
	parser sse.Parser
	st     openai.EventStream // the endpoint's normalizer of this stream
	held   eventBuffer        // framed events held before the first content, or being sent
	failed *openai.Error      // the error event sent
	// failedByBackend: failed is the backend's own in-band error.
	failedByBackend bool
	js              *replyStream // the reply normalized as it arrives (replyStreaming)
	// staleConn is set when the attempt failed on a reused connection
	// before any reply: the backend closed it as the request went out.
	staleConn bool

	// timer first bounds the wait for the first event, then backend
	// silence: expired re-arms it while the backend is not silent. It
	// never runs past deadline, the request's timeout (streams have none).
	timer      *time.Timer
	deadline   time.Time
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

// upstreamWriter returns the writer of an attempt of x that began at
// begin, by deadline if it has one.
func (x *exchange) upstreamWriter(begin, deadline time.Time) *upstreamWriter {
	u := &upstreamWriter{x: x, out: x.out, idle: time.Duration(x.h.IdleTimeout), began: begin, deadline: deadline, meta: x.meta("")}
	if _, ok := x.ep.(openai.ReplyStreamer); ok { // a reply normalized as it comes: large ones are fine
		u.limit = maxStreamedReply
	}
	return u
}

// expired runs when the timer fires: at the deadline, that is the
// request's timeout; before the first event, first_token_timeout; after
// it, idle_timeout only if the backend has been silent for that long,
// since the end of the last Write.
func (u *upstreamWriter) expired(cancel context.CancelCauseFunc) {
	switch {
	case u.stopped.Load():
	case !u.deadline.IsZero() && !time.Now().Before(u.deadline):
		cancel(errTimeout)
	case !u.firstEvent.Load():
		cancel(errFirstTokenTimeout)
	case u.writing.Load():
		u.arm(u.idle)
	default:
		if silent := time.Since(u.began) - time.Duration(u.lastRead.Load()); silent < u.idle {
			u.arm(u.idle - silent)
			return
		}
		cancel(errIdleTimeout)
	}
}

// within returns d, or less if the deadline comes first. One timer
// serves every deadline of an attempt: a context with a timeout of its
// own cost 2-3 µs a request.
func (u *upstreamWriter) within(d time.Duration) time.Duration {
	if !u.deadline.IsZero() {
		return min(d, time.Until(u.deadline))
	}
	return d
}

// arm sets the timer to fire in d, or at the deadline if that comes
// first. A reply from the cache has no timer: it does not wait.
func (u *upstreamWriter) arm(d time.Duration) {
	if u.timer != nil {
		u.timer.Reset(u.within(d))
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
	if f := u.x.cache.capture(); f != nil {
		f.header(u.header.Get("Content-Type"))
	}
	if rs, ok := u.x.ep.(openai.ReplyStreamer); ok && u.x.cache.embeddings() == nil {
		// Such endpoints do not stream: whatever the content type, the
		// reply is normalized (and refused if not JSON) as it comes.
		u.streamReply(rs)
		return
	}
	if !isEventStream(u.header.Get("Content-Type")) {
		if !u.x.req.Stream {
			// The headers of a non-streamed reply are its first sign of
			// life; from here the request's own timeout applies.
			u.arm(time.Until(u.deadline))
			return
		}
		// A JSON answer to a streaming request: streams have no total
		// deadline, so its body is bounded by idle_timeout.
		u.firstEvent.Store(true)
		u.arm(u.idle)
		return
	}
	// The client's headers wait for the first event, so a backend that
	// fails before it still gets a proper status.
	u.state = streamHolding
	u.events()
	u.out.editHeader(func(h http.Header) { u.x.h.passHeaders(h, u.header) })
}

func (u *upstreamWriter) Write(p []byte) (int, error) {
	if u.status == 0 {
		u.WriteHeader(http.StatusOK)
	}
	u.writing.Store(true)
	defer u.endWrite()
	switch u.state {
	case replyBuffered:
		return u.replyBuffer.Write(p)
	case replyStreaming:
		return u.js.feed(p)
	case streamEnded:
		return len(p), nil
	}
	if f := u.x.cache.capture(); f != nil {
		f.write(p)
	}
	if err := u.parser.Feed(p, u.onEvent); err != nil {
		if errors.Is(err, sse.ErrLineTooLong) {
			u.failStream(openai.EventTooLarge())
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

// settle ends an attempt once the proxy returned and says how it ended.
// A stream that completed is closed ([DONE]); a buffered 2xx reply is
// answered. A failure after the stream started has been sent as an
// error event already.
func (u *upstreamWriter) settle(ctx context.Context, proxyErr error, aborted bool) result {
	x := u.x
	cause := context.Cause(ctx)
	if u.state == replyStreaming {
		return result{err: u.js.settle(cause, proxyErr, aborted), proxyErr: proxyErr}
	}
	if u.state != replyBuffered { // what was generated, a client that left included
		x.keepReply(u.st.Result())
	}
	if x.r.Context().Err() != nil || u.out.err != nil {
		return result{err: openai.ClientClosedRequest(), proxyErr: proxyErr}
	}
	if u.state != replyBuffered {
		if u.failed == nil {
			switch {
			case errors.Is(cause, errFirstTokenTimeout):
				u.failStream(openai.FirstTokenTimeout())
			case errors.Is(cause, errIdleTimeout):
				u.failStream(openai.IdleTimeout())
			case aborted || u.parser.Pending() || !u.st.Complete():
				u.failStream(openai.StreamTruncated())
			}
		}
		if u.failed != nil {
			return result{err: u.failed, fromBackend: u.failedByBackend, proxyErr: proxyErr}
		}
		if len(u.held.buf) > 0 {
			u.out.queue(u.held.buf)
		}
		if f := x.cache.capture(); f != nil {
			f.commit(nil) // a stream that ended before any content
		}
		if u.st.Finish(x.req.IncludeUsage, u.out.event) != nil {
			return result{err: openai.ClientClosedRequest()}
		}
		return result{}
	}

	var e *openai.Error
	switch {
	case errors.Is(cause, errFirstTokenTimeout):
		e = openai.FirstTokenTimeout()
	case errors.Is(cause, errTimeout):
		e = openai.Timeout()
	case u.tooLarge:
		e = openai.UpstreamReplyTooLarge()
	case proxyErr != nil || u.status == 0:
		e = proxyError(proxyErr)
	case aborted:
		e = openai.UpstreamReplyIncomplete("reply")
	case u.status/100 == 2:
		return u.reply()
	}
	if e != nil {
		return result{err: e, proxyErr: proxyErr}
	}
	x.h.passHeaders(x.w.Header(), u.header)
	r := result{err: x.h.upstreamKeys.redactError(openai.BackendError(u.status, u.body)), fromBackend: true}
	if u.status >= 500 {
		r.backendText = x.h.upstreamKeys.redactString(backendErrorText(u.body))
	}
	return r
}

// reply answers from a buffered 2xx reply: normalized JSON, or the same
// as a stream when the client asked for one and the backend did not.
func (u *upstreamWriter) reply() result {
	x := u.x
	begin := time.Now()
	body := u.body
	if p := x.cache.embeddings(); p != nil { // the batch whole, stored vectors included
		merged, err := p.merge(body)
		if err != nil {
			return result{err: invalidReply(x)}
		}
		body = merged
	}
	out, rep, err := x.ep.Normalize(getBuffer(len(body)+512), body, u.meta)
	defer putBuffer(out)
	x.addOwnTime(time.Since(begin))
	if err != nil {
		return result{err: invalidReply(x)}
	}
	x.keepReply(rep)
	x.claim(rep.ResponseID)
	if f := x.cache.capture(); f != nil {
		f.commit(u.body)
	}
	x.markFirstToken()
	x.h.passHeaders(x.w.Header(), u.header)
	if !x.req.Stream {
		x.writeJSON(http.StatusOK, out)
		return result{}
	}
	// The backend answered a streaming request with one JSON reply: send
	// it as the stream it would have been.
	if u.events().FromReply(out, x.req.IncludeUsage, u.out.event) != nil {
		return result{err: openai.ClientClosedRequest()}
	}
	return result{}
}

// release gives back the attempt's buffers.
func (u *upstreamWriter) release() {
	u.replyBuffer.release()
	u.held.giveBack(nil)
}

// started reports whether anything went to the client: from then on the
// attempt is the only one, and its status is sent.
func (u *upstreamWriter) started() bool {
	return u.out.started || u.js != nil && u.js.wrote
}

// fail answers with r's error: an error reply while nothing has gone to
// the client, else (keep-alive comments went out) a final error event.
// A reply whose bytes went out has no way left to say it failed: the
// client's connection is aborted, as reverse_proxy does, so the client
// sees a failure rather than a body that may look whole.
func (u *upstreamWriter) fail(r result) {
	x, e := u.x, r.err
	if !u.started() {
		x.answer(r)
		return
	}
	status := http.StatusOK // sent already
	if e.Status == openai.StatusClientClosedRequest {
		status = e.Status
	}
	x.end(status, r)
	switch {
	case u.js != nil:
		panic(http.ErrAbortHandler) // finish still runs: it is deferred
	case status != openai.StatusClientClosedRequest && u.failed != e: // a stream's own failure went out as it happened
		_ = u.events().Fail(e, u.out.event)
	}
}

// passHeaders copies the backend's response headers a client may rely
// on, rate-limit information, redacted, and its Date, as reverse_proxy
// passes it (Go's server would format one for each reply: 1.5 µs of a
// small request's). Everything else stays behind. The backend's
// X-Ratelimit-* headers become X-Upstream-Ratelimit-* when the gateway
// has limits of its own.
func (h *Handler) passHeaders(dst, src http.Header) {
	prefix := h.upstreamRateLimitPrefix()
	for k, v := range src {
		name, ok := k, passedVerbatim(k)
		if rest, limit := strings.CutPrefix(k, "X-Ratelimit-"); limit {
			name, ok = prefix+rest, true
		}
		if !ok {
			continue
		}
		dst[name] = h.upstreamKeys.redactHeader(v)
	}
}

// passedVerbatim reports whether passHeaders copies the backend's header
// k under its own name.
func passedVerbatim(k string) bool { return k == "Retry-After" || k == "Date" }

// clearPassedHeaders removes what passHeaders copied.
func (h *Handler) clearPassedHeaders(hdr http.Header) {
	prefix := h.upstreamRateLimitPrefix()
	for k := range hdr {
		if passedVerbatim(k) || strings.HasPrefix(k, prefix) {
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

// isEventStream reports whether a Content-Type is text/event-stream,
// whatever its parameters: the media type alone, as mime.ParseMediaType
// reads it, without the map of parameters it allocates.
func isEventStream(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}
