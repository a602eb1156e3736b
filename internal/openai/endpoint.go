package openai

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// Endpoint describes one OpenAI route to the gateway's one request
// path: how to read a request, normalize a reply and its stream, and
// what echo mode answers. Adding an endpoint is adding one of these.
type Endpoint interface {
	// Name is the endpoint's value of the metrics' endpoint label.
	Name() string
	// Parse validates a request body and returns what the gateway needs
	// of it. The body itself is forwarded as the client sent it.
	Parse(body []byte) (*Request, *Error)
	// Normalize appends the normalized form of a backend's 2xx JSON
	// reply to dst. An endpoint whose replies can be large (embeddings)
	// is also a ReplyStreamer: the gateway normalizes them as they come.
	Normalize(dst, body []byte, m Meta) ([]byte, Reply, error)
	// NewStream returns the normalizer of one streamed reply; nil for an
	// endpoint that does not stream (embeddings).
	NewStream(m Meta) EventStream
	// AsksStreamUsage reports whether a streamed request should ask the
	// backend for usage with stream_options.include_usage (chat and
	// completions); a Response stream carries its usage anyway.
	AsksStreamUsage() bool
	// Echo appends echo mode's reply to req to dst.
	Echo(dst []byte, req *Request, m Meta) ([]byte, Reply)
	// EchoStream emits echo mode's reply to req as a complete stream,
	// ended as a backend's stream is, and returns what it carried. It
	// stops at the first error from emit.
	EchoStream(req *Request, m Meta, emit Emit) (Reply, error)
}

// ReplyStreamer is an Endpoint whose 2xx replies are normalized as they
// arrive, never held whole (embeddings: tens of megabytes of vectors).
// Its Normalize gives the same bytes for a reply fed in one piece.
type ReplyStreamer interface {
	// NewReplyWriter returns the normalizer of one reply, writing the
	// normalized reply to w as it goes.
	NewReplyWriter(w io.Writer, m Meta) ReplyWriter
}

// ReplyWriter normalizes one reply fed in chunks of any size.
type ReplyWriter interface {
	// Write takes the next bytes of the reply and writes what it can of
	// the normalized reply. It fails with the endpoint's invalid-reply
	// error (nothing of p written), or with the writer's error.
	Write(p []byte) (int, error)
	// Close writes the end of the normalized reply and returns what the
	// reply carried, estimated where unknown, also when it failed; an
	// error for a reply that was invalid or ended incomplete.
	Close() (Reply, error)
}

// EventStream normalizes the events of one streamed reply, one at a
// time, and keeps what the gateway must know at its end.
type EventStream interface {
	// Event appends the normalized form of one backend event (its
	// "event" field name, empty if none, and its data) to dst, framed
	// as an SSE event; dst comes back unchanged for an event that is not
	// relayed. An in-band error the backend sent is returned as an
	// *Error (end the stream with Fail); ErrInvalidReply for an event
	// the endpoint cannot read.
	Event(dst, name, data []byte) ([]byte, error)
	// Content reports whether output has begun: events before it can be
	// held back while the attempt may still be retried.
	Content() bool
	// Complete reports whether the backend ended the stream properly; a
	// stream that stops before is truncated.
	Complete() bool
	// Finish emits what ends a complete stream: chat and completions add
	// the finish chunks the backend left out, the usage chunk when
	// includeUsage, and [DONE]; responses add nothing.
	Finish(includeUsage bool, emit Emit) error
	// Fail emits the error event that ends a failed stream, in the
	// endpoint's own shape.
	Fail(e *Error, emit Emit) error
	// FromReply emits the events of a stream carrying reply, a backend's
	// JSON answer to a streaming request already normalized by the
	// endpoint, ended as Finish ends a stream.
	FromReply(reply []byte, includeUsage bool, emit Emit) error
	// Result returns what the stream carried: its finish reason (a
	// Response's status for responses), its usage (estimated when the
	// backend reported none) and the size of its output.
	Result() Reply
}

// The optional capabilities of an Endpoint, which the gateway asks for
// rather than knowing any route by name: adding a route never touches
// the request path.

