package chatgateway

import (
	"net/http"
	"slices"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// serveReady answers GET /readyz, for load balancers and readiness
// probes: 200 while every backend has a healthy upstream (always in
// echo mode), else 503 in OpenAI's error shape.
func (h *Handler) serveReady(x *exchange) {
	if !h.echoMode() && !h.ready() {
		x.fail(openai.NoHealthyUpstream())
		return
	}
	x.writeJSON(http.StatusOK, []byte(`{"status":"ready"}`))
}

// ready reports whether every backend has an upstream its reverse
// proxy's health checks (active, passive, circuit breaker) count as
// healthy. Dynamic upstreams are not known in advance: they count as
// healthy.
func (h *Handler) ready() bool {
	for _, b := range h.Backends {
		rp, ok := b.proxy.(*reverseproxy.Handler)
		if ok && len(rp.Upstreams) > 0 && !slices.ContainsFunc(rp.Upstreams, (*reverseproxy.Upstream).Healthy) {
			return false
		}
	}
	return true
}
