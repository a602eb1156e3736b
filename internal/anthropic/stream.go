package anthropic

import (
	"encoding/json"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// DefaultMaxToolBytes bounds the tool call arguments a Stream holds
// unless told otherwise.
const DefaultMaxToolBytes = 8 << 20

// Stream translates a streamed chat completion into Anthropic's event
// sequence. Feed it each chunk's data with Chunk, then call Finish once
// the backend's stream has ended with a finish_reason (Finished), or end
// the client's stream with AppendErrorEvent when it has not.
//
// The events are message_start (with the input tokens), then for each
// content block content_block_start, its deltas and content_block_stop,
// one block open at a time, indexes contiguous from 0; then
// message_delta (stop_reason, usage) and message_stop. Text streams as
// it comes, in one text block. Tool calls are held until the end: a
// backend may split a call's arguments anywhere, repeat its index, or
// interleave calls with text and with each other, and only the whole
// arguments can be checked to be a JSON object; each call then becomes
// one tool_use block with its input in one input_json_delta.
//
// Events are appended to the caller's buffer; text chunks cost no
// allocation once the stream is warm.
type Stream struct {
	ReplyOptions
	// MaxToolBytes bounds the tool call arguments held until the end of
	// the stream; 0 means DefaultMaxToolBytes.
	MaxToolBytes int

	started   bool
	blocks    int  // content blocks started so far
	textOpen  bool // the last block is text and still open
	tools     []streamTool
	toolBytes int
	finish    string
	matched   string // the stop string the backend says it matched
	tail      []byte // the end of the text, for stop sequences
	maxStop   int
	usage     Usage
	hasUsage  bool
	outBytes  int
	content   bool
}

// streamTool is a tool call being received.
type streamTool struct {
	index    int // the backend's index
	id, name string
	args     []byte // decoded arguments so far
}

// Finished reports whether the backend has sent a finish_reason.
func (s *Stream) Finished() bool { return s.finish != "" }

// HasContent reports whether any text or tool call has arrived.
func (s *Stream) HasContent() bool { return s.content }

// Usage is the backend's usage when it sent one, else the gateway's
// estimate from the request and the content received.
func (s *Stream) Usage() Usage {
	if s.hasUsage {
		return s.usage
	}
	return Usage{InputTokens: openai.EstimateTokens(s.PromptBytes), OutputTokens: openai.EstimateTokens(s.outBytes), Estimated: true}
}

// Start appends message_start, unless it has been sent. Chunk and Finish
// start the stream themselves; Start is for a caller that must send
// something (a ping) before the backend's first chunk.
func (s *Stream) Start(dst []byte) []byte {
	if s.started {
		return dst
	}
	s.started = true
	for _, seq := range s.StopSequences {
		s.maxStop = max(s.maxStop, len(seq))
	}
	m := Message{ID: s.ID, Model: s.Model}
	return appendMessageStart(dst, &m, s.Usage().InputTokens)
}

// Chunk appends the events for one chunk's data (a chat.completion.chunk
// object). Only the first choice is translated. It fails for data that
// is not a JSON object and for tool calls past MaxToolBytes; the caller
// then ends the stream with AppendErrorEvent.
func (s *Stream) Chunk(dst, data []byte) ([]byte, *openai.Error) {
	top, ok := walk(data, '{')
	if !ok || !json.Valid(data) {
		return dst, errInvalidReply("The backend sent a stream event that is not a chat completion chunk.")
	}
	dst = s.Start(dst)
	for k, v, ok := top.next(); ok; k, v, ok = top.next() {
		switch {
		case keyIs(k, "choices"):
			choices, _ := walk(v, '[')
			for _, c, ok := choices.next(); ok; _, c, ok = choices.next() {
				if index(c) == 0 {
					var e *openai.Error
					if dst, e = s.choice(dst, c); e != nil {
						return dst, e
					}
					break
				}
			}
		case keyIs(k, "usage"):
			s.readUsage(v)
		}
	}
	return dst, nil
}

// index is a choice's "index", 0 when it has none.
func index(c []byte) int {
	fields, _ := walk(c, '{')
	for k, v, ok := fields.next(); ok; k, v, ok = fields.next() {
		if keyIs(k, "index") {
			n, _ := parseCount(v)
			return int(n)
		}
	}
	return 0
}

// choice appends the events for the first choice of a chunk.
func (s *Stream) choice(dst, c []byte) ([]byte, *openai.Error) {
	fields, _ := walk(c, '{')
	for k, v, ok := fields.next(); ok; k, v, ok = fields.next() {
		switch {
		case keyIs(k, "delta"):
			delta, _ := walk(v, '{')
			for dk, dv, ok := delta.next(); ok; dk, dv, ok = delta.next() {
				switch {
				case keyIs(dk, "content"), keyIs(dk, "refusal"):
					if isString(dv) {
						dst = s.text(dst, dv)
					}
				case keyIs(dk, "tool_calls"):
					calls, _ := walk(dv, '[')
					for pos := 0; ; pos++ {
						_, call, ok := calls.next()
						if !ok {
							break
						}
						if e := s.toolCall(pos, call); e != nil {
							return dst, e
						}
					}
				}
			}
		case keyIs(k, "finish_reason"):
			if isString(v) {
				s.finish = string(appendUnquoted(nil, v))
			}
		case keyIs(k, "stop_reason"): // vLLM: the stop string matched
			if isString(v) {
				s.matched = string(appendUnquoted(nil, v))
			}
		}
	}
	return dst, nil
}

// text appends a text delta for the JSON string v, opening the text
// block first if needed.
func (s *Stream) text(dst, v []byte) []byte {
	s.content = true
	if !s.textOpen {
		s.textOpen = true
		dst = appendEventHead(dst, "content_block_start")
		dst = append(dst, `{"type":"content_block_start","index":`...)
		dst = strconv.AppendInt(dst, int64(s.blocks), 10)
		dst = append(dst, `,"content_block":{"type":"text","text":""}}`...)
		dst = append(dst, "\n\n"...)
		s.blocks++
	}
	s.outBytes += len(v) - 2
	if s.maxStop > 0 {
		s.tail = appendUnquoted(s.tail, v)
		if len(s.tail) > 2*s.maxStop {
			s.tail = s.tail[:copy(s.tail, s.tail[len(s.tail)-s.maxStop:])]
		}
	}
	dst = appendEventHead(dst, "content_block_delta")
	dst = append(dst, `{"type":"content_block_delta","index":`...)
	dst = strconv.AppendInt(dst, int64(s.blocks-1), 10)
	dst = append(dst, `,"delta":{"type":"text_delta","text":`...)
	if utf8.Valid(v) {
		dst = append(dst, v...) // a JSON string from a valid chunk
	} else {
		dst = appendString(dst, string(appendUnquoted(nil, v)))
	}
	return append(dst, "}}\n\n"...)
}

// toolCall adds a piece of a tool call, the element at position pos of
// a delta's tool_calls. A piece belongs to the last call with its index
// unless it brings an id other than that call's: some backends give
// every call index 0.
func (s *Stream) toolCall(pos int, call []byte) *openai.Error {
	s.content = true
	idx := pos
	var id, name, args []byte
	fields, _ := walk(call, '{')
	for k, v, ok := fields.next(); ok; k, v, ok = fields.next() {
		switch {
		case keyIs(k, "index"):
			if n, ok := parseCount(v); ok {
				idx = int(n)
			}
		case keyIs(k, "id"):
			if isString(v) {
				id = v
			}
		case keyIs(k, "function"):
			fn, _ := walk(v, '{')
			for fk, fv, ok := fn.next(); ok; fk, fv, ok = fn.next() {
				switch {
				case keyIs(fk, "name") && isString(fv):
					name = fv
				case keyIs(fk, "arguments") && isString(fv):
					args = fv
				case keyIs(fk, "arguments") && len(fv) > 0 && fv[0] == '{':
					args = fv // an object rather than a string, as some servers send
				}
			}
		}
	}
	t := s.lastTool(idx)
	if t == nil || id != nil && t.id != "" && t.id != string(appendUnquoted(nil, id)) {
		s.tools = append(s.tools, streamTool{index: idx})
		t = &s.tools[len(s.tools)-1]
	}
	if id != nil && t.id == "" {
		t.id = string(appendUnquoted(nil, id))
	}
	if name != nil && t.name == "" {
		t.name = string(appendUnquoted(nil, name))
	}
	if args == nil {
		return nil
	}
	n := len(t.args)
	if args[0] == '"' {
		t.args = appendUnquoted(t.args, args)
	} else {
		t.args = append(t.args, args...)
	}
	s.toolBytes += len(t.args) - n
	s.outBytes += len(t.args) - n
	limit := s.MaxToolBytes
	if limit == 0 {
		limit = DefaultMaxToolBytes
	}
	if s.toolBytes > limit {
		return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "tool_call_too_large",
			Message: "The backend's tool call arguments exceed what the gateway holds (" + strconv.Itoa(limit) + " bytes)."}
	}
	return nil
}

