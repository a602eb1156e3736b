package openai

import (
	"errors"
	"strconv"
)

// ErrInvalidReply is returned for a backend reply that is not a JSON
// object with a choices array.
var ErrInvalidReply = errors.New("backend reply is not a chat completion")

// Meta is what the gateway stamps on every reply and chunk.
type Meta struct {
	// ID is the request id; it replaces the backend's id.
	ID string
	// Model fills a reply that names no model.
	Model string
	// Created fills a reply that has no created time (Unix seconds).
	Created int64
	// PromptBytes is ChatRequest.ContentBytes, for the usage estimate.
	PromptBytes int
}

// Reply is what normalization learnt of a reply.
type Reply struct {
	FinishReason string
	Usage        Usage
	// CompletionBytes is the size of the choices' content.
	CompletionBytes int
}

// Completion returns a minimal completion with one assistant message:
// the gateway's own replies, normalized like a backend's.
func Completion(content string) []byte {
	b := append([]byte(`{"choices":[{"message":{"content":`), appendString(nil, content)...)
	return append(b, "}}]}"...)
}

// NormalizeCompletion appends to dst the backend's non-streaming reply
// body, normalized: id, object, created, model and usage set or filled,
// every choice with its index, a message role and a finish_reason.
// Everything else the backend sent is copied unchanged.
func NormalizeCompletion(dst, body []byte, m Meta) ([]byte, Reply, error) {
	var rep Reply
	if !valid(body) {
		return dst, rep, ErrInvalidReply
	}
	var choices, usage, model, created []byte
	ok := members(body, func(k, v []byte) {
		switch {
		case keyIs(k, "choices"):
			choices = v
		case keyIs(k, "usage"):
			usage = v
		case keyIs(k, "model"):
			model = v
		case keyIs(k, "created"):
			created = v
		}
	})
	if !ok || len(choices) == 0 || choices[0] != '[' {
		return dst, rep, ErrInvalidReply
	}

	var o object
	o.open(dst)
	o.str("id", m.ID)
	o.str("object", "chat.completion")
	writeCreatedModel(&o, created, model, m)

	completionBytes := 0
	o.key("choices")
	o.buf = append(o.buf, '[')
	elements(choices, func(i int, c []byte) {
		if i > 0 {
			o.buf = append(o.buf, ',')
		}
		var ch object
		ch.open(o.buf)
		if Member(c, "index") == nil {
			ch.int("index", int64(i))
		}
		hasMessage, hasFinish := false, false
		members(c, func(k, v []byte) {
			switch {
			case keyIs(k, "message"):
				hasMessage = true
				ch.key("message")
				ch.buf, completionBytes = appendMessage(ch.buf, v, completionBytes)
			case keyIs(k, "finish_reason"):
				if isNull(v) {
					return
				}
				hasFinish = true
				ch.member(k, v)
				if i == 0 {
					rep.FinishReason = stringValue(v)
				}
			default:
				ch.member(k, v)
			}
		})
		if !hasMessage {
			ch.raw("message", []byte(`{"role":"assistant","content":null}`))
		}
		if !hasFinish {
			ch.str("finish_reason", "stop")
			if i == 0 {
				rep.FinishReason = "stop"
			}
		}
		o.buf = ch.close()
	})
	o.buf = append(o.buf, ']')

	rep.CompletionBytes = completionBytes
	if u, ok := readUsage(usage); ok {
		rep.Usage = u
	} else {
		rep.Usage = Usage{PromptTokens: EstimateTokens(m.PromptBytes), CompletionTokens: EstimateTokens(completionBytes), Estimated: true}
	}
	usageMember(&o, usage, rep.Usage)

	members(body, func(k, v []byte) {
		for _, name := range [...]string{"id", "object", "created", "model", "choices", "usage"} {
			if keyIs(k, name) {
				return
			}
		}
		o.member(k, v)
	})
	return o.close(), rep, nil
}

// appendMessage appends a reply message with "role" set, and adds its
// content's size to n.
func appendMessage(dst, msg []byte, n int) ([]byte, int) {
	if !members(msg, func([]byte, []byte) {}) {
		return append(dst, `{"role":"assistant","content":null}`...), n
	}
	var o object
	o.open(dst)
	if isNull(Member(msg, "role")) {
		o.str("role", "assistant")
	}
	members(msg, func(k, v []byte) {
		if keyIs(k, "role") && isNull(v) {
			return
		}
		if keyIs(k, "content") || keyIs(k, "tool_calls") || keyIs(k, "refusal") {
			n += contentSize(v)
		}
		o.member(k, v)
	})
	return o.close(), n
}

// contentSize is the size of a content value for the token estimate:
// a string without its quotes, anything else as sent.
func contentSize(v []byte) int {
	if !hasValue(v) {
		return 0
	}
	if v[0] == '"' {
		return len(v) - 2
	}
	return len(v)
}

func writeCreatedModel(o *object, created, model []byte, m Meta) {
	if len(created) > 0 && created[0] >= '0' && created[0] <= '9' {
		o.raw("created", created)
	} else {
		o.int("created", m.Created)
	}
	if len(model) > 2 && model[0] == '"' {
		o.raw("model", model)
	} else {
		o.str("model", m.Model)
	}
}

// parseIndex reads a choice's "index", or returns def.
func parseIndex(v []byte, def int) int {
	if n, err := strconv.Atoi(string(v)); err == nil && n >= 0 && n < 1<<16 {
		return n
	}
	return def
}
