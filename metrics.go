package chatgateway

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/cache"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/routing"
	"github.com/prometheus/client_golang/prometheus"
)

// gatewayMetrics are the gateway's Prometheus collectors. They are
// created once and registered into each loaded config's registry, so a
// reload neither duplicates nor resets them.
var gatewayMetrics = struct {
	once           sync.Once
	requests       *prometheus.CounterVec
	inFlight       prometheus.Gauge
	duration       *prometheus.HistogramVec
	ttft           *prometheus.HistogramVec
	perToken       *prometheus.HistogramVec
	tokens         *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec
	retries        prometheus.Counter
	overhead       prometheus.Histogram
	cost           *prometheus.CounterVec
	unpriced       *prometheus.CounterVec
}{}

// llmBuckets span a cached reply (milliseconds) to a long generation
// on a loaded model (minutes).
var llmBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600}

// registerMetrics makes the gateway's collectors, once, and registers
// them into a config's registry.
func registerMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "chat_gateway"
	m := &gatewayMetrics
	m.once.Do(func() {
		m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "API requests by model, stream, outcome, key (with metrics_per_key) and endpoint (chat_completions, completions, embeddings, responses, messages, messages_count_tokens)."},
			[]string{"model", "stream", "outcome", "key", "endpoint"})
		m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "in_flight_requests",
			Help: "API requests being served."})
		m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help: "Time from receiving a request to the end of its reply.", Buckets: llmBuckets}, []string{"model", "stream", "endpoint"})
		m.ttft = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "time_to_first_token_seconds",
			Help: "Time from receiving a request to its first content reaching the client (the whole reply when not streamed).", Buckets: llmBuckets},
			[]string{"model", "endpoint"})
		m.perToken = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "time_per_output_token_seconds",
			Help:    "Time per completion token after the first, on streams.",
			Buckets: []float64{.001, .0025, .005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, 1}}, []string{"model", "endpoint"})
		m.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tokens_total",
			Help: "Tokens by model, type (prompt, completion) and key (with metrics_per_key), as the backend reported them or as estimated."}, []string{"model", "type", "key"})
		m.upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "upstream_errors_total",
			Help: "Failures of backends, by reason."}, []string{"reason"})
		m.cost = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cost_usd_total",
			Help: "What requests cost, in US dollars, at the price of the model that served them, by model and key (with metrics_per_key); replies from the cache cost nothing."},
			[]string{"model", "key"})
		m.unpriced = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "unpriced_requests_total",
			Help: "Requests for a model no price line or prices_file prices, with prices configured, refused or failed ones included: they cost 0."},
			[]string{"model"})
		m.retries = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_total",
			Help: "Attempts made after a first one failed: stream retries, fallbacks, and the proxy's retries on a new connection."})
		m.overhead = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "overhead_seconds",
			Help:    "Time spent in the gateway itself per API request (parsing, validation, routing, normalization), excluding the backend and network I/O.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1}})
	})
	return register(registry, m.requests, m.inFlight, m.duration, m.ttft, m.perToken, m.tokens, m.upstreamErrors, m.retries, m.overhead, m.cost, m.unpriced)
}

