package chatgateway

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/routing"
)

func init() {
	caddy.RegisterModule(new(PrefixAffinity))
}

// Defaults of the prefix_affinity policy not in package routing.
const (
	defaultLoadInterval = time.Second
	minBlockSize        = 16
	maxBlockSize        = 1 << 20
)

// PrefixAffinity is a reverse_proxy selection policy for the replicas of
// an inference server (lb_policy prefix_affinity): it sends a request to
// the replica most likely to hold the longest prefix of its prompt in
// its KV cache, which then computes only the rest, unless that replica's
// load is past LoadFactor times the mean, when the least loaded takes
// it. A prompt no replica holds is placed by rendezvous hashing of its
// first blocks, as every gateway would place it. In a chat_gateway
// backend the prompt is the body the backend is sent (model, system,
// tools and messages, or its route's equivalent); a request without one
// (embeddings, or a plain reverse_proxy) goes to the least loaded
// replica. The load of a replica is the requests this Caddy has in
// flight to it, or what the replica reports, whichever is higher.
type PrefixAffinity struct {
	// BlockSize is the bytes of prompt each hash of its chain covers: a
	// prefix is matched in whole blocks. Default: 256 (about 64 tokens).
	BlockSize int `json:"block_size,omitempty"`

	// LoadFactor bounds the load of the replica a prefix goes to:
	// above LoadFactor times the mean load of the replicas (this request
	// included, rounded up), the replica is passed over. Lower spreads
	// load more evenly and matches fewer prefixes. Default: 1.5.
	LoadFactor float64 `json:"load_factor,omitempty"`

	// IndexBlocks is how many blocks the record of which replica was
	// sent which prompt keeps, the least recently used forgotten first:
	// about 70 bytes each. Policies with the same block_size and
	// index_blocks share one record, kept across config reloads.
	// Default: 100000.
	IndexBlocks int `json:"index_blocks,omitempty"`

	// LoadMetrics is the kind of inference server whose /metrics page
	// is polled for the requests each replica runs and queues:
	// "llamacpp" (llama-server started with --metrics), "vllm" or
	// "sglang" (started with --enable-metrics). Empty (default): only
	// the requests in flight from this Caddy count.
	LoadMetrics string `json:"load_metrics,omitempty"`

	// LoadInterval is how often /metrics is polled, in the background.
	// Default: 1s.
	LoadInterval caddy.Duration `json:"load_interval,omitempty"`

	policy   *routing.Policy
	indexKey string
	loads    *routing.Loads // nil without load_metrics
	poll     sync.Once
	ctx      context.Context
	logger   *zap.Logger
	proxy    *reverseproxy.Handler // whose policy it is: /metrics goes through its transport
	// authorization is sent with each /metrics poll: a chat_gateway
	// backend's api_key, which llama-server asks of /metrics too.
	authorization string
	chains        sync.Pool // *[]uint64, the chain of a request's prompt
}

// CaddyModule returns the Caddy module information.
func (*PrefixAffinity) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.prefix_affinity",
		New: func() caddy.Module { return new(PrefixAffinity) },
	}
}

// indexes are the policies' records of what each replica was sent, by
// block size and capacity: replicas are named by address, so policies
// of one config or the next, one backend or another, share what they
// know of the same servers.
var indexes = caddy.NewUsagePool()

// sharedIndex is an index in the pool.
type sharedIndex struct{ *routing.Index }

func (sharedIndex) Destruct() error { return nil }

