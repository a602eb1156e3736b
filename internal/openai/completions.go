package openai

import (
	"strings"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// completionsEndpoint is the legacy /v1/completions: a prompt in, text
// choices out, normalized as chat completions are.
type completionsEndpoint struct{}

func (completionsEndpoint) Name() string { return "completions" }

// Parse validates a completions request: prompt (a string, strings,
// token ids or arrays of them) is required; suffix (fill in the middle)
// must be a string and is forwarded as sent.
func (completionsEndpoint) Parse(body []byte) (*Request, *Error) {
	p := requestParser{RequestReader: NewRequestReader(body, completionsNames...), req: &ChatRequest{}}
	var prompt []byte
	size := 0
	e := p.Read(func(key []byte, at int) (int, error) {
		switch {
		case jsonwalk.KeyIs(key, "prompt"):
			end, n, err := p.textsOrTokens("prompt", at, true)
			if err == nil {
				prompt, size = body[at:end], size+n
			}
			return end, err
		case jsonwalk.KeyIs(key, "suffix"):
			end, err := p.Value(at, 1)
			switch {
			case err != nil, jsonwalk.IsNull(body[at:end]):
			case body[at] == '"':
				size += end - at - 2
			default:
				p.Fail(InvalidType("suffix", "'suffix' must be a string."))
			}
			return end, err
		}
		return p.common(key, at)
	})
	if e != nil {
		return nil, e
	}
	if jsonwalk.IsNull(prompt) {
		return nil, MissingRequiredParameter("prompt", "Missing required parameter: 'prompt'.")
	}
	return p.request(size, prompt), nil
}

func (completionsEndpoint) Normalize(dst, body []byte, m Meta) ([]byte, Reply, error) {
	return normalizeReply(dst, body, m, "text_completion", appendTextChoice)
}

func (completionsEndpoint) NewStream(m Meta) EventStream { return &textStream{Meta: m} }

func (completionsEndpoint) AsksStreamUsage() bool { return true }

func (completionsEndpoint) Echo(dst []byte, req *Request, m Meta) ([]byte, Reply) {
	reply := appendString([]byte(`{"choices":[{"text":`), echoPrefix+firstPrompt(req.echo))
	out, rep, err := normalizeReply(dst, append(reply, "}]}"...), m, "text_completion", appendTextChoice)
	if err != nil {
		panic(err) // the gateway's own reply is always valid
	}
	return out, rep
}

func (completionsEndpoint) EchoStream(req *Request, m Meta, emit Emit) (Reply, error) {
	s := &textStream{Meta: m}
	var err error
	for _, word := range strings.SplitAfter(echoPrefix+firstPrompt(req.echo), " ") {
		if err = s.emitChunk(emit, s.textChunk(nil, 0, word, "")); err != nil {
			break
		}
	}
	if err == nil {
		err = s.Finish(req.IncludeUsage, emit)
	}
	return s.Result(), err
}

// firstPrompt renders the first prompt of a prompt value for echo mode:
// the string, or a prompt of token ids as its JSON text.
func firstPrompt(prompt []byte) string {
	if len(prompt) > 0 && prompt[0] == '[' {
		var first []byte
		elements(prompt, func(i int, el []byte) {
			if i == 0 {
				first = el
			}
		})
		if len(first) > 0 && (first[0] == '"' || first[0] == '[') {
			prompt = first
		}
	}
	if len(prompt) > 0 && prompt[0] == '"' {
		return unquote(prompt)
	}
	return string(prompt)
}

// appendTextChoice appends the completion choice at position pos, whose
// members are fields, with its index, a text and a finish_reason; it
// adds what it learns to rep.
func appendTextChoice(dst []byte, pos int, fields []span, rep *Reply) []byte {
	var o object
	o.open(dst)
	hasIndex, hasText, hasFinish := false, false, false
	for _, f := range fields {
		hasIndex = hasIndex || f.name == "index"
	}
	if !hasIndex {
		o.int("index", int64(pos))
	}
	for _, f := range fields {
		switch f.name {
		case "text":
			if f.val[0] != '"' {
				continue
			}
			hasText = true
			rep.CompletionBytes += contentSize(f.val)
		case "finish_reason":
			if jsonwalk.IsNull(f.val) {
				continue
			}
			hasFinish = true
			if pos == 0 {
				rep.FinishReason = stringValue(f.val)
			}
		}
		o.member(f.key, f.val)
	}
	if !hasText {
		o.str("text", "")
	}
	if !hasFinish {
		o.str("finish_reason", "stop")
		if pos == 0 {
			rep.FinishReason = "stop"
		}
	}
	return o.close()
}

// textStream normalizes the chunks of one streamed completion, as
// Stream does for chat: every chunk stamped with the request id, the
// object, created and model; each choice with its index and text.
type textStream struct {
	Meta
	chunkEvents

	chunkReader

	finished        []bool // by choice index
	completionBytes int
	finishReason    string
	content         bool
}

func (s *textStream) Event(dst, name, data []byte) ([]byte, error) {
	return s.event(dst, name, data, s.chunk)
}

// chunk appends the normalized form of one chunk's data to dst; a
// usage-only chunk yields nothing (its usage is kept for Finish).
func (s *textStream) chunk(dst, data []byte) ([]byte, error) {
	return s.normalize(dst, data, &s.Meta, "text_completion", s)
}

// appendChoice appends one normalized chunk choice, c with its members
// fields: with its index and text.
func (s *textStream) appendChoice(dst []byte, pos int, c []byte, fields []span) []byte {
	var index, text, finish []byte
	for _, f := range fields {
		switch f.name {
		case "index":
			index = f.val
		case "text":
			text = f.val
		case "finish_reason":
			finish = f.val
		}
	}
	idx := parseIndex(index, pos)
	s.finish(idx, stringValue(finish), !jsonwalk.IsNull(finish))
	hasText := len(text) > 0 && text[0] == '"'
	if n := contentSize(text); hasText && n > 0 {
		s.completionBytes += n
		s.content = true
	}
	if index != nil && hasText {
		// Another chunk like it, its text aside, is copied as well.
		s.texts, s.copied = append(s.texts[:0], span{val: text, name: "text"}), jsonwalk.IsNull(finish)
		return append(dst, c...)
	}
	var o object
	o.open(dst)
	if index == nil {
		o.int("index", int64(idx))
	}
	for _, f := range fields {
		if f.name != "text" || hasText {
			o.member(f.key, f.val)
		}
	}
	if !hasText {
		o.str("text", "")
	}
	return o.close()
}

func (s *textStream) addText(n int) {
	s.completionBytes += n
	s.content = true
}

// finish records choice idx's state: finished when ended, with reason.
func (s *textStream) finish(idx int, reason string, ended bool) {
	for len(s.finished) <= idx {
		s.finished = append(s.finished, false)
	}
	if ended {
		s.finished[idx] = true
		if idx == 0 || s.finishReason == "" {
			s.finishReason = reason
		}
	}
}

// textChunk appends a chunk of the gateway's own with one choice: text,
// and finish_reason finish (null if "").
func (s *textStream) textChunk(dst []byte, index int, text, finish string) []byte {
	s.finish(index, finish, finish != "")
	if text != "" {
		s.completionBytes += len(text)
		s.content = true
	}
	var o object
	s.head(&o, dst)
	o.key("choices")
	o.buf = append(o.buf, '[')
	var c object
	c.open(o.buf)
	c.str("text", text)
	c.int("index", int64(index))
	c.raw("logprobs", []byte("null"))
	c.key("finish_reason")
	if finish == "" {
		c.buf = append(c.buf, "null"...)
	} else {
		c.buf = appendString(c.buf, finish)
	}
	o.buf = append(c.close(), ']')
	return o.close()
}

func (s *textStream) head(o *object, dst []byte) {
	o.open(dst)
	o.str("id", s.ID)
	o.str("object", "text_completion")
	o.int("created", s.Created)
	o.str("model", s.Model)
}

func (s *textStream) Content() bool  { return s.content }
func (s *textStream) Complete() bool { return s.done || allFinished(s.finished) }

func (s *textStream) Finish(includeUsage bool, emit Emit) error {
	var err error
	if !allFinished(s.finished) {
		for _, i := range unfinished(s.finished) {
			if err = s.emitChunk(emit, s.textChunk(nil, i, "", "stop")); err != nil {
				return err
			}
		}
	}
	if includeUsage {
		var o object
		s.head(&o, nil)
		o.raw("choices", []byte("[]"))
		o.key("usage")
		o.buf = s.Result().Usage.appendJSON(o.buf)
		err = s.emitChunk(emit, o.close())
	}
	return s.end(emit, err)
}

// FromReply emits, per choice of the normalized reply, one chunk with
// its text and one with its finish_reason, then ends the stream.
func (s *textStream) FromReply(reply []byte, includeUsage bool, emit Emit) error {
	var choices []byte
	members(reply, func(k, v []byte) {
		switch {
		case jsonwalk.KeyIs(k, "choices"):
			choices = v
		case jsonwalk.KeyIs(k, "model"):
			s.Model = stringValue(v)
		case jsonwalk.KeyIs(k, "created"):
			s.Created, _ = parseCount(v)
		case jsonwalk.KeyIs(k, "usage"):
			s.usage, s.hasUsage = readUsage(v)
		}
	})
	var err error
	elements(choices, func(pos int, c []byte) {
		if err != nil {
			return
		}
		idx := parseIndex(Member(c, "index"), pos)
		if err = s.emitChunk(emit, s.textChunk(nil, idx, stringValue(Member(c, "text")), "")); err == nil {
			err = s.emitChunk(emit, s.textChunk(nil, idx, "", stringValue(Member(c, "finish_reason"))))
		}
	})
	if err != nil {
		return err
	}
	return s.Finish(includeUsage, emit)
}

func (s *textStream) Result() Reply {
	u := s.usage
	if !s.hasUsage {
		u = Usage{PromptTokens: EstimateTokens(s.PromptBytes), CompletionTokens: EstimateTokens(s.completionBytes), Estimated: true}
	}
	return Reply{FinishReason: s.finishReason, Usage: u, CompletionBytes: s.completionBytes}
}