// lastTool is the last tool call with the backend index idx, or nil.
func (s *Stream) lastTool(idx int) *streamTool {
	for i := len(s.tools) - 1; i >= 0; i-- {
		if s.tools[i].index == idx {
			return &s.tools[i]
		}
	}
	return nil
}

// Finish appends the end of the stream: the text block's stop, a
// tool_use block per tool call, message_delta and message_stop. It fails,
// appending nothing, when a tool call has no name or arguments that are
// not a JSON object; the caller then ends the stream with
// AppendErrorEvent.
func (s *Stream) Finish(dst []byte) ([]byte, *openai.Error) {
	blocks := make([]Block, 0, len(s.tools))
	var ids toolIDs
	for _, t := range s.tools {
		input, e := toolInput(t.name, t.args)
		if e != nil {
			return dst, e
		}
		blocks = append(blocks, Block{Type: "tool_use", ID: ids.use(t.id), Name: t.name, Input: input})
	}
	dst = s.Start(dst)
	if s.textOpen {
		dst = appendBlockStop(dst, s.blocks-1)
		s.textOpen = false
	}
	for i := range blocks {
		dst = appendBlockEvents(dst, s.blocks, &blocks[i])
		s.blocks++
	}
	reason, seq := stopReason(s.finish, len(s.tools) > 0, s.matched, string(s.tail), s.StopSequences)
	return appendMessageEnd(dst, reason, seq, s.Usage()), nil
}

// readUsage reads a chunk's usage object.
func (s *Stream) readUsage(v []byte) {
	var in, out int64
	hasIn, hasOut := false, false
	fields, _ := walk(v, '{')
	for k, v, ok := fields.next(); ok; k, v, ok = fields.next() {
		switch {
		case keyIs(k, "prompt_tokens"):
			in, hasIn = parseCount(v)
		case keyIs(k, "completion_tokens"):
			out, hasOut = parseCount(v)
		}
	}
	if hasIn && hasOut {
		s.usage, s.hasUsage = Usage{InputTokens: in, OutputTokens: out}, true
	}
}

// parseCount reads a non-negative integer such as a token count or an
// index.
func parseCount(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
