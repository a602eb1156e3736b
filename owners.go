package chatgateway

// Stored Responses belong to who made them. A backend marked `responses
// stateful` keeps the Responses it makes, and a later request continues
// one by naming it as previous_response_id; every client reaches the
// backend with the same upstream key, so only the gateway can tell them
// apart. It records the caller of each Response id it relays, where the
// limits keep their counters, and refuses any other caller's request
// naming it with OpenAI's error for an unknown previous response.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// responseOwnerTTL is how long a Response id stays its caller's: as long
// as OpenAI keeps a stored Response.
const responseOwnerTTL = 30 * 24 * time.Hour

// provisionOwners opens the record of who made which Response when a
// backend keeps them: the limits' store (Redis, shared by every
// instance, or memory), else an in-memory one shared across reloads.
func (h *Handler) provisionOwners() error {
	if !slices.ContainsFunc(h.Backends, (*Backend).keepsResponses) {
		return nil
	}
	if h.Limits != nil {
		h.owners = h.Limits.store.(limits.Owners)
		return nil
	}
	store, _, err := limitStores.LoadOrNew(memoryStoreKey, func() (caddy.Destructor, error) { return limits.NewMemory(), nil })
	if err != nil {
		return fmt.Errorf("opening the store of Response owners: %w", err)
	}
	h.owners, h.ownersPoolKey = store.(limits.Owners), memoryStoreKey
	return nil
}

// owner names who the request is from, for the Responses it makes: the
// key id with auth; else the limits' identity; else the user an earlier
// auth handler set; else the client IP.
func (x *exchange) owner() string {
	switch {
	case x.key != nil:
		return "key:" + x.keyID
	case x.h.Limits != nil:
		return "id:" + x.h.Limits.identity(x)
	case x.keyID != "":
		return "user:" + x.keyID
	}
	return "ip:" + clientIP(x.r)
}

// checkPrevious answers the request with an error, and reports false,
// unless its caller made the Response it names.
func (x *exchange) checkPrevious(id string) bool {
	owns, err := x.h.owners.Owns(x.r.Context(), id, x.owner())
	switch {
	case err != nil && x.r.Context().Err() != nil:
		x.fail(openai.ClientClosedRequest())
	case err != nil:
		x.h.logger.Warn("response owners store failed", zap.String("request_id", x.id), zap.String("op", "owns"), zap.Error(err))
		x.w.Header().Set("Retry-After", "1")
		x.fail(openai.OwnersUnavailable())
	case !owns:
		x.fail(openai.PreviousResponseNotFound(id))
	}
	return err == nil && owns
}

// claim records the caller as the maker of Response id, once, when the
// attempt's backend keeps Responses: before the id reaches the client,
// so that its next request finds it. A record that fails is logged;
// that caller's later requests naming it are refused, as for an id
// unknown.
func (x *exchange) claim(id string) {
	if !x.stateful || x.claimed || id == "" {
		return
	}
	x.claimed = true
	ctx := context.WithoutCancel(x.r.Context())
	if err := x.h.owners.Claim(ctx, id, x.owner(), responseOwnerTTL); err != nil {
		x.h.logger.Warn("response owners store failed", zap.String("request_id", x.id), zap.String("op", "claim"), zap.Error(err))
	}
}

// clientIP is the client's address as Caddy determined it (trusted
// proxies considered), else the connection's.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}
