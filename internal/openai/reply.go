package openai

import (
	"errors"
	"strconv"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// ErrInvalidReply is returned for a backend reply or chunk that is not
// a JSON object with a choices array.
var ErrInvalidReply = errors.New("backend reply is not a completion")

// Meta is what the gateway stamps on every reply and chunk.
type Meta struct {
	// ID is the request id; it replaces the backend's id.
	ID string
	// Model fills a reply that names no model.
	Model string
	// Created fills a reply that has no created time (Unix seconds).
	Created int64
	// PromptBytes is Request.PromptBytes, for the usage estimate.
	PromptBytes int
}

// Reply is what normalization learnt of a reply.
type Reply struct {
	// FinishReason is the first choice's finish_reason; for a Response,
	// its status.
	FinishReason string
	// Usage is the backend's usage, or an estimate (Usage.Estimated).
	Usage Usage
	// CompletionBytes is the size of the choices' content.
	CompletionBytes int
	// ResponseID is the id of the Response a backend made (Responses
	// only; empty until its first event names it).
	ResponseID string
}

// Completion returns a minimal completion with one assistant message:
// the gateway's own replies, normalized like a backend's.
func Completion(content string) []byte {
	b := append([]byte(`{"choices":[{"message":{"content":`), appendString(nil, content)...)
	return append(b, "}}]}"...)
}

// AppendNormalizedCompletion appends to dst the backend's non-streaming reply
// body, normalized: id, object, created, model and usage set or filled,
// every choice with its index, a message role and a finish_reason.
// Everything else the backend sent is copied unchanged. The body is
// validated and split in one pass; only choices and messages are
// walked again, to be edited.
func AppendNormalizedCompletion(dst, body []byte, m Meta) ([]byte, Reply, error) {
	return normalizeReply(dst, body, m, "chat.completion", appendChoice)
}

// normalizeReply normalizes a reply with choices, as AppendNormalizedCompletion
// describes, stamping it with object kind and writing each choice with
// choice, which adds what it learns to rep.
func normalizeReply(dst, body []byte, m Meta, kind string, choice func(dst []byte, pos int, fields []span, rep *Reply) []byte) ([]byte, Reply, error) {
	var rep Reply
	parts, ok := collectPooled(body)
	defer parts.release()
	if !ok {
		return dst, rep, ErrInvalidReply
	}
	var choices, usage, model, created []byte
	for _, f := range parts.top {
		switch f.name {
		case "choices":
			choices = f.val
		case "usage":
			usage = f.val
		case "model":
			model = f.val
		case "created":
			created = f.val
		}
	}
	if len(choices) == 0 || choices[0] != '[' {
		return dst, rep, ErrInvalidReply
	}

	var o object
	o.open(dst)
	o.str("id", m.ID)
	o.str("object", kind)
	writeCreatedModel(&o, created, model, m)
	o.key("choices")
	o.buf = append(o.buf, '[')
	for i, c := range parts.choices {
		if i > 0 {
			o.buf = append(o.buf, ',')
		}
		o.buf = choice(o.buf, i, parts.fieldsOf(c), &rep)
	}
	o.buf = append(o.buf, ']')

	if u, ok := readUsage(usage); ok {
		rep.Usage = u
	} else {
		rep.Usage = Usage{PromptTokens: EstimateTokens(m.PromptBytes), CompletionTokens: EstimateTokens(rep.CompletionBytes), Estimated: true}
	}
	usageMember(&o, usage, rep.Usage)

	o.others(parts.top)
	return o.close(), rep, nil
}

// appendChoice appends the reply's choice at position pos, whose members
// are fields, with its index, a message with a role and a finish_reason;
// it adds what it learns (the first choice's finish reason, content
// size) to rep.
func appendChoice(dst []byte, pos int, fields []span, rep *Reply) []byte {
	var o object
	o.open(dst)
	hasIndex, hasMessage, hasFinish := false, false, false
	for _, f := range fields {
		hasIndex = hasIndex || f.name == "index"
	}
	if !hasIndex {
		o.int("index", int64(pos))
	}
	for _, f := range fields {
		switch f.name {
		case "message":
			hasMessage = true
			o.key("message")
			o.buf = appendMessage(o.buf, f.val, rep)
		case "finish_reason":
			if jsonwalk.IsNull(f.val) {
				continue
			}
			hasFinish = true
			o.member(f.key, f.val)
			if pos == 0 {
				rep.FinishReason = stringValue(f.val)
			}
		default:
			o.member(f.key, f.val)
		}
	}
	if !hasMessage {
		o.raw("message", []byte(`{"role":"assistant","content":null}`))
	}
	if !hasFinish {
		o.str("finish_reason", "stop")
		if pos == 0 {
			rep.FinishReason = "stop"
		}
	}
	return o.close()
}

// appendMessage appends a reply message with "role" set, and adds its
// content's size to rep.
func appendMessage(dst, msg []byte, rep *Reply) []byte {
	if len(msg) == 0 || msg[0] != '{' { // values start at their first byte
		return append(dst, `{"role":"assistant","content":null}`...)
	}
	var fieldBuf [6]span
	fields := appendMembers(fieldBuf[:0], msg)
	hasRole := false
	for _, f := range fields {
		hasRole = hasRole || f.name == "role" && !jsonwalk.IsNull(f.val)
	}
	var o object
	o.open(dst)
	if !hasRole {
		o.str("role", "assistant")
	}
	for _, f := range fields {
		if f.name == "role" && jsonwalk.IsNull(f.val) {
			continue
		}
		if f.name == "content" || f.name == "tool_calls" || f.name == "refusal" {
			rep.CompletionBytes += contentSize(f.val)
		}
		o.member(f.key, f.val)
	}
	return o.close()
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
