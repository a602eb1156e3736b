package anthropic

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// DefaultMaxToolBytes bounds the tool call arguments a Stream keeps
// unless told otherwise.
const DefaultMaxToolBytes = 8 << 20

// Stream translates a streamed chat completion into Anthropic's event
// sequence. Feed it each chunk's data with Chunk, then call Finish once,
// when the backend's stream has ended with a finish_reason (Finished);
// when it has not, end the client's stream with AppendErrorEvent.
//
// The events are message_start (with the input tokens), then for each
// content block content_block_start, its deltas and content_block_stop,
// one block open at a time, indexes contiguous from 0; then
// message_delta (stop_reason, usage) and message_stop.
//
// Text and tool call arguments stream as they come, one block per tool
// call however the backend cuts its arguments or repeats its index. A
// backend may also interleave a call with text or with other calls: a
// tool block is only closed once its arguments are a whole JSON object
// (nothing can follow that and stay valid), so while it is incomplete,
// text and other calls that arrive are held, and sent when it closes or
// at the end. Arguments that end up other than a JSON object are an
// error, never an empty input.
//
// Events are appended to the caller's buffer; a text or arguments chunk
// costs no allocation once the stream is warm.
type Stream struct {
	ReplyOptions
	// MaxToolBytes bounds the tool call arguments kept to be checked;
	// 0 means DefaultMaxToolBytes.
	MaxToolBytes int

	started   bool
	blocks    int  // content blocks started so far
	textOpen  bool // the last block is text and still open
	openTool  int  // the tool call whose block is open, or -1
	tools     []streamTool
	ids       toolIDs
	heldText  []byte // text that came while a tool block was open
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
	index     int    // the backend's index
	backendID string // the backend's id, if it sent one
	name      string
	args      []byte // decoded arguments so far
	state     toolState
}

type toolState uint8

const (
	toolPending toolState = iota // no block yet
	toolOpen
	toolClosed
)

// Finished reports whether the backend has sent a finish_reason.
func (s *Stream) Finished() bool { return s.finish != "" }

// StopReason is the stop_reason the stream ends with, from the
// backend's finish_reason; empty before it came.
func (s *Stream) StopReason() string {
	if s.finish == "" {
		return ""
	}
	reason, _ := stopReason(s.finish, len(s.tools) > 0, s.matched, string(s.tail), s.StopSequences)
	return reason
}

// OutputBytes is the size of the text and tool arguments received.
func (s *Stream) OutputBytes() int { return s.outBytes }

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
	s.openTool = -1
	for _, seq := range s.StopSequences {
		s.maxStop = max(s.maxStop, len(seq))
	}
	m := Message{ID: s.ID, Model: s.Model}
	return appendMessageStart(dst, &m, s.Usage().InputTokens)
}

// Chunk appends the events for one chunk's data (a chat.completion.chunk
// object). Only the first choice is translated. It fails for data that
// is not a JSON object, for tool calls past MaxToolBytes and for
// arguments that come after a call's arguments were a whole object; the
// caller then ends the stream with AppendErrorEvent.
func (s *Stream) Chunk(dst, data []byte) ([]byte, *openai.Error) {
	top, ok := walk(data, '{')
	if !ok || !json.Valid(data) {
		return dst, openai.InvalidUpstreamResponse("The backend sent a stream event that is not a chat completion chunk.")
	}
	dst = s.Start(dst)
	for k, v, ok := top.next(); ok; k, v, ok = top.next() {
		switch {
		case jsonwalk.KeyIs(k, "choices"):
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
		case jsonwalk.KeyIs(k, "usage"):
			s.readUsage(v)
		}
	}
	return dst, nil
}

// index is a choice's "index", 0 when it has none.
func index(c []byte) int {
	fields, _ := walk(c, '{')
	for k, v, ok := fields.next(); ok; k, v, ok = fields.next() {
		if jsonwalk.KeyIs(k, "index") {
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
		case jsonwalk.KeyIs(k, "delta"):
			delta, _ := walk(v, '{')
			for dk, dv, ok := delta.next(); ok; dk, dv, ok = delta.next() {
				switch {
				case jsonwalk.KeyIs(dk, "content"), jsonwalk.KeyIs(dk, "refusal"):
					if isString(dv) {
						dst = s.text(dst, dv)
					}
				case jsonwalk.KeyIs(dk, "tool_calls"):
					calls, _ := walk(dv, '[')
					for pos := 0; ; pos++ {
						_, call, ok := calls.next()
						if !ok {
							break
						}
						var e *openai.Error
						if dst, e = s.toolCall(dst, pos, call); e != nil {
							return dst, e
						}
					}
				}
			}
		case jsonwalk.KeyIs(k, "finish_reason"):
			if isString(v) {
				s.finish = string(appendUnquoted(nil, v))
			}
		case jsonwalk.KeyIs(k, "stop_reason"): // vLLM: the stop string matched
			if isString(v) {
				s.matched = string(appendUnquoted(nil, v))
			}
		}
	}
	return dst, nil
}

