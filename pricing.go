package chatgateway

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/caddyserver/caddy/v2"

	"github.com/chatgateway/caddy-chat-gateway/internal/pricing"
)

// ModelPrice is what the tokens of the models a pattern matches cost,
// in US dollars per million tokens.
type ModelPrice struct {
	// Pattern is a model name, or a pattern in which * stands for any
	// text ("gpt-4o*"), matched against the model the backend was asked
	// for (after aliases and fallback). The first that matches applies.
	Pattern string `json:"pattern"`

	// Input is the price of a million prompt tokens.
	Input float64 `json:"input"`

	// Output is the price of a million completion tokens.
	Output float64 `json:"output"`

	// Cached is the price of a million prompt tokens the backend read
	// from its prompt cache. Default: Input.
	Cached *float64 `json:"cached,omitempty"`

	// CacheWrite is the price of a million prompt tokens the backend
	// wrote to its prompt cache (Anthropic's cache_creation_input_tokens).
	// Default: Input.
	CacheWrite *float64 `json:"cache_write,omitempty"`
}

// prices are a handler's prices: its price lines, then its prices
// file's models by exact name.
type prices struct {
	lines []priceLine
	file  map[string]pricing.Price
}

type priceLine struct {
	pattern string
	price   pricing.Price
}

// provisionPrices reads the price lines and the prices file, if any.
func (h *Handler) provisionPrices(repl *caddy.Replacer) error {
	if len(h.Prices) == 0 && h.PricesFile == "" {
		return nil
	}
	h.prices = new(prices)
	for i, p := range h.Prices {
		if p == nil || p.Pattern == "" {
			return fmt.Errorf("price %d: pattern missing", i)
		}
		price := pricing.Price{Input: p.Input, Output: p.Output}
		if p.Cached != nil {
			price.Cached, price.HasCached = *p.Cached, true
		}
		if p.CacheWrite != nil {
			price.CacheWrite, price.HasCacheWrite = *p.CacheWrite, true
		}
		if err := price.Check(); err != nil {
			return fmt.Errorf("price %s: %w", p.Pattern, err)
		}
		h.prices.lines = append(h.prices.lines, priceLine{p.Pattern, price})
	}
	if h.PricesFile != "" {
		path := repl.ReplaceKnown(h.PricesFile, "")
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("prices_file: %w", err)
		}
		if h.prices.file, err = pricing.ReadLiteLLM(data); err != nil {
			return fmt.Errorf("prices_file %s: %w", path, err)
		}
	}
	return nil
}

// errBudgetNeedsPrices refuses a config with a budget but no prices: it
// would limit nothing. Client keys (keys_file's too) are checked as they
// load.
var errBudgetNeedsPrices = errors.New("a budget needs prices: add price lines or a prices_file, else no request costs anything and no budget limits it")

// budgets reports whether the limits block, or one of its models, has a
// budget.
func (h *Handler) budgets() bool {
	if h.Limits == nil {
		return false
	}
	sets := []LimitSet{h.Limits.LimitSet}
	for _, m := range h.Limits.Models {
		if m != nil {
			sets = append(sets, m.LimitSet)
		}
	}
	return slices.ContainsFunc(sets, func(s LimitSet) bool { return s.Budget != "" })
}

// lookup returns model's price: the first price line that matches it,
// else its entry in the prices file.
func (p *prices) lookup(model string) (pricing.Price, bool) {
	for _, l := range p.lines {
		if globMatch(l.pattern, model) {
			return l.price, true
		}
	}
	price, ok := p.file[model]
	return price, ok
}

// setCost sets the request's cost from its usage at the price of the
// model that served it, once its reply is over: 0 and not priced for a
// model without a price, 0 and priced for a reply from the cache (no
// backend computed it).
func (x *exchange) setCost() {
	p := x.h.prices
	if p == nil || x.req == nil {
		return
	}
	model := x.servedModel
	if model == "" {
		model = x.requestedModel()
	}
	price, ok := p.lookup(model)
	if !ok {
		return
	}
	x.priced = true
	if x.cache.served() {
		return
	}
	x.costUSD = price.USD(pricing.Usage{Prompt: x.usage.PromptTokens, Cached: x.usage.CachedTokens, Written: x.usage.CacheWriteTokens,
		Completion: x.usage.CompletionTokens})
}