// BackendEndpoint is an Endpoint whose upstream request depends on the
// backend: a route of another API (Anthropic's Messages) goes as it is
// to a backend that serves that API itself (native), translated to
// another.
type BackendEndpoint interface {
	// Upstream returns the path (under the backend's base path) and the
	// body of the request to a native backend or not, for model, given
	// the client's body with the model alias edited.
	Upstream(native bool, model string, body []byte) (path string, upstream []byte, e *Error)
	// RepliesFrom makes the endpoint read the replies to come as a
	// native backend's or not, for a reply that comes without an
	// upstream request (the cache's); Upstream does it itself.
	RepliesFrom(native bool)
	// AnswerLocally returns the reply the gateway gives itself for a
	// backend that is native or not, or nil when the backend answers.
	AnswerLocally(native bool) []byte
}

// ErrorShaper is an Endpoint of another API than OpenAI's: its errors
// are in that API's shape, and its replies name the request id in that
// API's header too.
type ErrorShaper interface {
	// ErrorJSON is the body of error e.
	ErrorJSON(e *Error) []byte
	// RequestIDHeader is the header that carries the request id, beside
	// X-Request-ID.
	RequestIDHeader() string
}

// Pinger is an EventStream with a keep-alive event of its own, sent
// while the backend has not sent its first event (Messages:
// message_start, then ping), in place of a comment.
type Pinger interface {
	Ping() []byte
}

// Identified is an EventStream whose reply has an id a backend keeps
// (a Response's), known once an event named it.
type Identified interface {
	// ResponseID returns the id, or "" before any event named it.
	ResponseID() string
}

// LimitHeaders is an Endpoint whose route states the caller's rate
// limits in headers of its own, beside OpenAI's x-ratelimit-* (the
// Messages routes: anthropic-ratelimit-*).
type LimitHeaders interface {
	// SetLimitHeaders sets the headers of one kind of limit.
	SetLimitHeaders(h http.Header, s LimitState)
}

// LimitState is the state of one kind of limit after an admission.
type LimitState struct {
	// Kind is "requests" or "tokens".
	Kind string
	// Limit and Remaining are the limit and what is left of it, as
	// decimal text (OpenAI's headers hold them already).
	Limit, Remaining string
	// Reset is when the limit is whole again.
	Reset time.Time
}

// Emit writes one SSE event (framed, blank line included) to the client.
type Emit func(event []byte) error

// Request is what the gateway needs of a request, whatever its endpoint.
type Request struct {
	// Model is the requested model, empty when the client named none.
	Model string
	// Stream is true when the client asked for Server-Sent Events.
	Stream bool
	// IncludeUsage is stream_options.include_usage.
	IncludeUsage bool
	// PromptBytes is the size of the prompt, the base of the prompt
	// token estimate (Meta.PromptBytes); a token id counts four bytes,
	// so a prompt of token ids is estimated at one token each.
	PromptBytes int
	// MaxOutputTokens is the output budget the client set: the largest
	// of max_tokens, max_completion_tokens and max_output_tokens, as a
	// backend may honour any of them; 0 when it set none.
	MaxOutputTokens int64
	// Outputs is how many outputs the request asks for, each with the
	// output budget: n, or best_of when larger; 0 when it set neither.
	Outputs int64
	// PreviousResponseID is a Responses request's previous_response_id:
	// such a request needs the backend that holds that state.
	PreviousResponseID string
	// NoOutput is set for a route that generates no tokens
	// (embeddings, count_tokens): limits reserve none for its output.
	NoOutput bool

	echo   []byte // the raw value echo mode repeats, per endpoint
	chat   *ChatRequest
	base64 bool // embeddings: encoding_format is base64
}

// The endpoints the gateway serves.
var (
	ChatCompletions Endpoint = chatEndpoint{}
	Completions     Endpoint = completionsEndpoint{}
	Embeddings      Endpoint = embeddingsEndpoint{}
	Responses       Endpoint = responsesEndpoint{}
)

