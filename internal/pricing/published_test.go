package pricing

import (
	"os"
	"testing"
)

// The price list as LiteLLM publishes it (a copy in testdata) loads, and
// its models are priced as their providers publish them.
func TestReadLiteLLMPublished(t *testing.T) {
	data, err := os.ReadFile("testdata/model_prices_and_context_window.json")
	if err != nil {
		t.Fatal(err)
	}
	prices, err := ReadLiteLLM(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(prices) < 1000 {
		t.Errorf("%d models priced: want the list's more than a thousand", len(prices))
	}
	// OpenAI's published price of gpt-4o: $2.50 in, $10 out, $1.25
	// cached, per million tokens.
	if p, ok := prices["gpt-4o"]; !ok || !near(p.Input, 2.5) || !near(p.Output, 10) || !p.HasCached || !near(p.Cached, 1.25) {
		t.Errorf("gpt-4o: %+v, %v; want 2.50 / 10 / cached 1.25", p, ok)
	}
	// Anthropic's of Claude Sonnet 4: $3 in, $15 out, $0.30 cache reads,
	// $3.75 cache writes.
	if p, ok := prices["claude-sonnet-4-20250514"]; !ok || !near(p.Input, 3) || !near(p.Output, 15) || !p.HasCached || !near(p.Cached, 0.3) || !p.HasCacheWrite || !near(p.CacheWrite, 3.75) {
		t.Errorf("claude-sonnet-4-20250514: %+v, %v; want 3 / 15 / cached 0.30 / cache writes 3.75", p, ok)
	}
	// An embeddings model has no output price: 0, not left out.
	if p, ok := prices["text-embedding-3-small"]; !ok || !near(p.Input, 0.02) || p.Output != 0 {
		t.Errorf("text-embedding-3-small: %+v, %v; want 0.02 in, 0 out", p, ok)
	}
}
