package chatgateway

// One request's state from its id to its end: the reply or error written,
// placeholders, metrics and the log lines.

import (
	"encoding/binary"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Outcomes of a request, in logs and the {http.chat_gateway.outcome}
// placeholder.
const (
	outcomeOK              = "ok"
	outcomeClientError     = "client_error"
	outcomeUpstreamError   = "upstream_error"
	outcomeTimeout         = "timeout"
	outcomeClientCancelled = "client_cancelled"
	outcomeTruncated       = "truncated"
	outcomeRejected        = "rejected"
)

// exchange is one request's state: its id, what it asked, how it ended.
type exchange struct {
	h            *Handler
	w            http.ResponseWriter
	r            *http.Request
	id           string
	repl         *caddy.Replacer
	start        time.Time
	ep           openai.Endpoint // the API route, nil for the others
	req          *openai.Request
	model        string
	outcome      string
	status       int
	code         string // the error code sent, if any
	usage        openai.Usage
	finishReason string
	out          *sseWriter        // the client's stream, if the reply is one
	bodyRead     bool              // the request body was read to its end
	published    bool              // the placeholders are final
	final        finalPlaceholders // their values, once published
	body         body              // the request body's buffer
	retries      int               // further attempts after the first
	key          *keys.Key         // the client's key, with an auth block
	keyLimits    limits.Set        // its own limits, if it has any
	keyID        string            // the caller's identity, if known

	ttft         time.Duration // to the first content sent, 0 if none
	ownTime      time.Duration // time in the gateway's own work, for overhead_seconds (addOwnTime)
	upstreamTime time.Duration // time inside the reverse proxy
	// completionBytes is the size of the reply's content, for log_sizes.
	completionBytes int
	// ended is how the request ended, for the log and the metrics (end).
	ended result
	// upstreamReason is the gateway's code for a failure of the
	// backend's, for upstream_errors_total.
	upstreamReason string
	// reservation is what the limits reserved, settled by finish.
	reservation *limits.Reservation
	// limitsIdentity is who the limits counted the request against,
	// once admitted: finish settles and records it.
	limitsIdentity string
	// stateful is set while the attempt's backend keeps Responses: the
	// id of the one it makes is claimed for the caller (claimed, once).
	stateful, claimed bool
	// errorJSON renders the route's errors: OpenAI's shape unless the
	// route's endpoint has its own (Messages: Anthropic's).
	errorJSON func(*openai.Error) []byte
	// cache is the request's use of the response cache, nil without one.
	cache *cacheUse
	// servedModel is the model the last attempt asked its backend for:
	// after aliases and fallback.
	servedModel string
	// costUSD is what the request cost, in US dollars, when priced: the
	// model that served it has a price (setCost).
	costUSD float64
	priced  bool
}

func (h *Handler) newExchange(w http.ResponseWriter, r *http.Request, ep openai.Endpoint) *exchange {
	x := &exchange{h: h, w: w, r: r, id: requestID(r), start: time.Now(), outcome: outcomeOK, out: newSSEWriter(w, h.upstreamKeys),
		errorJSON: (*openai.Error).JSON}
	x.repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if x.repl == nil {
		x.repl = caddy.NewReplacer()
	}
	x.repl.Map(x.placeholder)
	hdr := w.Header()
	hdr["X-Request-Id"] = []string{x.id} // canonical: Set would allocate the name
	if es, ok := ep.(openai.ErrorShaper); ok {
		x.errorJSON = es.ErrorJSON
		hdr[es.RequestIDHeader()] = []string{x.id}
	}
	if extra := extraLogFields(r); extra != nil && accessLogged(r) {
		extra.Add(zap.String("request_id", x.id))
	}
	return x
}

// requestID returns the client's X-Request-ID or Request-Id when it is
// a sane token, else a new UUID.
func requestID(r *http.Request) string {
	for _, name := range [...]string{"X-Request-Id", "Request-Id"} {
		if v := r.Header.Get(name); validRequestID(v) {
			return v
		}
	}
	return newRequestID()
}

// newRequestID returns a random (version 4) UUID, its bits from the
// runtime's ChaCha8 generator: an id correlates a request, it guards
// nothing, and uuid.NewString's read of the system's generator cost
// 2 µs a request.
func newRequestID() string {
	var id uuid.UUID
	binary.LittleEndian.PutUint64(id[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(id[8:], rand.Uint64())
	id[6] = id[6]&0x0f | 0x40 // version 4
	id[8] = id[8]&0x3f | 0x80 // RFC 9562 variant
	return id.String()
}

// validRequestID accepts 1 to 128 bytes of [A-Za-z0-9._:/+=@-], so an
// id can be reflected in headers, JSON, placeholders and logs (even
// logs viewed as HTML) as is.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !requestIDChar(s[i]) {
			return false
		}
	}
	return true
}