// EndpointFor returns the endpoint that serves path (with or without
// the /v1 prefix), or nil.
func EndpointFor(path string) Endpoint {
	switch strings.TrimPrefix(path, "/v1") {
	case "/chat/completions":
		return ChatCompletions
	case "/completions":
		return Completions
	case "/embeddings":
		return Embeddings
	case "/responses":
		return Responses
	}
	return nil
}

// echoPrefix starts every echo reply's text.
const echoPrefix = "Echo: "

// chatEndpoint is chat completions, over ParseChatRequest,
// AppendNormalizedCompletion and Stream.
type chatEndpoint struct{}

func (chatEndpoint) Name() string { return "chat_completions" }

func (chatEndpoint) Parse(body []byte) (*Request, *Error) {
	c, e := ParseChatRequest(body)
	if e != nil {
		return nil, e
	}
	return &Request{Model: c.Model, Stream: c.Stream, IncludeUsage: c.IncludeUsage, PromptBytes: c.ContentBytes,
		MaxOutputTokens: c.maxOutput, Outputs: c.outputs, chat: c}, nil
}

func (chatEndpoint) Normalize(dst, body []byte, m Meta) ([]byte, Reply, error) {
	return AppendNormalizedCompletion(dst, body, m)
}

func (chatEndpoint) NewStream(m Meta) EventStream { return &chatStream{st: Stream{Meta: m}} }

func (chatEndpoint) AsksStreamUsage() bool { return true }

func (chatEndpoint) Echo(dst []byte, req *Request, m Meta) ([]byte, Reply) {
	out, rep, err := AppendNormalizedCompletion(dst, Completion(echoPrefix+req.chat.Prompt()), m)
	if err != nil {
		panic(err) // the gateway's own reply is always valid
	}
	return out, rep
}

func (chatEndpoint) EchoStream(req *Request, m Meta, emit Emit) (Reply, error) {
	s := &chatStream{st: Stream{Meta: m}}
	err := s.emitChunk(emit, s.st.AppendDelta(nil, 0, "assistant", "", ""))
	for _, word := range strings.SplitAfter(echoPrefix+req.chat.Prompt(), " ") {
		if err != nil {
			break
		}
		err = s.emitChunk(emit, s.st.AppendDelta(nil, 0, "", word, ""))
	}
	if err == nil {
		err = s.Finish(req.IncludeUsage, emit)
	}
	return s.Result(), err
}

// chatStream is a chat completion's EventStream.
type chatStream struct {
	st Stream
	chunkEvents
}

func (s *chatStream) Event(dst, name, data []byte) ([]byte, error) {
	return s.event(dst, name, data, s.st.AppendChunk)
}

func (s *chatStream) Content() bool  { return s.st.Content }
func (s *chatStream) Complete() bool { return s.done || s.st.Finished() }

func (s *chatStream) Finish(includeUsage bool, emit Emit) error {
	var err error
	if !s.st.Finished() {
		for _, i := range s.st.Unfinished() {
			if err = s.emitChunk(emit, s.st.AppendDelta(nil, i, "", "", "stop")); err != nil {
				return err
			}
		}
	}
	if includeUsage {
		err = s.emitChunk(emit, s.st.AppendUsageChunk(nil))
	}
	return s.end(emit, err)
}

func (s *chatStream) FromReply(reply []byte, includeUsage bool, emit Emit) error {
	if err := s.st.FromCompletion(reply, func(c []byte) error { return s.emitChunk(emit, c) }); err != nil {
		return err
	}
	return s.Finish(includeUsage, emit)
}

func (s *chatStream) Result() Reply {
	return Reply{FinishReason: s.st.FinishReason, Usage: s.st.Usage(), CompletionBytes: s.st.CompletionBytes}
}

// chunkEvents is what the chunk streams of chat and completions share:
// [DONE], in-band errors, framing.
type chunkEvents struct {
	done  bool   // [DONE] seen
	chunk []byte // the chunk being framed
}

