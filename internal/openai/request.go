package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// ChatRequest is what the gateway needs of a chat-completions request.
// The request itself is forwarded as the client sent it.
type ChatRequest struct {
	// Model is the requested model, empty when the client named none.
	Model string
	// Stream is true when the client asked for Server-Sent Events.
	Stream bool
	// IncludeUsage is stream_options.include_usage.
	IncludeUsage bool
	// ContentBytes is the size of every message's content, the base of
	// the prompt token estimate.
	ContentBytes int

	lastUser  []byte // the last user message's raw content
	maxOutput int64  // the largest output budget given, 0 if none
	outputs   int64  // n or best_of: outputs generated, each with the budget; 0 if not given
}

// roles a message may have.
var roles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true, "function": true}

// ParseChatRequest validates body as a chat-completions request and
// returns what the gateway needs of it, in one pass over the body.
func ParseChatRequest(body []byte) (*ChatRequest, *Error) {
	p := requestParser{RequestReader: NewRequestReader(body, chatNames...), req: &ChatRequest{}, lastUser: -1}
	if e := p.Read(p.member); e != nil {
		return nil, e
	}
	if !p.hasMessages {
		return nil, MissingRequiredParameter("messages", "Missing required parameter: 'messages'.")
	}
	if p.messages == 0 {
		return nil, EmptyArray("messages", "'messages' must hold at least one message.")
	}
	p.req.lastUser = p.lastUserContent
	return p.req, nil
}

// RequestReader reads a request body the one way every route reads
// one, so that the gateway and any backend, whatever its JSON library,
// agree on what it asks: valid JSON (RFC 8259) in valid UTF-8, read in
// one pass; member names compared exactly, as decoded ("mod\u0065l" is
// model); a body that names anything twice in one object refused
// (duplicate_key), as JSON leaves open which of the two counts; and a
// member that spells a name the route reads in another case ("Model",
// or "\u017Ftream" with a long s) refused (unknown_parameter), as
// encoding/json and its kind match names regardless of case.
//
// The first problem with the request's meaning is kept and reading goes
// on, so that a syntax error later still wins; Read returns the error.
type RequestReader struct {
	body  []byte
	rd    reader
	err   *Error
	known []string // the top-level member names the route reads
	// dotted names array elements in paths as messages.0.content
	// (Anthropic's style), not messages[0].content (OpenAI's).
	dotted bool
}

// NewRequestReader returns a reader of body for a route that reads the
// top-level members known.
func NewRequestReader(body []byte, known ...string) RequestReader {
	return RequestReader{body: body, known: known}
}

// Dotted makes the reader name array elements in its errors' paths as
// Anthropic does: messages.0.content.
func (r *RequestReader) Dotted() { r.dotted = true }

// Read validates the body as one JSON object, calling member for each
// top-level member after checking its name, and returns the first
// problem: a syntax error wins over any problem with the request's
// meaning, which member reports with Fail.
func (r *RequestReader) Read(member func(key []byte, at int) (int, error)) *Error {
	body := r.body
	if jsonwalk.SkipSpace(body, 0) == len(body) {
		return InvalidJSON("The request body is empty; send a JSON object.")
	}
	if !utf8.Valid(body) {
		return InvalidJSON("The request body is not valid UTF-8.")
	}
	r.rd = reader{b: body, dup: r}
	i := jsonwalk.SkipSpace(body, 0)
	var err error
	if i < len(body) && body[i] == '{' {
		i, err = r.rd.object(i, 1, func(key []byte, at int) (int, error) {
			r.Check(key, "", r.known...)
			return member(key, at)
		})
	} else {
		i, err = r.rd.value(i, 0)
		if err == nil && jsonwalk.SkipSpace(body, i) == len(body) {
			return InvalidType("", "The request body must be a JSON object, not "+kindOf(body[jsonwalk.SkipSpace(body, 0)])+".")
		}
	}
	if err == nil && jsonwalk.SkipSpace(body, i) != len(body) {
		err = errAt("invalid character after the top-level value", jsonwalk.SkipSpace(body, i))
	}
	if err != nil {
		return InvalidJSON("The request body is not valid JSON: " + err.Error() + ".")
	}
	return r.err
}