// register registers the process-wide collectors into a config's
// registry, where they may be already: a reload neither duplicates nor
// resets them.
func register(registry *prometheus.Registry, collectors ...prometheus.Collector) error {
	for _, c := range collectors {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

// series are the children of the collectors for one model, stream flag,
// key and endpoint, looked up once instead of hashing labels on every
// request.
type series struct {
	requests                  sync.Map // outcome -> prometheus.Counter
	duration, ttft, perToken  prometheus.Observer
	promptTokens, complTokens prometheus.Counter
}

var seriesCache sync.Map // model, stream, key, endpoint joined by "\x00" -> *series

func seriesFor(model, stream, key, endpoint string) *series {
	cacheKey := model + "\x00" + stream + "\x00" + key + "\x00" + endpoint
	if s, ok := seriesCache.Load(cacheKey); ok {
		return s.(*series)
	}
	m := &gatewayMetrics
	s, _ := seriesCache.LoadOrStore(cacheKey, &series{
		duration:     m.duration.WithLabelValues(model, stream, endpoint),
		ttft:         m.ttft.WithLabelValues(model, endpoint),
		perToken:     m.perToken.WithLabelValues(model, endpoint),
		promptTokens: m.tokens.WithLabelValues(model, "prompt", key),
		complTokens:  m.tokens.WithLabelValues(model, "completion", key),
	})
	return s.(*series)
}

func (s *series) request(model, stream, key, endpoint, outcome string) prometheus.Counter {
	if c, ok := s.requests.Load(outcome); ok {
		return c.(prometheus.Counter)
	}
	c, _ := s.requests.LoadOrStore(outcome, gatewayMetrics.requests.WithLabelValues(model, stream, outcome, key, endpoint))
	return c.(prometheus.Counter)
}

// record adds a finished API request to the metrics.
func (x *exchange) record() {
	m := &gatewayMetrics
	m.inFlight.Dec()
	model := x.h.metricModel(x.model)
	stream := strconv.FormatBool(x.req != nil && x.req.Stream)
	key := x.h.metricKey(x.keyID)
	endpoint := x.ep.Name()
	s := seriesFor(model, stream, key, endpoint)
	s.request(model, stream, key, endpoint, x.outcome).Inc()
	total := time.Since(x.start)
	s.duration.Observe(total.Seconds())
	if x.retries > 0 {
		m.retries.Add(float64(x.retries))
	}
	m.overhead.Observe(x.overhead().Seconds())
	if x.req == nil {
		return
	}
	served := x.cache.served() // no backend generated it
	if x.cache != nil {
		cacheMetrics.requests.WithLabelValues(x.cache.result).Inc()
		if served {
			cacheMetrics.tokensSaved.Add(float64(x.usage.PromptTokens + x.usage.CompletionTokens))
		}
	}
	if x.ttft > 0 {
		s.ttft.Observe(x.ttft.Seconds())
		if x.req.Stream && x.usage.CompletionTokens > 1 && x.outcome == outcomeOK && !served {
			s.perToken.Observe((total - x.ttft).Seconds() / float64(x.usage.CompletionTokens-1))
		}
	}
	switch {
	case x.priced:
		m.cost.WithLabelValues(model, key).Add(x.costUSD)
	case x.h.prices != nil:
		m.unpriced.WithLabelValues(model).Inc()
	}
	if (x.usage.PromptTokens > 0 || x.usage.CompletionTokens > 0) && !served {
		s.promptTokens.Add(float64(x.usage.PromptTokens))
		s.complTokens.Add(float64(x.usage.CompletionTokens))
	}
	switch {
	case x.upstreamReason != "": // a backend's own codes are unbounded: not labels
		m.upstreamErrors.WithLabelValues(x.upstreamReason).Inc()
	case x.ended.fromBackend && x.status >= 400:
		m.upstreamErrors.WithLabelValues("status_" + strconv.Itoa(x.status)).Inc()
	}
}

// metricModel bounds the model label to the models the config names.
func (h *Handler) metricModel(model string) string {
	if _, ok := h.routes[model]; ok {
		return model
	}
	if h.echoMode() && (model == "" || model == echoModel) {
		return echoModel
	}
	return "other"
}

// limitCollectors are the limits' Prometheus collectors.
type limitCollectors struct {
	once          sync.Once
	decisions     *prometheus.CounterVec
	byDimension   map[decisionKey]prometheus.Counter // decisions' children, looked up once
	estimateError prometheus.Histogram
	storeDuration *prometheus.HistogramVec
	storeErrors   *prometheus.CounterVec
}

// limitMetrics are created once and registered into each config's
// registry that has limits.
var limitMetrics limitCollectors

// decisionKey is a child of the decisions counter.
type decisionKey struct {
	model  bool
	kind   limits.Kind
	result string
}

// decision returns the decisions counter of dimension d and result.
func (m *limitCollectors) decision(d limits.Dimension, result string) prometheus.Counter {
	return m.byDimension[decisionKey{strings.HasPrefix(d.Scope, modelScopePrefix), d.Kind, result}]
}

// registerLimitMetrics makes the limits' collectors, once, and registers
// them into a config's registry.
func registerLimitMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "chat_gateway"
	m := &limitMetrics
	m.once.Do(func() {
		m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "ratelimit_decisions_total",
			Help: "Limit decisions by dimension (requests, tokens, concurrent, quota, budget; model_* for model limits; store for store failures) and result (allowed, denied)."},
			[]string{"dimension", "result"})
		m.byDimension = make(map[decisionKey]prometheus.Counter)
		for _, model := range []bool{false, true} {
			for _, kind := range []limits.Kind{limits.KindRequests, limits.KindTokens, limits.KindConcurrent, limits.KindQuota, limits.KindBudget} {
				for _, result := range []string{"allowed", "denied"} {
					name := kind.String()
					if model {
						name = "model_" + name
					}
					m.byDimension[decisionKey{model, kind, result}] = m.decisions.WithLabelValues(name, result)
				}
			}
		}
		m.estimateError = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "ratelimit_reserved_minus_used_tokens",
			Help:    "Tokens reserved at admission minus the tokens the request used: how far the estimate was off.",
			Buckets: []float64{-4096, -1024, -256, -64, -16, 0, 16, 64, 256, 1024, 4096, 16384, 65536}})
		m.storeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "ratelimit_store_duration_seconds",
			Help:    "Time of a call to the Redis limits store, by operation (reserve, settle).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25}}, []string{"op"})
		m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "ratelimit_store_errors_total",
			Help: "Calls to the limits store that failed or timed out, by operation (reserve, settle)."}, []string{"op"})
	})
	return register(registry, m.decisions, m.estimateError, m.storeDuration, m.storeErrors)
}

