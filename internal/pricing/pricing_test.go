package pricing

import (
	"math"
	"testing"
)

// near reports whether a and b are equal but for float rounding.
func near(a, b float64) bool { return math.Abs(a-b) <= 1e-12*math.Max(1, math.Abs(b)) }

// Costs of each usage shape, against values worked out by hand.
func TestUSD(t *testing.T) {
	gpt := Price{Input: 2.50, Output: 10, Cached: 1.25, HasCached: true}
	for _, tc := range []struct {
		name  string
		price Price
		usage Usage
		want  float64
	}{
		// 600 uncached at $2.50/M, 400 cached at $1.25/M, 200 out at $10/M:
		// 0.0015 + 0.0005 + 0.002.
		{"chat, cached prompt tokens", gpt, Usage{Prompt: 1000, Cached: 400, Completion: 200}, 0.004},
		// No cached price: cached tokens cost the input price, 1000 x 3 + 200 x 15.
		{"cached without a cached price", Price{Input: 3, Output: 15}, Usage{Prompt: 1000, Cached: 400, Completion: 200}, 0.006},
		// Embeddings: 5,000 prompt tokens at $0.02/M.
		{"embeddings, prompt only", Price{Input: 0.02}, Usage{Prompt: 5000}, 0.0001},
		// A stream of 12 prompt and 300 completion tokens at $0.15/$0.60.
		{"stream with its usage chunk", Price{Input: 0.15, Output: 0.60}, Usage{Prompt: 12, Completion: 300}, 0.0000018 + 0.00018},
		// Anthropic-style: 100 input, 2,000 read from the cache at $0.30/M, 50 out; $3/$15.
		{"cache reads", Price{Input: 3, Output: 15, Cached: 0.30, HasCached: true}, Usage{Prompt: 2100, Cached: 2000, Completion: 50}, 0.0003 + 0.0006 + 0.00075},
		// Anthropic's cache writes at $3.75/M (1.25x input): 100 x $3 +
		// 1,000 written x $3.75 + 10 x $15.
		{"cache writes", Price{Input: 3, Output: 15, Cached: 0.30, HasCached: true, CacheWrite: 3.75, HasCacheWrite: true}, Usage{Prompt: 1100, Written: 1000, Completion: 10}, 0.0003 + 0.00375 + 0.00015},
		{"no usage", gpt, Usage{}, 0},
		{"more cached than the prompt counts as the prompt", gpt, Usage{Prompt: 10, Cached: 50}, 10 * 1.25 / 1e6},
	} {
		if got := tc.price.USD(tc.usage); !near(got, tc.want) {
			t.Errorf("%s: %.12f USD, want %.12f", tc.name, got, tc.want)
		}
	}
	for usd, want := range map[float64]int64{0.004: 4000, 0.0000001: 1, 0: 0, 25: 25_000_000, 0.0000018 + 0.00018: 182, -1: 0, 9.3e18: math.MaxInt64, math.Inf(1): math.MaxInt64} {
		if got := Micros(usd); got != want {
			t.Errorf("Micros(%v) = %d, want %d", usd, got, want)
		}
	}
}

// LiteLLM's entries become prices per million tokens; entries that are
// not token-priced are left out.
func TestReadLiteLLM(t *testing.T) {
	prices, err := ReadLiteLLM([]byte(`{
		"sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "max_tokens": "LEGACY parameter"},
		"gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "cache_read_input_token_cost": 7.5e-08, "mode": "chat"},
		"dall-e-3": {"output_cost_per_image": 0.04, "mode": "image_generation"},
		"text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0, "mode": "embedding"},
		"odd": {"input_cost_per_token": "free", "output_cost_per_token": 1},
		"odd-cache": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "cache_read_input_token_cost": -1}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	mini := prices["gpt-4o-mini"]
	if !near(mini.Input, 0.15) || !near(mini.Output, 0.60) || !mini.HasCached || !near(mini.Cached, 0.075) {
		t.Errorf("gpt-4o-mini: %+v, want 0.15 / 0.60 / cached 0.075 per million", mini)
	}
	if e := prices["text-embedding-3-small"]; !near(e.Input, 0.02) || e.HasCached {
		t.Errorf("text-embedding-3-small: %+v, want 0.02 per million, no cached price", e)
	}
	if p := prices["odd-cache"]; !near(p.Input, 1) || !near(p.Output, 2) || p.HasCached {
		t.Errorf("odd-cache: %+v, want its prices kept without the unusable cache price", p)
	}
	for _, gone := range []string{"dall-e-3", "odd"} {
		if _, ok := prices[gone]; ok {
			t.Errorf("%s is priced: want it left out", gone)
		}
	}
	for _, bad := range []string{`[]`, `{}`, `{"a":{"mode":"chat"}}`, `not json`} {
		if _, err := ReadLiteLLM([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// FuzzReadLiteLLM: whatever the file holds, every price read is one a
// request can be charged at, and costs are never negative.
func FuzzReadLiteLLM(f *testing.F) {
	f.Add(`{"m":{"input_cost_per_token":1e-6,"output_cost_per_token":2e-6,"cache_read_input_token_cost":5e-7}}`)
	f.Add(`{"sample_spec":{"input_cost_per_token":0.0,"output_cost_per_token":0.0,"max_tokens":"x"},"img":{"output_cost_per_image":0.04}}`)
	f.Add(`{"m":{"input_cost_per_token":-1,"output_cost_per_token":1e308}}`)
	f.Fuzz(func(t *testing.T, data string) {
		prices, err := ReadLiteLLM([]byte(data))
		if err != nil {
			return
		}
		for model, p := range prices {
			if err := p.Check(); err != nil {
				t.Fatalf("%s: %+v: %v", model, p, err)
			}
			if c := p.USD(Usage{Prompt: 1000, Cached: 500, Completion: 1000}); c < 0 || math.IsNaN(c) || math.IsInf(c, 0) {
				t.Fatalf("%s: %+v costs %v", model, p, c)
			}
		}
	})
}
