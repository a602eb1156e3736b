package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// responsesEndpoint is /v1/responses. A Response keeps its own id
// (clients chain responses with previous_response_id) and its stream
// is relayed event by event, names kept.
type responsesEndpoint struct{}

func (responsesEndpoint) Name() string { return "responses" }

// Parse validates a Responses request: input, when set, is a string or
// an array of item objects; previous_response_id a string. store and
// everything else pass as sent.
func (responsesEndpoint) Parse(body []byte) (*Request, *Error) {
	p := requestParser{RequestReader: NewRequestReader(body, responsesNames...), req: &ChatRequest{}}
	var input, previous []byte
	size := 0
	e := p.Read(func(key []byte, at int) (int, error) {
		switch {
		case jsonwalk.KeyIs(key, "input"):
			end, err := p.Value(at, 1)
			if err != nil {
				return end, err
			}
			input = body[at:end]
			switch input[0] {
			case '"':
				size += len(input) - 2
			case '[':
				size += len(input)
				elements(input, func(_ int, item []byte) {
					if item[0] != '{' {
						p.Fail(InvalidType("input", "'input' must be a string or an array of input items: each item must be an object."))
					}
				})
			case 'n':
			default:
				p.Fail(InvalidType("input", "'input' must be a string or an array of input items."))
			}
			return end, err
		case jsonwalk.KeyIs(key, "instructions"):
			end, err := p.Value(at, 1)
			if err == nil && body[at] == '"' {
				size += end - at - 2
			}
			return end, err
		case jsonwalk.KeyIs(key, "conversation"):
			end, err := p.Value(at, 1)
			if err == nil && !jsonwalk.IsNull(body[at:end]) {
				p.Fail(UnsupportedParameter("conversation", "'conversation' names state the gateway cannot tie to your key; chain responses with 'previous_response_id', or send the whole input."))
			}
			return end, err
		case jsonwalk.KeyIs(key, "previous_response_id"):
			end, err := p.Value(at, 1)
			switch {
			case err != nil, jsonwalk.IsNull(body[at:end]):
			case body[at] == '"':
				previous = body[at:end]
			default:
				p.Fail(InvalidType("previous_response_id", "'previous_response_id' must be a string."))
			}
			return end, err
		}
		return p.common(key, at)
	})
	if e != nil {
		return nil, e
	}
	req := p.request(size, input)
	req.IncludeUsage = false // a Response stream always ends with its usage
	if previous != nil {
		req.PreviousResponseID = unquote(previous)
	}
	return req, nil
}

// ErrInvalidResponse is returned for a backend reply or stream event
// that is not a JSON object.
var ErrInvalidResponse = errors.New("backend reply is not a Response")

// Normalize validates the backend's Response and appends it to dst
// unchanged: it keeps its own id, model and usage.
func (responsesEndpoint) Normalize(dst, body []byte, m Meta) ([]byte, Reply, error) {
	var rep Reply
	var top [16]span
	fields, ok := collectObject(body, top[:0])
	if !ok {
		return dst, rep, ErrInvalidResponse
	}
	var usage, output []byte
	for _, f := range fields {
		switch f.name {
		case "usage":
			usage = f.val
		case "output":
			output = f.val
		case "status":
			rep.FinishReason = stringValue(f.val)
		case "id":
			rep.ResponseID = stringValue(f.val)
		}
	}
	rep.CompletionBytes = outputTextBytes(output)
	if rep.Usage, ok = readResponseUsage(usage); !ok {
		rep.Usage = Usage{PromptTokens: EstimateTokens(m.PromptBytes), CompletionTokens: EstimateTokens(rep.CompletionBytes), Estimated: true}
	}
	return append(dst, body...), rep, nil
}

// collectObject validates b as one JSON object and appends its members
// to dst; it reports false for anything else.
func collectObject(b []byte, dst []span) ([]span, bool) {
	i := jsonwalk.SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return dst, false
	}
	end, err := scanObject(b, i, 1, func(key []byte, at int) (int, error) {
		end, err := scanValue(b, at, 1)
		if err == nil {
			dst = append(dst, span{key, b[at:end], fieldName(key)})
		}
		return end, err
	})
	return dst, err == nil && jsonwalk.SkipSpace(b, end) == len(b)
}

// readResponseUsage reads a Response's usage (input_tokens,
// output_tokens). It reports false when v has no usable counts.
func readResponseUsage(v []byte) (Usage, bool) {
	in, out, hasIn, hasOut := readCounts(v, "input_tokens", "output_tokens")
	return Usage{PromptTokens: in, CachedTokens: CachedTokens(v, "input_tokens_details"), CompletionTokens: out}, hasIn && hasOut
}

