package chatgateway

import (
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("chat_gateway", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("chat_gateway", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var gw Handler
	err := gw.UnmarshalCaddyfile(h.Dispenser)
	return &gw, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	chat_gateway [<backend_urls...>] {
//	    backend <urls...> {
//	        models <names...>
//	        alias <name> <model>
//	        api_key <key>
//	        base_path <path>
//	        retry_on <429|5xx|status|stream...>
//	        fallback <model>
//	        responses stateful
//	        messages native
//	        # and any reverse_proxy subdirective: lb_policy, lb_retries,
//	        # health_uri, fail_duration, transport http { ... }, ...
//	    }
//	    api_key <key>
//	    echo
//	    echo_delay <duration>
//	    max_request_body <size>
//	    max_concurrent <n>
//	    timeout <duration>
//	    first_token_timeout <duration>
//	    idle_timeout <duration>
//	    read_body_timeout <duration>
//	    keepalive_interval <duration>
//	    include_usage_upstream
//	    log_sizes
//	    auth {
//	        key <key> {
//	            id <name>
//	            models <patterns...>
//	            expires <RFC 3339 time>
//	            disabled
//	            requests <n>/<window>
//	            tokens <n>/<window>
//	            concurrent <n>
//	            quota <n>/<day|week|month>
//	        }
//	        keys_file <path>
//	    }
//	    metrics_per_key [<max>]
//	    limits {
//	        requests <n>/<window>
//	        tokens <n>/<window>
//	        concurrent <n>
//	        quota <n>/<day|week|month>
//	        per <placeholder>
//	        model <pattern> {
//	            requests <n>/<window>
//	            tokens <n>/<window>
//	            concurrent <n>
//	            quota <n>/<day|week|month>
//	        }
//	        default_max_tokens <n>
//	        store memory | redis <host:port> {
//	            username <user>
//	            password <password>
//	            db <n>
//	            tls
//	            key_prefix <prefix>
//	            timeout <duration>
//	        }
//	        on_store_error allow | deny
//	    }
//	}
//
// Backend URLs are base URLs as OpenAI SDKs take them, such as
// http://127.0.0.1:8080/v1; a URL with no path gets /v1. URLs on the
// directive line form one backend. The top-level api_key applies to
// every backend that has none of its own. A client key in auth is
// "sha256:<64 hex>" or the key itself; see Auth.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	dirTok := d.Token()
	var proxies []*parsedProxy // of h.Backends, in order
	singleURLForm := false
	if urls := d.RemainingArgs(); len(urls) > 0 {
		b, p, err := newBackend(d, dirTok, urls, nil, nil)
		if err != nil {
			return err
		}
		h.Backends, proxies = append(h.Backends, b), append(proxies, p)
		singleURLForm = true
	}
	var sharedKey string
	for d.NextBlock(0) {
		switch d.Val() {
		case "backend":
			b, p, err := parseBackend(d)
			if err != nil {
				return err
			}
			h.Backends, proxies = append(h.Backends, b), append(proxies, p)
		case "api_key":
			if !d.NextArg() {
				return d.ArgErr()
			}
			sharedKey = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "auth", "metrics_per_key":
			if err := h.unmarshalKeyOption(d); err != nil {
				return err
			}
		case "limits":
			l, err := parseLimits(d)
			if err != nil {
				return err
			}
			h.Limits = l
		case "echo":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Echo = true
		case "include_usage_upstream", "log_sizes":
			opt := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if opt == "log_sizes" {
				h.LogSizes = true
			} else {
				h.IncludeUsageUpstream = true
			}
		case "max_concurrent":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 0 {
				return d.Errf("invalid max_concurrent '%s': want a number, 0 for no cap", d.Val())
			}
			h.MaxConcurrent = n
			if d.NextArg() {
				return d.ArgErr()
			}
		case "max_request_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil || size == 0 || size > 1<<40 {
				return d.Errf("invalid max_request_body '%s': want a size such as 16MiB", d.Val())
			}
			h.MaxRequestBody = int64(size)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "timeout", "first_token_timeout", "idle_timeout", "read_body_timeout", "echo_delay", "keepalive_interval":
			name := d.Val()
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur < 0 {
				return d.Errf("invalid %s '%s': want a duration such as 90s or 5m", name, d.Val())
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			switch name {
			case "timeout":
				h.Timeout = caddy.Duration(dur)
			case "first_token_timeout":
				h.FirstTokenTimeout = caddy.Duration(dur)
			case "idle_timeout":
				h.IdleTimeout = caddy.Duration(dur)
			case "read_body_timeout":
				h.ReadBodyTimeout = caddy.Duration(dur)
			case "echo_delay":
				h.EchoDelay = caddy.Duration(dur)
			case "keepalive_interval":
				h.KeepaliveInterval = caddy.Duration(dur)
			}
		default:
			if singleURLForm && isProxySubdirective(d.Val()) {
				return d.Errf("unrecognized chat_gateway option '%s': it is a reverse_proxy subdirective; put it in a 'backend <urls...> { ... }' block instead of giving the URLs on the chat_gateway line", d.Val())
			}
			return d.Errf("unrecognized chat_gateway option '%s'", d.Val())
		}
	}
	bodyLimit := h.MaxRequestBody
	if bodyLimit == 0 {
		bodyLimit = defaultMaxRequestBody
	}
	room := bodyEditRoom(h.Backends)
	for i, b := range h.Backends {
		if b.APIKey == "" {
			b.APIKey = sharedKey
		}
		p := proxies[i]
		proxyDefaults(p.rp, p.retryCodes, bodyLimit+room)
		b.ProxyRaw = caddyconfig.JSONModuleObject(p.rp, "handler", "reverse_proxy", nil)
	}
	return nil
}

// parsedProxy is a backend's reverse_proxy as its Caddyfile lines give
// it, before the gateway's defaults, which depend on the whole block.
type parsedProxy struct {
	rp         *reverseproxy.Handler
	retryCodes []int // the statuses of retry_on
}

// isProxySubdirective reports whether name is a subdirective of
// reverse_proxy, by asking reverse_proxy's own Caddyfile parser.
func isProxySubdirective(name string) bool {
	tokens, err := caddyfile.Tokenize([]byte("reverse_proxy 127.0.0.1:1 {\n"+name+"\n}"), "")
	if err != nil || len(tokens) != 5 {
		return false
	}
	var rp reverseproxy.Handler
	err = rp.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
	return err == nil || !strings.Contains(err.Error(), "unrecognized subdirective")
}

// bodyEditRoom is how much the gateway's own edits can add to a request
// body on its way upstream: a model name from the config in place of the
// client's, and stream_options.include_usage.
func bodyEditRoom(backends []*Backend) int64 {
	longest := 0
	for _, b := range backends {
		longest = max(longest, len(b.Fallback))
		for _, target := range b.Aliases {
			longest = max(longest, len(target))
		}
	}
	return int64(2*longest) + 256 // a name JSON-escaped, plus the members' keys
}

// parseBackend reads a backend block. Its own options are taken out;
// every other line goes to reverse_proxy's Caddyfile parser.
func parseBackend(d *caddyfile.Dispenser) (*Backend, *parsedProxy, error) {
	seg := caddyfile.NewDispenser(d.NextSegment())
	seg.Next()
	head := seg.Token()
	urls := seg.RemainingArgs()
	b := &Backend{}
	var proxyLines []caddyfile.Token
	var retryCodes []int
	for seg.NextBlock(0) {
		switch seg.Val() {
		case "models":
			b.Models = append(b.Models, seg.RemainingArgs()...)
			if len(b.Models) == 0 {
				return nil, nil, seg.ArgErr()
			}
		case "alias":
			args := seg.RemainingArgs()
			if len(args) != 2 {
				return nil, nil, seg.Errf("alias takes a name and the model it stands for")
			}
			if b.Aliases == nil {
				b.Aliases = make(map[string]string)
			}
			b.Aliases[args[0]] = args[1]
		case "api_key", "base_path", "fallback":
			opt := seg.Val()
			args := seg.RemainingArgs()
			if len(args) != 1 {
				return nil, nil, seg.ArgErr()
			}
			switch opt {
			case "api_key":
				b.APIKey = args[0]
			case "base_path":
				b.BasePath = args[0]
			default:
				b.Fallback = args[0]
			}
		case "responses":
			if !seg.NextArg() || seg.Val() != "stateful" || seg.NextArg() {
				return nil, nil, seg.Errf("responses takes one argument, stateful: the backend keeps the Responses it created, for previous_response_id")
			}
			b.Responses = responsesStateful
		case "messages":
			if !seg.NextArg() || seg.Val() != messagesNative || seg.NextArg() {
				return nil, nil, seg.Errf("messages takes one argument, native: the backend serves the Anthropic Messages API (/v1/messages) itself")
			}
			b.Messages = messagesNative
		case "retry_on":
			args := seg.RemainingArgs()
			if len(args) == 0 {
				return nil, nil, seg.ArgErr()
			}
			for _, cond := range args {
				codes, ok := retryConditions[cond]
				if n, err := strconv.Atoi(cond); err == nil && (n == 429 || n >= 500 && n <= 599) {
					codes, ok = []int{n}, true
				}
				if !ok {
					return nil, nil, seg.Errf("invalid retry_on condition '%s': want 429, 5xx, a 5xx status or stream", cond)
				}
				if codes == nil {
					b.RetryStream = true
				}
				retryCodes = append(retryCodes, codes...)
			}
		case "handle_response", "replace_status", "copy_response", "copy_response_headers":
			return nil, nil, seg.Errf("'%s' is not supported in a chat_gateway backend: the gateway handles responses itself", seg.Val())
		default:
			proxyLines = append(proxyLines, seg.NextSegment()...)
		}
	}
	nb, p, err := newBackend(d, head, urls, proxyLines, retryCodes)
	if err != nil {
		return nil, nil, err
	}
	nb.Models, nb.Aliases, nb.APIKey, nb.Fallback, nb.RetryStream, nb.Responses = b.Models, b.Aliases, b.APIKey, b.Fallback, b.RetryStream, b.Responses
	nb.Messages = b.Messages
	if b.BasePath != "" {
		nb.BasePath = b.BasePath
	}
	return nb, p, nil
}

// retryConditions are the retry_on words; nil codes stand for "stream".
var retryConditions = map[string][]int{"429": {429}, "5xx": {500, 502, 503, 504}, "stream": nil}

// newBackend builds a backend from its base URLs and the reverse_proxy
// lines of its block, parsed by reverse_proxy's own Caddyfile code. The
// proxy gets the gateway's defaults, and the retries on retryCodes, once
// the whole chat_gateway block is read.
func newBackend(d *caddyfile.Dispenser, head caddyfile.Token, urls []string, proxyLines []caddyfile.Token, retryCodes []int) (*Backend, *parsedProxy, error) {
	tok := func(text string) caddyfile.Token {
		t := head
		t.Text = text
		return t
	}
	tokens := []caddyfile.Token{tok("reverse_proxy")}
	b := &Backend{}
	repl := caddy.NewReplacer()
	for i, raw := range urls {
		u, err := url.Parse(repl.ReplaceKnown(raw, ""))
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, nil, d.Errf("invalid backend URL '%s': want http(s)://host[:port][/base/path]", raw)
		}
		path := strings.TrimSuffix(u.Path, "/")
		for _, endpoint := range []string{"/chat/completions", "/models"} {
			if base, ok := strings.CutSuffix(path, endpoint); ok {
				return nil, nil, d.Errf("backend URL '%s' is an endpoint, not a base URL: give the base URL as OpenAI SDKs take it, such as '%s'", raw, u.Scheme+"://"+u.Host+base)
			}
		}
		if path == "" {
			path = "/v1"
		}
		if i > 0 && path != b.BasePath {
			return nil, nil, d.Errf("backend URLs of one backend must share one path: '%s' has %s, not %s", raw, path, b.BasePath)
		}
		b.BasePath = path
		tokens = append(tokens, tok(u.Scheme+"://"+u.Host))
	}
	if len(proxyLines) > 0 {
		tokens = append(tokens, tok("{"))
		tokens = append(tokens, proxyLines...)
		end := proxyLines[len(proxyLines)-1]
		end.Text = "}"
		end.Line++
		tokens = append(tokens, end)
	}
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		return nil, nil, err
	}
	if len(rp.Upstreams) == 0 && rp.DynamicUpstreamsRaw == nil {
		return nil, nil, d.Errf("backend needs at least one URL (or 'dynamic')")
	}
	return b, &parsedProxy{rp: rp, retryCodes: retryCodes}, nil
}

// proxyDefaults gives a backend's reverse_proxy what a gateway needs.
// With several upstreams, a failed connection is retried on another and
// the failed upstream is marked down for a while (unless lb_retries,
// lb_try_duration or fail_duration say otherwise). With retry_on
// statuses, those replies are retried too (a single upstream once), the
// body is buffered so it can be sent again, up to bufferLimit bytes, and,
// with several upstreams, the upstream that sent one is marked down.
func proxyDefaults(rp *reverseproxy.Handler, retryCodes []int, bufferLimit int64) {
	several := len(rp.Upstreams) > 1 || rp.DynamicUpstreamsRaw != nil
	if !several && len(retryCodes) == 0 {
		return
	}
	if rp.LoadBalancing == nil {
		rp.LoadBalancing = new(reverseproxy.LoadBalancing)
	}
	lb := rp.LoadBalancing
	if lb.Retries == 0 && lb.TryDuration == 0 {
		lb.Retries = max(1, len(rp.Upstreams)-1)
	}
	if several {
		if rp.HealthChecks == nil {
			rp.HealthChecks = new(reverseproxy.HealthChecks)
		}
		if rp.HealthChecks.Passive == nil {
			rp.HealthChecks.Passive = new(reverseproxy.PassiveHealthChecks)
		}
		passive := rp.HealthChecks.Passive
		if passive.FailDuration == 0 {
			passive.FailDuration = caddy.Duration(defaultFailDuration)
		}
		passive.UnhealthyStatus = append(passive.UnhealthyStatus, retryCodes...)
	}
	if len(retryCodes) > 0 {
		codes := make([]string, len(retryCodes))
		for i, c := range retryCodes {
			codes[i] = strconv.Itoa(c)
		}
		expr := "{http.reverse_proxy.status_code} in [" + strings.Join(codes, ", ") + "]"
		lb.RetryMatchRaw = append(lb.RetryMatchRaw, caddy.ModuleMap{"expression": caddyconfig.JSON(expr, nil)})
		if rp.RequestBuffers == 0 {
			// The gateway holds the body already, at most max_request_body
			// and its own edits: a bound, where -1 would be unlimited (and
			// Caddy warns of it). A body that fills the buffer is not sent
			// again, so the bound is one more than the largest body.
			rp.RequestBuffers = bufferLimit + 1
		}
	}
}

// unmarshalKeyOption reads the auth block or metrics_per_key [<max>].
func (h *Handler) unmarshalKeyOption(d *caddyfile.Dispenser) error {
	if d.Val() == "metrics_per_key" {
		h.MetricsPerKey = defaultMetricsPerKey
		if d.NextArg() {
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("invalid metrics_per_key '%s': want a positive number", d.Val())
			}
			h.MetricsPerKey = n
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if h.Auth == nil {
		h.Auth = new(Auth)
	}
	return parseAuth(d, h.Auth)
}

// parseAuth reads the block of an auth option into a.
func parseAuth(d *caddyfile.Dispenser, a *Auth) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "key":
			if !d.NextArg() {
				return d.ArgErr()
			}
			e := ClientKey{Entry: keys.Entry{Key: d.Val()}}
			if d.NextArg() {
				return d.ArgErr()
			}
			for inner := d.Nesting(); d.NextBlock(inner); {
				if handled, err := parseLimitLine(d, &e.LimitSet); handled {
					if err != nil {
						return err
					}
					continue
				}
				opt := d.Val()
				args := d.RemainingArgs()
				switch {
				case opt == "id" && len(args) == 1:
					e.ID = args[0]
				case opt == "models" && len(args) > 0:
					e.Models = append(e.Models, args...)
				case opt == "expires" && len(args) == 1:
					t, err := time.Parse(time.RFC3339, args[0])
					if err != nil {
						return d.Errf("invalid expires '%s': want an RFC 3339 time such as 2026-12-31T23:59:59Z", args[0])
					}
					e.Expires = t
				case opt == "disabled" && len(args) == 0:
					e.Disabled = true
				case opt == "id" || opt == "models" || opt == "expires" || opt == "disabled":
					return d.ArgErr()
				default:
					return d.Errf("unrecognized key option '%s'", opt)
				}
			}
			a.Keys = append(a.Keys, e)
		case "keys_file":
			if a.KeysFile != "" {
				return d.Err("only one keys_file may be given")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.KeysFile = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized auth option '%s'", d.Val())
		}
	}
	return nil
}