// Provision sets the defaults and takes the shared index.
func (p *PrefixAffinity) Provision(ctx caddy.Context) error {
	if p.BlockSize == 0 {
		p.BlockSize = routing.DefaultBlockSize
	}
	if p.LoadFactor == 0 {
		p.LoadFactor = routing.DefaultLoadFactor
	}
	if p.IndexBlocks == 0 {
		p.IndexBlocks = routing.DefaultIndexBlocks
	}
	if p.LoadInterval == 0 {
		p.LoadInterval = caddy.Duration(defaultLoadInterval)
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if p.LoadMetrics != "" {
		loads, err := routing.NewLoads(p.LoadMetrics, time.Duration(p.LoadInterval))
		if err != nil {
			return err
		}
		p.loads = loads
	}
	p.indexKey = strconv.Itoa(p.BlockSize) + "/" + strconv.Itoa(p.IndexBlocks)
	ix, _, err := indexes.LoadOrNew(p.indexKey, func() (caddy.Destructor, error) {
		return sharedIndex{routing.NewIndex(p.IndexBlocks)}, nil
	})
	if err != nil {
		return err
	}
	p.policy = routing.NewPolicy(p.LoadFactor, ix.(sharedIndex).Index)
	p.ctx, p.logger = ctx, ctx.Logger()
	for _, m := range ctx.Modules() {
		if rp, ok := m.(*reverseproxy.Handler); ok {
			p.proxy = rp
		}
	}
	if err := registerRoutingMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	livePolicies.Store(p, struct{}{})
	return nil
}

// Validate checks the options.
func (p *PrefixAffinity) Validate() error {
	switch {
	case p.BlockSize < minBlockSize || p.BlockSize > maxBlockSize:
		return fmt.Errorf("prefix_affinity: block_size %d is out of range: want %d to %d bytes", p.BlockSize, minBlockSize, maxBlockSize)
	case !(p.LoadFactor > 1):
		return fmt.Errorf("prefix_affinity: load_factor %g must be more than 1", p.LoadFactor)
	case p.IndexBlocks < 1:
		return fmt.Errorf("prefix_affinity: index_blocks %d must be positive", p.IndexBlocks)
	case time.Duration(p.LoadInterval) < 100*time.Millisecond:
		return fmt.Errorf("prefix_affinity: load_interval %s is below 100ms", time.Duration(p.LoadInterval))
	}
	if _, ok := routing.LoadFormats[p.LoadMetrics]; p.LoadMetrics != "" && !ok {
		return fmt.Errorf("prefix_affinity: unknown load_metrics '%s': want llamacpp, vllm or sglang", p.LoadMetrics)
	}
	return nil
}

// Cleanup releases the shared index.
func (p *PrefixAffinity) Cleanup() error {
	livePolicies.Delete(p)
	if p.indexKey != "" {
		_, err := indexes.Delete(p.indexKey)
		return err
	}
	return nil
}

// Select chooses among the available upstreams of pool the one that
// holds the longest prefix of the request's prompt, within the load
// bound.
func (p *PrefixAffinity) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	var rbuf [8]routing.Replica
	var ubuf [8]*reverseproxy.Upstream
	replicas, ups := rbuf[:0], ubuf[:0]
	var now time.Time
	if p.loads != nil {
		now = time.Now()
		p.poll.Do(func() { go p.loads.Run(p.ctx, p.fetch) })
	}
	for _, u := range pool {
		if !u.Available() {
			continue
		}
		load := u.NumRequests()
		if p.loads != nil {
			if n, ok := p.loads.Reported(u.Dial, now); ok {
				load = max(load, n)
			}
		}
		replicas = append(replicas, routing.Replica{Key: u.Dial, Load: load})
		ups = append(ups, u)
	}
	if len(ups) == 0 {
		return nil
	}
	var hashes []uint64
	if pr, ok := r.Context().Value(promptKey{}).(prompt); ok {
		chain, _ := p.chains.Get().(*[]uint64)
		if chain == nil {
			chain = new([]uint64)
		}
		defer p.chains.Put(chain)
		var parts [4][]byte
		hashes = routing.Chain((*chain)[:0], p.BlockSize, openai.Prompt(parts[:0], pr.path, pr.body)...)
		*chain = hashes
	}
	c := p.policy.Choose(replicas, hashes)
	routingMetrics.decided(c, len(hashes))
	return ups[c.Replica]
}

// fetch gets replica addr's /metrics page through the proxy's
// transport, with its TLS settings, and the backend's api_key.
func (p *PrefixAffinity) fetch(ctx context.Context, addr string) (*http.Response, error) {
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if p.authorization != "" {
		req.Header.Set("Authorization", p.authorization)
	}
	var rt http.RoundTripper = http.DefaultTransport
	if p.proxy != nil && p.proxy.Transport != nil {
		rt = p.proxy.Transport
	}
	resp, err := rt.RoundTrip(req)
	if err != nil && ctx.Err() == nil {
		p.logger.Debug("polling load", zap.String("upstream", addr), zap.Error(err))
	}
	return resp, err
}

// promptKey is the context key of the prompt the gateway gives a
// prefix_affinity policy.
type promptKey struct{}

// prompt is a request to a backend as the policy reads it: the body,
// and the path it goes to, which says its shape.
type prompt struct {
	path string
	body []byte
}

// withPrompt returns ctx carrying the request body of an attempt, for a
// prefix_affinity policy.
func withPrompt(ctx context.Context, path string, body []byte) context.Context {
	return context.WithValue(ctx, promptKey{}, prompt{path, body})
}

// prefixAffinity returns the prefix_affinity policy of a provisioned
// reverse_proxy, its cooldowns aside, or nil.
func prefixAffinity(rp *reverseproxy.Handler) *PrefixAffinity {
	if rp.LoadBalancing == nil {
		return nil
	}
	sel := rp.LoadBalancing.SelectionPolicy
	if c, ok := sel.(coolingSelection); ok {
		sel = c.Selector
	}
	p, _ := sel.(*PrefixAffinity)
	return p
}

// Interface guards
var (
	_ reverseproxy.Selector = (*PrefixAffinity)(nil)
	_ caddy.Provisioner     = (*PrefixAffinity)(nil)
	_ caddy.Validator       = (*PrefixAffinity)(nil)
	_ caddy.CleanerUpper    = (*PrefixAffinity)(nil)
)
