package chatgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/cache"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Defaults of the response cache.
const (
	defaultCacheTTL     = 10 * time.Minute
	defaultCacheMaxSize = 64 << 20
	// maxCacheEntry bounds an entry in Redis, and the bytes kept of a
	// reply to store it.
	maxCacheEntry = 8 << 20
	// cacheName names the gateway in Cache-Status (RFC 9211).
	cacheName = "chat_gateway"
)

// Cache answers a request from the stored reply of an identical earlier
// one, without the backend: the same route, backend model and content,
// from the same scope (the client key, else the caller's identity).
// Streamed requests are answered with the stream replayed; identical
// requests in flight together make one backend call. See the README's
// "Response cache" section.
type Cache struct {
	// TTL is how long a reply is served after it was stored. A client's
	// Cache-Control max-age shortens it for that client. Default: 10m.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// MaxSize bounds the memory store in bytes, entries and keys
	// counted; past it the least recently used entries go. An entry of
	// more than a quarter of it is not stored. Default: 64 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// Scope is who shares replies: "key" (default), each client key its
	// own, or each caller's identity (the limits' per, else the client
	// IP) without auth; "shared", every caller: one caller's request
	// then answers another's, and whether a prompt was asked shows in
	// another caller's latency.
	Scope string `json:"scope,omitempty"`

	// When is which requests are cached: "deterministic" (default), a
	// request with temperature 0 or a seed, or whose client asks with
	// Cache-Control max-age; "always", every request.
	When string `json:"when,omitempty"`

	// Redis, when set, keeps the replies in Redis, shared by every
	// gateway that uses it, configured as the limits' store is.
	Redis *RedisStore `json:"redis,omitempty"`

	ttl     time.Duration
	store   cache.Store
	memory  *cache.Memory // the store, when in memory
	poolKey string
	logger  *zap.Logger
	flights flights
}

// cacheStores are the response caches' stores, kept across config
// reloads: a memory store's entries outlive the config that made them.
var cacheStores = caddy.NewUsagePool()

const (
	cacheScopeKey          = "key"
	cacheScopeShared       = "shared"
	cacheWhenDeterministic = "deterministic"
	cacheWhenAlways        = "always"
)

func (c *Cache) provision(ctx caddy.Context, repl *caddy.Replacer) error {
	c.ttl = time.Duration(c.TTL)
	if c.ttl == 0 {
		c.ttl = defaultCacheTTL
	}
	if c.MaxSize == 0 {
		c.MaxSize = defaultCacheMaxSize
	}
	switch {
	case c.ttl < time.Second:
		return fmt.Errorf("cache: ttl %s is under a second", c.ttl)
	case c.MaxSize < 1<<20:
		return fmt.Errorf("cache: max_size %d is under 1 MiB", c.MaxSize)
	case c.Scope != "" && c.Scope != cacheScopeKey && c.Scope != cacheScopeShared:
		return fmt.Errorf("cache: scope must be key or shared, not %q", c.Scope)
	case c.When != "" && c.When != cacheWhenDeterministic && c.When != cacheWhenAlways:
		return fmt.Errorf("cache: when must be deterministic or always, not %q", c.When)
	}
	c.logger = ctx.Logger()
	key := "memory:" + strconv.FormatInt(c.MaxSize, 10)
	open := func() (caddy.Destructor, error) { return cache.NewMemory(c.MaxSize), nil }
	if c.Redis != nil {
		opts, err := c.Redis.options(repl)
		if err != nil {
			return fmt.Errorf("cache: %w", err)
		}
		settings, _ := json.Marshal(struct {
			limits.RedisOptions
			TLS bool
		}{opts, opts.TLS != nil})
		key = "redis:" + string(settings)
		open = func() (caddy.Destructor, error) {
			return cache.NewRedis(limits.NewRedisClient(opts), opts.KeyPrefix+"cache:", maxCacheEntry), nil
		}
	}
	store, _, err := cacheStores.LoadOrNew(key, open)
	if err != nil {
		return fmt.Errorf("opening the cache store: %w", err)
	}
	c.poolKey, c.store = key, store.(cache.Store)
	c.memory, _ = store.(*cache.Memory)
	return registerCacheMetrics(ctx.GetMetricsRegistry())
}

func (c *Cache) cleanup() error {
	if c.poolKey == "" {
		return nil
	}
	_, err := cacheStores.Delete(c.poolKey)
	return err
}

