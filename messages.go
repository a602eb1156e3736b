package chatgateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/anthropic"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// messagesEndpoint is the Anthropic Messages API (POST /v1/messages,
// and POST /v1/messages/count_tokens when count) as an openai.Endpoint,
// so Messages take the gateway's one request path. It is made for one
// request: it keeps the parsed request, whether the backend of the
// attempt in progress serves Messages itself, and the reply it read.
type messagesEndpoint struct {
	count  bool               // count_tokens
	req    *anthropic.Request // set by Parse
	native bool               // the attempt's backend serves Messages (messages native)
	reply  *anthropic.Message // the last reply Normalize read, for FromReply
}

// endpointFor returns the endpoint that serves path (with the /v1
// prefix), or nil.
func endpointFor(path string) openai.Endpoint {
	switch path {
	case "/v1/messages":
		return &messagesEndpoint{}
	case "/v1/messages/count_tokens":
		return &messagesEndpoint{count: true}
	}
	return openai.EndpointFor(path)
}

func (m *messagesEndpoint) Name() string {
	if m.count {
		return "messages_count_tokens"
	}
	return "messages"
}

func (m *messagesEndpoint) Parse(body []byte) (*openai.Request, *openai.Error) {
	parse := anthropic.ParseRequest
	if m.count {
		parse = anthropic.ParseCountTokens
	}
	req, e := parse(body)
	if e != nil {
		return nil, e
	}
	m.req = req
	return &openai.Request{Model: req.Model, Stream: req.Stream, PromptBytes: req.PromptBytes, MaxOutputTokens: req.MaxTokens}, nil
}

// upstream returns the path (under the backend's base path) and the
// body of the request to backend b for model: the client's body, its
// model alias edited already, to a backend that serves Messages itself;
// else the request translated to chat completions. count_tokens has no
// chat equivalent: the gateway answers it for such backends
// (countTokens), so reaching one here is an error.
func (m *messagesEndpoint) upstream(b *Backend, model string, body []byte) (string, []byte, *openai.Error) {
	m.native = b.servesMessages()
	switch {
	case m.native && m.count:
		return "/messages/count_tokens", body, nil
	case m.native:
		return "/messages", body, nil
	case m.count:
		return "", nil, openai.CountTokensUnsupported()
	}
	m.req.Model = model
	chat, e := m.req.ChatBody()
	return "/chat/completions", chat, e
}

// options is what translating a chat reply needs of the request.
func (m *messagesEndpoint) options(meta openai.Meta) anthropic.ReplyOptions {
	return anthropic.ReplyOptions{ID: meta.ID, Model: meta.Model, StopSequences: m.req.StopSequences, PromptBytes: meta.PromptBytes}
}

func (m *messagesEndpoint) Normalize(dst, body []byte, meta openai.Meta) ([]byte, openai.Reply, error) {
	switch {
	case m.count: // a native backend's count: {"input_tokens":N}
		var c struct {
			InputTokens *int64 `json:"input_tokens"`
		}
		if json.Unmarshal(body, &c) != nil || c.InputTokens == nil {
			return dst, openai.Reply{}, openai.ErrInvalidReply
		}
		return append(dst, body...), openai.Reply{}, nil
	case m.native:
		msg, err := parseMessage(body)
		if err != nil {
			return dst, openai.Reply{}, err
		}
		m.reply = msg
		return append(dst, body...), replyOf(msg), nil
	}
	msg, e := anthropic.FromCompletion(body, m.options(meta))
	if e != nil {
		return dst, openai.Reply{}, e
	}
	m.reply = msg
	return msg.AppendJSON(dst), replyOf(msg), nil
}

func (m *messagesEndpoint) NewStream(meta openai.Meta) openai.EventStream {
	switch {
	case m.count:
		return nil
	case m.native:
		return &nativeMessagesStream{m: m}
	}
	return &chatMessagesStream{m: m, st: anthropic.Stream{ReplyOptions: m.options(meta)}}
}

// AsksStreamUsage is false: the translation asks for usage itself, and
// a Messages stream carries its usage anyway.
func (m *messagesEndpoint) AsksStreamUsage() bool { return false }

// Echo answers "Echo: <last user text>"; count_tokens, the estimate.
func (m *messagesEndpoint) Echo(dst []byte, _ *openai.Request, meta openai.Meta) ([]byte, openai.Reply) {
	if m.count {
		return m.req.AppendCountTokens(dst), openai.Reply{}
	}
	msg := anthropic.Echo(m.req, meta.ID)
	return msg.AppendJSON(dst), replyOf(msg)
}

