package chatgateway

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

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

	label         string // the backend in errors and logs, by its URLs (name)
	probe         probe  // whether its upstreams can be reached, for /readyz
	proxy         caddyhttp.MiddlewareHandler
	cooldowns     *cooldowns // nil unless the proxy marks upstreams down on statuses
	prompts       bool       // its proxy's lb_policy is prefix_affinity: attempts carry their prompt
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
		if rp.RequestBuffers == 0 {
			rp.RequestBuffers = defaultRequestBuffers
		}
		wrapProxyLog(rp)
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
	if rp, ok := proxy.(*reverseproxy.Handler); ok {
		if p := prefixAffinity(rp); p != nil {
			b.prompts = true
			if b.apiKey != "" {
				p.authorization = b.authorization
			}
		}
	}
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
	if lineage := unexported[[]caddy.Module](reflect.ValueOf(&ctx).Elem(), "ancestry"); lineage != nil {
		*lineage = slices.Clip(*lineage)
	}
	return ctx
}

// unexported returns a pointer to the unexported field name of the
// addressable struct v, or nil if v has no such field of type T (another
// Caddy release): what the gateway adjusts in Caddy's own types.
func unexported[T any](v reflect.Value, name string) *T {
	f := v.FieldByName(name)
	if !f.IsValid() || f.Type() != reflect.TypeFor[T]() {
		return nil
	}
	return (*T)(unsafe.Pointer(f.UnsafeAddr()))
}

// wrapProxyLog makes the fields that rp's logger is given With encoded
// when an entry is written, not when they are given, and its request's
// credential headers redacted: for each round trip, reverse_proxy adds
// the whole request to its logger for its debug lines, and encoding it
// cost about 9 µs a request, 4% of a small request's CPU, with nothing
// logged; and it would log the X-Api-Key the gateway sends a backend
// that serves Messages. The logger is unexported, hence the reflection;
// Caddy's version is pinned, and TestUpstreamKeyRedactedEverywhere fails
// if another one moves it.
func wrapProxyLog(rp *reverseproxy.Handler) {
	if logger := unexported[*zap.Logger](reflect.ValueOf(rp).Elem(), "logger"); logger != nil && *logger != nil {
		*logger = (*logger).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return lazyCore{c} }))
	}
}

// lazyCore is a zapcore.Core whose With defers encoding its fields
// until an entry is written at a level the core logs, with the
// request's credentials redacted (redactLogFields).
type lazyCore struct{ zapcore.Core }

func (c lazyCore) With(fields []zapcore.Field) zapcore.Core {
	return lazyCore{zapcore.NewLazyWith(c.Core, redactLogFields(fields))}
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
