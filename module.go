// Package chatgateway is an OpenAI-compatible inference gateway as a
// Caddy HTTP handler: it validates chat-completion requests, gives each
// one a request id, forwards it through Caddy's own reverse proxy to an
// OpenAI-compatible backend (or answers in echo mode), and normalizes
// replies and Server-Sent Event streams.
package chatgateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
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
	// defaultFailDuration is how long a failed upstream of a backend with
	// several stays down, unless fail_duration says otherwise.
	defaultFailDuration = 30 * time.Second
	// maxReplyBody bounds a non-streaming reply or error body the
	// gateway buffers to normalize.
	maxReplyBody = 32 << 20
)

// Handler is the chat_gateway HTTP handler. It serves
//
//	POST /v1/chat/completions
//	GET  /v1/models
//	GET  /healthz
//
// and passes every other request to the next handler, so it can share a
// site with file_server or reverse_proxy, or live under handle_path.
//
// With no backend it answers in echo mode: the reply is "Echo: " and the
// text of the last user message, streamed or not.
//
// Every response carries an X-Request-ID header: the client's
// X-Request-ID (or Request-Id) when it is a printable token of at most
// 128 bytes, else a new UUID. It is also the reply's "id", the
// X-Request-ID sent upstream, and the placeholder
// {http.chat_gateway.request_id}.
//
// The placeholders it sets, for header, log_append or handle_errors:
//
//	{http.chat_gateway.request_id}         the request id
//	{http.chat_gateway.model}              the model the client asked for
//	{http.chat_gateway.upstream}           the upstream that answered (host:port)
//	{http.chat_gateway.prompt_tokens}      prompt tokens, reported or estimated
//	{http.chat_gateway.completion_tokens}  completion tokens, reported or estimated
//	{http.chat_gateway.ttft}               time to the first token, in seconds
//	{http.chat_gateway.outcome}            ok, client_error, upstream_error, timeout, client_cancelled, truncated or rejected
//
// request_id and model are set before the reply starts; the others once
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

	// MaxConcurrent caps the chat requests this handler serves at once;
	// beyond it a request gets 429 at once, with Retry-After: 1, rather
	// than waiting in a queue. Default: 0, no cap.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	// LogSizes adds the sizes of the prompt and the completion, in bytes,
	// to the access log (prompt_bytes, completion_bytes). Their text is
	// never logged. Default: off.
	LogSizes bool `json:"log_sizes,omitempty"`

	// Limits, when set, are rate limits, concurrency limits and token
	// quotas per client identity and per model. Default: none.
	Limits *Limits `json:"limits,omitempty"`

	// routes maps a model name (or alias) to where it is served.
	routes map[string]route
	// fallback serves models no backend lists; nil if there is none.
	fallback *Backend
	// slots holds a token per chat request served, if MaxConcurrent is set.
	slots  chan struct{}
	logger *zap.Logger
}

