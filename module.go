// Package chatgateway is an OpenAI- and Anthropic-compatible inference
// gateway as a Caddy HTTP handler (http.handlers.chat_gateway): it
// serves chat completions, completions, embeddings, Responses and the
// Anthropic Messages API; reads each request one way, gives it a request
// id, checks its client key and limits, forwards it through Caddy's own
// reverse_proxy to the backend that serves its model (or answers in echo
// mode), translating Messages for backends that do not serve them, and
// normalizes replies and Server-Sent Event streams.
package chatgateway

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults for the handler's limits and timeouts.
const (
	defaultMaxRequestBody    = 16 << 20
	defaultTimeout           = 10 * time.Minute
	defaultFirstTokenTimeout = 5 * time.Minute
	defaultIdleTimeout       = 2 * time.Minute
	defaultReadBodyTimeout   = 30 * time.Second
	// defaultUpstreamIdle is how long an idle upstream connection is
	// kept: below the 5 s after which llama.cpp and uvicorn close theirs.
	defaultUpstreamIdle = 4 * time.Second
	// defaultRequestBuffers is a backend's request_buffers unless set:
	// the proxy then hands a body of up to this size to Go's transport
	// in memory, which writes it with the request's headers, where a
	// body it has to read gets a write of its own after them.
	defaultRequestBuffers = 4 << 10
	// defaultFailDuration is how long a failed upstream of a backend with
	// several stays down, unless fail_duration says otherwise.
	defaultFailDuration = 30 * time.Second
	// maxReplyBody bounds a non-streaming reply or error body the
	// gateway buffers to normalize.
	maxReplyBody = 32 << 20
	// maxStreamedReply bounds a reply normalized as it arrives, never
	// held whole (embeddings): 1,000 vectors of 4,096 floats are about
	// 45 MB.
	maxStreamedReply = 256 << 20
)