// text appends a text delta for the JSON string v, opening the text
// block first if needed; while an incomplete tool block is open, the
// text is held instead.
func (s *Stream) text(dst, v []byte) []byte {
	s.content = true
	s.outBytes += len(v) - 2
	if s.maxStop > 0 {
		s.tail = appendUnquoted(s.tail, v)
		if len(s.tail) > 2*s.maxStop {
			s.tail = s.tail[:copy(s.tail, s.tail[len(s.tail)-s.maxStop:])]
		}
	}
	if s.openTool >= 0 {
		if !complete(s.tools[s.openTool].args) {
			s.heldText = appendUnquoted(s.heldText, v)
			return dst
		}
		dst = s.closeBlock(dst)
	}
	dst = s.openText(dst)
	dst = s.deltaHead(dst, "text_delta", "text")
	return appendJSONString(dst, v)
}

// openText opens a text block, unless one is open, with the held text
// as its first delta.
func (s *Stream) openText(dst []byte) []byte {
	if s.textOpen {
		return dst
	}
	s.textOpen = true
	dst = appendEventHead(dst, "content_block_start")
	dst = append(dst, `{"type":"content_block_start","index":`...)
	dst = strconv.AppendInt(dst, int64(s.blocks), 10)
	dst = append(dst, `,"content_block":{"type":"text","text":""}}`...)
	dst = append(dst, "\n\n"...)
	s.blocks++
	if len(s.heldText) > 0 {
		dst = s.deltaHead(dst, "text_delta", "text")
		dst = appendString(dst, string(s.heldText))
		dst = append(dst, "}}\n\n"...)
		s.heldText = s.heldText[:0]
	}
	return dst
}

// deltaHead starts a content_block_delta of the given type for the last
// block, up to the value of its field.
func (s *Stream) deltaHead(dst []byte, typ, field string) []byte {
	dst = appendEventHead(dst, "content_block_delta")
	dst = append(dst, `{"type":"content_block_delta","index":`...)
	dst = strconv.AppendInt(dst, int64(s.blocks-1), 10)
	dst = append(dst, `,"delta":{"type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","`...)
	dst = append(dst, field...)
	return append(dst, `":`...)
}

// appendJSONString appends the JSON string v from a valid chunk, and
// ends the delta: as it is, or re-encoded if it holds invalid UTF-8.
func appendJSONString(dst, v []byte) []byte {
	if utf8.Valid(v) {
		dst = append(dst, v...)
	} else {
		dst = appendString(dst, string(appendUnquoted(nil, v)))
	}
	return append(dst, "}}\n\n"...)
}

// closeBlock appends content_block_stop for the open block, if any.
// A tool block that received no arguments gets "{}" first, its input.
func (s *Stream) closeBlock(dst []byte) []byte {
	switch {
	case s.textOpen:
		s.textOpen = false
	case s.openTool >= 0:
		if len(bytes.TrimSpace(s.tools[s.openTool].args)) == 0 {
			dst = s.deltaHead(dst, "input_json_delta", "partial_json")
			dst = append(dst, `"{}"}}`+"\n\n"...)
		}
		s.tools[s.openTool].state = toolClosed
		s.openTool = -1
	default:
		return dst
	}
	return appendBlockStop(dst, s.blocks-1)
}

// toolCall takes a piece of a tool call, the element at position pos of
// a delta's tool_calls. A piece belongs to the last call with its index
// unless it brings an id other than that call's: some backends give
// every call index 0. The piece's arguments stream at once if the call's
// block is open or can be opened.
func (s *Stream) toolCall(dst []byte, pos int, call []byte) ([]byte, *openai.Error) {
	s.content = true
	idx := pos
	var id, name, args []byte
	fields, _ := walk(call, '{')
	for k, v, ok := fields.next(); ok; k, v, ok = fields.next() {
		switch {
		case jsonwalk.KeyIs(k, "index"):
			if n, ok := parseCount(v); ok {
				idx = int(n)
			}
		case jsonwalk.KeyIs(k, "id"):
			if isString(v) {
				id = v
			}
		case jsonwalk.KeyIs(k, "function"):
			fn, _ := walk(v, '{')
			for fk, fv, ok := fn.next(); ok; fk, fv, ok = fn.next() {
				switch {
				case jsonwalk.KeyIs(fk, "name") && isString(fv):
					name = fv
				case jsonwalk.KeyIs(fk, "arguments") && (isString(fv) || len(fv) > 0 && fv[0] == '{'):
					args = fv // a string, or an object as some servers send
				}
			}
		}
	}
	n := s.lastTool(idx)
	if n < 0 || id != nil && s.tools[n].backendID != "" && !sameString(id, s.tools[n].backendID) {
		s.tools = append(s.tools, streamTool{index: idx})
		n = len(s.tools) - 1
	}
	t := &s.tools[n]
	if id != nil && t.backendID == "" {
		t.backendID = string(appendUnquoted(nil, id))
	}
	if name != nil && t.name == "" {
		t.name = string(appendUnquoted(nil, name))
	}
	if len(args) > 2 || len(args) > 0 && args[0] == '{' {
		if e := s.addArgs(t, args); e != nil {
			return dst, e
		}
		if t.state == toolOpen {
			dst = s.deltaHead(dst, "input_json_delta", "partial_json")
			if args[0] == '"' {
				return appendJSONString(dst, args), nil
			}
			dst = appendString(dst, string(args))
			return append(dst, "}}\n\n"...), nil
		}
	}
	if t.state != toolPending || t.name == "" {
		return dst, nil
	}
	// Open the call's block if the open block can be closed.
	if s.openTool >= 0 && !complete(s.tools[s.openTool].args) {
		return dst, nil
	}
	dst = s.closeBlock(dst)
	if len(s.heldText) > 0 {
		dst = s.closeBlock(s.openText(dst))
	}
	return s.openToolBlock(dst, n), nil
}

