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
	maxOutput int64  // the output budget, 0 if none
}

// roles a message may have.
var roles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true, "function": true}

// ParseChatRequest validates body as a chat-completions request and
// returns what the gateway needs of it, in one pass over the body.
func ParseChatRequest(body []byte) (*ChatRequest, *Error) {
	p := requestParser{body: body, req: &ChatRequest{}, lastUser: -1}
	if e := p.parse(p.member); e != nil {
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

// parse validates p.body as one JSON object, calling member for each
// top-level member. A syntax error wins over the first problem with the
// request's meaning, which member reports with p.fail.
func (p *requestParser) parse(member func(key []byte, at int) (int, error)) *Error {
	body := p.body
	if len(body) == 0 {
		return InvalidJSON("The request body is empty; send a JSON object.")
	}
	if !utf8.Valid(body) {
		return InvalidJSON("The request body is not valid UTF-8.")
	}
	i := jsonwalk.SkipSpace(body, 0)
	var err error
	if i < len(body) && body[i] == '{' {
		i, err = scanObject(body, i, 1, member)
	} else {
		i, err = scanValue(body, i, 0)
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
	return p.err
}

// requestParser collects what ParseChatRequest needs while the scanner
// validates. The first problem with the request's meaning is kept in err;
// scanning goes on, so that a syntax error later still wins.
type requestParser struct {
	body            []byte
	req             *ChatRequest
	err             *Error
	keys            [][]byte            // top-level key names, for duplicates
	keySet          map[string]struct{} // the same, once there are many
	hasMessages     bool
	messages        int
	lastUser        int
	lastUserContent []byte
}

func (p *requestParser) fail(e *Error) {
	if p.err == nil {
		p.err = e
	}
}

// seen records a top-level key name and reports whether it came before:
// a short list while keys are few, a set once they are many, so a body
// of a million keys costs no more than one of ten.
func (p *requestParser) seen(key []byte) bool {
	if p.keySet == nil {
		for _, k := range p.keys {
			if string(k) == string(key) {
				return true
			}
		}
		p.keys = append(p.keys, key)
		if len(p.keys) > 16 {
			p.keySet = make(map[string]struct{}, 64)
			for _, k := range p.keys {
				p.keySet[string(k)] = struct{}{}
			}
		}
		return false
	}
	if _, ok := p.keySet[string(key)]; ok {
		return true
	}
	p.keySet[string(key)] = struct{}{}
	return false
}

// member handles one top-level member of a chat request whose value
// starts at b[at].
func (p *requestParser) member(key []byte, at int) (int, error) {
	b := p.body
	p.once(key)
	if jsonwalk.KeyIs(key, "messages") {
		if b[at] == '[' {
			p.hasMessages = true
			return scanArray(b, at, 2, p.message)
		}
		end, err := scanValue(b, at, 1)
		if err == nil && !jsonwalk.IsNull(b[at:end]) {
			p.fail(InvalidType("messages", "'messages' must be an array of message objects."))
		}
		return end, err
	}
	return p.common(key, at)
}

// once fails the request if key, compared by its decoded name, came
// before.
func (p *requestParser) once(key []byte) {
	if name := keyName(key); p.seen(name) {
		p.fail(DuplicateKey(string(name)))
	}
}

// common handles the top-level members every endpoint shares (model,
// stream, stream_options, the output budget) and validates any other.
func (p *requestParser) common(key []byte, at int) (int, error) {
	b := p.body
	switch {
	case jsonwalk.KeyIs(key, "max_tokens"), jsonwalk.KeyIs(key, "max_completion_tokens"), jsonwalk.KeyIs(key, "max_output_tokens"):
		end, err := scanValue(b, at, 1)
		if err != nil || jsonwalk.IsNull(b[at:end]) {
			return end, err
		}
		// The smallest budget given is the one that binds.
		if n, ok := parseCount(b[at:end]); !ok {
			name := string(key[1 : len(key)-1])
			p.fail(InvalidType(name, "'"+name+"' must be a non-negative integer."))
		} else if p.req.maxOutput == 0 || n < p.req.maxOutput {
			p.req.maxOutput = n
		}
		return end, err
	case jsonwalk.KeyIs(key, "model"):
		end, err := scanValue(b, at, 1)
		if err == nil && !jsonwalk.IsNull(b[at:end]) {
			if b[at] != '"' {
				p.fail(InvalidType("model", "'model' must be a string."))
			} else {
				p.req.Model = unquote(b[at:end])
			}
		}
		return end, err
	case jsonwalk.KeyIs(key, "stream"):
		end, err := scanValue(b, at, 1)
		switch v := string(b[at:end]); {
		case err != nil, v == "null", v == "false":
		case v == "true":
			p.req.Stream = true
		default:
			p.fail(InvalidType("stream", "'stream' must be a boolean."))
		}
		return end, err
	case jsonwalk.KeyIs(key, "stream_options"):
		if b[at] != '{' {
			end, err := scanValue(b, at, 1)
			if err == nil && !jsonwalk.IsNull(b[at:end]) {
				p.fail(InvalidType("stream_options", "'stream_options' must be an object with a boolean 'include_usage'."))
			}
			return end, err
		}
		includeUsage := false
		return scanObject(b, at, 2, func(k []byte, at int) (int, error) {
			end, err := scanValue(b, at, 2)
			if err == nil && jsonwalk.KeyIs(k, "include_usage") {
				if includeUsage {
					p.fail(DuplicateKey("stream_options.include_usage"))
				}
				includeUsage = true
				switch string(b[at:end]) {
				case "true":
					p.req.IncludeUsage = true
				case "false", "null":
				default:
					p.fail(InvalidType("stream_options", "'stream_options' must be an object with a boolean 'include_usage'."))
				}
			}
			return end, err
		})
	}
	return scanValue(b, at, 1)
}

// message handles the n-th element of messages, at b[at].
func (p *requestParser) message(n, at int) (int, error) {
	b := p.body
	p.messages++
	param := messageParam(n)
	if b[at] != '{' {
		end, err := scanValue(b, at, 2)
		p.fail(InvalidType("messages", "'messages' must be an array of message objects."))
		return end, err
	}
	var role, content []byte
	end, err := scanObject(b, at, 3, func(k []byte, at int) (int, error) {
		switch {
		case jsonwalk.KeyIs(k, "content") && b[at] == '[':
			if content != nil {
				p.fail(DuplicateKey(param + ".content"))
			}
			start := at
			end, err := scanArray(b, at, 4, func(_, at int) (int, error) {
				if b[at] != '{' {
					p.fail(InvalidType(param+".content", "'"+param+".content' must be a string or an array of content parts: each part must be an object."))
					return scanValue(b, at, 4)
				}
				hasType := false
				end, err := scanObject(b, at, 5, func(k []byte, at int) (int, error) {
					end, err := scanValue(b, at, 5)
					hasType = hasType || (jsonwalk.KeyIs(k, "type") && b[at] == '"')
					return end, err
				})
				if err == nil && !hasType {
					p.fail(InvalidType(param+".content", "'"+param+".content' must be a string or an array of content parts: each part needs a 'type'."))
				}
				return end, err
			})
			content = b[start:end]
			return end, err
		case jsonwalk.KeyIs(k, "content"), jsonwalk.KeyIs(k, "role"):
			end, err := scanValue(b, at, 3)
			if jsonwalk.KeyIs(k, "role") {
				if role != nil {
					p.fail(DuplicateKey(param + ".role"))
				}
				role = b[at:end]
			} else {
				if content != nil {
					p.fail(DuplicateKey(param + ".content"))
				}
				content = b[at:end]
			}
			return end, err
		}
		return scanValue(b, at, 3)
	})
	if err != nil {
		return end, err
	}
	switch {
	case role == nil:
		p.fail(MissingRequiredParameter(param+".role", "Missing required parameter: '"+param+".role'."))
		return end, nil
	case role[0] != '"':
		p.fail(InvalidType(param+".role", "'"+param+".role' must be a string."))
		return end, nil
	}
	r := unquote(role)
	if !roles[r] {
		p.fail(InvalidValue(param+".role", "'"+param+".role' must be one of system, developer, user, assistant, tool or function."))
		return end, nil
	}
	switch {
	case jsonwalk.IsNull(content):
		if r != "assistant" && r != "function" {
			p.fail(MissingRequiredParameter(param+".content", "Missing required parameter: '"+param+".content'."))
		}
	case content[0] != '"' && content[0] != '[':
		p.fail(InvalidType(param+".content", "'"+param+".content' must be a string or an array of content parts."))
	}
	p.req.ContentBytes += len(content)
	if r == "user" {
		p.lastUser, p.lastUserContent = n, content
	}
	return end, nil
}

// keyName returns a validated raw key's name, its escapes decoded (RFC
// 8259): "mod\u0065l" names model, and is a duplicate of it.
func keyName(key []byte) []byte {
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