// EchoStream emits the echo reply's whole event sequence, one event at
// a time.
func (m *messagesEndpoint) EchoStream(_ *openai.Request, meta openai.Meta, emit openai.Emit) (openai.Reply, error) {
	msg := anthropic.Echo(m.req, meta.ID)
	return replyOf(msg), emitEach(anthropic.AppendEvents(nil, msg), emit)
}

// emitEach emits the framed events in evs one by one. Event data is
// JSON on one line, so events end at each blank line.
func emitEach(evs []byte, emit openai.Emit) error {
	for len(evs) > 0 {
		end := bytes.Index(evs, []byte("\n\n")) + 2
		if end < 2 {
			end = len(evs)
		}
		if err := emit(evs[:end]); err != nil {
			return err
		}
		evs = evs[end:]
	}
	return nil
}

// SetLimitHeaders sets Anthropic's anthropic-ratelimit-* headers, the
// reset as an RFC 3339 time, rounded up to the second.
func (m *messagesEndpoint) SetLimitHeaders(h http.Header, s openai.LimitState) {
	names := anthropicLimitHeaders[s.Kind]
	reset := s.Reset.Add(time.Second - 1).Truncate(time.Second)
	h[names[0]], h[names[1]], h[names[2]] = []string{s.Limit}, []string{s.Remaining}, []string{reset.UTC().Format(time.RFC3339)}
}

// anthropicLimitHeaders are the names of the headers of each kind of
// limit: its limit, what remains and its reset.
var anthropicLimitHeaders = map[string][3]string{
	"requests": {"Anthropic-Ratelimit-Requests-Limit", "Anthropic-Ratelimit-Requests-Remaining", "Anthropic-Ratelimit-Requests-Reset"},
	"tokens":   {"Anthropic-Ratelimit-Tokens-Limit", "Anthropic-Ratelimit-Tokens-Remaining", "Anthropic-Ratelimit-Tokens-Reset"},
}

// errorJSON is the body of an error on the Messages routes, in
// Anthropic's shape.
func (m *messagesEndpoint) errorJSON(e *openai.Error) []byte { return anthropic.ErrorJSON(e) }

// answerCount answers count_tokens for a backend that does not serve
// Messages: the gateway's estimate, {"input_tokens":N}.
func (m *messagesEndpoint) answerCount(x *exchange) {
	x.writeJSON(http.StatusOK, m.req.AppendCountTokens(nil))
}

// replyOf is what the gateway keeps of a Messages reply for logs,
// metrics and limits.
func replyOf(msg *anthropic.Message) openai.Reply {
	n := 0
	for _, b := range msg.Content {
		n += len(b.Text) + len(b.Input)
	}
	return openai.Reply{FinishReason: msg.StopReason, CompletionBytes: n, Usage: openai.Usage{
		PromptTokens: msg.Usage.InputTokens, CompletionTokens: msg.Usage.OutputTokens, Estimated: msg.Usage.Estimated}}
}

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
	InputTokens  *int64 `json:"input_tokens"`
	OutputTokens *int64 `json:"output_tokens"`
}

// parseMessage reads a native backend's Messages reply. Its text and
// tool_use blocks are kept, for streaming it if need be; other blocks
// (thinking) are relayed in the JSON reply only.
func parseMessage(body []byte) (*anthropic.Message, error) {
	var n nativeMessage
	if json.Unmarshal(body, &n) != nil || n.Type != "message" {
		return nil, openai.ErrInvalidReply
	}
	msg := &anthropic.Message{ID: n.ID, Model: n.Model, StopReason: n.StopReason, StopSequence: n.StopSequence}
	if n.Usage.InputTokens != nil {
		msg.Usage.InputTokens = *n.Usage.InputTokens
	}
	if n.Usage.OutputTokens != nil {
		msg.Usage.OutputTokens = *n.Usage.OutputTokens
	}
	for _, b := range n.Content {
		switch b.Type {
		case "text":
			msg.Content = append(msg.Content, anthropic.Block{Type: "text", Text: b.Text})
		case "tool_use":
			msg.Content = append(msg.Content, anthropic.Block{Type: "tool_use", ID: b.ID, Name: b.Name, Input: b.Input})
		}
	}
	return msg, nil
}

// chatMessagesStream is the EventStream of a chat completion stream
// translated into Messages events.
type chatMessagesStream struct {
	m      *messagesEndpoint
	st     anthropic.Stream
	done   bool // [DONE] seen
	pinged bool // keep-alives went out: message_start with them
}