// The results of a request's cache lookup, for Cache-Status, the log's
// cache field and the metrics.
const (
	cacheHit       = "hit"       // answered from a stored reply
	cacheCollapsed = "collapsed" // answered from an identical request's reply, in flight together
	cacheMiss      = "miss"      // sent to the backend; its reply stored if it completes cleanly
	cacheRefresh   = "refresh"   // Cache-Control: no-cache: sent to the backend, its reply stored
	cacheBypass    = "bypass"    // not cacheable: sent to the backend, not stored
)

// cacheUse is a request's use of the cache.
type cacheUse struct {
	c        *Cache
	key      string // the entry's key: the request's, and its variant
	control  cache.Control
	result   string
	entry    *cache.Entry // the stored reply it is answered from
	follow   *flight      // an identical request's, it is answered from
	lead     *flight      // its own, which identical requests follow
	ttl      time.Duration
	rerouted bool       // a fallback served it: its reply is another model's
	embed    *embedPlan // an embeddings batch: its inputs, by what the cache holds
	// storeWait is the time its lookup waited on a store across the
	// network (Redis).
	storeWait time.Duration
}

// prepare decides whether x, whose route is rt, may be answered from
// the cache, and looks its reply up: before the limits, which a reply
// from the cache takes no tokens of. The key and a memory store's lookup
// are the gateway's own work; Redis's round trip is not.
func (c *Cache) prepare(x *exchange, rt route, body []byte) {
	begin := time.Now()
	use := c.use(x, rt, body)
	x.cache = use
	defer func() { x.addOwnTime(time.Since(begin) - use.storeWait) }()
	if use.result == cacheBypass {
		return
	}
	if x.ep.Name() == "embeddings" {
		c.prepareEmbeddings(x, rt, body)
		return
	}
	variants := []string{use.key + ":" + variantOf(x.req.Stream)}
	if x.req.Stream { // a stored JSON reply answers a stream too
		variants = append(variants, use.key+":"+variantOf(false))
	}
	use.key = variants[0]
	if !use.control.NoCache {
		for _, e := range c.lookup(x, variants) {
			if e != nil {
				use.entry, use.result = e, cacheHit
				break
			}
		}
	}
}

// serve answers x as prepare found: from the cache, from an identical
// request's reply in flight, or through the backend, keeping the reply
// when the request may be cached.
func (c *Cache) serve(h *Handler, x *exchange, rt route, body []byte) {
	use := x.cache
	if use.result == cacheHit {
		if use.answer(x, rt) {
			return
		}
		// A stored reply this gateway does not read as one (another
		// version's, or not a gateway's): a miss, replaced. An
		// embeddings batch made of stored vectors goes to the backend
		// whole, kept out of the cache.
		use.entry, use.result = nil, cacheMiss
		if x.ep.Name() == "embeddings" {
			use.result = cacheBypass
		}
	}
	if use.result == cacheBypass {
		x.w.Header().Set("Cache-Status", cacheName+"; fwd=bypass")
		h.forward(x, rt, body)
		return
	}
	if use.embed != nil {
		c.serveEmbeddings(h, x, rt, body)
		return
	}
	f, leader := c.flights.join(use.key)
	if !leader {
		use.follow, use.result = f, cacheCollapsed
		x.w.Header().Set("Cache-Status", cacheName+"; fwd=miss; collapsed")
		h.forward(x, rt, body)
		return
	}
	use.lead = f
	defer c.flights.leave(use.key, f)
	if use.control.NoCache {
		use.result = cacheRefresh
		x.w.Header().Set("Cache-Status", cacheName+"; fwd=request")
	} else {
		use.result = cacheMiss
		x.w.Header().Set("Cache-Status", cacheName+"; fwd=miss")
	}
	h.forward(x, rt, body)
	entry, ok := f.finish(x.status == http.StatusOK && x.ended.err == nil && !use.rerouted)
	if !ok || use.control.NoStore {
		return
	}
	if h.upstreamKeys.in(entry.Body) {
		return // a backend that quotes its key: never kept
	}
	entry.Stored = time.Now()
	entry.Expires = entry.Stored.Add(use.ttl)
	c.keep(x, cache.Item{Key: use.key, Entry: entry})
}

// keep stores items, after the reply: a store that fails is logged.
func (c *Cache) keep(x *exchange, items ...cache.Item) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(x.r.Context()), time.Second)
	defer cancel()
	if err := c.store.Set(ctx, items...); err != nil {
		c.logger.Warn("cache store failed", zap.String("request_id", x.id), zap.String("op", "set"), zap.Error(err))
	}
}

// variantOf names the shape of a stored reply: a stream's events, or a
// JSON reply.
func variantOf(stream bool) string {
	if stream {
		return "sse"
	}
	return "json"
}

