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

	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/routing"
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
//	    pass_unknown_paths
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
//	            budget <USD>/<day|week|month>
//	        }
//	        keys_file <path>
//	    }
//	    metrics_per_key [<max>]
//	    price <model pattern> input <usd> output <usd> [cached <usd>] [cache_write <usd>]
//	    prices_file <path>
//	    limits {
//	        requests <n>/<window>
//	        tokens <n>/<window>
//	        concurrent <n>
//	        quota <n>/<day|week|month>
//	        budget <USD>/<day|week|month>
//	        per <placeholder>
//	        model <pattern> {
//	            requests <n>/<window>
//	            tokens <n>/<window>
//	            concurrent <n>
//	            quota <n>/<day|week|month>
//	            budget <USD>/<day|week|month>
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
	p := gatewayBlock{h: h}
	if urls := d.RemainingArgs(); len(urls) > 0 {
		b := new(Backend)
		proxy, err := newBackend(d, d.Token(), urls, b, nil, nil)
		if err != nil {
			return err
		}
		h.Backends, p.proxies, p.urlsOnLine = append(h.Backends, b), append(p.proxies, proxy), true
	}
	if err := readBlock(d, "chat_gateway option", gatewayOptions, &p, (*gatewayBlock).other); err != nil {
		return err
	}
	bodyLimit := h.MaxRequestBody
	if bodyLimit == 0 {
		bodyLimit = defaultMaxRequestBody
	}
	room := bodyEditRoom(h.Backends)
	for i, b := range h.Backends {
		if b.APIKey == "" {
			b.APIKey = p.sharedKey
		}
		proxy := p.proxies[i]
		proxyDefaults(proxy.rp, proxy.retryCodes, bodyLimit+room)
		b.ProxyRaw = caddyconfig.JSONModuleObject(proxy.rp, "handler", "reverse_proxy", nil)
	}
	return nil
}

// subdirective reads one line of a Caddyfile block into t, the dispenser on
// the line's first token; repeat lets the line be given more than once
// in a block.
type subdirective[T any] struct {
	repeat bool
	read   func(t *T, d *caddyfile.Dispenser) error
}

// readBlock reads the lines of the block that follows into t, each by
// the option its first token names, once unless it may repeat. A line
// no option names goes to other when it is not nil, else is an error
// naming the nearest option.
func readBlock[T any](d *caddyfile.Dispenser, what string, options map[string]subdirective[T], t *T, other func(*T, *caddyfile.Dispenser) error) error {
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		opt, ok := options[name]
		switch {
		case !ok && other != nil:
			if err := other(t, d); err != nil {
				return err
			}
			continue
		case !ok:
			return d.Errf("unrecognized %s '%s'%s", what, name, nearest(name, options))
		case seen[name] && !opt.repeat:
			return d.Errf("only one %s line may be given here; '%s' is already specified", name, name)
		}
		seen[name] = true
		if err := opt.read(t, d); err != nil {
			return err
		}
	}
	return nil
}

// nearest suggests the option most like name, a misspelt one: ": did
// you mean 'x'?", or "" when none is close.
func nearest[T any](name string, options map[string]subdirective[T]) string {
	best, dist := "", len(name)/3+1 // at most a third of it wrong
	for o := range options {
		if d := editDistance(name, o); d < dist || d == dist && best != "" && o < best {
			best, dist = o, d
		}
	}
	if best == "" {
		return ""
	}
	return ": did you mean '" + best + "'?"
}

// editDistance is the number of bytes to insert, delete, replace or
// swap with the next to make a into b (the optimal string alignment
// distance): "kye" is one from "key".
func editDistance(a, b string) int {
	// Row i of the table is rows[i%3]: this row, the one before and the
	// one before that, for a swap.
	rows := [3][]int{make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)}
	for j := range rows[0] {
		rows[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		back, prev, cur := rows[(i+1)%3], rows[(i+2)%3], rows[i%3]
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], back[j-2]+1)
			}
		}
	}
	return rows[len(a)%3][len(b)]
}

