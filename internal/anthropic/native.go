package anthropic

// A backend that serves the Messages API itself (messages native): its
// replies and events are read for what the gateway keeps of them
// (usage, stop reason, text for a stream made from a reply) and relayed
// as they are.

import (
	"encoding/json"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// nativeMessage is what the gateway reads of a Messages reply from a
// backend that serves them.
type nativeMessage struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Model   string `json:"model"`
	Content []struct {
		Type  string          `json:"type"`
		Text  string          `json:"text"`
		ID    string          `json:"id"`
		Name  string          `json:"name"`
		Input json.RawMessage `json:"input"`
	} `json:"content"`
	StopReason   string      `json:"stop_reason"`
	StopSequence string      `json:"stop_sequence"`
	Usage        nativeUsage `json:"usage"`
}

// nativeUsage is a Messages usage object; a count may be absent.
type nativeUsage struct {
	InputTokens         *int64 `json:"input_tokens"`
	CacheReadTokens     *int64 `json:"cache_read_input_tokens"`
	CacheCreationTokens *int64 `json:"cache_creation_input_tokens"`
	OutputTokens        *int64 `json:"output_tokens"`
}

// into sets the counts u has in usage.
func (u nativeUsage) into(usage *Usage) {
	for _, c := range []struct {
		from *int64
		to   *int64
	}{{u.InputTokens, &usage.InputTokens}, {u.CacheReadTokens, &usage.CacheReadTokens}, {u.CacheCreationTokens, &usage.CacheCreationTokens}, {u.OutputTokens, &usage.OutputTokens}} {
		if c.from != nil {
			*c.to = *c.from
		}
	}
}

// parseMessage reads a native backend's Messages reply. Its text and
// tool_use blocks are kept, for streaming it if need be; other blocks
// (thinking) are relayed in the JSON reply only.
func parseMessage(body []byte) (*Message, error) {
	var n nativeMessage
	if json.Unmarshal(body, &n) != nil || n.Type != "message" {
		return nil, openai.ErrInvalidReply
	}
	msg := &Message{ID: n.ID, Model: n.Model, StopReason: n.StopReason, StopSequence: n.StopSequence}
	n.Usage.into(&msg.Usage)
	for _, b := range n.Content {
		switch b.Type {
		case "text":
			msg.Content = append(msg.Content, Block{Type: "text", Text: b.Text})
		case "tool_use":
			msg.Content = append(msg.Content, Block{Type: "tool_use", ID: b.ID, Name: b.Name, Input: b.Input})
		}
	}
	return msg, nil
}

// nativeMessagesStream is the EventStream of a native backend's
// Messages stream: each event relayed under its name once its data is
// read as JSON, usage and stop reason noted on the way.
type nativeMessagesStream struct {
	m        *Endpoint
	usage    Usage
	stop     string
	bytes    int // text and tool input received
	content  bool
	complete bool // message_stop seen
}

// nativeEvent is what the gateway reads of a Messages stream event.
type nativeEvent struct {
	Type    string `json:"type"`
	Message struct {
		Usage nativeUsage `json:"usage"`
	} `json:"message"`
	Delta struct {
		StopReason  string `json:"stop_reason"`
		Text        string `json:"text"`
		PartialJSON string `json:"partial_json"`
	} `json:"delta"`
	Usage nativeUsage `json:"usage"`
}

func (s *nativeMessagesStream) Event(dst, name, data []byte) ([]byte, error) {
	if s.complete {
		return dst, nil
	}
	var ev nativeEvent
	if json.Unmarshal(data, &ev) != nil {
		return dst, openai.ErrInvalidReply
	}
	typ := string(name)
	if typ == "" {
		typ = ev.Type
	}
	switch typ {
	case "error":
		e, ok := ParseError(data, 0)
		if !ok {
			e = &openai.Error{}
		}
		e.Status = StatusOf(e.Type)
		return dst, e
	case "message_start":
		ev.Message.Usage.into(&s.usage)
	case "content_block_start", "content_block_delta":
		s.content = true
		s.bytes += len(ev.Delta.Text) + len(ev.Delta.PartialJSON)
	case "message_delta":
		if ev.Delta.StopReason != "" {
			s.stop = ev.Delta.StopReason
		}
		ev.Usage.into(&s.usage)
	case "message_stop":
		s.complete = true
	}
	return sse.AppendEvent(dst, typ, data), nil
}

func (s *nativeMessagesStream) Content() bool  { return s.content }
func (s *nativeMessagesStream) Complete() bool { return s.complete }

// Finish adds nothing: the backend's message_stop ended the stream.
func (s *nativeMessagesStream) Finish(bool, openai.Emit) error { return nil }

func (s *nativeMessagesStream) Fail(e *openai.Error, emit openai.Emit) error {
	return emit(AppendErrorEvent(nil, e))
}

func (s *nativeMessagesStream) FromReply(_ []byte, _ bool, emit openai.Emit) error {
	return emitEach(AppendEvents(nil, s.m.reply), emit)
}

func (s *nativeMessagesStream) Result() openai.Reply {
	return openai.Reply{FinishReason: s.stop, Usage: s.usage.gateway(), CompletionBytes: s.bytes}
}
