package openai

import (
	"strconv"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// Usage is the token accounting of one reply.
type Usage struct {
	PromptTokens int64
	// CachedTokens is how many of the prompt tokens the backend read
	// from its prompt cache, as it reported them (OpenAI's
	// prompt_tokens_details.cached_tokens, Anthropic's
	// cache_read_input_tokens); 0 when it reported none.
	CachedTokens int64
	// CacheWriteTokens is how many it wrote to its prompt cache, as
	// Anthropic reports them (cache_creation_input_tokens).
	CacheWriteTokens int64
	CompletionTokens int64
	// Estimated is true when the backend reported nothing and the
	// figures come from EstimateTokens.
	Estimated bool
}

// EstimateTokens estimates the tokens in n bytes of text: one per four
// bytes, rounded up, which is close for English with the GPT and Llama
// tokenizers. It is only used when a backend reports no usage.
func EstimateTokens(n int) int64 { return int64((n + 3) / 4) }

func (u Usage) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, u.PromptTokens, 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, u.CompletionTokens, 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, u.PromptTokens+u.CompletionTokens, 10)
	return append(dst, '}')
}

// readCounts reads the token counts named a and b from the usage object
// v, each with whether v holds it as a count.
func readCounts(v []byte, a, b string) (na, nb int64, hasA, hasB bool) {
	members(v, func(k, val []byte) {
		n, ok := parseCount(val)
		switch {
		case !ok:
		case jsonwalk.KeyIs(k, a):
			na, hasA = n, true
		case jsonwalk.KeyIs(k, b):
			nb, hasB = n, true
		}
	})
	return na, nb, hasA, hasB
}

// readUsage reads a backend's usage object. It reports false when v has
// no usable prompt and completion counts.
func readUsage(v []byte) (Usage, bool) {
	prompt, completion, hasPrompt, hasCompletion := readCounts(v, "prompt_tokens", "completion_tokens")
	return Usage{PromptTokens: prompt, CachedTokens: CachedTokens(v, "prompt_tokens_details"), CompletionTokens: completion}, hasPrompt && hasCompletion
}

// CachedTokens reads the prompt tokens a backend read from its cache in
// the usage object v: details' cached_tokens (prompt_tokens_details for
// chat and completions, input_tokens_details for a Response); 0 when it
// has none.
func CachedTokens(v []byte, details string) int64 {
	n, _ := parseCount(Member(Member(v, details), "cached_tokens"))
	return n
}

// parseCount reads a non-negative integer: a token count, a timestamp.
func parseCount(v []byte) (int64, bool) {
	n, err := strconv.ParseUint(string(v), 10, 63)
	return int64(n), err == nil
}

// usageMember writes the usage member: the backend's own object when it
// is complete (so details such as prompt_tokens_details survive), else
// the gateway's figures.
func usageMember(o *object, raw []byte, u Usage) {
	if u.Estimated || !hasValue(raw) {
		o.key("usage")
		o.buf = u.appendJSON(o.buf)
		return
	}
	hasTotal := false
	members(raw, func(k, _ []byte) { hasTotal = hasTotal || jsonwalk.KeyIs(k, "total_tokens") })
	if hasTotal {
		o.raw("usage", raw)
		return
	}
	o.key("usage")
	var in object
	in.open(o.buf)
	members(raw, in.member)
	in.int("total_tokens", u.PromptTokens+u.CompletionTokens)
	o.buf = in.close()
}