// outputTextBytes is the size of a Response's output for the estimate:
// its output_text parts' text, or the output as sent if it has none.
func outputTextBytes(output []byte) int {
	n := 0
	elements(output, func(_ int, item []byte) {
		elements(Member(item, "content"), func(_ int, part []byte) {
			n += contentSize(Member(part, "text"))
		})
	})
	if n == 0 {
		return contentSize(output)
	}
	return n
}

func (responsesEndpoint) NewStream(m Meta) EventStream { return &responseStream{Meta: m} }

func (responsesEndpoint) AsksStreamUsage() bool { return false }

// responseStream relays the events of one streamed Response.
type responseStream struct {
	Meta

	seq         int64  // the highest sequence_number seen or sent
	id          string // the Response's id, once an event named it
	status      string // the terminal event's status
	shape       shape  // the latest delta event, its values as holes
	shapeKind   []byte // that event's type
	usage       Usage
	hasUsage    bool
	outputBytes int
	content     bool
}

// Event validates one Responses API event and appends it unchanged, its
// event name kept (or taken from its type when the backend sent none).
// It reads usage from the terminal event's response and ignores
// anything after it (and [DONE], which some servers add). A backend's
// error event is returned as an *Error, for Fail.
func (s *responseStream) Event(dst, name, data []byte) ([]byte, error) {
	if s.status != "" || string(bytes.TrimSpace(data)) == "[DONE]" {
		return dst, nil
	}
	var vals [maxHoles][]byte
	if s.shape.match(data, &vals) {
		for k, h := range s.shape.holes {
			s.count(h.name, vals[k])
		}
		return appendResponseEvent(dst, name, s.shapeKind, data), nil
	}
	s.shape.clear()
	var top [8]span
	fields, ok := collectObject(data, top[:0])
	if !ok {
		return dst, ErrInvalidResponse
	}
	var typ, response, delta, code, message []byte
	for _, f := range fields {
		switch f.name {
		case "type":
			typ = f.val
		case "sequence_number":
			s.count(f.name, f.val)
		case "response":
			response = f.val
		case "delta":
			delta = f.val
		case "code":
			code = f.val
		case "message":
			message = f.val
		}
	}
	if len(typ) <= len(`""`) || typ[0] != '"' { // an event has a type, and not ""
		return dst, ErrInvalidResponse
	}
	kind := typ[1 : len(typ)-1] // event types are plain names
	switch string(kind) {
	case "error":
		s.status = "failed"
		return dst, &Error{Code: scalar(code), Message: stringValue(message)}
	case "response.created", "response.in_progress", "response.queued":
		s.noteID(response)
	case "response.completed", "response.failed", "response.incomplete":
		s.noteID(response)
		s.status = string(kind[len("response."):])
		if u, ok := readResponseUsage(Member(response, "usage")); ok {
			s.usage, s.hasUsage = u, true
		}
		s.content = true
	default:
		s.content = true
		s.count("delta", delta)
		var holes [maxHoles]hole
		if s.shape.take(data, responseHoles(holes[:0], data, fields)) {
			s.shapeKind = append(s.shapeKind[:0], kind...)
		}
	}
	return appendResponseEvent(dst, name, kind, data), nil
}

// noteID keeps the id of the Response an event carries, the first time.
func (s *responseStream) noteID(response []byte) {
	if s.id == "" {
		s.id = stringValue(Member(response, "id"))
	}
}

// count notes the member of a delta event the stream reads: its
// sequence number, or the size of its text.
func (s *responseStream) count(name string, v []byte) {
	switch name {
	case "sequence_number":
		if n, ok := parseCount(v); ok && n > s.seq {
			s.seq = n
		}
	case "delta":
		if len(v) > 0 && v[0] == '"' {
			s.outputBytes += len(v) - 2
		}
	}
}

// responseHoles appends to holes those of a delta event, whose members
// are fields: its strings and unsigned integers but its type. It appends
// none when the event has more than one delta, whose last one counts.
func responseHoles(holes []hole, data []byte, fields []span) []hole {
	deltas := 0
	for _, f := range fields {
		if f.name == "delta" {
			deltas++
		}
		if f.name != "type" && (f.val[0] == '"' || isUint(f.val)) {
			holes = append(holes, holeAt(data, f.val, f.name))
		}
	}
	if deltas > 1 {
		return holes[:0]
	}
	return holes
}