// ping is the stream's keep-alive: message_start the first time, then
// a ping event, as the Anthropic API sends them.
func (s *chatMessagesStream) ping() []byte {
	s.pinged = true
	return anthropic.AppendPing(s.st.Start(nil))
}

func (s *chatMessagesStream) Event(dst, name, data []byte) ([]byte, error) {
	if s.done {
		return dst, nil
	}
	if string(bytes.TrimSpace(data)) == "[DONE]" {
		s.done = true
		return dst, nil
	}
	if e, ok := openai.InBandError(name, data); ok {
		return dst, e
	}
	out, e := s.st.Chunk(dst, data)
	if e != nil {
		return dst, e
	}
	return out, nil
}

func (s *chatMessagesStream) Content() bool  { return s.st.HasContent() }
func (s *chatMessagesStream) Complete() bool { return s.done || s.st.Finished() }

// Finish closes the open block and sends message_delta and
// message_stop; tool arguments that never became a JSON object end the
// stream with an error event instead.
func (s *chatMessagesStream) Finish(_ bool, emit openai.Emit) error {
	out, e := s.st.Finish(nil)
	if e != nil {
		return s.Fail(e, emit)
	}
	return emit(out)
}

func (s *chatMessagesStream) Fail(e *openai.Error, emit openai.Emit) error {
	return emit(anthropic.AppendErrorEvent(nil, e))
}

func (s *chatMessagesStream) FromReply(_ []byte, _ bool, emit openai.Emit) error {
	evs := anthropic.AppendEvents(nil, s.m.reply)
	if s.pinged { // message_start went out with the first keep-alive
		evs = evs[bytes.Index(evs, []byte("\n\n"))+2:]
	}
	return emitEach(evs, emit)
}

func (s *chatMessagesStream) Result() openai.Reply {
	u := s.st.Usage()
	return openai.Reply{FinishReason: s.st.StopReason(), CompletionBytes: s.st.OutputBytes(),
		Usage: openai.Usage{PromptTokens: u.InputTokens, CompletionTokens: u.OutputTokens, Estimated: u.Estimated}}
}

// nativeMessagesStream is the EventStream of a native backend's
// Messages stream: each event relayed under its name once its data is
// read as JSON, usage and stop reason noted on the way.
type nativeMessagesStream struct {
	m        *messagesEndpoint
	usage    openai.Usage
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
		e, ok := anthropic.ParseError(data, 0)
		if !ok {
			e = &openai.Error{}
		}
		e.Status = statusOfErrorType(e.Type)
		return dst, e
	case "message_start":
		s.readUsage(ev.Message.Usage)
	case "content_block_start", "content_block_delta":
		s.content = true
		s.bytes += len(ev.Delta.Text) + len(ev.Delta.PartialJSON)
	case "message_delta":
		if ev.Delta.StopReason != "" {
			s.stop = ev.Delta.StopReason
		}
		s.readUsage(ev.Usage)
	case "message_stop":
		s.complete = true
	}
	return sse.AppendEvent(dst, typ, data), nil
}

// readUsage keeps the counts a usage object has.
func (s *nativeMessagesStream) readUsage(u nativeUsage) {
	if u.InputTokens != nil {
		s.usage.PromptTokens = *u.InputTokens
	}
	if u.OutputTokens != nil {
		s.usage.CompletionTokens = *u.OutputTokens
	}
}

// statusOfErrorType is the status Anthropic sends an error type with,
// 502 for a type it does not name.
func statusOfErrorType(typ string) int {
	for _, status := range [...]int{400, 401, 402, 403, 404, 413, 429, 500, 504, anthropic.StatusOverloaded} {
		if anthropic.ErrorType(status) == typ {
			return status
		}
	}
	return http.StatusBadGateway
}

func (s *nativeMessagesStream) Content() bool  { return s.content }
func (s *nativeMessagesStream) Complete() bool { return s.complete }

// Finish adds nothing: the backend's message_stop ended the stream.
func (s *nativeMessagesStream) Finish(bool, openai.Emit) error { return nil }

func (s *nativeMessagesStream) Fail(e *openai.Error, emit openai.Emit) error {
	return emit(anthropic.AppendErrorEvent(nil, e))
}

func (s *nativeMessagesStream) FromReply(_ []byte, _ bool, emit openai.Emit) error {
	return emitEach(anthropic.AppendEvents(nil, s.m.reply), emit)
}

func (s *nativeMessagesStream) Result() openai.Reply {
	return openai.Reply{FinishReason: s.stop, Usage: s.usage, CompletionBytes: s.bytes}
}