// lookup returns the entries of keys, nil for those not stored or older
// than the client's max-age; a store that fails is all misses.
func (c *Cache) lookup(x *exchange, keys []string) []*cache.Entry {
	begin := time.Now()
	entries, err := c.store.Get(x.r.Context(), keys...)
	if c.memory == nil {
		x.cache.storeWait += time.Since(begin)
	}
	if err != nil {
		c.logger.Warn("cache store failed", zap.String("request_id", x.id), zap.String("op", "get"), zap.Error(err))
		return make([]*cache.Entry, len(keys))
	}
	for i, e := range entries {
		if e != nil && x.cache.control.HasMaxAge && time.Since(e.Stored) > time.Duration(x.cache.control.MaxAge)*time.Second {
			entries[i] = nil
		}
	}
	return entries
}

// use decides whether x may be cached, and its key: a digest of the
// scope, the route, the backend (its URLs) and the shape of its replies,
// the model it is asked for, and the request's canonical form.
func (c *Cache) use(x *exchange, rt route, body []byte) *cacheUse {
	use := &cacheUse{c: c, control: cache.ParseControl(x.r.Header["Cache-Control"]), result: cacheBypass, ttl: c.ttl}
	if use.control.HasMaxAge {
		use.ttl = min(use.ttl, time.Duration(use.control.MaxAge)*time.Second)
	}
	if !cacheableRoute(x.ep) || use.ttl <= 0 && !use.control.NoCache || !c.repeats(x, rt, body, use.control) {
		return use
	}
	skip := notInCacheKey
	if x.ep.Name() == "embeddings" { // each input has a key of its own
		skip = func(name string) bool { return name == "input" || notInCacheKey(name) }
	}
	scope := ""
	if c.Scope != cacheScopeShared {
		scope = x.owner()
	}
	model := rt.modelFor(x.req.Model)
	shape := "translated"
	if rt.backend.servesMessages() {
		shape = "native"
	}
	key, err := cache.RequestKey(body, skip, []byte(scope), []byte(x.ep.Name()), []byte(rt.backend.label), []byte(shape), []byte(model))
	if err != nil {
		return use
	}
	use.key, use.result = key, cacheMiss
	return use
}

// cacheableRoute reports whether the route's replies are kept: not
// count_tokens, which the gateway answers itself or a backend cheaply.
func cacheableRoute(ep openai.Endpoint) bool {
	switch ep.Name() {
	case "chat_completions", "completions", "responses", "messages", "embeddings":
		return true
	}
	return false
}

// repeats reports whether x's answer is meant to repeat, so a stored one
// may stand for it: with temperature 0 or a seed, unless when is always
// or the client asked with max-age; never a request that makes or
// continues a stored Response or asks the backend to store it.
func (c *Cache) repeats(x *exchange, rt route, body []byte, control cache.Control) bool {
	m := openai.Members(body, "store", "temperature", "seed")
	store, temperature, seed := m[0], m[1], m[2]
	if x.req.PreviousResponseID != "" || bytes.Equal(store, []byte("true")) ||
		rt.backend.keepsResponses() && x.ep.Name() == "responses" && !bytes.Equal(store, []byte("false")) {
		return false
	}
	if c.When == cacheWhenAlways || control.HasMaxAge && control.MaxAge > 0 || x.ep.Name() == "embeddings" {
		return true // an embedding is the same each time
	}
	if temperature != nil {
		if f, err := strconv.ParseFloat(string(temperature), 64); err == nil && f == 0 {
			return true
		}
	}
	return seed != nil && !bytes.Equal(seed, []byte("null"))
}

// notInCacheKey names the members of a request that do not change its
// answer: how it is delivered, and what the provider keeps or bills.
func notInCacheKey(name string) bool {
	switch name {
	case "model", // the key has the backend's model, after aliases
		"stream", "stream_options", "user", "metadata", "store", "service_tier",
		"safety_identifier", "prompt_cache_key", "prompt_cache_retention":
		return true
	}
	return false
}

// answer answers x from the stored reply, as an attempt answers from
// a backend's: the writer a backend's reply goes to normalizes it, with
// this request's id, as a stream if one was asked. No backend is asked:
// there is no upstream request, and nothing to time out or retry. It
// reports false, having written nothing, when the stored reply does not
// answer it (it is not a valid reply of the route).
func (u *cacheUse) answer(x *exchange, rt route) bool {
	x.servedModel = rt.modelFor(x.req.Model)
	if be, ok := x.ep.(openai.BackendEndpoint); ok {
		be.RepliesFrom(rt.backend.servesMessages())
	}
	hdr := x.w.Header()
	hdr.Set("Cache-Status", fmt.Sprintf("%s; hit; ttl=%d", cacheName, int(time.Until(u.entry.Expires).Seconds())))
	hdr.Set("Age", strconv.Itoa(int(max(0, time.Since(u.entry.Stored)).Seconds())))
	w := x.upstreamWriter(time.Now(), time.Time{})
	defer w.release()
	w.Header().Set("Content-Type", u.entry.ContentType)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(u.entry.Body)
	res := w.settle(x.r.Context(), nil, false)
	switch {
	case res.err == nil:
		x.end(http.StatusOK, res)
	case !w.started() && x.r.Context().Err() == nil:
		hdr.Del("Age")
		return false
	default:
		w.fail(res)
	}
	return true
}