// requestIDChar reports whether c may appear in a client's request id.
func requestIDChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("._:/+=@-", c) >= 0
}

// result is how an answer ended, as the code that made it saw it; the
// exchange records it (end). err is nil for an answer that went out
// whole.
type result struct {
	err *openai.Error
	// fromBackend: err is the backend's own error, passed on.
	fromBackend bool
	// backendText is what a backend's failed reply said, redacted and
	// cut, for the log only.
	backendText string
	// proxyErr is the reverse proxy's own error, for the log only: it
	// may name the backend's address.
	proxyErr error
}

// fail answers with e, as answer does.
func (x *exchange) fail(e *openai.Error) { x.answer(result{err: e}) }

// answer answers with r's error in the route's shape, nothing having
// gone to the client yet, and records it. An answer given before the
// body was read closes the connection, so the server neither reads the
// rest first nor takes it for the next request.
func (x *exchange) answer(r result) {
	e := r.err
	x.end(e.Status, r)
	if e.Status == openai.StatusClientClosedRequest {
		x.w.WriteHeader(e.Status) // for the access log: nobody reads it
		return
	}
	if !x.bodyRead && x.r.ContentLength != 0 {
		x.w.Header().Set("Connection", "close")
	}
	if e.Final() {
		x.w.Header()["X-Should-Retry"] = []string{"false"}
	}
	x.writeJSON(e.Status, x.errorJSON(e))
}

// end records how the request ended, for the log, the metrics and the
// placeholders: status is what the client got (the error's own; 200 for
// a reply or stream that had started before it failed; 499 when the
// client left), r why (r.err nil: it ended well). It is the one place
// the outcome, the status and the code are set.
func (x *exchange) end(status int, r result) {
	x.status, x.ended = status, r
	e := r.err
	if e == nil {
		x.outcome, x.code = outcomeOK, ""
		return
	}
	x.code = e.Code
	switch e.Class() {
	case openai.ClassCancelled:
		x.outcome = outcomeClientCancelled
	case openai.ClassRejected:
		x.outcome = outcomeRejected
	case openai.ClassTruncated:
		x.outcome = outcomeTruncated
	case openai.ClassTimeout:
		x.outcome = outcomeTimeout
	case openai.ClassUpstream:
		x.outcome = outcomeUpstreamError
	default:
		x.outcome = outcomeClientError
	}
	if k, ok := e.Kind(); ok && k.Class.BackendFault() {
		x.upstreamReason = k.Code
	}
}

// writeJSON answers with body, which may come from a backend: the
// upstream keys are taken out of it.
func (x *exchange) writeJSON(status int, body []byte) {
	body = x.h.upstreamKeys.redact(body)
	x.publish()
	hdr := x.w.Header()
	if status == http.StatusOK {
		x.setServerTiming(hdr)
	}
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", itoa(len(body)))
	x.w.WriteHeader(status)
	if x.r.Method != http.MethodHead {
		_, _ = x.w.Write(body)
	}
}

// addOwnTime adds d to the time spent in the gateway's own work.
func (x *exchange) addOwnTime(d time.Duration) { x.ownTime += d }

// keepReply keeps what a reply or stream carried, for logs, metrics and
// limits.
func (x *exchange) keepReply(rep openai.Reply) {
	x.usage, x.finishReason, x.completionBytes = rep.Usage, rep.FinishReason, rep.CompletionBytes
}

// requestedModel is the model the client asked for; in echo mode,
// where it may name none, the model the reply names.
func (x *exchange) requestedModel() string { return x.h.modelOrEcho(x.model) }

