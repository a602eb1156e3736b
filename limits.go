package chatgateway

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/pricing"
)

// Defaults of the limits block.
const (
	defaultLimitsPer        = "{http.auth.user.id}"
	defaultMaxTokensReserve = 1024
	// storeErrorLogEvery is how often store errors are logged: once per
	// burst, with the number left unlogged since.
	storeErrorLogEvery = 10 * time.Second
	// maxReserve bounds a reservation where no tokens limit caps it (a
	// quota alone): far above any context window.
	maxReserve = 1 << 40
)

// LimitSet is a set of limits on one scope. Every field is optional; an
// empty one means no such limit.
type LimitSet struct {
	// Requests limits requests per window, as "<n>/<window>" with a
	// window of [k]s, m, h or d, e.g. "600/1m": a token bucket of n
	// requests refilled continuously over the window.
	Requests string `json:"requests,omitempty"`

	// Tokens limits prompt plus completion tokens per window, as
	// "<n>/<window>", e.g. "200000/1m".
	Tokens string `json:"tokens,omitempty"`

	// Concurrent limits the requests in flight at once.
	Concurrent int64 `json:"concurrent,omitempty"`

	// Quota limits tokens per UTC calendar period, as
	// "<n>/<day|week|month>", e.g. "1000000/month". It starts afresh at
	// each period boundary.
	Quota string `json:"quota,omitempty"`

	// Budget limits spending per UTC calendar period, in US dollars at
	// the handler's prices, as "<USD>/<day|week|month>", e.g.
	// "25/month" or "2.50/day". A request reserves its largest cost
	// (the prompt estimate at the input price plus its completion
	// budget at the output price) and is charged its real cost after.
	// A model without a price costs nothing.
	Budget string `json:"budget,omitempty"`
}

// parse returns the limits of s.
func (s LimitSet) parse() (limits.Set, error) {
	var set limits.Set
	var err error
	if s.Requests != "" {
		if set.Requests, err = limits.ParseRate(s.Requests); err != nil {
			return set, fmt.Errorf("requests: %w", err)
		}
	}
	if s.Tokens != "" {
		if set.Tokens, err = limits.ParseRate(s.Tokens); err != nil {
			return set, fmt.Errorf("tokens: %w", err)
		}
	}
	if s.Quota != "" {
		if set.Quota, err = limits.ParseQuota(s.Quota); err != nil {
			return set, fmt.Errorf("quota: %w", err)
		}
	}
	if s.Budget != "" {
		if set.Budget, err = limits.ParseBudget(s.Budget); err != nil {
			return set, fmt.Errorf("budget: %w", err)
		}
	}
	if s.Concurrent < 0 {
		return set, errors.New("concurrent must not be negative")
	}
	set.Concurrent = s.Concurrent
	return set, nil
}

// ModelLimits are limits on the requests for the models a pattern
// matches, counted per model across all callers: they protect a backend.
type ModelLimits struct {
	// Pattern is a model name, or a pattern in which * stands for any
	// text (e.g. "llama*"), matched against the model the client asks
	// for. The first pattern that matches applies.
	Pattern string `json:"pattern"`

	LimitSet
}