// routingCollectors are the prefix_affinity policy's collectors.
type routingCollectors struct {
	once      sync.Once
	decisions [routing.Placed + 1]prometheus.Counter // by reason
	matched   prometheus.Histogram
	load      routingLoadCollector
}

// routingMetrics are created once and registered into each config's
// registry that has a prefix_affinity policy.
var routingMetrics routingCollectors

// livePolicies are the provisioned prefix_affinity policies, whose
// replicas' load the metrics report.
var livePolicies sync.Map // *PrefixAffinity -> struct{}

// registerRoutingMetrics makes the routing collectors, once, and
// registers them into a config's registry.
func registerRoutingMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "chat_gateway"
	m := &routingMetrics
	m.once.Do(func() {
		decisions := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "routing_decisions_total",
			Help: "Replica choices of the prefix_affinity policy by reason: matched (the replica holding the longest prefix of the prompt), overloaded (its holders were over the load bound: the least loaded), placed (no replica held it: rendezvous hashing), no_prefix (no prompt of a full block: the least loaded)."},
			[]string{"reason"})
		for r := range m.decisions {
			m.decisions[r] = decisions.WithLabelValues(routing.Reason(r).String())
		}
		m.matched = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "routing_matched_ratio",
			Help:    "Fraction of a prompt's blocks the chosen replica was known to hold, for each choice with a prompt.",
			Buckets: []float64{0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, 1}})
		m.load.desc = prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "routing_replica_load"),
			"Load of each replica of a prefix_affinity backend: requests this Caddy has in flight to it (source in_flight) and the requests it runs and queues, as its /metrics last said (source reported).",
			[]string{"replica", "source"}, nil)
		m.load.decisions = decisions
	})
	return register(registry, m.load.decisions, m.matched, &m.load)
}

// decided counts a choice of a prompt of blocks.
func (m *routingCollectors) decided(c routing.Choice, blocks int) {
	m.decisions[c.Reason].Inc()
	if blocks > 0 {
		m.matched.Observe(float64(c.Matched) / float64(blocks))
	}
}

// routingLoadCollector reports the load of the replicas of every live
// prefix_affinity policy when scraped, nothing on a request's path.
type routingLoadCollector struct {
	desc      *prometheus.Desc
	decisions *prometheus.CounterVec
}

func (c *routingLoadCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *routingLoadCollector) Collect(ch chan<- prometheus.Metric) {
	inFlight, reported := map[string]int{}, map[string]int{}
	livePolicies.Range(func(k, _ any) bool {
		p := k.(*PrefixAffinity)
		if p.proxy != nil {
			for _, u := range p.proxy.Upstreams {
				inFlight[u.Dial] = u.NumRequests()
			}
		}
		if p.loads != nil {
			p.loads.Each(func(addr string, load int, err error) {
				if err == nil {
					reported[addr] = load
				}
			})
		}
		return true
	})
	for source, loads := range map[string]map[string]int{"in_flight": inFlight, "reported": reported} {
		for addr, n := range loads {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), addr, source)
		}
	}
}

// cacheCollectors are the response cache's collectors.
type cacheCollectors struct {
	once        sync.Once
	requests    *prometheus.CounterVec
	tokensSaved prometheus.Counter
	store       cacheStoreCollector
}

// cacheMetrics are created once and registered into each config's
// registry that has a cache.
var cacheMetrics cacheCollectors

// registerCacheMetrics makes the cache's collectors, once, and registers
// them into a config's registry.
func registerCacheMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "chat_gateway"
	m := &cacheMetrics
	m.once.Do(func() {
		m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_requests_total",
			Help: "Requests to routes the cache serves, by result: hit (a stored reply), collapsed (an identical request's, in flight together), miss and refresh (Cache-Control no-cache) sent to the backend, bypass (not cacheable)."},
			[]string{"result"})
		m.tokensSaved = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_tokens_saved_total",
			Help: "Prompt and completion tokens of the replies answered from the cache: what the backend did not compute."})
		m.store.bytes = prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "cache_bytes"),
			"Bytes the memory store of the response cache holds, entries and keys counted.", nil, nil)
		m.store.entries = prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "cache_entries"),
			"Replies the memory store of the response cache holds.", nil, nil)
		m.store.evictions = prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "cache_evictions_total"),
			"Replies the memory store of the response cache dropped to stay within max_size.", nil, nil)
	})
	return register(registry, m.requests, m.tokensSaved, &m.store)
}

// cacheStoreCollector reports the memory stores when scraped.
type cacheStoreCollector struct{ bytes, entries, evictions *prometheus.Desc }

func (c *cacheStoreCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.entries
	ch <- c.evictions
}

func (c *cacheStoreCollector) Collect(ch chan<- prometheus.Metric) {
	var bytes, entries int64
	var evictions uint64
	cacheStores.Range(func(_, v any) bool {
		if m, ok := v.(*cache.Memory); ok {
			b, e, ev := m.Stats()
			bytes, entries, evictions = bytes+b, entries+e, evictions+ev
		}
		return true
	})
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(bytes))
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(entries))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(evictions))
}