// meta is what the gateway stamps on this request's reply.
func (x *exchange) meta(defaultModel string) openai.Meta {
	model := x.req.Model
	if model == "" {
		model = defaultModel
	}
	return openai.Meta{ID: x.id, Model: model, Created: x.start.Unix(), PromptBytes: x.req.PromptBytes}
}

// setServerTiming sets the Server-Timing of a reply from a backend in
// hdr: the gateway's own time and the time inside the reverse proxy, in
// milliseconds. A reply from the cache or echo, which no proxy
// brought, has none.
func (x *exchange) setServerTiming(hdr http.Header) {
	if x.upstreamTime == 0 {
		return
	}
	var buf [64]byte
	timing := strconv.AppendFloat(append(buf[:0], "gateway;dur="...), x.overhead().Seconds()*1e3, 'f', 3, 64)
	timing = strconv.AppendFloat(append(timing, ", upstream;dur="...), x.upstreamTime.Seconds()*1e3, 'f', 3, 64)
	hdr["Server-Timing"] = []string{string(timing)}
}

// markFirstToken notes the time of the first content sent.
func (x *exchange) markFirstToken() {
	if x.ttft == 0 {
		x.ttft = time.Since(x.start)
	}
}

// overhead is the time the request spent in the gateway's own work:
// decoding and validating the request, its cache key and a memory
// store's lookup, building the upstream request, normalizing the reply
// or each chunk. Reading the request and writing the reply (network
// I/O) and the backend are not in it. An echo reply is all the
// gateway's work.
func (x *exchange) overhead() time.Duration {
	if x.upstreamTime == 0 && x.req != nil && x.h.echoMode() {
		return time.Since(x.start)
	}
	return x.ownTime
}

// finalPlaceholders are the {http.chat_gateway.*} values known only
// once the reply starts: they do not change after that.
type finalPlaceholders struct {
	outcome  string
	upstream string // "" if no backend answered
	usage    openai.Usage
	ttft     time.Duration
	costUSD  float64
}

// publish fixes the placeholders' final values from what is known so
// far; once a reply has been written they do not change.
func (x *exchange) publish() {
	if x.published {
		return
	}
	x.published = true
	x.setCost()
	x.final = finalPlaceholders{outcome: x.outcome, usage: x.usage, ttft: x.ttft, costUSD: x.costUSD}
	if x.req != nil {
		x.final.upstream, _ = x.repl.GetString("http.reverse_proxy.upstream.hostport")
	}
}

// placeholder provides {http.chat_gateway.*} to the request's Replacer,
// each value once it is known. A provider costs nothing until a
// placeholder is read, where Replacer.Set would cost a map entry (and
// an allocation) for each, on every request.
func (x *exchange) placeholder(key string) (any, bool) {
	name, ok := strings.CutPrefix(key, "http.chat_gateway.")
	if !ok {
		return nil, false
	}
	final, decoded := x.published, x.req != nil
	switch name {
	case "request_id":
		return x.id, true
	case "key_id":
		return x.keyID, x.keyID != ""
	case "model":
		return x.model, decoded
	case "outcome":
		return x.final.outcome, final
	case "upstream":
		return x.final.upstream, x.final.upstream != ""
	case "prompt_tokens":
		return x.final.usage.PromptTokens, final && decoded
	case "completion_tokens":
		return x.final.usage.CompletionTokens, final && decoded
	case "ttft":
		return x.final.ttft.Seconds(), final && decoded
	case "cost_usd":
		return x.final.costUSD, final && decoded && x.h.prices != nil
	}
	return nil, false
}