// gatewayBlock is the chat_gateway block being read.
type gatewayBlock struct {
	h          *Handler
	proxies    []*parsedProxy // of h.Backends, in order
	sharedKey  string         // the api_key line's
	urlsOnLine bool           // backend URLs were given on the directive line
}

// gatewayOptions are the lines of a chat_gateway block.
var gatewayOptions = map[string]subdirective[gatewayBlock]{
	"backend": {repeat: true, read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		b, proxy, err := parseBackend(d)
		p.h.Backends, p.proxies = append(p.h.Backends, b), append(p.proxies, proxy)
		return err
	}},
	"api_key":                {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return oneArg(d, &p.sharedKey) }},
	"echo":                   {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return noArgs(d, &p.h.Echo) }},
	"include_usage_upstream": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return noArgs(d, &p.h.IncludeUsageUpstream) }},
	"log_sizes":              {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return noArgs(d, &p.h.LogSizes) }},
	"pass_unknown_paths":     {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return noArgs(d, &p.h.PassUnknownPaths) }},
	"timeout":                {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return durationArg(d, &p.h.Timeout) }},
	"first_token_timeout":    {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return durationArg(d, &p.h.FirstTokenTimeout) }},
	"idle_timeout":           {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return durationArg(d, &p.h.IdleTimeout) }},
	"read_body_timeout":      {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return durationArg(d, &p.h.ReadBodyTimeout) }},
	"echo_delay":             {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return durationArg(d, &p.h.EchoDelay) }},
	"keepalive_interval":     {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return durationArg(d, &p.h.KeepaliveInterval) }},
	"max_concurrent": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		var v string
		return oneArg(d, &v, func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("invalid max_concurrent '%s': want a number, 0 for no cap", v)
			}
			p.h.MaxConcurrent = n
			return nil
		})
	}},
	"max_request_body": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		var v string
		return oneArg(d, &v, func(v string) error {
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 1<<40 {
				return d.Errf("invalid max_request_body '%s': want a size such as 16MiB", v)
			}
			p.h.MaxRequestBody = int64(size)
			return nil
		})
	}},
	"metrics_per_key": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		p.h.MetricsPerKey = defaultMetricsPerKey
		if d.NextArg() {
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("invalid metrics_per_key '%s': want a positive number", d.Val())
			}
			p.h.MetricsPerKey = n
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}},
	// Several auth blocks add up.
	"auth": {repeat: true, read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		if d.NextArg() {
			return d.ArgErr()
		}
		if p.h.Auth == nil {
			p.h.Auth = new(Auth)
		}
		return readBlock(d, "auth option", authOptions, p.h.Auth, nil)
	}},
	"limits": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		if d.NextArg() {
			return d.ArgErr()
		}
		p.h.Limits = new(Limits)
		return readBlock(d, "limits option", limitsOptions, p.h.Limits, nil)
	}},
	"price":       {repeat: true, read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return readPrice(p.h, d) }},
	"prices_file": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error { return oneArg(d, &p.h.PricesFile) }},
	"cache": {read: func(p *gatewayBlock, d *caddyfile.Dispenser) error {
		if d.NextArg() {
			return d.ArgErr()
		}
		p.h.Cache = new(Cache)
		return readBlock(d, "cache option", cacheOptions, p.h.Cache, nil)
	}},
}

