package anthropic

import (
	"strconv"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// AppendPing appends a ping event, which keeps a quiet stream alive.
func AppendPing(dst []byte) []byte {
	return append(dst, "event: ping\ndata: {\"type\":\"ping\"}\n\n"...)
}

// AppendEvents appends the whole event sequence of the reply m, as the
// Anthropic API streams it: how a reply that arrived whole (echo mode, or
// a backend's JSON answer to a streaming request) is streamed.
func AppendEvents(dst []byte, m *Message) []byte {
	dst = appendMessageStart(dst, m, m.Usage.InputTokens)
	for i := range m.Content {
		dst = appendBlockEvents(dst, i, &m.Content[i])
	}
	return appendMessageEnd(dst, m.StopReason, m.StopSequence, m.Usage)
}

// appendEventHead starts an event named name, up to its data.
func appendEventHead(dst []byte, name string) []byte {
	dst = append(dst, "event: "...)
	dst = append(dst, name...)
	return append(dst, "\ndata: "...)
}

// appendMessageStart appends message_start for m with no content yet.
func appendMessageStart(dst []byte, m *Message, inputTokens int64) []byte {
	dst = appendEventHead(dst, "message_start")
	dst = append(dst, `{"type":"message_start","message":`...)
	dst = m.appendHead(dst)
	dst = append(dst, `],"stop_reason":null,"stop_sequence":null,"usage":`...)
	dst = appendUsage(dst, Usage{InputTokens: inputTokens})
	return append(dst, "}}\n\n"...)
}

// appendBlockEvents appends content_block_start, one delta with the
// whole of b, and content_block_stop for the block at index i.
func appendBlockEvents(dst []byte, i int, b *Block) []byte {
	dst = appendEventHead(dst, "content_block_start")
	dst = append(dst, `{"type":"content_block_start","index":`...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	dst = append(dst, `,"content_block":`...)
	if b.Type == "text" {
		dst = (&Block{Type: "text"}).appendJSON(dst, nil)
	} else {
		dst = b.appendJSON(dst, []byte("{}"))
	}
	dst = append(dst, "}\n\n"...)
	dst = appendEventHead(dst, "content_block_delta")
	dst = append(dst, `{"type":"content_block_delta","index":`...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	if b.Type == "text" {
		dst = append(dst, `,"delta":{"type":"text_delta","text":`...)
		dst = appendString(dst, b.Text)
	} else {
		dst = append(dst, `,"delta":{"type":"input_json_delta","partial_json":`...)
		dst = appendString(dst, string(b.Input))
	}
	dst = append(dst, "}}\n\n"...)
	return appendBlockStop(dst, i)
}

// appendBlockStop appends content_block_stop for the block at index i.
func appendBlockStop(dst []byte, i int) []byte {
	dst = appendEventHead(dst, "content_block_stop")
	dst = append(dst, `{"type":"content_block_stop","index":`...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	return append(dst, "}\n\n"...)
}

// appendMessageEnd appends message_delta and message_stop.
func appendMessageEnd(dst []byte, reason, sequence string, u Usage) []byte {
	dst = appendEventHead(dst, "message_delta")
	dst = append(dst, `{"type":"message_delta","delta":{"stop_reason":`...)
	dst = appendNullable(dst, reason)
	dst = append(dst, `,"stop_sequence":`...)
	dst = appendNullable(dst, sequence)
	dst = append(dst, `},"usage":`...)
	dst = appendUsage(dst, u)
	dst = append(dst, "}\n\n"...)
	dst = appendEventHead(dst, "message_stop")
	return append(dst, "{\"type\":\"message_stop\"}\n\n"...)
}

// Echo returns echo mode's reply to r: one text block,
// "Echo: <last user text>", with estimated usage.
func Echo(r *Request, id string) *Message {
	text := "Echo: " + r.Prompt()
	return &Message{ID: id, Model: r.Model, Content: []Block{{Type: "text", Text: text}}, StopReason: StopEndTurn,
		Usage: Usage{InputTokens: r.EstimateTokens(), OutputTokens: openai.EstimateTokens(len(text)), Estimated: true}}
}
