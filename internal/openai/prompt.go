package openai

import "github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"

// promptMembers are, by the path a request body goes to on a backend,
// the members of the body that make up the prompt the backend computes,
// in the order its prompt begins with them: the model first (a replica
// caches each model apart), then what a chat template puts first. The
// Messages path is the Anthropic API's, for a backend that serves it.
// Paths without a prompt to cache (embeddings, count_tokens) have none.
var promptMembers = map[string][]string{
	"/chat/completions": {"model", "tools", "messages"},
	"/completions":      {"model", "prompt"},
	"/responses":        {"model", "instructions", "tools", "input"},
	"/messages":         {"model", "system", "tools", "messages"},
}

// Prompt appends to dst the raw JSON values of the members of body that
// make up its prompt, body being a request to path on a backend, in the
// order promptMembers gives: subslices of body, so that the next turn of
// a conversation, which repeats this one's members and adds to the
// last, begins with the same bytes. Members the body lacks are left
// out; a path without a prompt appends nothing. body must be valid JSON,
// as every request the gateway sends is.
func Prompt(dst [][]byte, path string, body []byte) [][]byte {
	names := promptMembers[path]
	if names == nil {
		return dst
	}
	var found [4][]byte
	members(body, func(k, v []byte) {
		for i, name := range names {
			if found[i] == nil && jsonwalk.KeyIs(k, name) {
				found[i] = v
			}
		}
	})
	for _, v := range found[:len(names)] {
		if v != nil {
			dst = append(dst, v)
		}
	}
	return dst
}