// cacheOptions are the lines of a cache block.
var cacheOptions = map[string]subdirective[Cache]{
	"ttl": {read: func(c *Cache, d *caddyfile.Dispenser) error { return durationArg(d, &c.TTL) }},
	"max_size": {read: func(c *Cache, d *caddyfile.Dispenser) error {
		var v string
		return oneArg(d, &v, func(v string) error {
			size, err := humanize.ParseBytes(v)
			if err != nil || size < 1<<20 || size > 1<<40 {
				return d.Errf("invalid max_size '%s': want a size of at least 1MiB, such as 256MiB", v)
			}
			c.MaxSize = int64(size)
			return nil
		})
	}},
	"scope": {read: func(c *Cache, d *caddyfile.Dispenser) error {
		return oneArg(d, &c.Scope, func(v string) error {
			if v != cacheScopeKey && v != cacheScopeShared {
				return d.Errf("invalid scope '%s': want key or shared", v)
			}
			return nil
		})
	}},
	"when": {read: func(c *Cache, d *caddyfile.Dispenser) error {
		return oneArg(d, &c.When, func(v string) error {
			if v != cacheWhenDeterministic && v != cacheWhenAlways {
				return d.Errf("invalid when '%s': want deterministic or always", v)
			}
			return nil
		})
	}},
	"store": {read: func(c *Cache, d *caddyfile.Dispenser) error {
		store, err := parseLimitStore(d)
		c.Redis = store
		return err
	}},
}

// other answers a line no chat_gateway option names: a reverse_proxy
// subdirective given beside URLs on the directive line belongs in a
// backend block.
func (p *gatewayBlock) other(d *caddyfile.Dispenser) error {
	name := d.Val()
	if p.urlsOnLine && isProxySubdirective(name) {
		return d.Errf("unrecognized chat_gateway option '%s': it is a reverse_proxy subdirective; put it in a 'backend <urls...> { ... }' block instead of giving the URLs on the chat_gateway line", name)
	}
	return d.Errf("unrecognized chat_gateway option '%s'%s", name, nearest(name, gatewayOptions))
}

// noArgs reads a line without arguments, a flag it sets.
func noArgs(d *caddyfile.Dispenser, flag *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*flag = true
	return nil
}

// oneArg reads the single argument of a line into v. read, if not nil,
// reads it first: its error, on a bad value, wins over one for more
// arguments.
func oneArg(d *caddyfile.Dispenser, v *string, read ...func(string) error) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	for _, r := range read {
		if err := r(d.Val()); err != nil {
			return err
		}
	}
	*v = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// durationArg reads the single duration argument of a line into v.
func durationArg(d *caddyfile.Dispenser, v *caddy.Duration) error {
	name := d.Val()
	var text string
	return oneArg(d, &text, func(text string) error {
		dur, err := caddy.ParseDuration(text)
		if err != nil || dur < 0 {
			return d.Errf("invalid %s '%s': want a duration such as 90s or 5m", name, text)
		}
		*v = caddy.Duration(dur)
		return nil
	})
}

// backendBlock is a backend block being read: the Backend its options
// fill, and the lines it passes to reverse_proxy.
type backendBlock struct {
	b          *Backend
	proxyLines []caddyfile.Token
	retryCodes []int
}

// backendOptions are a backend block's own lines; every other line is
// a reverse_proxy subdirective.
var backendOptions = map[string]subdirective[backendBlock]{
	"models": {repeat: true, read: func(p *backendBlock, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		p.b.Models = append(p.b.Models, args...)
		return nil
	}},
	"alias": {repeat: true, read: func(p *backendBlock, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("alias takes a name and the model it stands for")
		}
		if _, dup := p.b.Aliases[args[0]]; dup {
			return d.Errf("alias %s already specified", args[0])
		}
		if p.b.Aliases == nil {
			p.b.Aliases = make(map[string]string)
		}
		p.b.Aliases[args[0]] = args[1]
		return nil
	}},
	"api_key":   {read: func(p *backendBlock, d *caddyfile.Dispenser) error { return oneArg(d, &p.b.APIKey) }},
	"base_path": {read: func(p *backendBlock, d *caddyfile.Dispenser) error { return oneArg(d, &p.b.BasePath) }},
	"fallback":  {read: func(p *backendBlock, d *caddyfile.Dispenser) error { return oneArg(d, &p.b.Fallback) }},
	"responses": {read: func(p *backendBlock, d *caddyfile.Dispenser) error {
		if !d.NextArg() || d.Val() != responsesStateful || d.NextArg() {
			return d.Errf("responses takes one argument, stateful: the backend keeps the Responses it created, for previous_response_id")
		}
		p.b.Responses = responsesStateful
		return nil
	}},
	"messages": {read: func(p *backendBlock, d *caddyfile.Dispenser) error {
		if !d.NextArg() || d.Val() != messagesNative || d.NextArg() {
			return d.Errf("messages takes one argument, native: the backend serves the Anthropic Messages API (/v1/messages) itself")
		}
		p.b.Messages = messagesNative
		return nil
	}},
	"retry_on": {repeat: true, read: func(p *backendBlock, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		for _, cond := range args {
			codes, ok := retryConditions[cond]
			if n, err := strconv.Atoi(cond); err == nil && (n == 429 || n >= 500 && n <= 599) {
				codes, ok = []int{n}, true
			}
			if !ok {
				return d.Errf("invalid retry_on condition '%s': want 429, 5xx, a 5xx status or stream", cond)
			}
			if codes == nil {
				p.b.RetryStream = true
			}
			p.retryCodes = append(p.retryCodes, codes...)
		}
		return nil
	}},
}