// isUint reports whether v is an unsigned integer in JSON's grammar.
func isUint(v []byte) bool {
	if len(v) == 0 || v[0] == '0' && len(v) > 1 {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendResponseEvent frames data as event name, or as its kind when
// the backend sent no name.
func appendResponseEvent(dst, name, kind, data []byte) []byte {
	if len(name) == 0 {
		name = kind
	}
	dst = append(append(append(dst, "event: "...), name...), '\n')
	return sse.AppendEvent(dst, "", data)
}

// ResponseID implements Identified.
func (s *responseStream) ResponseID() string { return s.id }

func (s *responseStream) Content() bool  { return s.content }
func (s *responseStream) Complete() bool { return s.status != "" }

// Finish emits nothing: a Response stream ends with its terminal event.
func (s *responseStream) Finish(bool, Emit) error { return nil }

// Fail emits the Responses API's error event.
func (s *responseStream) Fail(e *Error, emit Emit) error {
	s.seq++
	s.status = "failed"
	var o object
	o.open(nil)
	o.str("type", "error")
	if e.Code == "" {
		o.raw("code", []byte("null"))
	} else {
		o.str("code", e.Code)
	}
	o.str("message", e.Message)
	if e.Param == "" {
		o.raw("param", []byte("null"))
	} else {
		o.str("param", e.Param)
	}
	o.int("sequence_number", s.seq)
	return emit(sse.AppendEvent(nil, "error", o.close()))
}

// FromReply emits the event sequence of a stream that carries the
// Response reply, whole deltas.
func (s *responseStream) FromReply(reply []byte, _ bool, emit Emit) error {
	return s.emitResponse(reply, false, emit)
}

func (s *responseStream) Result() Reply {
	u := s.usage
	if !s.hasUsage {
		u = Usage{PromptTokens: EstimateTokens(s.PromptBytes), CompletionTokens: EstimateTokens(s.outputBytes), Estimated: true}
	}
	return Reply{FinishReason: s.status, Usage: u, CompletionBytes: s.outputBytes, ResponseID: s.id}
}

// send emits one event of the gateway's own, fields written by body
// after its type and sequence_number.
func (s *responseStream) send(emit Emit, typ string, body func(o *object)) error {
	s.seq++
	var o object
	o.open(nil)
	o.str("type", typ)
	o.int("sequence_number", s.seq)
	body(&o)
	return emit(sse.AppendEvent(nil, typ, o.close()))
}

// emitResponse emits the events that stream the Response reply: created
// and in_progress (with no output yet), each output item added and
// done (a message's output_text parts with their text deltas, one per
// word when words), then the terminal event its status names.
func (s *responseStream) emitResponse(reply []byte, words bool, emit Emit) error {
	var output []byte
	status := "completed"
	members(reply, func(k, v []byte) {
		switch {
		case jsonwalk.KeyIs(k, "output"):
			output = v
		case jsonwalk.KeyIs(k, "status"):
			if st := stringValue(v); st == "failed" || st == "incomplete" {
				status = st
			}
		}
	})
	pending := SetMember(SetMember(reply, "status", []byte(`"in_progress"`)), "output", []byte("[]"))
	pending = SetMember(pending, "usage", []byte("null"))
	err := s.send(emit, "response.created", func(o *object) { o.raw("response", pending) })
	if err == nil {
		err = s.send(emit, "response.in_progress", func(o *object) { o.raw("response", pending) })
	}
	elements(output, func(i int, item []byte) {
		if err != nil {
			return
		}
		err = s.emitItem(int64(i), item, words, emit)
	})
	if err != nil {
		return err
	}
	if u, ok := readResponseUsage(Member(reply, "usage")); ok {
		s.usage, s.hasUsage = u, true
	}
	s.outputBytes, s.content = outputTextBytes(output), true
	err = s.send(emit, "response."+status, func(o *object) { o.raw("response", reply) })
	s.status = status
	return err
}

// emitItem emits the events of output item i.
func (s *responseStream) emitItem(i int64, item []byte, words bool, emit Emit) error {
	content := Member(item, "content")
	isMessage := stringValue(Member(item, "type")) == "message"
	added := item
	if isMessage {
		added = SetMember(SetMember(item, "status", []byte(`"in_progress"`)), "content", []byte("[]"))
	}
	err := s.send(emit, "response.output_item.added", func(o *object) {
		o.int("output_index", i)
		o.raw("item", added)
	})
	if isMessage {
		itemID := Member(item, "id")
		if itemID == nil {
			itemID = []byte(`""`)
		}
		elements(content, func(j int, part []byte) {
			if err == nil {
				err = s.emitPart(i, int64(j), itemID, part, words, emit)
			}
		})
	}
	if err != nil {
		return err
	}
	return s.send(emit, "response.output_item.done", func(o *object) {
		o.int("output_index", i)
		o.raw("item", item)
	})
}

// emitPart emits the events of content part j of message item i.
func (s *responseStream) emitPart(i, j int64, itemID, part []byte, words bool, emit Emit) error {
	where := func(o *object) {
		o.raw("item_id", itemID)
		o.int("output_index", i)
		o.int("content_index", j)
	}
	isText := stringValue(Member(part, "type")) == "output_text"
	added := part
	if isText {
		added = SetMember(part, "text", []byte(`""`))
	}
	err := s.send(emit, "response.content_part.added", func(o *object) { where(o); o.raw("part", added) })
	if isText {
		text := stringValue(Member(part, "text"))
		deltas := []string{text}
		if words {
			deltas = strings.SplitAfter(text, " ")
		}
		for _, d := range deltas {
			if err != nil {
				return err
			}
			err = s.send(emit, "response.output_text.delta", func(o *object) {
				where(o)
				o.str("delta", d)
				o.raw("logprobs", []byte("[]"))
			})
		}
		if err == nil {
			err = s.send(emit, "response.output_text.done", func(o *object) {
				where(o)
				o.str("text", text)
				o.raw("logprobs", []byte("[]"))
			})
		}
	}
	if err != nil {
		return err
	}
	return s.send(emit, "response.content_part.done", func(o *object) { where(o); o.raw("part", part) })
}

// echoResponse returns echo mode's Response to req: one message with
// one output_text part, "Echo: " and the input.
func echoResponse(req *Request, m Meta) ([]byte, Reply) {
	text := echoPrefix + inputText(req.echo)
	rep := Reply{FinishReason: "completed", CompletionBytes: len(text),
		Usage: Usage{PromptTokens: EstimateTokens(req.PromptBytes), CompletionTokens: EstimateTokens(len(text)), Estimated: true}}
	var o object
	o.open(nil)
	o.str("id", "resp_"+m.ID)
	o.str("object", "response")
	o.int("created_at", m.Created)
	o.str("status", "completed")
	o.raw("error", []byte("null"))
	o.raw("incomplete_details", []byte("null"))
	o.raw("instructions", []byte("null"))
	o.str("model", m.Model)
	o.key("output")
	var msg object
	msg.open(append(o.buf, '['))
	msg.str("type", "message")
	msg.str("id", "msg_"+m.ID)
	msg.str("status", "completed")
	msg.str("role", "assistant")
	msg.key("content")
	var part object
	part.open(append(msg.buf, '['))
	part.str("type", "output_text")
	part.str("text", text)
	part.raw("annotations", []byte("[]"))
	part.raw("logprobs", []byte("[]"))
	msg.buf = append(part.close(), ']')
	o.buf = append(msg.close(), ']')
	o.raw("parallel_tool_calls", []byte("true"))
	o.str("tool_choice", "auto")
	o.raw("tools", []byte("[]"))
	o.raw("text", []byte(`{"format":{"type":"text"}}`))
	o.key("usage")
	u := rep.Usage
	o.buf = append(o.buf, `{"input_tokens":`...)
	o.buf = strconv.AppendInt(o.buf, u.PromptTokens, 10)
	o.buf = append(o.buf, `,"input_tokens_details":{"cached_tokens":0},"output_tokens":`...)
	o.buf = strconv.AppendInt(o.buf, u.CompletionTokens, 10)
	o.buf = append(o.buf, `,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":`...)
	o.buf = strconv.AppendInt(o.buf, u.PromptTokens+u.CompletionTokens, 10)
	o.buf = append(o.buf, '}')
	return o.close(), rep
}

func (responsesEndpoint) Echo(dst []byte, req *Request, m Meta) ([]byte, Reply) {
	out, rep := echoResponse(req, m)
	return append(dst, out...), rep
}

func (responsesEndpoint) EchoStream(req *Request, m Meta, emit Emit) (Reply, error) {
	out, _ := echoResponse(req, m)
	s := &responseStream{Meta: m}
	err := s.emitResponse(out, true, emit)
	return s.Result(), err
}

// inputText returns the text echo mode repeats of a Responses input:
// the string, or the last user message's text (its input_text parts
// joined by "\n").
func inputText(input []byte) string {
	if len(input) == 0 {
		return ""
	}
	if input[0] == '"' {
		return unquote(input)
	}
	var last []byte
	elements(input, func(_ int, item []byte) {
		if stringValue(Member(item, "role")) == "user" {
			last = Member(item, "content")
		}
	})
	if len(last) == 0 {
		return ""
	}
	if last[0] == '"' {
		return unquote(last)
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	_ = json.Unmarshal(last, &parts)
	var sb strings.Builder
	for _, p := range parts {
		if p.Type == "input_text" || p.Type == "text" || p.Type == "output_text" {
			if sb.Len() > 0 {
				sb.WriteByte('\n')
			}
			sb.WriteString(p.Text)
		}
	}
	return sb.String()
}