// addArgs adds a piece of arguments, the raw JSON value v, to t. Pieces
// that come once t's block has closed must be blank: its arguments were
// a whole object.
func (s *Stream) addArgs(t *streamTool, v []byte) *openai.Error {
	n := len(t.args)
	if v[0] == '"' {
		t.args = appendUnquoted(t.args, v)
	} else {
		t.args = append(t.args, v...)
	}
	if t.state == toolClosed && len(bytes.TrimSpace(t.args[n:])) > 0 {
		return openai.InvalidUpstreamResponse("The backend sent tool call arguments that are not a JSON object.")
	}
	s.toolBytes += len(t.args) - n
	s.outBytes += len(t.args) - n
	limit := s.MaxToolBytes
	if limit == 0 {
		limit = DefaultMaxToolBytes
	}
	if s.toolBytes > limit {
		return openai.ToolCallTooLarge(limit)
	}
	return nil
}

// openToolBlock opens the block of tool call n, with the arguments it
// has so far as its first delta.
func (s *Stream) openToolBlock(dst []byte, n int) []byte {
	t := &s.tools[n]
	t.state = toolOpen
	s.openTool = n
	dst = appendEventHead(dst, "content_block_start")
	dst = append(dst, `{"type":"content_block_start","index":`...)
	dst = strconv.AppendInt(dst, int64(s.blocks), 10)
	dst = append(dst, `,"content_block":`...)
	dst = (&Block{Type: "tool_use", ID: s.ids.use(t.backendID), Name: t.name}).appendJSON(dst, []byte("{}"))
	dst = append(dst, "}\n\n"...)
	s.blocks++
	if len(t.args) > 0 {
		dst = s.deltaHead(dst, "input_json_delta", "partial_json")
		dst = appendString(dst, string(t.args))
		dst = append(dst, "}}\n\n"...)
	}
	return dst
}

// complete reports whether args is a whole JSON object: nothing but
// blanks can follow it.
func complete(args []byte) bool {
	a := bytes.TrimSpace(args)
	return len(a) > 1 && a[0] == '{' && a[len(a)-1] == '}' && json.Valid(a)
}

// sameString reports whether the raw JSON string v reads as s.
func sameString(v []byte, s string) bool {
	if !hasByte(v, '\\') {
		return string(v[1:len(v)-1]) == s
	}
	return string(appendUnquoted(nil, v)) == s
}

// lastTool is the position of the last tool call with the backend index
// idx, or -1.
func (s *Stream) lastTool(idx int) int {
	for i := len(s.tools) - 1; i >= 0; i-- {
		if s.tools[i].index == idx {
			return i
		}
	}
	return -1
}

// Finish appends the end of the stream: the open block's stop, the text
// held and the tool calls not yet sent, message_delta and message_stop.
// It fails, appending nothing, when a tool call has no name or
// arguments that are not a JSON object; the caller then ends the stream
// with AppendErrorEvent.
func (s *Stream) Finish(dst []byte) ([]byte, *openai.Error) {
	var pending []Block
	for i := range s.tools {
		t := &s.tools[i]
		if t.state == toolClosed {
			continue
		}
		input, e := toolInput(t.name, t.args)
		if e != nil {
			return dst, e
		}
		if t.state == toolPending {
			pending = append(pending, Block{Type: "tool_use", ID: s.ids.use(t.backendID), Name: t.name, Input: input})
		}
	}
	dst = s.closeBlock(s.Start(dst))
	if len(s.heldText) > 0 {
		dst = s.closeBlock(s.openText(dst))
	}
	for i := range pending {
		dst = appendBlockEvents(dst, s.blocks, &pending[i])
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
		case jsonwalk.KeyIs(k, "prompt_tokens"):
			in, hasIn = parseCount(v)
		case jsonwalk.KeyIs(k, "completion_tokens"):
			out, hasOut = parseCount(v)
		}
	}
	if hasIn && hasOut {
		s.usage, s.hasUsage = chatUsage(in, openai.CachedTokens(v, "prompt_tokens_details"), out), true
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