// other takes a line of a backend block that is not the gateway's own:
// reverse_proxy parses it, but for those the gateway does itself
// (replies), and for a misspelt option of the gateway's, which reverse_proxy
// would not know either.
func (p *backendBlock) other(d *caddyfile.Dispenser) error {
	name := d.Val()
	switch {
	case name == "handle_response", name == "replace_status", name == "copy_response", name == "copy_response_headers":
		return d.Errf("'%s' is not supported in a chat_gateway backend: the gateway handles responses itself", name)
	case !isProxySubdirective(name):
		if hint := nearest(name, backendOptions); hint != "" {
			return d.Errf("unrecognized backend option '%s'%s", name, hint)
		}
	}
	p.proxyLines = append(p.proxyLines, d.NextSegment()...)
	return nil
}

// parseBackend reads a backend block. Its own options fill the Backend
// it returns; every other line goes to reverse_proxy's Caddyfile parser.
func parseBackend(d *caddyfile.Dispenser) (*Backend, *parsedProxy, error) {
	seg := caddyfile.NewDispenser(d.NextSegment())
	seg.Next()
	head := seg.Token()
	urls := seg.RemainingArgs()
	p := backendBlock{b: new(Backend)}
	if err := readBlock(seg, "backend option", backendOptions, &p, (*backendBlock).other); err != nil {
		return nil, nil, err
	}
	proxy, err := newBackend(d, head, urls, p.b, p.proxyLines, p.retryCodes)
	return p.b, proxy, err
}

// authOptions are the lines of an auth block.
var authOptions = map[string]subdirective[Auth]{
	"key": {repeat: true, read: func(a *Auth, d *caddyfile.Dispenser) error {
		e := ClientKey{}
		if err := oneArg(d, &e.Key); err != nil {
			return err
		}
		if err := readBlock(d, "key option", keyOptions, &e, nil); err != nil {
			return err
		}
		a.Keys = append(a.Keys, e)
		return nil
	}},
	"keys_file": {read: func(a *Auth, d *caddyfile.Dispenser) error {
		if a.KeysFile != "" { // in another auth block
			return d.Err("only one keys_file may be given")
		}
		return oneArg(d, &a.KeysFile)
	}},
}

// keyOptions are the lines of a key block: the key's own, and limits of
// its own.
var keyOptions = withLimitLines(map[string]subdirective[ClientKey]{
	"id": {read: func(e *ClientKey, d *caddyfile.Dispenser) error { return oneArg(d, &e.ID) }},
	"models": {repeat: true, read: func(e *ClientKey, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		e.Models = append(e.Models, args...)
		return nil
	}},
	"expires": {read: func(e *ClientKey, d *caddyfile.Dispenser) error {
		var v string
		return oneArg(d, &v, func(v string) error {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return d.Errf("invalid expires '%s': want an RFC 3339 time such as 2026-12-31T23:59:59Z", v)
			}
			e.Expires = t
			return nil
		})
	}},
	"disabled": {read: func(e *ClientKey, d *caddyfile.Dispenser) error { return noArgs(d, &e.Disabled) }},
}, func(e *ClientKey) *LimitSet { return &e.LimitSet })

