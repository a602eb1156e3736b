package chatgateway

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// maxCooldown caps how long one Retry-After keeps an upstream out.
const maxCooldown = 10 * time.Minute

// cooldowns keeps upstreams out of selection for as long as their
// Retry-After asked, on the replies the proxy's passive health check
// counts as failures: reverse_proxy itself marks them down for a fixed
// fail_duration. It learns a reply from the response placeholders
// reverse_proxy sets on the request's replacer, when the proxy selects
// the next upstream (a retry) and when the proxy returns.
type cooldowns struct {
	statuses []int        // the passive health check's unhealthy statuses
	latest   atomic.Int64 // the last end of any cooldown, in Unix ns: none runs after it
	mu       sync.Mutex
	until    map[string]time.Time // upstream host:port -> end of its cooldown
}

// newCooldowns wraps the selection policy of rp, a provisioned
// reverse_proxy, when its passive health check marks upstreams down on
// statuses; else it returns nil.
func newCooldowns(rp *reverseproxy.Handler) *cooldowns {
	hc := rp.HealthChecks
	if hc == nil || hc.Passive == nil || len(hc.Passive.UnhealthyStatus) == 0 || rp.LoadBalancing == nil {
		return nil
	}
	c := &cooldowns{statuses: hc.Passive.UnhealthyStatus, until: make(map[string]time.Time)}
	rp.LoadBalancing.SelectionPolicy = coolingSelection{rp.LoadBalancing.SelectionPolicy, c}
	return c
}

// observe records the Retry-After of the last reply reverse_proxy got
// for the request of repl, if it was an unhealthy status.
func (c *cooldowns) observe(repl *caddy.Replacer, now time.Time) {
	status, _ := repl.Get("http.reverse_proxy.status_code")
	if code, ok := status.(int); !ok || !slices.Contains(c.statuses, code) {
		return
	}
	value, _ := repl.GetString("http.reverse_proxy.header.Retry-After")
	wait := retryAfter(value, now)
	addr, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
	if wait <= 0 || addr == "" {
		return
	}
	end := now.Add(wait)
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, t := range c.until {
		if !t.After(now) {
			delete(c.until, a)
		}
	}
	if end.After(c.until[addr]) {
		c.until[addr] = end
	}
	if end.UnixNano() > c.latest.Load() {
		c.latest.Store(end.UnixNano())
	}
}

// cooling reports whether addr's Retry-After still runs.
func (c *cooldowns) cooling(addr string, now time.Time) bool {
	if now.UnixNano() >= c.latest.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.until[addr].After(now)
}

// retryAfter reads a Retry-After value, seconds or an HTTP date, as a
// duration of at most maxCooldown; 0 when there is none.
func retryAfter(value string, now time.Time) time.Duration {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0
	}
	if s, err := strconv.ParseUint(value, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		return time.Duration(min(s, uint64(maxCooldown/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(value); err == nil {
		return max(0, min(t.Sub(now), maxCooldown))
	}
	return 0
}

// coolingSelection is a reverse_proxy selection policy that leaves out
// upstreams in cooldown, then lets the configured policy choose. When
// every upstream cools, it selects none: reverse_proxy answers 503, as
// when all are down.
type coolingSelection struct {
	reverseproxy.Selector
	c *cooldowns
}

func (s coolingSelection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	now := time.Now()
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		// Before a retry, the placeholders describe the reply being
		// retried. Its status is consumed: an attempt that gets no reply
		// (a dial error) must not pass for it.
		s.c.observe(repl, now)
		repl.Delete("http.reverse_proxy.status_code")
	}
	if now.UnixNano() >= s.c.latest.Load() {
		return s.Selector.Select(pool, r, w)
	}
	ready := make(reverseproxy.UpstreamPool, 0, len(pool))
	for _, u := range pool {
		if !s.c.cooling(u.Dial, now) {
			ready = append(ready, u)
		}
	}
	if len(ready) == 0 {
		return nil
	}
	return s.Selector.Select(ready, r, w)
}
