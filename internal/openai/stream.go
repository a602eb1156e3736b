package openai

import (
	"encoding/json"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// Stream normalizes the chunks of one streamed reply and keeps what the
// gateway must know at its end: usage, finish reasons, content size.
// Chunks are edited in place where needed and copied byte for byte
// otherwise; a Stream allocates nothing per chunk once warm.
type Stream struct {
	Meta
	chunkReader

	roleSent []bool // by choice index
	finished []bool // by choice index
	// CompletionBytes is the size of the content streamed so far.
	CompletionBytes int
	// FinishReason is the first choice's finish_reason, once seen.
	FinishReason string
	// Content is true once any content-bearing delta went out.
	Content bool
}

// grow makes the per-choice state hold index i.
func (s *Stream) grow(i int) {
	for len(s.roleSent) <= i {
		s.roleSent = append(s.roleSent, false)
		s.finished = append(s.finished, false)
	}
}

// AppendChunk appends the normalized form of one chunk's data to dst. The
// chunk's "usage" is taken out and kept for AppendUsageChunk; a chunk that
// carries only usage (choices empty) yields nothing, so dst comes back
// unchanged. It fails for data that is not a JSON object.
func (s *Stream) AppendChunk(dst, data []byte) ([]byte, error) {
	return s.normalize(dst, data, &s.Meta, "chat.completion.chunk", s)
}

// chunkReader is what chat and completions streams keep to normalize
// their chunks: the usage seen, and the shape of the latest chunk.
type chunkReader struct {
	shape    chunkShape
	texts    []span // the texts of the choice copied as it came, when copied is set
	copied   bool
	usage    Usage
	hasUsage bool
}

// choiceWriter is what a chat or completions stream gives
// chunkReader.normalize.
type choiceWriter interface {
	// appendChoice appends choice pos of a chunk, c with its members
	// fields, normalized.
	appendChoice(dst []byte, pos int, c []byte, fields []span) []byte
	// addText counts n bytes of text streamed.
	addText(n int)
}

// normalize appends the normalized form of a chunk with choices, as
// Stream.AppendChunk describes, stamping it with object kind and m and
// writing each choice with w. It keeps the chunk's usage, its created
// time and model in m. A chunk with the latest chunk's shape is written
// from that shape.
func (r *chunkReader) normalize(dst, data []byte, m *Meta, kind string, w choiceWriter) ([]byte, error) {
	var texts [maxHoles][]byte
	if out, ok := r.shape.append(dst, data, &texts); ok {
		if n := textBytes(texts[:len(r.shape.holes)]); n > 0 {
			w.addText(n)
		}
		return out, nil
	}
	r.shape.clear() // what it wrote may depend on m, which may change
	parts, ok := collectPooled(data)
	defer parts.release()
	if !ok {
		return dst, ErrInvalidReply
	}
	var created, model []byte
	for _, f := range parts.top {
		switch f.name {
		case "usage":
			if u, ok := readUsage(f.val); ok {
				r.usage, r.hasUsage = u, true
			}
		case "created":
			created = f.val
		case "model":
			model = f.val
		}
	}
	if len(parts.choices) == 0 {
		return dst, nil
	}
	// Chunks the gateway adds later (finish, usage) match the backend's.
	if len(created) > 0 && created[0] >= '0' && created[0] <= '9' {
		m.Created, _ = parseCount(created)
	}
	if len(model) > 2 && model[0] == '"' && string(model[1:len(model)-1]) != m.Model {
		m.Model = unquote(model)
	}
	var o object
	o.open(dst)
	o.str("id", m.ID)
	o.str("object", kind)
	writeCreatedModel(&o, created, model, *m)
	o.key("choices")
	o.buf = append(o.buf, '[')
	at := len(o.buf) - len(dst)
	r.copied = false
	for i, c := range parts.choices {
		if i > 0 {
			o.buf = append(o.buf, ',')
		}
		o.buf = w.appendChoice(o.buf, i, c.raw, parts.fieldsOf(c))
	}
	o.buf = append(o.buf, ']')
	o.others(parts.top)
	out := o.close()
	if len(parts.choices) == 1 && r.copied {
		r.shape.take(data, out[len(dst):], parts.choices[0].raw, at, r.texts)
	}
	return out, nil
}

// appendChoice appends one normalized chunk choice, c with its members
// fields: with its index, and with role "assistant" on the first delta
// of the choice that bears content.
func (s *Stream) appendChoice(dst []byte, pos int, c []byte, fields []span) []byte {
	var index, delta, finish []byte
	for _, m := range fields {
		switch m.name {
		case "index":
			index = m.val
		case "delta":
			delta = m.val
		case "finish_reason":
			finish = m.val
		}
	}
	idx := parseIndex(index, pos)
	s.grow(idx)
	if !jsonwalk.IsNull(finish) {
		s.finished[idx] = true
		if idx == 0 || s.FinishReason == "" {
			s.FinishReason = stringValue(finish)
		}
	}

	var deltaBuf [6]span
	deltaFields := appendMembers(deltaBuf[:0], delta)
	hasRole, bearsContent := false, false
	for _, m := range deltaFields {
		switch m.name {
		case "role":
			hasRole = hasRole || !jsonwalk.IsNull(m.val)
		case "content", "tool_calls", "refusal", "function_call", "reasoning_content":
			if hasValue(m.val) {
				bearsContent = true
				s.CompletionBytes += contentSize(m.val)
			}
		}
	}
	if hasRole {
		s.roleSent[idx] = true
	}
	injectRole := bearsContent && !s.roleSent[idx]
	if bearsContent {
		s.roleSent[idx] = true
		s.Content = true
	}
	if index != nil && !injectRole && delta != nil {
		s.noteTexts(idx, deltaFields, finish)
		return append(dst, c...)
	}

	var o object
	o.open(dst)
	if index == nil {
		o.int("index", int64(idx))
	}
	for _, m := range fields {
		if !injectRole || m.name != "delta" {
			o.member(m.key, m.val)
			continue
		}
		o.key("delta")
		var d object
		d.open(o.buf)
		d.str("role", "assistant")
		for _, dm := range deltaFields {
			if dm.name != "role" {
				d.member(dm.key, dm.val)
			}
		}
		o.buf = d.close()
	}
	if delta == nil {
		o.raw("delta", []byte("{}"))
	}
	return o.close()
}

// noteTexts notes the content strings of choice idx, copied as it came,
// whose delta has the members fields, when every chunk like it but for
// them would be copied too and count for nothing but its text: its role
// went out, it has no finish_reason, and nothing else in it bears
// content.
func (s *Stream) noteTexts(idx int, fields []span, finish []byte) {
	s.texts, s.copied = s.texts[:0], false
	if !s.roleSent[idx] || !jsonwalk.IsNull(finish) {
		return
	}
	for _, m := range fields {
		switch m.name {
		case "content", "reasoning_content", "refusal":
			if m.val[0] == '"' {
				s.texts = append(s.texts, m)
				continue
			}
			fallthrough
		case "tool_calls", "function_call":
			if hasValue(m.val) {
				return
			}
		}
	}
	s.copied = len(s.texts) > 0
}

func (s *Stream) addText(n int) {
	s.CompletionBytes += n
	s.Content = true
}

// Finished reports whether every choice seen has had a finish_reason.
func (s *Stream) Finished() bool { return allFinished(s.finished) }

// allFinished reports whether finished, by choice index, is all true
// and not empty.
func allFinished(finished []bool) bool {
	if len(finished) == 0 {
		return false
	}
	for _, f := range finished {
		if !f {
			return false
		}
	}
	return true
}

// Usage returns the backend's usage when it sent one, else an estimate
// from the request and the content streamed.
func (s *Stream) Usage() Usage {
	if s.hasUsage {
		return s.usage
	}
	return Usage{PromptTokens: EstimateTokens(s.PromptBytes), CompletionTokens: EstimateTokens(s.CompletionBytes), Estimated: true}
}

// SetUsage sets the usage the stream reports, as a backend's would.
func (s *Stream) SetUsage(u Usage) { s.usage, s.hasUsage = u, true }

// AppendDelta appends a chunk with one choice whose delta holds role and
// content when not empty, and finish_reason when not empty. It is how
// the gateway writes chunks of its own: echo replies and the finish of a
// stream the backend left without one.
func (s *Stream) AppendDelta(dst []byte, index int, role, content, finish string) []byte {
	s.grow(index)
	if finish != "" {
		s.finished[index] = true
		if s.FinishReason == "" {
			s.FinishReason = finish
		}
	}
	return s.appendChunk(dst, index, finish, func(d *object) {
		if role != "" {
			d.str("role", role)
			s.roleSent[index] = true
		}
		if content != "" {
			d.str("content", content)
			s.CompletionBytes += len(content)
			s.Content = true
		}
	})
}

// appendChunk appends a chunk of the gateway's own with one choice, whose
// delta members delta writes, and finish_reason finish (null if "").
func (s *Stream) appendChunk(dst []byte, index int, finish string, delta func(d *object)) []byte {
	var o object
	s.head(&o, dst)
	o.key("choices")
	o.buf = append(o.buf, '[')
	var c object
	c.open(o.buf)
	c.int("index", int64(index))
	c.key("delta")
	var d object
	d.open(c.buf)
	delta(&d)
	c.buf = d.close()
	c.key("finish_reason")
	if finish == "" {
		c.buf = append(c.buf, "null"...)
	} else {
		c.buf = appendString(c.buf, finish)
	}
	o.buf = append(c.close(), ']')
	return o.close()
}

// FromCompletion appends to dst the chunks of a stream that carries the
// normalized reply: per choice, one delta with the message (tool calls
// given their index) and one with its finish_reason. It is how a
// backend's JSON answer to a streaming request is streamed.
func (s *Stream) FromCompletion(reply []byte, emit func(chunk []byte) error) error {
	var choices []byte
	members(reply, func(k, v []byte) {
		switch {
		case jsonwalk.KeyIs(k, "choices"):
			choices = v
		case jsonwalk.KeyIs(k, "model"):
			_ = json.Unmarshal(v, &s.Model)
		case jsonwalk.KeyIs(k, "created"):
			s.Created, _ = parseCount(v)
		case jsonwalk.KeyIs(k, "usage"):
			if u, ok := readUsage(v); ok {
				s.SetUsage(u)
			}
		}
	})
	var err error
	elements(choices, func(pos int, c []byte) {
		if err != nil {
			return
		}
		idx := parseIndex(Member(c, "index"), pos)
		s.grow(idx)
		out := s.appendChunk(nil, idx, "", func(d *object) {
			members(Member(c, "message"), func(k, v []byte) {
				if !jsonwalk.KeyIs(k, "tool_calls") || len(v) == 0 || v[0] != '[' {
					d.member(k, v)
					return
				}
				d.key("tool_calls")
				d.buf = append(d.buf, '[')
				elements(v, func(i int, call []byte) {
					if i > 0 {
						d.buf = append(d.buf, ',')
					}
					if Member(call, "index") != nil {
						d.buf = append(d.buf, call...)
						return
					}
					var tc object
					tc.open(d.buf)
					tc.int("index", int64(i))
					members(call, tc.member)
					d.buf = tc.close()
				})
				d.buf = append(d.buf, ']')
			})
		})
		s.roleSent[idx] = true
		s.Content = true
		if err = emit(out); err != nil {
			return
		}
		finish := "stop"
		_ = json.Unmarshal(Member(c, "finish_reason"), &finish)
		err = emit(s.AppendDelta(nil, idx, "", "", finish))
	})
	return err
}

// Unfinished returns the indexes of the choices that have had no
// finish_reason, or choice 0 if the stream had no choice at all.
func (s *Stream) Unfinished() []int { return unfinished(s.finished) }

// unfinished returns the indexes that are false in finished, or 0 if it
// is empty.
func unfinished(finished []bool) []int {
	if len(finished) == 0 {
		return []int{0}
	}
	var idx []int
	for i, f := range finished {
		if !f {
			idx = append(idx, i)
		}
	}
	return idx
}

// AppendUsageChunk appends the final usage chunk: choices empty, usage set.
func (s *Stream) AppendUsageChunk(dst []byte) []byte {
	var o object
	s.head(&o, dst)
	o.raw("choices", []byte("[]"))
	o.key("usage")
	o.buf = s.Usage().appendJSON(o.buf)
	return o.close()
}

func (s *Stream) head(o *object, dst []byte) {
	o.open(dst)
	o.str("id", s.ID)
	o.str("object", "chat.completion.chunk")
	o.int("created", s.Created)
	o.str("model", s.Model)
}