// withLimitLines adds to options the requests, tokens, concurrent, quota
// and budget lines, which fill the LimitSet set returns of the block's value.
func withLimitLines[T any](options map[string]subdirective[T], set func(*T) *LimitSet) map[string]subdirective[T] {
	rate := func(field func(*LimitSet) *string, parse func(string) error) subdirective[T] {
		return subdirective[T]{read: func(t *T, d *caddyfile.Dispenser) error {
			name := d.Val()
			return oneArg(d, field(set(t)), func(v string) error {
				if err := parse(v); err != nil {
					return d.Errf("invalid %s '%s': %v", name, v, err)
				}
				return nil
			})
		}}
	}
	parseRate := func(v string) error { _, err := limits.ParseRate(v); return err }
	options["requests"] = rate(func(s *LimitSet) *string { return &s.Requests }, parseRate)
	options["tokens"] = rate(func(s *LimitSet) *string { return &s.Tokens }, parseRate)
	options["quota"] = rate(func(s *LimitSet) *string { return &s.Quota }, func(v string) error { _, err := limits.ParseQuota(v); return err })
	options["budget"] = rate(func(s *LimitSet) *string { return &s.Budget }, func(v string) error { _, err := limits.ParseBudget(v); return err })
	options["concurrent"] = subdirective[T]{read: func(t *T, d *caddyfile.Dispenser) error { return countArg(d, &set(t).Concurrent) }}
	return options
}

// countArg reads the single positive integer argument of a line into v.
func countArg(d *caddyfile.Dispenser, v *int64) error {
	name := d.Val()
	var text string
	return oneArg(d, &text, func(text string) error {
		n, err := limits.ParseCount(text)
		if err != nil {
			return d.Errf("invalid %s '%s': want a positive integer", name, text)
		}
		*v = n
		return nil
	})
}

// limitsOptions are the lines of a limits block.
var limitsOptions = withLimitLines(map[string]subdirective[Limits]{
	"per":                {read: func(l *Limits, d *caddyfile.Dispenser) error { return oneArg(d, &l.Per) }},
	"default_max_tokens": {read: func(l *Limits, d *caddyfile.Dispenser) error { return countArg(d, &l.DefaultMaxTokens) }},
	"on_store_error": {read: func(l *Limits, d *caddyfile.Dispenser) error {
		return oneArg(d, &l.OnStoreError, func(v string) error {
			if v != "allow" && v != "deny" {
				return d.Errf("invalid on_store_error '%s': want allow or deny", v)
			}
			return nil
		})
	}},
	"model": {repeat: true, read: func(l *Limits, d *caddyfile.Dispenser) error {
		m := &ModelLimits{}
		if err := oneArg(d, &m.Pattern); err != nil {
			return err
		}
		if err := readBlock(d, "model limit", modelLimitOptions, &m.LimitSet, nil); err != nil {
			return err
		}
		if m.LimitSet == (LimitSet{}) {
			return d.Errf("model %s: no limits given", m.Pattern)
		}
		l.Models = append(l.Models, m)
		return nil
	}},
	"store": {read: func(l *Limits, d *caddyfile.Dispenser) error {
		store, err := parseLimitStore(d)
		l.Redis = store
		return err
	}},
}, func(l *Limits) *LimitSet { return &l.LimitSet })

// modelLimitOptions are the lines of a model block in limits.
var modelLimitOptions = withLimitLines(map[string]subdirective[LimitSet]{}, func(s *LimitSet) *LimitSet { return s })

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
	return s, readBlock(d, "redis option", redisOptions, s, nil)
}

