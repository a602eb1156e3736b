// Package chatgateway is an OpenAI-compatible inference gateway as a
// Caddy HTTP handler: it validates chat-completion requests, gives each
// one a request id, forwards it through Caddy's own reverse proxy to an
// OpenAI-compatible backend (or answers in echo mode), and normalizes
// replies and Server-Sent Event streams.
package chatgateway

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
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
	// defaultFailDuration is how long a failed upstream of a backend with
	// several stays down, unless fail_duration says otherwise.
	defaultFailDuration = 30 * time.Second
	// maxReplyBody bounds a non-streaming reply or error body the
	// gateway buffers to normalize.
	maxReplyBody = 32 << 20
	// maxEmbeddingsReply bounds an embeddings reply, which the gateway
	// edits in place: 1,000 vectors of 4,096 floats are about 45 MB.
	maxEmbeddingsReply = 256 << 20
)

// Handler is the chat_gateway HTTP handler. It serves
//
//	POST /v1/chat/completions
//	GET  /v1/models
//	GET  /healthz  liveness: 200 {"status":"ok"}
//	GET  /readyz   readiness: 200 {"status":"ready"}, or 503 when a
//	               backend has no healthy upstream left
//
// and passes every other request to the next handler, so it can share a
// site with file_server or reverse_proxy, or live under handle_path.
//
// With no backend it answers in echo mode: the reply is "Echo: " and the
// text of the last user message, streamed or not.
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
// With an auth block, every path but /healthz needs a client key; the
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

	// MaxConcurrent caps the chat requests this handler serves at once;
	// beyond it a request gets 429 at once, with Retry-After: 1, rather
	// than waiting in a queue. Default: 0, no cap.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	// LogSizes adds the sizes of the prompt and the completion, in bytes,
	// to the access log (prompt_bytes, completion_bytes). Their text is
	// never logged. Default: off.
	LogSizes bool `json:"log_sizes,omitempty"`

	// Auth, when set, makes every request but /healthz carry a client
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

	// routes maps a model name (or alias) to where it is served.
	routes map[string]route
	// catchAll is the backend without models: it serves every model no
	// other backend lists; nil if there is none.
	catchAll *Backend
	// slots holds a token per chat request served, if MaxConcurrent is set.
	slots chan struct{}
	// keys are the accepted client keys; nil without an auth block.
	keys *keys.Set
	// keyLimits are each key's own limits, by keys.Key.Index.
	keyLimits []limits.Set
	logger    *zap.Logger
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
	if err := h.provisionAuth(repl); err != nil {
		return err
	}
	if h.Limits != nil {
		if err := h.Limits.provision(ctx, repl); err != nil {
			return fmt.Errorf("limits: %w", err)
		}
	}
	names := make(map[*Backend]string, len(h.Backends))
	for _, b := range h.Backends {
		names[b] = b.name()
	}
	for _, b := range h.Backends {
		if err := b.provision(ctx, repl); err != nil {
			return fmt.Errorf("%s: %w", names[b], err)
		}
		if len(b.Models) == 0 {
			if h.catchAll != nil {
				return fmt.Errorf("%s: only one backend may leave out models, it serves the models no other lists, and %s does already", names[b], names[h.catchAll])
			}
			h.catchAll = b
		}
		for _, m := range b.Models {
			if earlier, dup := h.routes[m]; dup {
				return fmt.Errorf("%s: model %q is served by %s already", names[b], m, names[earlier.backend])
			}
			h.routes[m] = route{backend: b}
		}
		for alias, target := range b.Aliases {
			if earlier, dup := h.routes[alias]; dup {
				return fmt.Errorf("%s: alias %q names a model served by %s already", names[b], alias, names[earlier.backend])
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
			return fmt.Errorf("%s: no backend serves fallback model %q", names[b], b.Fallback)
		}
		if rt.backend == b {
			return fmt.Errorf("%s: fallback model %q is served by the same backend", names[b], b.Fallback)
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
	if h.MetricsPerKey < 0 {
		return fmt.Errorf("metrics_per_key must not be negative")
	}
	for _, b := range h.Backends {
		if b.Responses != "" && !b.keepsResponses() {
			return fmt.Errorf("%s: responses must be %q or empty, not %q", b.name(), responsesStateful, b.Responses)
		}
		if b.Messages != "" && !b.servesMessages() {
			return fmt.Errorf("%s: messages must be %q or empty, not %q", b.name(), messagesNative, b.Messages)
		}
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

	// Responses is "stateful" when the backend keeps the Responses it
	// creates, so a /v1/responses request naming previous_response_id
	// may go to it; such a request routed to another backend gets 400.
	// Default: empty, the backend keeps no state the gateway relies on.
	Responses string `json:"responses,omitempty"`

	// Messages is "native" when the backend serves the Anthropic
	// Messages API itself (<base>/messages and /messages/count_tokens):
	// Messages requests then go to it as the client sent them, the model
	// alias aside. Default: empty, the gateway translates Messages to
	// and from chat completions for it.
	Messages string `json:"messages,omitempty"`

	proxy         caddyhttp.MiddlewareHandler
	cooldowns     *cooldowns // nil unless the proxy marks upstreams down on statuses
	apiKey        string
	authorization string // "Bearer " + apiKey
	fallback      *route
	models        modelsCache
}

// responsesStateful is the value of Backend.Responses for a backend that
// keeps the Responses it creates.
const responsesStateful = "stateful"

// keepsResponses reports whether the backend keeps the Responses it
// creates (responses stateful).
func (b *Backend) keepsResponses() bool { return b.Responses == responsesStateful }

// messagesNative is the value of Backend.Messages for a backend that
// serves the Messages API itself.
const messagesNative = "native"

// servesMessages reports whether the backend serves the Messages API
// itself (messages native).
func (b *Backend) servesMessages() bool { return b.Messages == messagesNative }

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

// name names the backend in config errors by its URLs, as the Caddyfile
// gives them: "backend http://127.0.0.1:8081/v1 http://127.0.0.1:8082/v1".
func (b *Backend) name() string {
	var rp struct {
		Upstreams []struct {
			Dial string `json:"dial"`
		} `json:"upstreams"`
		Transport struct {
			TLS json.RawMessage `json:"tls"`
		} `json:"transport"`
		Dynamic json.RawMessage `json:"dynamic_upstreams"`
	}
	_ = json.Unmarshal(b.ProxyRaw, &rp) // a bad proxy is reported by provision
	scheme := "http://"
	if rp.Transport.TLS != nil {
		scheme = "https://"
	}
	base := "/v1"
	if b.BasePath != "" {
		base = "/" + strings.Trim(b.BasePath, "/")
	}
	var urls []string
	for _, u := range rp.Upstreams {
		urls = append(urls, scheme+u.Dial+strings.TrimSuffix(base, "/"))
	}
	if rp.Dynamic != nil {
		urls = append(urls, "(dynamic upstreams)")
	}
	if len(urls) == 0 {
		return "backend without upstreams"
	}
	return "backend " + strings.Join(urls, " ")
}

func (b *Backend) provision(ctx caddy.Context, repl *caddy.Replacer) error {
	if b.ProxyRaw == nil {
		return fmt.Errorf("no proxy configured")
	}
	b.ProxyRaw = withUpstreamIdle(b.ProxyRaw)
	mod, err := clipLineage(ctx).LoadModule(b, "ProxyRaw")
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

// clipLineage returns ctx with no spare capacity behind its module
// lineage, so that loading a module appends to a new array. Without it,
// each backend's reverse_proxy is provisioned with a lineage sharing one
// slot: the active health checker of one (a goroutine started in its
// Provision, which reads its lineage when it emits an event) races with
// the loading of the next, and sees the next proxy as its module. Caddy
// gives no way to copy a Context's lineage, hence the reflection.
func clipLineage(ctx caddy.Context) caddy.Context {
	f := reflect.ValueOf(&ctx).Elem().FieldByName("ancestry")
	if f.IsValid() && f.Type() == reflect.TypeFor[[]caddy.Module]() {
		lineage := (*[]caddy.Module)(unsafe.Pointer(f.UnsafeAddr()))
		*lineage = slices.Clip(*lineage)
	}
	return ctx
}

// withUpstreamIdle returns a reverse_proxy config whose HTTP transport
// closes idle upstream connections after defaultUpstreamIdle, unless the
// config sets keep_alive's idle_timeout: Caddy's default (2m) outlives the
// backends' own (5 s for llama.cpp and uvicorn), so a request would often
// go out on a connection the backend is closing. It is set in the config,
// not on the provisioned transport, which health checks already use.
func withUpstreamIdle(proxyJSON json.RawMessage) json.RawMessage {
	var proxy map[string]json.RawMessage
	if json.Unmarshal(proxyJSON, &proxy) != nil {
		return proxyJSON
	}
	transport := map[string]json.RawMessage{"protocol": json.RawMessage(`"http"`)}
	keepAlive := map[string]json.RawMessage{}
	if raw, ok := proxy["transport"]; ok && (json.Unmarshal(raw, &transport) != nil || string(transport["protocol"]) != `"http"`) {
		return proxyJSON
	}
	if raw, ok := transport["keep_alive"]; ok && json.Unmarshal(raw, &keepAlive) != nil {
		return proxyJSON
	}
	if _, ok := keepAlive["idle_timeout"]; ok {
		return proxyJSON
	}
	keepAlive["idle_timeout"], _ = json.Marshal(caddy.Duration(defaultUpstreamIdle))
	transport["keep_alive"], _ = json.Marshal(keepAlive)
	proxy["transport"], _ = json.Marshal(transport)
	out, err := json.Marshal(proxy)
	if err != nil {
		return proxyJSON
	}
	return out
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