// replay answers an attempt from the reply of the identical request
// this one follows, writing to w what the backend writes as it comes.
// It reports false, having written nothing, when there is none (the
// request it followed failed before its reply was final), and aborted
// when the reply it follows was cut.
func (u *cacheUse) replay(ctx context.Context, w http.ResponseWriter) (served, aborted bool) {
	served, aborted = u.follow.replay(ctx, w)
	if !served { // on its own, as a miss
		u.follow, u.result = nil, cacheMiss
	}
	return served, aborted
}

// follows reports whether the request follows an identical one in
// flight: its attempt answers from that one's reply.
func (u *cacheUse) follows() bool { return u != nil && u.follow != nil }

// capture is the flight an attempt's reply is kept in, or nil.
func (u *cacheUse) capture() *flight {
	if u == nil {
		return nil
	}
	return u.lead
}

// served reports whether the request was answered without the backend:
// it used no tokens.
func (u *cacheUse) served() bool {
	return u != nil && (u.result == cacheHit || u.result == cacheCollapsed && u.follow != nil)
}

// flights are the requests to the backend under way by key, each
// followed by identical requests that arrived while it was.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

// join returns the flight under way for key and false, or a new one and
// true: the caller leads it, and must leave it.
func (fs *flights) join(key string) (*flight, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f := fs.m[key]; f != nil {
		return f, false
	}
	if fs.m == nil {
		fs.m = make(map[string]*flight)
	}
	f := &flight{changed: make(chan struct{})}
	fs.m[key] = f
	return f, true
}

// leave ends key's flight f: later requests start their own.
func (fs *flights) leave(key string, f *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[key] == f {
		delete(fs.m, key)
	}
	f.end()
}

// flight is a backend reply under way, as the backend sends it, for the
// identical requests that follow it. Followers wait until the reply is
// the final one (committed: the stream's content went out, or the whole
// reply came), then replay what came and what comes.
type flight struct {
	mu          sync.Mutex
	changed     chan struct{} // closed, and replaced, when the flight changes
	contentType string
	body        []byte
	committed   bool
	done        bool
	ok          bool // it ended cleanly, committed
	tooLarge    bool
}

// notify wakes the followers, f.mu held.
func (f *flight) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// reset forgets what a failed attempt's reply brought, before it is
// committed.
func (f *flight) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.committed {
		f.body, f.contentType = f.body[:0], ""
	}
}

// header records the reply's content type.
func (f *flight) header(contentType string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.committed {
		f.contentType = contentType
	}
}

// write adds what the backend sent.
func (f *flight) write(p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.body)+len(p) > maxCacheEntry && !f.committed {
		f.tooLarge = true
	}
	f.body = append(f.body, p...)
	if f.committed {
		f.notify()
	}
}

// commit makes the reply under way final: followers may replay it.
func (f *flight) commit(body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.committed {
		return
	}
	if body != nil {
		f.body = append(f.body[:0], body...)
	}
	f.committed = true
	f.notify()
}

// finish records how the leader's request ended and returns its reply
// to store, if it completed cleanly and is not too large.
func (f *flight) finish(ok bool) (cache.Entry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ok = ok && f.committed && f.contentType != ""
	e := cache.Entry{ContentType: f.contentType, Body: bytes.Clone(f.body)}
	return e, f.ok && !f.tooLarge && len(f.body) <= maxCacheEntry
}

// end ends the flight: followers see no more.
func (f *flight) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = true
	f.notify()
}