// Handler is the chat_gateway HTTP handler. It serves
//
//	POST /v1/chat/completions          chat completions, streamed or not
//	POST /v1/completions               legacy completions
//	POST /v1/embeddings                embeddings
//	POST /v1/responses                 the Responses API
//	POST /v1/messages                  the Anthropic Messages API
//	POST /v1/messages/count_tokens     its token count
//	GET  /v1/models, /v1/models/{id}   the models the caller may use
//	GET  /healthz  liveness: 200 {"status":"ok"}
//	GET  /readyz   readiness: 200 {"status":"ready"}, or 503 when a
//	               backend has no healthy upstream left
//
// and passes every other request to the next handler, so it can share a
// site with file_server or reverse_proxy, or live under handle_path.
//
// With no backend it answers in echo mode: the reply is "Echo: " and the
// text of the last user message (stand-in vectors for embeddings),
// streamed or not.
//
// Every response carries an X-Request-ID header: the client's
// X-Request-ID (or Request-Id) when it is 1 to 128 bytes of
// [A-Za-z0-9._:/+=@-], else a new UUID. It is also the reply's "id", the
// X-Request-ID sent upstream, and the placeholder
// {http.chat_gateway.request_id}.
//
// The placeholders it sets, for header, log_append or handle_errors:
//
//	{http.chat_gateway.request_id}         the request id
//	{http.chat_gateway.key_id}             the caller's key id (or {http.auth.user.id} without auth)
//	{http.chat_gateway.model}              the model the client asked for
//	{http.chat_gateway.upstream}           the upstream that answered (host:port)
//	{http.chat_gateway.prompt_tokens}      prompt tokens, reported or estimated
//	{http.chat_gateway.completion_tokens}  completion tokens, reported or estimated
//	{http.chat_gateway.ttft}               time to the first token, in seconds
//	{http.chat_gateway.outcome}            ok, client_error, upstream_error, timeout, client_cancelled, truncated or rejected
//
// With an auth block, every path but /healthz and /readyz needs a client key; the
// key's id is also set as {http.auth.user.id}, Caddy's access log
// user_id.
//
// request_id, key_id and model are set before the reply starts; the others once
// they are known: before the headers of a non-streamed reply, at the end
// of a stream.
type Handler struct {
	// Backends are the OpenAI-compatible servers to forward to. A request
	// goes to the first backend whose models include the requested model,
	// else to the backend that lists no models. With no backends, the
	// handler answers in echo mode.
	Backends []*Backend `json:"backends,omitempty"`

	// Echo forces echo mode even when backends are configured.
	Echo bool `json:"echo,omitempty"`

	// EchoDelay is the pause between the chunks of a streamed echo reply,
	// so echo mode can stand in for a model in load tests. Default: 0.
	EchoDelay caddy.Duration `json:"echo_delay,omitempty"`

	// MaxRequestBody is the largest request body accepted, in bytes;
	// larger ones get 413. Default: 16 MiB.
	MaxRequestBody int64 `json:"max_request_body,omitempty"`

	// Timeout bounds a non-streaming request from start to end.
	// Default: 10m.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// FirstTokenTimeout bounds the wait from sending the request upstream
	// to the backend's response headers and, for streams, to the first
	// event. Default: 5m, so a large local model can load.
	FirstTokenTimeout caddy.Duration `json:"first_token_timeout,omitempty"`

	// IdleTimeout bounds the wait between two events of a stream.
	// Default: 2m. A stream has no total deadline.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// ReadBodyTimeout bounds the time a client may take to send its
	// request body; a slower client gets 408. The body is read before
	// the request counts against max_concurrent, so a slow upload holds
	// a socket, not a slot. Default: 30s.
	ReadBodyTimeout caddy.Duration `json:"read_body_timeout,omitempty"`

	// KeepaliveInterval, when set, makes a streaming request send a
	// ": keep-alive" comment at this interval while the backend has not
	// sent its first event, so proxies in front do not cut a stream
	// waiting on a slow first token. The first comment commits the
	// response to status 200: a later failure is an error event. Default:
	// 0, off.
	KeepaliveInterval caddy.Duration `json:"keepalive_interval,omitempty"`

	// IncludeUsageUpstream asks backends for usage on streams
	// (stream_options.include_usage) even when the client did not, so the
	// gateway logs real token counts; the usage chunk is then kept from
	// clients that did not ask for it. Default: off, the client's request
	// is forwarded as sent.
	IncludeUsageUpstream bool `json:"include_usage_upstream,omitempty"`

	// MaxConcurrent caps the API requests this handler serves at once;
	// beyond it a request gets 429 at once, with Retry-After: 1, rather
	// than waiting in a queue. Default: 0, no cap.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	// LogSizes adds the sizes of the prompt and the completion, in bytes,
	// to the access log (prompt_bytes, completion_bytes). Their text is
	// never logged. Default: off.
	LogSizes bool `json:"log_sizes,omitempty"`

	// PassUnknownPaths passes a request for a path under /v1/ that no
	// route of the gateway's serves to the next handler. Default: off,
	// such a request gets OpenAI's 404 unknown_url, which an SDK reads
	// as an error (where Caddy, when nothing follows, answers an empty
	// 200 that SDKs take for success).
	PassUnknownPaths bool `json:"pass_unknown_paths,omitempty"`

	// Auth, when set, makes every request but /healthz and /readyz carry a client
	// key. Without it the gateway is open to anyone who can reach it,
	// and takes as identity what an earlier Caddy auth handler set in
	// {http.auth.user.id}.
	Auth *Auth `json:"auth,omitempty"`

	// MetricsPerKey adds the caller's identity (key id) as the label
	// "key" of requests_total and tokens_total, for at most this many
	// distinct identities in the process; the others are counted as
	// "other". Default: 0, no key label values.
	MetricsPerKey int `json:"metrics_per_key,omitempty"`

	// Limits, when set, are rate limits, concurrency limits and token
	// quotas per client identity and per model. Default: none.
	Limits *Limits `json:"limits,omitempty"`

	// Cache, when set, answers repeated requests from stored replies.
	// Default: none.
	Cache *Cache `json:"cache,omitempty"`

	// Prices are what models cost, for the cost of each request (the
	// access log's cost_usd, {http.chat_gateway.cost_usd}, the cost
	// metric) and the budgets of limits: the first whose pattern
	// matches the model the backend served applies.
	Prices []*ModelPrice `json:"prices,omitempty"`

	// PricesFile is a price list in the format of LiteLLM's
	// model_prices_and_context_window.json (input_cost_per_token,
	// output_cost_per_token, cache_read_input_token_cost), for models
	// by exact name that no price line matches. Read when the config
	// loads; placeholders such as {env.PRICES} are resolved.
	PricesFile string `json:"prices_file,omitempty"`

	// prices are Prices and PricesFile, read; nil without either.
	prices *prices

	// routes maps a model name (or alias) to where it is served.
	routes map[string]route
	// catchAll is the backend without models: it serves every model no
	// other backend lists; nil if there is none.
	catchAll *Backend
	// slots holds a token per API request served, if MaxConcurrent is set.
	slots chan struct{}
	// keys are the accepted client keys and their own limits; nil
	// without an auth block.
	keys *atomic.Pointer[keyring]
	// upstreamKeys are the backends' api_keys, taken out of everything
	// a backend sends before it reaches a client or a log.
	upstreamKeys upstreamKeys
	// owners records who made each Response a stateful backend keeps;
	// nil when no backend keeps them.
	owners limits.Owners
	// ownersPoolKey is owners' key in limitStores when the handler
	// opened it itself (no limits block).
	ownersPoolKey string
	logger        *zap.Logger
}

