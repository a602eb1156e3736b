package chatgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
)

func init() {
	caddy.RegisterModule(UsageAPI{})
}

// UsageAPI serves, on Caddy's admin API, what each identity used of each
// model in the current UTC day, week or month (requests, tokens, cost),
// and what is left of the budgets that apply: GET
// /chat-gateway/usage?period=day|week|month (default month). It reads
// the limits' store, so it needs a limits block, and every gateway on
// one Redis reports the same. It is as protected as the rest of the
// admin API. `caddy chat-gateway usage` prints it as a table.
type UsageAPI struct{}

// CaddyModule returns the Caddy module information.
func (UsageAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.chat_gateway_usage",
		New: func() caddy.Module { return new(UsageAPI) },
	}
}

// Routes returns the admin route of the usage report.
func (UsageAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: usagePath, Handler: caddy.AdminHandlerFunc(serveUsage)}}
}

// usagePath is the usage report's path on the admin API.
const usagePath = "/chat-gateway/usage"

// usageSources are the running handlers with a limits block: Provision
// adds a handler, Cleanup removes it.
var usageSources sync.Map // *Handler -> struct{}

// usageReport is the usage endpoint's reply.
type usageReport struct {
	Period  string        `json:"period"`
	Start   time.Time     `json:"start"`
	End     time.Time     `json:"end"`
	Rows    []usageRow    `json:"rows"`
	Budgets []budgetState `json:"budgets"`
}

// usageRow is one identity's use of one model.
type usageRow struct {
	limits.UsageRow
	CostUSD float64 `json:"cost_usd"`
}

// budgetState is what is left of a budget now.
type budgetState struct {
	// Scope is the identity, or "model <name>".
	Scope    string    `json:"scope"`
	Period   string    `json:"period"`
	LimitUSD float64   `json:"limit_usd"`
	UsedUSD  float64   `json:"used_usd"`
	LeftUSD  float64   `json:"left_usd"`
	Resets   time.Time `json:"resets"`
}

// serveUsage answers GET /chat-gateway/usage.
func serveUsage(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: GET only", r.Method)}
	}
	name := r.URL.Query().Get("period")
	if name == "" {
		name = "month"
	}
	period, err := limits.ParsePeriod(name)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("period %q: want day, week or month", name)}
	}
	report, err := usageOf(r.Context(), period, time.Now())
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(report)
}

// usageOf builds the report of the period holding now, from each store
// the running handlers count in (once each).
func usageOf(ctx context.Context, period limits.Period, now time.Time) (*usageReport, error) {
	start, end := period.Bounds(now)
	report := &usageReport{Period: period.String(), Start: start, End: end, Rows: []usageRow{}, Budgets: []budgetState{}}
	stores := map[string][]limits.UsageRow{} // each store's rows, read once
	budgets := map[string]bool{}
	var handlers []*Handler
	usageSources.Range(func(k, _ any) bool { handlers = append(handlers, k.(*Handler)); return true })
	if len(handlers) == 0 {
		return nil, fmt.Errorf("no chat_gateway handler with a limits block is running: the usage report reads the limits' store")
	}
	for _, h := range handlers {
		l := h.Limits
		if l.ledger == nil {
			continue
		}
		rows, read := stores[l.poolKey]
		if !read {
			var err error
			if rows, err = l.ledger.Usage(ctx, start, end); err != nil {
				return nil, fmt.Errorf("reading the usage from the limits store: %w", err)
			}
			stores[l.poolKey] = rows
			for _, row := range rows {
				report.Rows = append(report.Rows, usageRow{row, float64(row.Micros) / 1e6})
			}
		}
		states, err := h.budgetStates(ctx, rows, budgets)
		if err != nil {
			return nil, fmt.Errorf("reading the budgets from the limits store: %w", err)
		}
		report.Budgets = append(report.Budgets, states...)
	}
	return report, nil
}

// budgetStates reads the budgets that apply to the identities and
// models of rows, and to every key with a budget of its own, but those
// in done, which it adds to.
func (h *Handler) budgetStates(ctx context.Context, rows []limits.UsageRow, done map[string]bool) ([]budgetState, error) {
	l := h.Limits
	own := map[string]limits.Set{} // the keys' own limits, by identity
	if h.keys != nil {
		ring := h.keys.Load()
		ring.set.Each(func(k *keys.Key) {
			if set := ring.limits[k.Index]; set.Budget.Micros > 0 {
				own[scopeName(k.ID)] = set
			}
		})
	}
	var dims []limits.Dimension
	var scopes []string
	add := func(d limits.Dimension, scope string) {
		if key := fmt.Sprint(l.poolKey, d); !done[key] { // a budget of a store once
			done[key] = true
			dims, scopes = append(dims, d), append(scopes, scope)
		}
	}
	rows = slices.DeleteFunc(slices.Clone(rows), func(r limits.UsageRow) bool { return r.Identity == limits.LedgerOverflow })
	identities := slices.Sorted(maps.Keys(own))
	for _, r := range rows {
		identities = append(identities, r.Identity)
	}
	for _, id := range identities {
		if b := l.set.Override(own[id]).Budget; b.Micros > 0 {
			add(limits.BudgetOf(identityScope(id), b), id)
		}
	}
	for _, r := range rows {
		if m := l.modelLimits(r.Model); m != nil && m.Budget.Micros > 0 {
			add(limits.BudgetOf(modelScope(r.Model), m.Budget), "model "+r.Model)
		}
	}
	states, err := l.limiter.Levels(ctx, dims)
	if err != nil {
		return nil, err
	}
	out := make([]budgetState, len(states))
	for i, st := range states {
		d := st.Dimension
		_, resets := d.Period.Bounds(time.Now())
		out[i] = budgetState{Scope: scopes[i], Period: d.Period.String(), LimitUSD: float64(d.Limit) / 1e6,
			UsedUSD: float64(d.Limit-st.Remaining) / 1e6, LeftUSD: float64(st.Remaining) / 1e6, Resets: resets}
	}
	return out, nil
}