// Value validates the value at offset at, depth levels deep, and returns
// the offset past it.
func (r *RequestReader) Value(at, depth int) (int, error) { return r.rd.value(at, depth) }

// Object validates the object at offset at, depth levels deep (its own
// level), calling member for each member; member returns the offset
// past the value, having validated it.
func (r *RequestReader) Object(at, depth int, member func(key []byte, at int) (int, error)) (int, error) {
	return r.rd.object(at, depth, member)
}

// Array validates the array at offset at, depth levels deep (its own
// level), calling elem for each element.
func (r *RequestReader) Array(at, depth int, elem func(n, at int) (int, error)) (int, error) {
	return r.rd.array(at, depth, elem)
}

// Fail keeps e as the request's problem, unless one came before.
func (r *RequestReader) Fail(e *Error) {
	if r.err == nil {
		r.err = e
	}
}

// Failed reports whether a problem has been kept.
func (r *RequestReader) Failed() bool { return r.err != nil }

// duplicate fails the request for the key at offset at, which repeats a
// name of its object.
func (r *RequestReader) duplicate(at int) {
	if r.err == nil {
		path := r.pathTo(at)
		r.Fail(r.styled(DuplicateKey(path), "given more than once"))
	}
}

// styled gives e, an error about its Param, the message what in
// Anthropic's style ("messages.0.role: Field required") when the reader
// is dotted.
func (r *RequestReader) styled(e *Error, what string) *Error {
	if r.dotted {
		e.Message = e.Param + ": " + what
	}
	return e
}

// Check fails the request when key, a member of the object at path
// (empty for the top level; "messages[2]" or "messages.2"), spells one
// of the names known in another case.
func (r *RequestReader) Check(key []byte, path string, known ...string) {
	name := KeyName(key)
	if r.err != nil || !foldable(name) {
		return
	}
	for _, k := range known {
		if string(name) != k && strings.EqualFold(string(name), k) {
			param := string(name)
			if path != "" {
				param = path + "." + param
			}
			r.Fail(r.styled(UnknownParameter(param, k), "unknown parameter; names are case-sensitive, the gateway reads '"+k+"'"))
			return
		}
	}
}