// replay writes the flight's reply to w as a backend would, as it comes,
// once committed. It reports false, having written nothing, when the
// flight ended before; aborted when the reply it replays was cut.
func (f *flight) replay(ctx context.Context, w http.ResponseWriter) (served, aborted bool) {
	sent, started := 0, false
	for {
		f.mu.Lock()
		committed, done, ok, changed, contentType := f.committed, f.done, f.ok, f.changed, f.contentType
		var chunk []byte
		if committed {
			chunk = f.body[sent:len(f.body):len(f.body)]
		}
		f.mu.Unlock()
		if !committed {
			if done {
				return false, false
			}
		} else {
			if !started {
				w.Header().Set("Content-Type", contentType)
				w.WriteHeader(http.StatusOK)
				started = true
			}
			if len(chunk) > 0 {
				if _, err := w.Write(chunk); err != nil {
					return true, false
				}
				sent += len(chunk)
			}
			if done {
				return true, !ok
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return true, false
		}
	}
}

// embedPlan is an embeddings batch split by what the cache holds: only
// the inputs it lacks go to the backend, and the reply is assembled in
// the request's order.
type embedPlan struct {
	keys   []string // by input
	items  [][]byte // by input: the input, in canonical JSON
	cached [][]byte // by input: the stored vector, or nil
	single bool     // the input is one input, not a list
	model  string   // the model asked for, for a reply all from the cache
	fresh  [][]byte // by input: the vectors the backend computed, after merge
}

// prepareEmbeddings looks each input of an embeddings batch up: the
// request is a hit when all are stored, else the plan of a miss.
func (c *Cache) prepareEmbeddings(x *exchange, rt route, body []byte) {
	use := x.cache
	items, single, err := cache.Inputs(openai.Member(body, "input"))
	if err != nil {
		use.result = cacheBypass
		return
	}
	p := &embedPlan{keys: make([]string, len(items)), items: items, cached: make([][]byte, len(items)), single: single, model: rt.modelFor(x.req.Model)}
	for i, item := range items {
		p.keys[i] = cache.Key([]byte(use.key), item)
	}
	var stored, expires time.Time
	hits := 0
	if !use.control.NoCache {
		for i, e := range c.lookup(x, p.keys) {
			if e == nil {
				continue
			}
			p.cached[i] = e.Body
			hits++
			if stored.IsZero() || e.Stored.Before(stored) {
				stored = e.Stored
			}
			if expires.IsZero() || e.Expires.Before(expires) {
				expires = e.Expires
			}
		}
	}
	if hits == len(items) {
		reply, _, err := cache.Merge(nil, p.cached, p.model)
		if err == nil {
			use.entry, use.result = &cache.Entry{ContentType: "application/json", Body: reply, Stored: stored, Expires: expires}, cacheHit
			return
		}
	}
	use.embed = p
}

// serveEmbeddings sends the inputs of a batch the cache lacks to the
// backend, and stores the vectors it computes.
func (c *Cache) serveEmbeddings(h *Handler, x *exchange, rt route, body []byte) {
	use, p := x.cache, x.cache.embed
	hits := len(p.items) - p.missing()
	status := cacheName + "; fwd=miss"
	if use.control.NoCache {
		use.result, status = cacheRefresh, cacheName+"; fwd=request"
	}
	if hits > 0 {
		status += fmt.Sprintf(`; detail="%d of %d inputs cached"`, hits, len(p.items))
	}
	x.w.Header().Set("Cache-Status", status)
	h.forward(x, rt, body)
	if x.status != http.StatusOK || x.ended.err != nil || use.rerouted || use.control.NoStore || p.fresh == nil {
		return
	}
	now := time.Now()
	var items []cache.Item
	for i, v := range p.fresh {
		if v != nil && !h.upstreamKeys.in(v) {
			items = append(items, cache.Item{Key: p.keys[i], Entry: cache.Entry{ContentType: "application/json", Body: v, Stored: now, Expires: now.Add(use.ttl)}})
		}
	}
	c.keep(x, items...)
}

// missing is how many inputs the cache lacks.
func (p *embedPlan) missing() int {
	n := 0
	for _, v := range p.cached {
		if v == nil {
			n++
		}
	}
	return n
}

// upstream returns body with only the inputs the cache lacks, in order;
// body itself when it lacks them all.
func (p *embedPlan) upstream(body []byte) []byte {
	if p.missing() == len(p.items) {
		return body
	}
	input := []byte{'['}
	for i, v := range p.cached {
		if v == nil {
			if len(input) > 1 {
				input = append(input, ',')
			}
			input = append(input, p.items[i]...)
		}
	}
	return openai.SetMember(body, "input", append(input, ']'))
}

// merge assembles the reply to the whole batch from the backend's reply
// to the inputs it was sent and the vectors stored.
func (p *embedPlan) merge(reply []byte) ([]byte, error) {
	out, fresh, err := cache.Merge(reply, p.cached, p.model)
	p.fresh = fresh
	return out, err
}

// embeddings is the plan of an embeddings batch, or nil.
func (u *cacheUse) embeddings() *embedPlan {
	if u == nil {
		return nil
	}
	return u.embed
}