// redisOptions are the lines of a store redis block.
var redisOptions = map[string]subdirective[RedisStore]{
	"username": {read: func(s *RedisStore, d *caddyfile.Dispenser) error { return oneArg(d, &s.Username) }},
	"password": {read: func(s *RedisStore, d *caddyfile.Dispenser) error { return oneArg(d, &s.Password) }},
	"tls":      {read: func(s *RedisStore, d *caddyfile.Dispenser) error { return noArgs(d, &s.TLS) }},
	"key_prefix": {read: func(s *RedisStore, d *caddyfile.Dispenser) error {
		return oneArg(d, &s.KeyPrefix, func(v string) error {
			if strings.ContainsAny(v, "{}") {
				return d.Errf("invalid key_prefix '%s': it must not contain '{' or '}'", v)
			}
			return nil
		})
	}},
	"db": {read: func(s *RedisStore, d *caddyfile.Dispenser) error {
		var v string
		return oneArg(d, &v, func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("invalid db '%s': want a database number", v)
			}
			s.DB = n
			return nil
		})
	}},
	"timeout": {read: func(s *RedisStore, d *caddyfile.Dispenser) error {
		var v string
		return oneArg(d, &v, func(v string) error {
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("invalid timeout '%s': want a duration such as 50ms", v)
			}
			s.Timeout = caddy.Duration(dur)
			return nil
		})
	}},
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

// retryConditions are the retry_on words; nil codes stand for "stream".
var retryConditions = map[string][]int{"429": {429}, "5xx": {500, 502, 503, 504}, "stream": nil}

// newBackend sets up b from its base URLs (its base path, unless its
// block set one) and returns its reverse_proxy, from the URLs and the
// reverse_proxy lines of its block, parsed by reverse_proxy's own
// Caddyfile code. The proxy gets the gateway's defaults, and the
// retries on retryCodes, once the whole chat_gateway block is read.
func newBackend(d *caddyfile.Dispenser, head caddyfile.Token, urls []string, b *Backend, proxyLines []caddyfile.Token, retryCodes []int) (*parsedProxy, error) {
	tok := func(text string) caddyfile.Token {
		t := head
		t.Text = text
		return t
	}
	tokens := []caddyfile.Token{tok("reverse_proxy")}
	basePath := ""
	repl := caddy.NewReplacer()
	for i, raw := range urls {
		u, err := url.Parse(repl.ReplaceKnown(raw, ""))
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, d.Errf("invalid backend URL '%s': want http(s)://host[:port][/base/path]", raw)
		}
		path := strings.TrimSuffix(u.Path, "/")
		for _, endpoint := range apiSuffixes {
			if base, ok := strings.CutSuffix(path, endpoint); ok {
				return nil, d.Errf("backend URL '%s' is an endpoint, not a base URL: give the base URL as OpenAI SDKs take it, such as '%s'", raw, u.Scheme+"://"+u.Host+base)
			}
		}
		if path == "" {
			path = "/v1"
		}
		if i > 0 && path != basePath {
			return nil, d.Errf("backend URLs of one backend must share one path: '%s' has %s, not %s", raw, path, basePath)
		}
		basePath = path
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
		return nil, err
	}
	if len(rp.Upstreams) == 0 && rp.DynamicUpstreamsRaw == nil {
		return nil, d.Errf("backend needs at least one URL (or 'dynamic')")
	}
	if b.BasePath == "" {
		b.BasePath = basePath
	}
	return &parsedProxy{rp: rp, retryCodes: retryCodes}, nil
}

// apiSuffixes are the paths the gateway appends to a backend's base
// path: a backend URL that ends in one names an endpoint, not a base.
// Longer first: /chat/completions before /completions.
var apiSuffixes = []string{"/chat/completions", "/completions", "/embeddings", "/responses",
	"/messages/count_tokens", "/messages", "/models"}

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

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	lb_policy prefix_affinity {
//		block_size   <bytes>
//		load_factor  <factor>
//		index_blocks <count>
//		load_metrics llamacpp|vllm|sglang [<interval>]
//	}
func (p *PrefixAffinity) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the policy's name
	if d.NextArg() {
		return d.ArgErr()
	}
	return readBlock(d, "prefix_affinity option", prefixAffinityOptions, p, nil)
}