// finish records how the request ended, in the metrics, the access
// log, the placeholders and the module log.
func (x *exchange) finish() {
	x.publish() // the cost, which the limits charge
	if x.limitsIdentity != "" || x.reservation != nil {
		x.h.Limits.settle(x)
	}
	x.out.release()
	if x.ep != nil {
		x.record()
	}
	failed := x.outcome != outcomeOK && x.outcome != outcomeClientError
	extra := extraLogFields(x.r)
	if extra != nil && !accessLogged(x.r) {
		extra = nil
	}
	if extra == nil && !failed {
		return
	}
	summary := logSummary{outcome: x.outcome, keyID: x.keyID}
	if x.req != nil {
		summary.decoded = true
		summary.model, summary.stream, summary.finishReason = x.model, x.req.Stream, x.finishReason
		summary.usage, summary.ttft, summary.retries = x.usage, x.ttft, x.retries
		summary.upstream = x.final.upstream
		if x.cache != nil {
			summary.cache = x.cache.result
		}
		summary.prices, summary.priced, summary.costUSD = x.h.prices != nil, x.priced, x.costUSD
		if x.h.LogSizes {
			summary.sizes = true
			summary.promptBytes, summary.completionBytes = x.req.PromptBytes, x.completionBytes
		}
	}
	if extra != nil {
		extra.Add(zap.Inline(summary))
	}
	if !failed {
		return
	}
	lvl := zapcore.WarnLevel
	if x.outcome == outcomeClientCancelled || x.outcome == outcomeRejected {
		// Expected under load: counted in the metrics, not worth a
		// warning each (a flood of 429s would fill the log).
		lvl = zapcore.DebugLevel
	}
	if c := x.h.logger.Check(lvl, "request failed"); c != nil {
		fields := []zap.Field{zap.String("request_id", x.id), zap.Inline(summary),
			zap.Int("status", x.status), zap.String("code", x.code), zap.Duration("duration", time.Since(x.start))}
		if x.ended.proxyErr != nil {
			fields = append(fields, zap.Error(x.ended.proxyErr))
		}
		if x.ended.backendText != "" {
			fields = append(fields, zap.String("backend_error", x.ended.backendText))
		}
		c.Write(fields...)
	}
}

// logSummary is what the access log and the module log say of how a
// request ended, written as top-level fields by one inline field:
// each ExtraLogFields.Add costs a map reset.
type logSummary struct {
	outcome                       string
	keyID                         string
	decoded                       bool // the request body was decoded
	model, finishReason, upstream string
	cache                         string // the cache lookup's result, with a cache
	prices, priced                bool   // prices are configured; one prices the model
	costUSD                       float64
	stream                        bool
	usage                         openai.Usage
	ttft                          time.Duration
	retries                       int
	sizes                         bool // log_sizes
	promptBytes, completionBytes  int
}

func (s logSummary) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("outcome", s.outcome)
	if s.keyID != "" {
		enc.AddString("key_id", s.keyID)
	}
	if !s.decoded {
		return nil
	}
	enc.AddString("model", s.model)
	enc.AddBool("stream", s.stream)
	enc.AddInt64("prompt_tokens", s.usage.PromptTokens)
	enc.AddInt64("completion_tokens", s.usage.CompletionTokens)
	enc.AddString("finish_reason", s.finishReason)
	enc.AddDuration("ttft", s.ttft)
	if s.upstream != "" {
		enc.AddString("upstream", s.upstream)
	}
	if s.retries > 0 {
		enc.AddInt("retries", s.retries)
	}
	if s.cache != "" {
		enc.AddString("cache", s.cache)
	}
	if s.prices {
		enc.AddFloat64("cost_usd", s.costUSD)
		switch {
		case !s.priced:
			enc.AddBool("unpriced", true)
		case s.usage.Estimated:
			enc.AddBool("cost_estimated", true)
		}
	}
	if s.sizes {
		enc.AddInt("prompt_bytes", s.promptBytes)
		enc.AddInt("completion_bytes", s.completionBytes)
	}
	return nil
}

// accessLogged reports whether the server writes access logs, which the
// gateway's log fields are only worth building for.
func accessLogged(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return !ok || srv.Logs != nil
}

// extraLogFields returns the access log's extra fields of r, if any.
func extraLogFields(r *http.Request) *caddyhttp.ExtraLogFields {
	extra, _ := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	return extra
}

// unauthorized answers 401 invalid_api_key. The connection is closed
// after it, so the server does not read a body nobody wants first.
func (x *exchange) unauthorized(msg string) {
	hdr := x.w.Header()
	hdr.Set("WWW-Authenticate", "Bearer")
	if x.r.ProtoMajor == 1 {
		hdr.Set("Connection", "close")
	}
	x.fail(openai.InvalidAPIKey(msg))
}

// allowed reports whether the caller may use model: any model without
// a key, else what its allow-list says. An echo request naming no model
// asks for the echo model.
func (x *exchange) allowed(model string) bool {
	return x.key == nil || x.key.Allowed(x.h.modelOrEcho(model))
}