// foldable reports whether name could match another name when case is
// ignored: a name of lower-case ASCII letters, digits and underscores,
// as every name the gateway reads is, matches only itself.
func foldable(name []byte) bool {
	for _, c := range name {
		if c >= 'A' && c <= 'Z' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// Elem names element n of the array at path, in the reader's style.
func (r *RequestReader) Elem(path string, n int) string {
	if r.dotted {
		return path + "." + strconv.Itoa(n)
	}
	return path + "[" + strconv.Itoa(n) + "]"
}

// pathTo names the member whose key starts at offset off, as in
// messages[0].content, reading the body from its start: the body up to
// off has been validated. It runs only for a request being refused.
func (r *RequestReader) pathTo(off int) string {
	b, path := r.body, ""
	i := jsonwalk.SkipSpace(b, 0)
	for i < off && i < len(b) {
		open := b[i]
		i = jsonwalk.SkipSpace(b, i+1)
		found := false
		for n := 0; i < len(b) && b[i] != '}' && b[i] != ']'; n++ {
			var name string
			if open == '{' {
				k := i
				i = jsonwalk.SkipValue(b, i)
				name = string(KeyName(b[k:i]))
				if k == off {
					return join(path, name)
				}
				i = jsonwalk.SkipSpace(b, jsonwalk.SkipSpace(b, i)+1) // past ':'
			}
			end := jsonwalk.SkipValue(b, i)
			if off < end {
				if open == '{' {
					path = join(path, name)
				} else {
					path = r.Elem(path, n)
				}
				found = true
				break
			}
			i = jsonwalk.SkipSpace(b, end)
			if i < len(b) && b[i] == ',' {
				i = jsonwalk.SkipSpace(b, i+1)
			}
		}
		if !found {
			break
		}
	}
	return path
}

// join names member name of the object at path.
func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// requestParser collects what ParseChatRequest needs while the reader
// validates.
type requestParser struct {
	RequestReader
	req             *ChatRequest
	hasMessages     bool
	messages        int
	lastUser        int
	lastUserContent []byte
}

// The top-level members the routes read: those common reads, and each
// route's own.
var (
	commonNames      = []string{"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "max_output_tokens", "n"}
	chatNames        = append([]string{"messages"}, commonNames...)
	completionsNames = append([]string{"prompt", "suffix", "best_of"}, commonNames...)
	embeddingsNames  = append([]string{"input", "encoding_format"}, commonNames...)
	responsesNames   = append([]string{"input", "instructions", "previous_response_id", "conversation"}, commonNames...)
)

// member handles one top-level member of a chat-completions request whose value
// starts at b[at].
func (p *requestParser) member(key []byte, at int) (int, error) {
	b := p.body
	if jsonwalk.KeyIs(key, "messages") {
		if b[at] == '[' {
			p.hasMessages = true
			return p.Array(at, 2, p.message)
		}
		end, err := p.Value(at, 1)
		if err == nil && !jsonwalk.IsNull(b[at:end]) {
			p.Fail(InvalidType("messages", "'messages' must be an array of message objects."))
		}
		return end, err
	}
	return p.common(key, at)
}

// common handles the top-level members every endpoint shares (model,
// stream, stream_options, the output budget and how many outputs) and
// validates any other.
func (p *requestParser) common(key []byte, at int) (int, error) {
	b := p.body
	switch {
	case jsonwalk.KeyIs(key, "max_tokens"), jsonwalk.KeyIs(key, "max_completion_tokens"), jsonwalk.KeyIs(key, "max_output_tokens"):
		end, err := p.Value(at, 1)
		if err != nil || jsonwalk.IsNull(b[at:end]) {
			return end, err
		}
		// A backend may honour any of them (OpenAI and vLLM take
		// max_completion_tokens over max_tokens): the largest counts.
		if n, ok := parseCount(b[at:end]); !ok {
			name := string(KeyName(key))
			p.Fail(InvalidType(name, "'"+name+"' must be a non-negative integer."))
		} else {
			p.req.maxOutput = max(p.req.maxOutput, n)
		}
		return end, err
	case jsonwalk.KeyIs(key, "n"), jsonwalk.KeyIs(key, "best_of"):
		end, err := p.Value(at, 1)
		if err != nil || jsonwalk.IsNull(b[at:end]) {
			return end, err
		}
		// Each of n choices (best_of candidates) has the whole budget.
		if n, ok := parseCount(b[at:end]); !ok {
			name := string(KeyName(key))
			p.Fail(InvalidType(name, "'"+name+"' must be a non-negative integer."))
		} else {
			p.req.outputs = max(p.req.outputs, n)
		}
		return end, err
	case jsonwalk.KeyIs(key, "model"):
		end, err := p.Value(at, 1)
		if err == nil && !jsonwalk.IsNull(b[at:end]) {
			if b[at] != '"' {
				p.Fail(InvalidType("model", "'model' must be a string."))
			} else {
				p.req.Model = unquote(b[at:end])
			}
		}
		return end, err
	case jsonwalk.KeyIs(key, "stream"):
		end, err := p.Value(at, 1)
		switch v := string(b[at:end]); {
		case err != nil, v == "null", v == "false":
		case v == "true":
			p.req.Stream = true
		default:
			p.Fail(InvalidType("stream", "'stream' must be a boolean."))
		}
		return end, err
	case jsonwalk.KeyIs(key, "stream_options"):
		if b[at] != '{' {
			end, err := p.Value(at, 1)
			if err == nil && !jsonwalk.IsNull(b[at:end]) {
				p.Fail(InvalidType("stream_options", "'stream_options' must be an object with a boolean 'include_usage'."))
			}
			return end, err
		}
		return p.Object(at, 2, func(k []byte, at int) (int, error) {
			p.Check(k, "stream_options", "include_usage")
			end, err := p.Value(at, 2)
			if err == nil && jsonwalk.KeyIs(k, "include_usage") {
				switch string(b[at:end]) {
				case "true":
					p.req.IncludeUsage = true
				case "false", "null":
				default:
					p.Fail(InvalidType("stream_options", "'stream_options' must be an object with a boolean 'include_usage'."))
				}
			}
			return end, err
		})
	}
	return p.Value(at, 1)
}

// message handles the n-th element of messages, at b[at].
func (p *requestParser) message(n, at int) (int, error) {
	b := p.body
	p.messages++
	param := messageParam(n)
	if b[at] != '{' {
		end, err := p.Value(at, 2)
		p.Fail(InvalidType("messages", "'messages' must be an array of message objects."))
		return end, err
	}
	var role, content []byte
	end, err := p.Object(at, 3, func(k []byte, at int) (int, error) {
		p.Check(k, param, "role", "content")
		switch {
		case jsonwalk.KeyIs(k, "content") && b[at] == '[':
			start := at
			end, err := p.Array(at, 4, func(_, at int) (int, error) {
				if b[at] != '{' {
					p.Fail(InvalidType(param+".content", "'"+param+".content' must be a string or an array of content parts: each part must be an object."))
					return p.Value(at, 4)
				}
				hasType := false
				end, err := p.Object(at, 5, func(k []byte, at int) (int, error) {
					end, err := p.Value(at, 5)
					hasType = hasType || (jsonwalk.KeyIs(k, "type") && b[at] == '"')
					return end, err
				})
				if err == nil && !hasType {
					p.Fail(InvalidType(param+".content", "'"+param+".content' must be a string or an array of content parts: each part needs a 'type'."))
				}
				return end, err
			})
			content = b[start:end]
			return end, err
		case jsonwalk.KeyIs(k, "content"):
			end, err := p.Value(at, 3)
			content = b[at:end]
			return end, err
		case jsonwalk.KeyIs(k, "role"):
			end, err := p.Value(at, 3)
			role = b[at:end]
			return end, err
		}
		return p.Value(at, 3)
	})
	if err != nil || p.Failed() {
		return end, err
	}
	switch {
	case role == nil:
		p.Fail(MissingRequiredParameter(param+".role", "Missing required parameter: '"+param+".role'."))
		return end, nil
	case role[0] != '"':
		p.Fail(InvalidType(param+".role", "'"+param+".role' must be a string."))
		return end, nil
	}
	r := unquote(role)
	if !roles[r] {
		p.Fail(InvalidValue(param+".role", "'"+param+".role' must be one of system, developer, user, assistant, tool or function."))
		return end, nil
	}
	switch {
	case jsonwalk.IsNull(content):
		if r != "assistant" && r != "function" {
			p.Fail(MissingRequiredParameter(param+".content", "Missing required parameter: '"+param+".content'."))
		}
	case content[0] != '"' && content[0] != '[':
		p.Fail(InvalidType(param+".content", "'"+param+".content' must be a string or an array of content parts."))
	}
	p.req.ContentBytes += len(content)
	if r == "user" {
		p.lastUser, p.lastUserContent = n, content
	}
	return end, nil
}

// KeyName returns a validated raw key's name, its escapes decoded (RFC
// 8259): "mod\u0065l" names model, and is a duplicate of it.
func KeyName(key []byte) []byte {
	inner := key[1 : len(key)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	return []byte(unquote(key))
}

// unquote decodes a JSON string that has been validated.
func unquote(v []byte) string {
	inner := v[1 : len(v)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner)
	}
	var s string
	_ = json.Unmarshal(v, &s)
	return s
}

// kindOf names the JSON type of a value by its first byte.
func kindOf(c byte) string {
	switch c {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// Prompt returns the text of the last user message: its string content,
// or its text parts joined by "\n". It is decoded on demand: only echo
// mode needs it.
func (r *ChatRequest) Prompt() string {
	if len(r.lastUser) == 0 {
		return ""
	}
	text, _ := contentText(r.lastUser)
	return text
}

// contentText returns the text of a message content: the string itself,
// or the text of its parts joined by "\n".
func contentText(content json.RawMessage) (string, error) {
	if content[0] == '"' {
		return unquote(content), nil
	}
	var parts []struct {
		Type *string `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(content, &parts); err != nil {
		return "", errors.New("each part must be an object")
	}
	var sb strings.Builder
	for _, p := range parts {
		if p.Type == nil {
			return "", errors.New("each part needs a 'type'")
		}
		if *p.Type != "text" || p.Text == nil {
			continue
		}
		if sb.Len() > 0 {
			sb.WriteByte('\n')
		}
		sb.WriteString(*p.Text)
	}
	return sb.String(), nil
}

// messageParam names the n-th message in errors.
func messageParam(n int) string { return "messages[" + strconv.Itoa(n) + "]" }