// prefixAffinityOptions are the lines of an lb_policy prefix_affinity
// block.
var prefixAffinityOptions = map[string]subdirective[PrefixAffinity]{
	"block_size": {read: func(p *PrefixAffinity, d *caddyfile.Dispenser) error {
		return intArg(d, &p.BlockSize, minBlockSize, maxBlockSize)
	}},
	"index_blocks": {read: func(p *PrefixAffinity, d *caddyfile.Dispenser) error {
		return intArg(d, &p.IndexBlocks, 1, 1<<30)
	}},
	"load_factor": {read: func(p *PrefixAffinity, d *caddyfile.Dispenser) error {
		var text string
		return oneArg(d, &text, func(v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 1) || f > 100 {
				return d.Errf("invalid load_factor '%s': want a number above 1, such as 1.5", v)
			}
			p.LoadFactor = f
			return nil
		})
	}},
	"load_metrics": {read: func(p *PrefixAffinity, d *caddyfile.Dispenser) error {
		if !d.NextArg() {
			return d.ArgErr()
		}
		if _, ok := routing.LoadFormats[d.Val()]; !ok {
			return d.Errf("unknown load_metrics '%s': want llamacpp, vllm or sglang", d.Val())
		}
		p.LoadMetrics = d.Val()
		if d.NextArg() {
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur < 100*time.Millisecond {
				return d.Errf("invalid load_metrics interval '%s': want a duration of at least 100ms, such as 1s", d.Val())
			}
			p.LoadInterval = caddy.Duration(dur)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}},
}

// intArg reads the single integer argument of a line, from lo to hi,
// into v.
func intArg(d *caddyfile.Dispenser, v *int, lo, hi int) error {
	name := d.Val()
	var text string
	return oneArg(d, &text, func(text string) error {
		n, err := strconv.Atoi(text)
		if err != nil || n < lo || n > hi {
			return d.Errf("invalid %s '%s': want an integer from %d to %d", name, text, lo, hi)
		}
		*v = n
		return nil
	})
}

// readPrice reads "price <model pattern> input <usd> output <usd>
// [cached <usd>] [cache_write <usd>]", in US dollars per million tokens.
func readPrice(h *Handler, d *caddyfile.Dispenser) error {
	const want = "want price <model pattern> input <USD per 1M tokens> output <USD per 1M tokens> [cached <USD per 1M cached tokens>] [cache_write <USD per 1M tokens written to the cache>]"
	p := &ModelPrice{}
	if !d.NextArg() {
		return d.Errf("price: %s", want)
	}
	p.Pattern = d.Val()
	seen := map[string]bool{}
	for d.NextArg() {
		name := d.Val()
		if seen[name] || name != "input" && name != "output" && name != "cached" && name != "cache_write" {
			return d.Errf("price %s: unexpected '%s': %s", p.Pattern, name, want)
		}
		seen[name] = true
		if !d.NextArg() {
			return d.Errf("price %s: %s needs a price: %s", p.Pattern, name, want)
		}
		v, err := strconv.ParseFloat(d.Val(), 64)
		if err != nil || v < 0 || v > 1e6 {
			return d.Errf("price %s: invalid %s '%s': want US dollars per million tokens, such as 2.50", p.Pattern, name, d.Val())
		}
		switch name {
		case "input":
			p.Input = v
		case "output":
			p.Output = v
		case "cached":
			p.Cached = &v
		case "cache_write":
			p.CacheWrite = &v
		}
	}
	if !seen["input"] || !seen["output"] {
		return d.Errf("price %s: input and output are both needed: %s", p.Pattern, want)
	}
	h.Prices = append(h.Prices, p)
	return nil
}
