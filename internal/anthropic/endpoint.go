package anthropic

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Endpoint is the Anthropic Messages API (POST /v1/messages, and POST
// /v1/messages/count_tokens when count) as an openai.Endpoint, so
// Messages take the gateway's one request path. It is made for one
// request: it keeps the parsed request, whether the backend of the
// attempt in progress serves Messages itself, and the reply it read.
type Endpoint struct {
	count  bool     // count_tokens
	req    *Request // set by Parse
	native bool     // the attempt's backend serves Messages (messages native)
	reply  *Message // the last reply Normalize read, for FromReply
}

// EndpointFor returns a new endpoint for one request to path (with the
// /v1 prefix), or nil when path is not a Messages route.
func EndpointFor(path string) *Endpoint {
	switch path {
	case "/v1/messages":
		return &Endpoint{}
	case "/v1/messages/count_tokens":
		return &Endpoint{count: true}
	}
	return nil
}

func (m *Endpoint) Name() string {
	if m.count {
		return "messages_count_tokens"
	}
	return "messages"
}

func (m *Endpoint) Parse(body []byte) (*openai.Request, *openai.Error) {
	parse := ParseRequest
	if m.count {
		parse = ParseCountTokens
	}
	req, e := parse(body)
	if e != nil {
		return nil, e
	}
	m.req = req
	return &openai.Request{Model: req.Model, Stream: req.Stream, PromptBytes: req.PromptBytes, MaxOutputTokens: req.MaxTokens, NoOutput: m.count}, nil
}

// Upstream returns the path (under the backend's base path) and the
// body of the request for model: the client's body, its model alias
// edited already, to a backend that serves Messages itself (native);
// else the request translated to chat completions. count_tokens has no
// chat equivalent: the gateway answers it for such backends
// (AnswerLocally), so reaching one here (a fallback) is an error.
func (m *Endpoint) Upstream(native bool, model string, body []byte) (string, []byte, *openai.Error) {
	m.RepliesFrom(native)
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

// RepliesFrom makes Normalize and NewStream read a native backend's
// replies (Messages) or a chat backend's.
func (m *Endpoint) RepliesFrom(native bool) { m.native = native }

// options is what translating a chat reply needs of the request.
func (m *Endpoint) options(meta openai.Meta) ReplyOptions {
	return ReplyOptions{ID: meta.ID, Model: meta.Model, StopSequences: m.req.StopSequences, PromptBytes: meta.PromptBytes}
}

func (m *Endpoint) Normalize(dst, body []byte, meta openai.Meta) ([]byte, openai.Reply, error) {
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
	msg, e := FromCompletion(body, m.options(meta))
	if e != nil {
		return dst, openai.Reply{}, e
	}
	m.reply = msg
	return msg.AppendJSON(dst), replyOf(msg), nil
}

func (m *Endpoint) NewStream(meta openai.Meta) openai.EventStream {
	switch {
	case m.count:
		return nil
	case m.native:
		return &nativeMessagesStream{m: m}
	}
	return &chatMessagesStream{m: m, st: Stream{ReplyOptions: m.options(meta)}}
}

// AsksStreamUsage is false: the translation asks for usage itself, and
// a Messages stream carries its usage anyway.
func (m *Endpoint) AsksStreamUsage() bool { return false }

// Echo answers "Echo: <last user text>"; count_tokens, the estimate.
func (m *Endpoint) Echo(dst []byte, _ *openai.Request, meta openai.Meta) ([]byte, openai.Reply) {
	if m.count {
		return m.req.AppendCountTokens(dst), openai.Reply{}
	}
	msg := Echo(m.req, meta.ID)
	return msg.AppendJSON(dst), replyOf(msg)
}

// EchoStream emits the echo reply's whole event sequence, one event at
// a time.
func (m *Endpoint) EchoStream(_ *openai.Request, meta openai.Meta, emit openai.Emit) (openai.Reply, error) {
	msg := Echo(m.req, meta.ID)
	return replyOf(msg), emitEach(AppendEvents(nil, msg), emit)
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
func (m *Endpoint) SetLimitHeaders(h http.Header, s openai.LimitState) {
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

// ErrorJSON is the body of an error on the Messages routes, in
// Anthropic's shape.
func (m *Endpoint) ErrorJSON(e *openai.Error) []byte { return ErrorJSON(e) }

// RequestIDHeader is the header the Anthropic API names its request id
// in, beside the gateway's X-Request-ID.
func (m *Endpoint) RequestIDHeader() string { return "Request-Id" }

// AnswerLocally answers count_tokens for a backend that does not serve
// Messages (native false): the gateway's estimate, {"input_tokens":N}.
func (m *Endpoint) AnswerLocally(native bool) []byte {
	if !m.count || native {
		return nil
	}
	return m.req.AppendCountTokens(nil)
}

// replyOf is what the gateway keeps of a Messages reply for logs,
// metrics and limits.
func replyOf(msg *Message) openai.Reply {
	n := 0
	for _, b := range msg.Content {
		n += len(b.Text) + len(b.Input)
	}
	return openai.Reply{FinishReason: msg.StopReason, CompletionBytes: n, Usage: msg.Usage.gateway()}
}

// chatMessagesStream is the EventStream of a chat completion stream
// translated into Messages events.
type chatMessagesStream struct {
	m      *Endpoint
	st     Stream
	done   bool // [DONE] seen
	pinged bool // keep-alives went out: message_start with them
}

// Ping is the stream's keep-alive: message_start the first time, then
// a ping event, as the Anthropic API sends them.
func (s *chatMessagesStream) Ping() []byte {
	s.pinged = true
	return AppendPing(s.st.Start(nil))
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
	return emit(AppendErrorEvent(nil, e))
}

func (s *chatMessagesStream) FromReply(_ []byte, _ bool, emit openai.Emit) error {
	evs := AppendEvents(nil, s.m.reply)
	if s.pinged { // message_start went out with the first keep-alive
		evs = evs[bytes.Index(evs, []byte("\n\n"))+2:]
	}
	return emitEach(evs, emit)
}

func (s *chatMessagesStream) Result() openai.Reply {
	return openai.Reply{FinishReason: s.st.StopReason(), CompletionBytes: s.st.OutputBytes(), Usage: s.st.Usage().gateway()}
}