// RedisStore is a Redis server holding the limits' counters, shared by
// every gateway instance that uses it.
type RedisStore struct {
	// Address is the server's host:port.
	Address string `json:"address"`

	// Username is the ACL user. Default: the default user.
	Username string `json:"username,omitempty"`

	// Password authenticates the connection; placeholders such as
	// {env.REDIS_PASSWORD} are resolved when the config loads.
	Password string `json:"password,omitempty"`

	// DB is the database number. Default: 0.
	DB int `json:"db,omitempty"`

	// TLS connects with TLS, verifying the server's certificate.
	TLS bool `json:"tls,omitempty"`

	// KeyPrefix starts every key. Default: "chat_gateway:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Timeout bounds every call to Redis, connecting included: no
	// request waits longer for its admission. Default: 50ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// Limits are rate limits, concurrency limits and token quotas per
// identity (the key id, else the client IP) and per model, checked and
// reserved before a request reaches a backend and reconciled with its
// real usage after. See the README's "Limits" section.
type Limits struct {
	// The limits of each identity.
	LimitSet

	// Per is the placeholder naming the identity the limits apply to.
	// Where it is empty, the client IP is used. Its value appears in 429
	// messages: never name a secret here. Default: {http.auth.user.id},
	// the user id set by an authentication handler.
	Per string `json:"per,omitempty"`

	// Models are limits per model, across all callers.
	Models []*ModelLimits `json:"models,omitempty"`

	// DefaultMaxTokens is the completion budget reserved for a request
	// that sets neither max_completion_tokens nor max_tokens. Default:
	// 1024. A reservation is always capped at the tokens limit.
	DefaultMaxTokens int64 `json:"default_max_tokens,omitempty"`

	// Redis, when set, keeps the counters in Redis, shared by every
	// gateway using it; else they are kept in this process's memory,
	// surviving config reloads.
	Redis *RedisStore `json:"redis,omitempty"`

	// OnStoreError is what happens to a request when the store cannot
	// answer within its timeout: "allow" lets it pass unlimited, "deny"
	// answers 503. Either way it is logged and counted. Default: allow.
	OnStoreError string `json:"on_store_error,omitempty"`

	clock    limits.Clock  // nil: time.Now; tests set a fake one
	lease    time.Duration // 0: limits.DefaultLease; tests set a short one
	set      limits.Set
	models   []modelSet
	store    limits.Store
	ledger   limits.Ledger // the store's, for the usage report
	limiter  *limits.Limiter
	memory   bool   // the store is in memory: settling costs no I/O
	poolKey  string // the store's key in limitStores
	deny     bool   // on_store_error deny
	logger   *zap.Logger
	pending  sync.WaitGroup // settlements running off the request's path
	errLog   atomic.Int64   // when a store error was last logged, in ns
	unlogged atomic.Int64   // store errors since
}

// modelSet is a parsed ModelLimits.
type modelSet struct {
	pattern string
	set     limits.Set
}

// limitStores are the stores in use, shared across config reloads so
// counters and connections survive them, keyed by the store's settings.
var limitStores = caddy.NewUsagePool()

// memoryStoreKey is the in-memory store's key in limitStores.
const memoryStoreKey = "memory"

// provision parses the limits and opens (or shares) their store.
func (l *Limits) provision(ctx caddy.Context, repl *caddy.Replacer) error {
	l.logger = ctx.Logger()
	var err error
	if l.set, err = l.LimitSet.parse(); err != nil {
		return err
	}
	for i, m := range l.Models {
		if m == nil || m.Pattern == "" {
			return fmt.Errorf("model limits %d: pattern missing", i)
		}
		set, err := m.LimitSet.parse()
		if err != nil {
			return fmt.Errorf("model %s: %w", m.Pattern, err)
		}
		l.models = append(l.models, modelSet{pattern: m.Pattern, set: set})
	}
	if l.Per == "" {
		l.Per = defaultLimitsPer
	}
	if l.DefaultMaxTokens == 0 {
		l.DefaultMaxTokens = defaultMaxTokensReserve
	}
	switch l.OnStoreError {
	case "", "allow":
	case "deny":
		l.deny = true
	default:
		return fmt.Errorf("on_store_error must be allow or deny, not %q", l.OnStoreError)
	}
	if err := registerLimitMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering limit metrics: %w", err)
	}
	key, open := memoryStoreKey, func() (caddy.Destructor, error) { return limits.NewMemory(), nil }
	if l.Redis == nil {
		l.memory = true
	} else {
		opts, err := l.Redis.options(repl)
		if err != nil {
			return err
		}
		settings, _ := json.Marshal(struct {
			limits.RedisOptions
			TLS bool
		}{opts, opts.TLS != nil})
		key = "redis:" + string(settings)
		open = func() (caddy.Destructor, error) { return limits.NewRedis(opts) }
	}
	store, _, err := limitStores.LoadOrNew(key, open)
	if err != nil {
		return fmt.Errorf("opening the limits store: %w", err)
	}
	l.poolKey, l.store = key, store.(limits.Store)
	l.ledger, _ = store.(limits.Ledger)
	l.limiter = limits.New(l.store, l.clock, l.lease)
	return nil
}