// route is where a requested model goes, and under which name.
type route struct {
	backend *Backend
	model   string // the name sent upstream; empty keeps the client's
}

// modelFor is the model the route asks its backend for when the client
// asks for requested.
func (rt route) modelFor(requested string) string {
	if rt.model != "" {
		return rt.model
	}
	return requested
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.chat_gateway",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and loads the backends' reverse proxies.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MaxRequestBody == 0 {
		h.MaxRequestBody = defaultMaxRequestBody
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.FirstTokenTimeout == 0 {
		h.FirstTokenTimeout = caddy.Duration(defaultFirstTokenTimeout)
	}
	if h.IdleTimeout == 0 {
		h.IdleTimeout = caddy.Duration(defaultIdleTimeout)
	}
	if h.ReadBodyTimeout == 0 {
		h.ReadBodyTimeout = caddy.Duration(defaultReadBodyTimeout)
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if h.MaxConcurrent > 0 {
		h.slots = make(chan struct{}, h.MaxConcurrent)
	}
	h.routes = make(map[string]route)
	repl := caddy.NewReplacer()
	if err := h.provisionPrices(repl); err != nil { // before the keys: a key's budget needs them
		return err
	}
	if err := h.provisionAuth(ctx, repl); err != nil {
		return err
	}
	if h.prices == nil && h.budgets() {
		return errBudgetNeedsPrices
	}
	if h.Limits != nil {
		if err := h.Limits.provision(ctx, repl); err != nil {
			return fmt.Errorf("limits: %w", err)
		}
	}
	for _, b := range h.Backends {
		b.label = b.name() // before its proxy is loaded: loading empties ProxyRaw
	}
	for _, b := range h.Backends {
		if err := b.provision(ctx, repl); err != nil {
			return fmt.Errorf("%s: %w", b.label, err)
		}
		if len(b.Models) == 0 {
			if h.catchAll != nil {
				return fmt.Errorf("%s: only one backend may leave out models, it serves the models no other lists, and %s does already", b.label, h.catchAll.label)
			}
			h.catchAll = b
		}
		for _, m := range b.Models {
			if earlier, dup := h.routes[m]; dup {
				return fmt.Errorf("%s: model %q is served by %s already", b.label, m, earlier.backend.label)
			}
			h.routes[m] = route{backend: b}
		}
		for alias, target := range b.Aliases {
			if earlier, dup := h.routes[alias]; dup {
				return fmt.Errorf("%s: alias %q names a model served by %s already", b.label, alias, earlier.backend.label)
			}
			h.routes[alias] = route{backend: b, model: target}
		}
	}
	for _, b := range h.Backends {
		if b.Fallback == "" {
			continue
		}
		rt, ok := h.route(b.Fallback)
		if !ok {
			return fmt.Errorf("%s: no backend serves fallback model %q", b.label, b.Fallback)
		}
		if rt.backend == b {
			return fmt.Errorf("%s: fallback model %q is served by the same backend", b.label, b.Fallback)
		}
		if rt.model == "" {
			rt.model = b.Fallback
		}
		b.fallback = &rt
	}
	h.upstreamKeys = newUpstreamKeys(h.Backends)
	if err := h.provisionOwners(); err != nil {
		return err
	}
	if h.Cache != nil {
		if err := h.Cache.provision(ctx, repl); err != nil {
			return err
		}
	}
	for _, b := range h.Backends {
		if b.probed() {
			b.reachable() // the first probe, known by the first /readyz
		}
	}
	if h.Limits != nil { // once nothing can fail: Cleanup removes it
		usageSources.Store(h, struct{}{})
	}
	h.announce()
	return nil
}

// announce logs, once the handler is set up, what it serves: in echo
// mode (say, BACKEND_URL misspelt) or which backends with which models;
// whether it takes keys, and its limits; and warns when it is open to
// anyone who reaches it.
func (h *Handler) announce() {
	fields := []zap.Field{zap.Bool("echo", h.echoMode())}
	if !h.echoMode() {
		backends := make([]string, len(h.Backends))
		for i, b := range h.Backends {
			models := strings.Join(b.Models, " ")
			if len(b.Models) == 0 {
				models = "every model no other backend lists"
			}
			backends[i] = b.label + ": " + models
			if b.prompts {
				backends[i] += " (lb_policy prefix_affinity)"
			}
		}
		fields = append(fields, zap.Strings("backends", backends))
	}
	if h.keys != nil {
		fields = append(fields, zap.Int("keys", h.keys.Load().set.Len()))
	}
	if h.Limits != nil {
		store := "memory"
		if h.Limits.Redis != nil {
			store = "redis " + h.Limits.Redis.Address
		}
		fields = append(fields, zap.String("limits", store))
	}
	if h.Cache != nil {
		store := "memory " + humanize.IBytes(uint64(h.Cache.MaxSize))
		if h.Cache.Redis != nil {
			store = "redis " + h.Cache.Redis.Address
		}
		fields = append(fields, zap.String("cache", store))
	}
	msg := "serving"
	if h.echoMode() && !h.Echo {
		msg = "serving in echo mode: no backend is configured (an unset BACKEND_URL?), so replies repeat the prompt"
	}
	h.logger.Info(msg, fields...)
	if h.Auth == nil {
		h.logger.Warn("no auth block: anyone who can reach this gateway can use it, and the upstream keys it holds, unless a handler before it checks who calls")
	}
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxRequestBody < 0 {
		return fmt.Errorf("max_request_body must not be negative")
	}
	if h.MaxConcurrent < 0 {
		return fmt.Errorf("max_concurrent must not be negative")
	}
	if h.MetricsPerKey < 0 {
		return fmt.Errorf("metrics_per_key must not be negative")
	}
	for _, b := range h.Backends {
		if b.Responses != "" && !b.keepsResponses() {
			return fmt.Errorf("%s: responses must be %q or empty, not %q", b.label, responsesStateful, b.Responses)
		}
		if b.Messages != "" && !b.servesMessages() {
			return fmt.Errorf("%s: messages must be %q or empty, not %q", b.label, messagesNative, b.Messages)
		}
	}
	for name, d := range map[string]caddy.Duration{"timeout": h.Timeout, "first_token_timeout": h.FirstTokenTimeout, "idle_timeout": h.IdleTimeout, "read_body_timeout": h.ReadBodyTimeout, "echo_delay": h.EchoDelay, "keepalive_interval": h.KeepaliveInterval} {
		if d < 0 {
			return fmt.Errorf("%s must not be negative", name)
		}
	}
	return nil
}

// Cleanup releases the limits' store, that of Response owners and the
// cache's, once no config uses them.
func (h *Handler) Cleanup() error {
	if h.ownersPoolKey != "" {
		if _, err := limitStores.Delete(h.ownersPoolKey); err != nil {
			return err
		}
	}
	if h.Cache != nil {
		if err := h.Cache.cleanup(); err != nil {
			return err
		}
	}
	if h.Limits != nil {
		usageSources.Delete(h)
		return h.Limits.cleanup()
	}
	return nil
}

// echoMode reports whether requests are answered locally.
func (h *Handler) echoMode() bool { return h.Echo || len(h.Backends) == 0 }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