// parseLimits reads a limits block, whose syntax UnmarshalCaddyfile
// shows; the "limits" token is the current one.
func parseLimits(d *caddyfile.Dispenser) (*Limits, error) {
	l := new(Limits)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if ok, err := parseLimitLine(d, &l.LimitSet); ok || err != nil {
			if err != nil {
				return nil, err
			}
			continue
		}
		switch d.Val() {
		case "per":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			l.Per = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "default_max_tokens":
			n, err := oneCount(d)
			if err != nil {
				return nil, err
			}
			l.DefaultMaxTokens = n
		case "on_store_error":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			if v := d.Val(); v != "allow" && v != "deny" {
				return nil, d.Errf("invalid on_store_error '%s': want allow or deny", v)
			}
			l.OnStoreError = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "model":
			m := &ModelLimits{}
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			m.Pattern = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			for inner := d.Nesting(); d.NextBlock(inner); {
				ok, err := parseLimitLine(d, &m.LimitSet)
				if err != nil {
					return nil, err
				}
				if !ok {
					return nil, d.Errf("unrecognized model limit '%s': want requests, tokens, concurrent or quota", d.Val())
				}
			}
			if m.LimitSet == (LimitSet{}) {
				return nil, d.Errf("model %s: no limits given", m.Pattern)
			}
			l.Models = append(l.Models, m)
		case "store":
			store, err := parseLimitStore(d)
			if err != nil {
				return nil, err
			}
			l.Redis = store
		default:
			return nil, d.Errf("unrecognized limits option '%s'", d.Val())
		}
	}
	return l, nil
}