// event frames the chunk that normalize makes of data, after handling
// [DONE] and error events.
func (c *chunkEvents) event(dst, name, data []byte, normalize func(dst, data []byte) ([]byte, error)) ([]byte, error) {
	if c.done {
		return dst, nil
	}
	if string(bytes.TrimSpace(data)) == "[DONE]" {
		c.done = true
		return dst, nil
	}
	if e, ok := InBandError(name, data); ok {
		return dst, e
	}
	var err error
	if c.chunk, err = normalize(c.chunk[:0], data); err != nil || len(c.chunk) == 0 {
		return dst, err
	}
	return sse.AppendEvent(dst, "", c.chunk), nil
}

// InBandError reads a chat stream event that reports an error instead
// of a chunk: one named "error" (its error, or an empty one when its
// data says none) or one whose data is an error envelope. It reports
// false for any other event.
func InBandError(name, data []byte) (*Error, bool) {
	if string(name) != "error" && !bytes.Contains(data, []byte(`"error"`)) {
		return nil, false
	}
	e, ok := ParseError(data)
	if !ok && string(name) == "error" {
		e, ok = &Error{}, true
	}
	return e, ok
}

// emitChunk frames and emits one chunk of the gateway's own.
func (c *chunkEvents) emitChunk(emit Emit, chunk []byte) error {
	return emit(sse.AppendEvent(nil, "", chunk))
}

// end emits [DONE] unless err.
func (c *chunkEvents) end(emit Emit, err error) error {
	if err != nil {
		return err
	}
	return emit([]byte("data: [DONE]\n\n"))
}

// Fail emits e as OpenAI's chat and completions streams do: a data
// event with the error envelope, which the SDKs surface as an error.
func (c *chunkEvents) Fail(e *Error, emit Emit) error {
	return emit(sse.AppendEvent(nil, "", e.JSON()))
}

// request returns the Request the parser read, with the prompt size and
// the raw value echo mode repeats.
func (p *requestParser) request(promptBytes int, echo []byte) *Request {
	c := p.req
	return &Request{Model: c.Model, Stream: c.Stream, IncludeUsage: c.IncludeUsage, PromptBytes: promptBytes,
		MaxOutputTokens: c.maxOutput, Outputs: c.outputs, echo: echo}
}

// textsOrTokens validates the value at b[at] as a prompt or an input: a
// string (empty only if allowEmpty), an array of strings, an array of
// token ids, or an array of arrays of token ids; null reads as absent.
// It returns the index past the value and its size for the estimate.
func (p *requestParser) textsOrTokens(param string, at int, allowEmpty bool) (int, int, error) {
	b := p.body
	wrongType := func() {
		p.Fail(InvalidType(param, "'"+param+"' must be a string, an array of strings, an array of token ids or an array of arrays of token ids."))
	}
	switch b[at] {
	case '"':
		end, err := scanString(b, at)
		if err == nil && end-at == 2 && !allowEmpty {
			p.Fail(EmptyString(param, "'"+param+"' must not be empty."))
		}
		return end, end - at - 2, err
	case '[':
	default:
		end, err := p.Value(at, 1)
		if err == nil && !jsonwalk.IsNull(b[at:end]) {
			wrongType()
		}
		return end, 0, err
	}
	size, n := 0, 0
	var first byte // the kind of the first element: '"', '[' or '0'
	token := func(at int, depth int) (int, error) {
		end, err := p.Value(at, depth)
		if err == nil {
			if _, ok := parseCount(b[at:end]); !ok {
				wrongType()
			}
			size += 4
		}
		return end, err
	}
	end, err := p.Array(at, 2, func(_, at int) (int, error) {
		n++
		kind := b[at]
		if kind == '-' || kind >= '0' && kind <= '9' {
			kind = '0'
		}
		if first == 0 {
			first = kind
		} else if kind != first {
			wrongType()
		}
		switch kind {
		case '"':
			end, err := scanString(b, at)
			size += end - at - 2
			return end, err
		case '[':
			return p.Array(at, 3, func(_, at int) (int, error) { return token(at, 3) })
		case '0':
			return token(at, 2)
		}
		wrongType()
		return p.Value(at, 2)
	})
	if err == nil && n == 0 {
		p.Fail(EmptyArray(param, "'"+param+"' must not be an empty array."))
	}
	return end, size, err
}