// options returns the Redis client's options, placeholders resolved.
func (s *RedisStore) options(repl *caddy.Replacer) (limits.RedisOptions, error) {
	o := limits.RedisOptions{
		Address:   repl.ReplaceKnown(s.Address, ""),
		Username:  repl.ReplaceKnown(s.Username, ""),
		Password:  repl.ReplaceKnown(s.Password, ""),
		DB:        s.DB,
		KeyPrefix: s.KeyPrefix,
		Timeout:   time.Duration(s.Timeout),
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = "chat_gateway:"
	}
	host, _, err := net.SplitHostPort(o.Address)
	if err != nil {
		return o, fmt.Errorf("redis address %q: want host:port", o.Address)
	}
	if s.TLS {
		o.TLS = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return o, nil
}

// cleanup waits for the settlements under way and releases the store.
func (l *Limits) cleanup() error {
	l.pending.Wait()
	if l.poolKey == "" {
		return nil
	}
	_, err := limitStores.Delete(l.poolKey)
	return err
}

// dimensions returns the limits of a request by identity for model:
// the identity's limits, with override's in their place where it sets
// any (a client key's own limits), and the first matching model's.
func (l *Limits) dimensions(identity string, override limits.Set, model string) []limits.Dimension {
	dims := l.set.Override(override).Dimensions(make([]limits.Dimension, 0, 8), identityScope(identity))
	if m := l.modelLimits(model); m != nil {
		dims = m.Dimensions(dims, modelScope(model))
	}
	return dims
}

// modelLimits returns the limits of the first model block whose pattern
// matches model, or nil.
func (l *Limits) modelLimits(model string) *limits.Set {
	for i := range l.models {
		if globMatch(l.models[i].pattern, model) {
			return &l.models[i].set
		}
	}
	return nil
}

// The scopes of the limits' counters: an identity's, a model's.
const (
	identityScopePrefix = "id:"
	modelScopePrefix    = "model:"
)

// identityScope is the scope of identity's counters.
func identityScope(identity string) string { return identityScopePrefix + scopeName(identity) }

// modelScope is the scope of model's counters.
func modelScope(model string) string { return modelScopePrefix + scopeName(model) }

// scopeName is s as a store key may hold it: as is when it is a short
// printable token, else a hash, so that no client-chosen text breaks a
// Redis hash tag or grows keys without bound.
func scopeName(s string) string {
	if len(s) <= 128 && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' || r == '{' || r == '}' }) {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// globMatch reports whether s matches pattern, in which * stands for any
// run of characters (slashes included, as model names hold them).
func globMatch(pattern, s string) bool {
	first, rest, wild := strings.Cut(pattern, "*")
	if !wild {
		return pattern == s
	}
	if !strings.HasPrefix(s, first) {
		return false
	}
	s = s[len(first):]
	for {
		part, more, wild := strings.Cut(rest, "*")
		if !wild {
			return strings.HasSuffix(s, part)
		}
		i := strings.Index(s, part)
		if i < 0 {
			return false
		}
		s, rest = s[i+len(part):], more
	}
}

// identity names who a request is from: the value of per, else the
// client IP. The default per is {http.auth.user.id}, which identify
// copied to x.keyID: it is read from there, not parsed each time.
func (l *Limits) identity(x *exchange) string {
	if l.Per == defaultLimitsPer && x.keyID != "" {
		return x.keyID
	}
	if id := x.repl.ReplaceAll(l.Per, ""); id != "" {
		return id
	}
	return clientIP(x.r)
}

// reserveAmount is what a request reserves. Tokens: its prompt estimate
// plus the largest completion budget a backend could honour (else
// default_max_tokens), once for each output it asks for (n, best_of),
// capped at the tokens limits so a lone request can always pass, unless
// the prompt alone exceeds them: that one can never pass. Money, where a
// budget applies: the prompt estimate at model's input price plus the
// whole completion budget at its output price.
func (l *Limits) reserveAmount(dims []limits.Dimension, x *exchange, model string) limits.Amount {
	if x.cache.served() {
		return limits.Amount{} // a stored reply: no backend computes it
	}
	prompt := openai.EstimateTokens(x.req.PromptBytes)
	budget := min(x.req.MaxOutputTokens, maxReserve)
	switch {
	case x.req.NoOutput:
		budget = 0
	case budget == 0:
		budget = l.DefaultMaxTokens
	}
	if n := x.req.Outputs; n > 1 {
		budget = min(budget, maxReserve/n) * n
	}
	capped := limits.CapTokens(dims, min(prompt+budget, maxReserve))
	a := limits.Amount{Tokens: max(capped, min(prompt, maxReserve))}
	if x.h.prices != nil && slices.ContainsFunc(dims, func(d limits.Dimension) bool { return d.Kind == limits.KindBudget }) {
		if price, ok := x.h.prices.lookup(model); ok {
			a.Micros = min(pricing.Micros(price.USD(pricing.Usage{Prompt: prompt, Completion: budget})), maxReserve)
		}
	}
	return a
}

// admit reserves the request's limits, its cost at the price of model
// (the one its route asks the backend for). It reports false when it has
// answered the request instead: a 429, or a 503 when the store failed
// and on_store_error is deny.
func (l *Limits) admit(x *exchange, model string) bool {
	identity := l.identity(x)
	dims := l.dimensions(identity, x.keyLimits, x.req.Model)
	if len(dims) == 0 {
		x.limitsIdentity = identity // for the ledger
		return true
	}
	amount := l.reserveAmount(dims, x, model)
	begin := time.Now()
	dec, err := l.limiter.Reserve(x.r.Context(), dims, amount)
	if took := time.Since(begin); l.memory {
		x.addOwnTime(took)
	} else { // network I/O, not the gateway's own work
		limitMetrics.storeDuration.WithLabelValues("reserve").Observe(took.Seconds())
	}
	switch {
	case err != nil && x.r.Context().Err() != nil:
		x.fail(openai.ClientClosedRequest())
		return false
	case err != nil:
		if !l.storeFailed(x, "reserve", err) {
			return false
		}
		x.limitsIdentity = identity // let through unlimited, recorded
		return true
	case dec.Denial != nil:
		limitMetrics.decision(dec.Denial.Dimension, "denied").Inc()
		x.setRateLimitHeaders(dec.Status)
		x.fail(denialError(x.w.Header(), dec.Denial))
		return false
	}
	for _, d := range dims {
		limitMetrics.decision(d, "allowed").Inc()
	}
	x.setRateLimitHeaders(dec.Status)
	x.reservation, x.limitsIdentity = dec.Reservation, identity
	return true
}

// storeFailed counts and logs a store error and, for a request's
// admission (x set), applies on_store_error. It reports whether the
// request may go on.
func (l *Limits) storeFailed(x *exchange, op string, err error) bool {
	limitMetrics.storeErrors.WithLabelValues(op).Inc()
	fields := []zap.Field{zap.String("op", op)}
	if x != nil {
		result := "allowed"
		if l.deny {
			result = "denied"
		}
		limitMetrics.decisions.WithLabelValues("store", result).Inc()
		fields = append(fields, zap.String("request_id", x.id), zap.String("result", result))
	}
	now := time.Now().UnixNano()
	if last := l.errLog.Load(); now-last >= int64(storeErrorLogEvery) && l.errLog.CompareAndSwap(last, now) {
		l.logger.Warn("limits store failed", append(fields, zap.Int64("unlogged_errors", l.unlogged.Swap(0)), zap.Error(err))...)
	} else {
		l.unlogged.Add(1)
	}
	if x == nil || !l.deny {
		return true
	}
	x.w.Header().Set("Retry-After", "1")
	x.fail(openai.RateLimitsUnavailable())
	return false
}

// settle charges an admitted request what it used, once its reply is
// over: nothing when it failed before any content reached the client,
// else its usage (the backend's, or the estimate of what was generated)
// and its cost, which the ledger also records for the usage report. With
// Redis it runs off the request's path.
func (l *Limits) settle(x *exchange) {
	res := x.reservation
	x.reservation = nil
	refund := x.outcome != outcomeOK && x.ttft == 0
	use := limits.Use{Identity: scopeName(x.limitsIdentity), Model: scopeName(x.requestedModel()), Micros: min(pricing.Micros(x.costUSD), maxReserve),
		Prompt: min(x.usage.PromptTokens, maxReserve), Completion: min(x.usage.CompletionTokens, maxReserve)}
	if x.cache.served() {
		use.Prompt, use.Completion = 0, 0 // no backend computed it (setCost charged it nothing)
	}
	used := limits.Amount{Tokens: min(use.Prompt+use.Completion, maxReserve), Micros: use.Micros}
	ctx := context.WithoutCancel(x.r.Context())
	run := func() {
		begin := time.Now()
		var err error
		switch {
		case res == nil: // no limit applied: recorded only
		case refund:
			err = l.limiter.Refund(ctx, res)
		default:
			err = l.limiter.Reconcile(ctx, res, used)
			limitMetrics.estimateError.Observe(float64(res.Tokens() - used.Tokens))
		}
		if !l.memory {
			limitMetrics.storeDuration.WithLabelValues("settle").Observe(time.Since(begin).Seconds())
		}
		if err != nil {
			l.storeFailed(nil, "settle", err)
		}
		if l.ledger != nil && !refund {
			l.ledger.Record(time.Now(), use)
		}
	}
	if l.memory {
		run()
		return
	}
	l.pending.Go(run)
}