// parseLimitLine reads a requests, tokens, concurrent or quota line into
// set. It reports false, having consumed nothing, for any other line.
func parseLimitLine(d *caddyfile.Dispenser, set *LimitSet) (bool, error) {
	name := d.Val()
	switch name {
	case "requests", "tokens", "quota":
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		v := d.Val()
		var err error
		if name == "quota" {
			_, err = limits.ParseQuota(v)
			set.Quota = v
		} else {
			_, err = limits.ParseRate(v)
			if name == "requests" {
				set.Requests = v
			} else {
				set.Tokens = v
			}
		}
		if err != nil {
			return true, d.Errf("invalid %s '%s': %v", name, v, err)
		}
		if d.NextArg() {
			return true, d.ArgErr()
		}
	case "concurrent":
		n, err := oneCount(d)
		if err != nil {
			return true, err
		}
		set.Concurrent = n
	default:
		return false, nil
	}
	return true, nil
}

// oneCount reads the single positive integer argument of a line.
func oneCount(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := limits.ParseCount(d.Val())
	if err != nil {
		return 0, d.Errf("invalid %s '%s': want a positive integer", name, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return n, nil
}

// parseLimitStore reads "store memory" (nil) or "store redis <address>"
// and its block.
func parseLimitStore(d *caddyfile.Dispenser) (*RedisStore, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	switch d.Val() {
	case "memory":
		if d.NextArg() || d.NextBlock(d.Nesting()) {
			return nil, d.Errf("store memory takes no options")
		}
		return nil, nil
	case "redis":
	default:
		return nil, d.Errf("unrecognized store '%s': want memory or redis", d.Val())
	}
	if !d.NextArg() {
		return nil, d.Errf("store redis needs an address (host:port)")
	}
	s := &RedisStore{Address: d.Val()}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt == "tls" {
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			s.TLS = true
			continue
		}
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		v := d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		switch opt {
		case "username":
			s.Username = v
		case "password":
			s.Password = v
		case "key_prefix":
			if strings.ContainsAny(v, "{}") {
				return nil, d.Errf("invalid key_prefix '%s': it must not contain '{' or '}'", v)
			}
			s.KeyPrefix = v
		case "db":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, d.Errf("invalid db '%s': want a database number", v)
			}
			s.DB = n
		case "timeout":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return nil, d.Errf("invalid timeout '%s': want a duration such as 50ms", v)
			}
			s.Timeout = caddy.Duration(dur)
		default:
			return nil, d.Errf("unrecognized redis option '%s'", opt)
		}
	}
	return s, nil
}
