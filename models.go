package chatgateway

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// modelEntry is one model of GET /v1/models.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// serveModels answers GET /v1/models with the models the client may use.
func (h *Handler) serveModels(x *exchange) {
	list, r := h.modelList(x)
	if r.err != nil {
		x.answer(r)
		return
	}
	out, _ := json.Marshal(struct {
		Object string       `json:"object"`
		Data   []modelEntry `json:"data"`
	}{"list", list})
	x.writeJSON(http.StatusOK, out)
}

// serveModel answers GET /v1/models/{id} with that model, or 404
// model_not_found (as for a model the client's key may not use). An id
// may hold slashes, as Hugging Face names do. In echo mode every model
// the key may use is served, as the chat route answers for any.
func (h *Handler) serveModel(x *exchange, id string) {
	if h.echoMode() {
		if !x.allowed(id) {
			x.fail(openai.ModelNotFound(id))
			return
		}
		out, _ := json.Marshal(modelEntry{ID: id, Object: "model", OwnedBy: "chat_gateway"})
		x.writeJSON(http.StatusOK, out)
		return
	}
	list, r := h.modelList(x)
	if r.err != nil {
		x.answer(r)
		return
	}
	i := slices.IndexFunc(list, func(m modelEntry) bool { return m.ID == id })
	if i < 0 {
		x.fail(openai.ModelNotFound(id))
		return
	}
	out, _ := json.Marshal(list[i])
	x.writeJSON(http.StatusOK, out)
}

// modelList returns the models the gateway serves: the echo model in
// echo mode; else every model and alias the backends list, plus what the
// backend that lists none reports of itself; of them, those the client's
// key may use.
func (h *Handler) modelList(x *exchange) ([]modelEntry, result) {
	var list []modelEntry
	add := func(id string) {
		if !slices.ContainsFunc(list, func(m modelEntry) bool { return m.ID == id }) {
			list = append(list, modelEntry{ID: id, Object: "model", OwnedBy: "chat_gateway"})
		}
	}
	if h.echoMode() {
		add(echoModel)
	} else {
		for _, b := range h.Backends {
			for _, m := range b.Models {
				add(m)
			}
			for _, a := range sortedKeys(b.Aliases) {
				add(a)
			}
		}
		if h.catchAll != nil {
			body, r := h.catchAll.reportedModels(x, time.Duration(h.FirstTokenTimeout))
			if r.err != nil && len(list) == 0 {
				return nil, r
			}
			var reported struct {
				Data []modelEntry `json:"data"`
			}
			_ = json.Unmarshal(body, &reported)
			for _, m := range reported.Data {
				if !slices.ContainsFunc(list, func(e modelEntry) bool { return e.ID == m.ID }) {
					m.Object = "model"
					list = append(list, m)
				}
			}
		}
	}
	list = slices.DeleteFunc(list, func(m modelEntry) bool { return !x.allowed(m.ID) })
	if list == nil {
		list = []modelEntry{}
	}
	return list, result{}
}

// modelsTTL is how long a backend's own model list is reused.
const modelsTTL = 10 * time.Second

// modelsCache holds a backend's last model list.
type modelsCache struct {
	mu   sync.Mutex
	body []byte
	at   time.Time
}

// reportedModels returns the backend's model list, fetched at most once
// per modelsTTL.
func (b *Backend) reportedModels(x *exchange, timeout time.Duration) ([]byte, result) {
	c := &b.models
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.body != nil && time.Since(c.at) < modelsTTL {
		return c.body, result{}
	}
	body, r := x.fetchModels(b, timeout)
	if r.err == nil {
		c.body, c.at = body, time.Now()
	}
	return body, r
}

// fetchModels asks a backend for its model list.
func (x *exchange) fetchModels(b *Backend, timeout time.Duration) ([]byte, result) {
	ctx, cancel := context.WithTimeout(x.r.Context(), timeout)
	defer cancel()
	var rb replyBuffer
	aborted, err := serveProxy(b.proxy, &rb, x.upstreamRequest(ctx, b, http.MethodGet, "/models", nil))
	switch {
	case err != nil || rb.status == 0:
		return nil, result{err: proxyError(err), proxyErr: err}
	case aborted || rb.tooLarge:
		return nil, result{err: openai.UpstreamReplyIncomplete("model list")}
	case rb.status/100 != 2:
		return nil, result{err: x.h.upstreamKeys.redactError(openai.BackendError(rb.status, rb.body)), fromBackend: true}
	}
	return rb.body, result{}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
