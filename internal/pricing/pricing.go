// Package pricing says what a request cost: its token usage at the
// price of the model that served it, in US dollars. Prices come from
// the configuration or from LiteLLM's community-kept price list.
package pricing

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// Price is what a model's tokens cost, in US dollars per million
// tokens.
type Price struct {
	// Input is the price of prompt tokens.
	Input float64
	// Output is the price of completion tokens.
	Output float64
	// Cached is the price of prompt tokens the backend read from its
	// prompt cache; they cost Input where HasCached is false.
	Cached    float64
	HasCached bool
	// CacheWrite is the price of prompt tokens the backend wrote to its
	// prompt cache (Anthropic bills them above Input); they cost Input
	// where HasCacheWrite is false.
	CacheWrite    float64
	HasCacheWrite bool
}

// Usage is what a request used.
type Usage struct {
	// Prompt is the prompt tokens, cached ones included.
	Prompt int64
	// Cached is how many of them the backend read from its cache.
	Cached int64
	// Written is how many of them it wrote to its cache.
	Written int64
	// Completion is the completion tokens.
	Completion int64
}

// USD is the cost of u at p, in US dollars.
func (p Price) USD(u Usage) float64 {
	cached := min(max(u.Cached, 0), u.Prompt)
	written := min(max(u.Written, 0), u.Prompt-cached)
	cachedPrice, writePrice := p.Input, p.Input
	if p.HasCached {
		cachedPrice = p.Cached
	}
	if p.HasCacheWrite {
		writePrice = p.CacheWrite
	}
	return (float64(u.Prompt-cached-written)*p.Input + float64(cached)*cachedPrice + float64(written)*writePrice + float64(u.Completion)*p.Output) / 1e6
}

// Micros is usd in millionths of a dollar, rounded up: a budget's unit;
// 0 for nothing or less, math.MaxInt64 for more than an int64 holds.
func Micros(usd float64) int64 {
	m := math.Ceil(usd*1e6 - 1e-6)
	switch {
	case !(m > 0): // NaN too
		return 0
	case m >= math.MaxInt64:
		return math.MaxInt64
	}
	return int64(m)
}

// Check reports a price no request can be charged at.
func (p Price) Check() error {
	for _, v := range []float64{p.Input, p.Output, p.Cached, p.CacheWrite} {
		if !usable(v) {
			return fmt.Errorf("pricing: %v USD per million tokens: want a number from 0 to 1000000", v)
		}
	}
	return nil
}

// usable reports whether v, US dollars per million tokens, is a price a
// request can be charged at.
func usable(v float64) bool { return v >= 0 && v <= 1e6 } // NaN is neither

// liteLLMEntry is what ReadLiteLLM reads of an entry of LiteLLM's list:
// prices in US dollars per token.
type liteLLMEntry struct {
	Input      *float64 `json:"input_cost_per_token"`
	Output     *float64 `json:"output_cost_per_token"`
	Cached     *float64 `json:"cache_read_input_token_cost"`
	CacheWrite *float64 `json:"cache_creation_input_token_cost"`
}

// ReadLiteLLM reads LiteLLM's model_prices_and_context_window.json: an
// object of entries by model name, each with input_cost_per_token and
// output_cost_per_token (US dollars per token) and, where the provider
// prices its prompt cache apart, cache_read_input_token_cost and
// cache_creation_input_token_cost. Entries
// without both token prices (images, audio, the sample_spec) and those
// whose prices are not numbers are left out.
func ReadLiteLLM(data []byte) (map[string]Price, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("pricing: not LiteLLM's price list (a JSON object of models): %w", err)
	}
	prices := make(map[string]Price, len(raw))
	for model, v := range raw {
		var e liteLLMEntry
		if json.Unmarshal(v, &e) != nil || e.Input == nil || e.Output == nil {
			continue
		}
		p := Price{Input: *e.Input * 1e6, Output: *e.Output * 1e6}
		if p.Check() != nil {
			continue
		}
		if e.Cached != nil && usable(*e.Cached*1e6) {
			p.Cached, p.HasCached = *e.Cached*1e6, true
		}
		if e.CacheWrite != nil && usable(*e.CacheWrite*1e6) {
			p.CacheWrite, p.HasCacheWrite = *e.CacheWrite*1e6, true
		}
		prices[model] = p
	}
	if len(prices) == 0 {
		return nil, errors.New("pricing: no model with input_cost_per_token and output_cost_per_token: not LiteLLM's price list")
	}
	return prices, nil
}