// route is where a requested model goes, and under which name.
type route struct {
	backend *Backend
	model   string // the name sent upstream; empty keeps the client's
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
	for i, b := range h.Backends {
		if err := b.provision(ctx, repl); err != nil {
			return fmt.Errorf("backend %d: %w", i, err)
		}
		if len(b.Models) == 0 {
			if h.fallback != nil {
				return fmt.Errorf("backend %d: only one backend may leave out models, it serves the models no other lists", i)
			}
			h.fallback = b
		}
		for _, m := range b.Models {
			if _, dup := h.routes[m]; dup {
				return fmt.Errorf("backend %d: model %q is served by an earlier backend", i, m)
			}
			h.routes[m] = route{backend: b}
		}
		for alias, target := range b.Aliases {
			if _, dup := h.routes[alias]; dup {
				return fmt.Errorf("backend %d: alias %q names a model served by an earlier backend", i, alias)
			}
			h.routes[alias] = route{backend: b, model: target}
		}
	}
	if h.Limits != nil {
		if err := h.Limits.provision(ctx, repl); err != nil {
			return fmt.Errorf("limits: %w", err)
		}
	}
	for i, b := range h.Backends {
		if b.Fallback == "" {
			continue
		}
		rt, ok := h.route(b.Fallback)
		if !ok {
			return fmt.Errorf("backend %d: no backend serves fallback model %q", i, b.Fallback)
		}
		if rt.backend == b {
			return fmt.Errorf("backend %d: fallback model %q is served by the same backend", i, b.Fallback)
		}
		if rt.model == "" {
			rt.model = b.Fallback
		}
		b.fallback = &rt
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxRequestBody < 0 {
		return fmt.Errorf("max_request_body must not be negative")
	}
	if h.MaxConcurrent < 0 {
		return fmt.Errorf("max_concurrent must not be negative")
	}
	for name, d := range map[string]caddy.Duration{"timeout": h.Timeout, "first_token_timeout": h.FirstTokenTimeout, "idle_timeout": h.IdleTimeout, "read_body_timeout": h.ReadBodyTimeout, "echo_delay": h.EchoDelay, "keepalive_interval": h.KeepaliveInterval} {
		if d < 0 {
			return fmt.Errorf("%s must not be negative", name)
		}
	}
	return nil
}

// Cleanup releases the limits' store once no config uses it.
func (h *Handler) Cleanup() error {
	if h.Limits != nil {
		return h.Limits.cleanup()
	}
	return nil
}

// echoMode reports whether requests are answered locally.
func (h *Handler) echoMode() bool { return h.Echo || len(h.Backends) == 0 }

// Backend is one group of replicas of an OpenAI-compatible server.
type Backend struct {
	// ProxyRaw is the reverse_proxy handler that carries requests to the
	// backend's upstreams: upstreams, load balancing, health checks,
	// retries and transport are all configured as for reverse_proxy.
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// BasePath is the path of the OpenAI API on the backend, to which
	// "/chat/completions" and "/models" are appended; "/" for none.
	// Default: "/v1".
	BasePath string `json:"base_path,omitempty"`

	// APIKey is sent upstream as "Authorization: Bearer <key>" in place
	// of the client's credentials. Placeholders such as
	// {env.OPENAI_API_KEY} are resolved when the config loads. It is
	// never logged.
	APIKey string `json:"api_key,omitempty"`

	// Models are the model names this backend serves. A backend without
	// models serves every model no other backend lists.
	Models []string `json:"models,omitempty"`

	// Aliases map a model name clients may ask for to the name sent to
	// this backend.
	Aliases map[string]string `json:"aliases,omitempty"`

	// RetryStream retries a stream that fails before its first content
	// event (cut, error event, first_token_timeout) on this backend, up
	// to the proxy's lb_retries times (default: once per other upstream,
	// at least once). Nothing has reached the client at that point.
	RetryStream bool `json:"retry_stream,omitempty"`

	// Fallback is a model to ask for instead when this backend fails
	// before anything reached the client: its connection, a 429 or 5xx,
	// a timeout to the first token, a stream cut before content. The
	// request is routed and renamed as if the client had asked for it.
	Fallback string `json:"fallback,omitempty"`

	proxy         caddyhttp.MiddlewareHandler
	cooldowns     *cooldowns // nil unless the proxy marks upstreams down on statuses
	apiKey        string
	authorization string // "Bearer " + apiKey
	fallback      *route
	models        modelsCache
}

// streamRetries is how many times a stream failing before content is
// retried on this backend.
func (b *Backend) streamRetries() int {
	if rp, ok := b.proxy.(*reverseproxy.Handler); ok && rp.LoadBalancing != nil && rp.LoadBalancing.Retries > 0 {
		return rp.LoadBalancing.Retries
	}
	if rp, ok := b.proxy.(*reverseproxy.Handler); ok && len(rp.Upstreams) > 1 {
		return len(rp.Upstreams) - 1
	}
	return 1
}

func (b *Backend) provision(ctx caddy.Context, repl *caddy.Replacer) error {
	if b.ProxyRaw == nil {
		return fmt.Errorf("no proxy configured")
	}
	idleSet := setsUpstreamIdle(b.ProxyRaw) // LoadModule drops the raw JSON
	mod, err := ctx.LoadModule(b, "ProxyRaw")
	if err != nil {
		return fmt.Errorf("loading reverse proxy: %w", err)
	}
	proxy, ok := mod.(caddyhttp.MiddlewareHandler)
	if !ok {
		return fmt.Errorf("proxy module %T is not an HTTP handler", mod)
	}
	b.proxy = proxy
	if rp, ok := proxy.(*reverseproxy.Handler); ok {
		b.cooldowns = newCooldowns(rp)
		if !idleSet {
			shortenIdleConns(rp)
		}
	}
	switch b.BasePath {
	case "":
		b.BasePath = "/v1"
	case "/":
		b.BasePath = ""
	default:
		b.BasePath = "/" + strings.Trim(b.BasePath, "/")
	}
	b.apiKey = repl.ReplaceKnown(b.APIKey, "")
	b.authorization = "Bearer " + b.apiKey
	return nil
}

// setsUpstreamIdle reports whether a reverse_proxy config sets how long
// idle upstream connections are kept (keep_alive's idle_timeout).
func setsUpstreamIdle(proxyJSON json.RawMessage) bool {
	var cfg struct {
		Transport struct {
			KeepAlive struct {
				IdleTimeout json.RawMessage `json:"idle_timeout"`
			} `json:"keep_alive"`
		} `json:"transport"`
	}
	_ = json.Unmarshal(proxyJSON, &cfg)
	return cfg.Transport.KeepAlive.IdleTimeout != nil
}

// shortenIdleConns closes the proxy's idle upstream connections after
// defaultUpstreamIdle: Caddy's default (2m) outlives the backends' own
// (5 s for llama.cpp and uvicorn), so a request would often go out on a
// connection the backend is closing.
func shortenIdleConns(rp *reverseproxy.Handler) {
	ht, ok := rp.Transport.(*reverseproxy.HTTPTransport)
	if !ok || ht.Transport == nil {
		return
	}
	ht.Transport.IdleConnTimeout = defaultUpstreamIdle
	if ht.KeepAlive != nil {
		ht.KeepAlive.IdleConnTimeout = caddy.Duration(defaultUpstreamIdle)
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
