package chatgateway

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/chatgateway/caddy-chat-gateway/internal/anthropic"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// ServeHTTP routes the gateway's paths: its routes, and any other path
// under /v1/ (a 404 unknown_url, unless pass_unknown_paths); it passes
// the others to next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	allow := "GET, HEAD"
	ep := endpointFor(r.URL.Path)
	unknown := false
	switch {
	case ep != nil && strings.HasPrefix(r.URL.Path, "/v1/"):
		allow = http.MethodPost
	case r.URL.Path == "/v1/models", r.URL.Path == "/healthz", r.URL.Path == "/readyz":
	case strings.HasPrefix(r.URL.Path, "/v1/models/") && len(r.URL.Path) > len("/v1/models/"):
	case strings.HasPrefix(r.URL.Path, "/v1/") && !h.PassUnknownPaths:
		unknown = true
	default:
		return next.ServeHTTP(w, r)
	}

	x := h.newExchange(w, r, ep)
	defer x.finish()
	if len(r.TransferEncoding) > 0 && r.ProtoMajor == 1 {
		// Go's server drops a Content-Length sent beside
		// Transfer-Encoding, so the gateway cannot tell such a request
		// (RFC 9112 section 6.1: a possible smuggling attempt, after which
		// the connection must close) from a plain chunked one: it closes
		// both. SDKs send Content-Length.
		w.Header().Set("Connection", "close")
	}
	if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !h.identify(x) {
		return nil
	}
	switch {
	case unknown:
		x.fail(openai.UnknownURL(r.Method, r.URL.Path))
	case r.Method != http.MethodPost && allow == http.MethodPost,
		r.Method != http.MethodGet && r.Method != http.MethodHead && allow != http.MethodPost:
		w.Header().Set("Allow", allow)
		x.fail(openai.MethodNotAllowed(r.Method, r.URL.Path, allow))
	case r.URL.Path == "/healthz":
		x.writeJSON(http.StatusOK, []byte(`{"status":"ok"}`))
	case r.URL.Path == "/readyz":
		h.serveReady(x)
	case r.URL.Path == "/v1/models":
		h.serveModels(x)
	case ep == nil:
		h.serveModel(x, strings.TrimPrefix(r.URL.Path, "/v1/models/"))
	default:
		h.serveEndpoint(x, ep)
	}
	return nil
}

// serveEndpoint handles a POST to one of the API routes: chat
// completions, completions, embeddings, responses, messages.
func (h *Handler) serveEndpoint(x *exchange, ep openai.Endpoint) {
	r := x.r
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/json" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			x.fail(openai.UnsupportedMediaType())
			return
		}
	}
	x.ep = ep
	gatewayMetrics.inFlight.Inc()
	defer x.body.release()
	body, e := readBody(x.w, r, &x.body, h.MaxRequestBody, time.Duration(h.ReadBodyTimeout))
	if e != nil {
		x.fail(e)
		return
	}
	x.bodyRead = true
	begin := time.Now()
	req, e := ep.Parse(body)
	x.addOwnTime(time.Since(begin))
	if e != nil {
		x.fail(e)
		return
	}
	// A slot is taken once the body is in: a slow upload costs a
	// socket, never capacity.
	if h.slots != nil {
		select {
		case h.slots <- struct{}{}:
			defer func() { <-h.slots }()
		default:
			x.w.Header().Set("Retry-After", "1")
			x.fail(openai.TooManyConcurrentRequests("The gateway is serving as many requests as it is configured to; retry shortly."))
			return
		}
	}
	x.req = req
	x.model = req.Model
	if !x.allowed(req.Model) {
		x.fail(openai.ModelNotFound(req.Model))
		return
	}
	var rt route
	if !h.echoMode() {
		var ok bool
		if rt, ok = h.route(req.Model); !ok {
			x.fail(openai.ModelNotFound(req.Model))
			return
		}
		if h.Cache != nil {
			h.Cache.prepare(x, rt, body)
		}
	}
	if h.Limits != nil && !h.Limits.admit(x, rt.modelFor(req.Model)) {
		return
	}
	if h.echoMode() {
		h.echo(x)
		return
	}
	if be, ok := ep.(openai.BackendEndpoint); ok {
		if out := be.AnswerLocally(rt.backend.servesMessages()); out != nil {
			x.writeJSON(http.StatusOK, out)
			return
		}
	}
	if req.PreviousResponseID != "" {
		if !rt.backend.keepsResponses() {
			x.fail(openai.UnsupportedParameter("previous_response_id",
				"'previous_response_id' needs a backend that keeps responses ('responses stateful'); the one serving model '"+req.Model+"' does not."))
			return
		}
		if !x.checkPrevious(req.PreviousResponseID) {
			return
		}
	}
	if h.Cache != nil {
		h.Cache.serve(h, x, rt, body)
		return
	}
	h.forward(x, rt, body)
}

// endpointFor returns the endpoint that serves path (with the /v1
// prefix), or nil.
func endpointFor(path string) openai.Endpoint {
	if ep := anthropic.EndpointFor(path); ep != nil {
		return ep
	}
	return openai.EndpointFor(path)
}

// route finds the backend for a model.
func (h *Handler) route(model string) (route, bool) {
	if rt, ok := h.routes[model]; ok {
		return rt, true
	}
	if h.catchAll != nil {
		return route{backend: h.catchAll}, true
	}
	return route{}, false
}

func itoa(n int) string { return strconv.Itoa(n) }

// humanBytes renders a byte count as the Caddyfile takes it, e.g. 16MiB.
func humanBytes(n int64) string {
	return strings.ReplaceAll(humanize.IBytes(uint64(n)), " ", "")
}
