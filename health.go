package chatgateway

// Readiness: /readyz says whether every backend can be reached, from
// reverse_proxy's own health checks and, for a backend without active
// health checks, a light probe the gateway makes in the background.

import (
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Probes of a backend without active health checks: how long a probe's
// finding is kept, and how long a dial may take.
const (
	probeInterval = 5 * time.Second
	probeTimeout  = 2 * time.Second
)

// serveReady answers GET /readyz, for load balancers and readiness
// probes: 200 while every backend has an upstream that is healthy and
// can be reached (always in echo mode), else 503 in OpenAI's error
// shape.
func (h *Handler) serveReady(x *exchange) {
	if !h.echoMode() && !h.ready() {
		x.fail(openai.NoHealthyUpstream())
		return
	}
	x.writeJSON(http.StatusOK, []byte(`{"status":"ready"}`))
}

// ready reports whether every backend has an upstream its reverse
// proxy's health checks (active, passive, circuit breaker) count as
// healthy and, for a backend the gateway probes, that its last probe
// reached one. Dynamic upstreams are not known in advance: they count
// as healthy.
func (h *Handler) ready() bool {
	for _, b := range h.Backends {
		rp, ok := b.proxy.(*reverseproxy.Handler)
		if ok && len(rp.Upstreams) > 0 && !slices.ContainsFunc(rp.Upstreams, (*reverseproxy.Upstream).Healthy) {
			return false
		}
		if b.probed() && !b.reachable() {
			return false
		}
	}
	return true
}

// probe is what the gateway knows of whether a backend's upstreams can
// be reached, for a backend with static upstreams and no active health
// checks, which would say so themselves: a wrong port, a backend not
// started, is then seen at /readyz before any request fails on it.
type probe struct {
	mu          sync.Mutex
	at          time.Time // when the last probe started; zero: never
	unreachable atomic.Bool
}

// probed reports whether the gateway probes b (probe).
func (b *Backend) probed() bool {
	rp, ok := b.proxy.(*reverseproxy.Handler)
	return ok && len(rp.Upstreams) > 0 && (rp.HealthChecks == nil || rp.HealthChecks.Active == nil)
}

// reachable returns what the last probe of b found, and starts a new one,
// in its own goroutine, when that one is older than probeInterval: a
// probe runs only while /readyz is asked, and never on its path.
func (b *Backend) reachable() bool {
	p := &b.probe
	p.mu.Lock()
	if time.Since(p.at) >= probeInterval {
		p.at = time.Now()
		go func() { p.unreachable.Store(!b.dialUpstreams()) }()
	}
	p.mu.Unlock()
	return !p.unreachable.Load()
}

// dialUpstreams reports whether one of b's upstreams accepts a
// connection within probeTimeout; it opens and closes it, nothing more.
// An upstream address with a placeholder that cannot be resolved now
// counts as reached.
func (b *Backend) dialUpstreams() bool {
	repl := caddy.NewReplacer()
	for _, u := range b.proxy.(*reverseproxy.Handler).Upstreams {
		addr, err := caddy.ParseNetworkAddress(repl.ReplaceAll(u.Dial, ""))
		if err != nil || addr.PortRangeSize() != 1 {
			return true
		}
		conn, err := net.DialTimeout(addr.Network, addr.JoinHostPort(0), probeTimeout)
		if err == nil {
			conn.Close()
			return true
		}
	}
	return false
}
