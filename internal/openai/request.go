package openai

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
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
	// HasStreamOptions says the request carries a stream_options object.
	HasStreamOptions bool
	// Prompt is the text of the last user message: its string content,
	// or its text parts joined by "\n".
	Prompt string
	// ContentBytes is the size of every message's content, the base of
	// the prompt token estimate.
	ContentBytes int
}

// roles a message may have.
var roles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true, "function": true}

type wireMessage struct {
	Role    json.RawMessage `json:"role"`
	Content json.RawMessage `json:"content"`
}

type wireRequest struct {
	Model         json.RawMessage `json:"model"`
	Messages      []wireMessage   `json:"messages"`
	Stream        json.RawMessage `json:"stream"`
	StreamOptions json.RawMessage `json:"stream_options"`
}

// ParseChatRequest validates body as a chat-completions request and
// returns what the gateway needs of it. It decodes the body once; only
// the last user message's content is decoded a second time.
func ParseChatRequest(body []byte) (*ChatRequest, *Error) {
	if len(body) == 0 {
		return nil, Invalid("", "invalid_json", "The request body is empty; send a JSON object.")
	}
	if !utf8.Valid(body) {
		return nil, Invalid("", "invalid_json", "The request body is not valid UTF-8.")
	}
	var w wireRequest
	if err := json.Unmarshal(body, &w); err != nil {
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			if te.Field == "" {
				return nil, Invalid("", "invalid_type", "The request body must be a JSON object, not "+article(te.Value)+".")
			}
			return nil, Invalid("messages", "invalid_type", "'messages' must be an array of message objects.")
		}
		return nil, Invalid("", "invalid_json", "The request body is not valid JSON: "+strings.TrimPrefix(err.Error(), "json: ")+".")
	}
	if k, dup := duplicateKey(body); dup {
		return nil, Invalid(k, "duplicate_key", "The request body names '"+k+"' more than once.")
	}

	req := &ChatRequest{}
	if !isNull(w.Model) {
		if json.Unmarshal(w.Model, &req.Model) != nil {
			return nil, Invalid("model", "invalid_type", "'model' must be a string.")
		}
	}
	if !isNull(w.Stream) {
		if json.Unmarshal(w.Stream, &req.Stream) != nil {
			return nil, Invalid("stream", "invalid_type", "'stream' must be a boolean.")
		}
	}
	if !isNull(w.StreamOptions) {
		var so struct {
			IncludeUsage *bool `json:"include_usage"`
		}
		if json.Unmarshal(w.StreamOptions, &so) != nil {
			return nil, Invalid("stream_options", "invalid_type", "'stream_options' must be an object with a boolean 'include_usage'.")
		}
		req.HasStreamOptions = true
		req.IncludeUsage = so.IncludeUsage != nil && *so.IncludeUsage
	}
	if w.Messages == nil {
		return nil, Invalid("messages", "missing_required_parameter", "Missing required parameter: 'messages'.")
	}
	if len(w.Messages) == 0 {
		return nil, Invalid("messages", "empty_array", "'messages' must hold at least one message.")
	}
	lastUser := -1
	for i, m := range w.Messages {
		param := "messages[" + strconv.Itoa(i) + "]"
		var role string
		if json.Unmarshal(m.Role, &role) != nil {
			if m.Role == nil {
				return nil, Invalid(param+".role", "missing_required_parameter", "Missing required parameter: '"+param+".role'.")
			}
			return nil, Invalid(param+".role", "invalid_type", "'"+param+".role' must be a string.")
		}
		if !roles[role] {
			return nil, Invalid(param+".role", "invalid_value", "'"+param+".role' must be one of system, developer, user, assistant, tool or function.")
		}
		switch {
		case isNull(m.Content):
			if role != "assistant" && role != "function" {
				return nil, Invalid(param+".content", "missing_required_parameter", "Missing required parameter: '"+param+".content'.")
			}
		case m.Content[0] != '"' && m.Content[0] != '[':
			return nil, Invalid(param+".content", "invalid_type", "'"+param+".content' must be a string or an array of content parts.")
		}
		req.ContentBytes += len(m.Content)
		if role == "user" {
			lastUser = i
		}
	}
	if lastUser >= 0 {
		text, err := contentText(w.Messages[lastUser].Content)
		if err != nil {
			param := "messages[" + strconv.Itoa(lastUser) + "].content"
			return nil, Invalid(param, "invalid_type", "'"+param+"' must be a string or an array of content parts: "+err.Error())
		}
		req.Prompt = text
	}
	return req, nil
}

// contentText returns the text of a message content: the string itself,
// or the text of its parts joined by "\n".
func contentText(content json.RawMessage) (string, error) {
	if content[0] == '"' {
		var s string
		err := json.Unmarshal(content, &s)
		return s, err
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

// duplicateKey reports a key the top-level object of body names twice:
// encoding/json would silently keep the last, and a backend may keep the
// first, so the gateway and the backend could read different requests.
func duplicateKey(body []byte) (string, bool) {
	var seen [16][]byte
	keys := seen[:0]
	dup := ""
	members(body, func(key, _ []byte) {
		for _, k := range keys {
			if dup == "" && string(k) == string(key) {
				dup = strings.Trim(string(key), `"`)
			}
		}
		keys = append(keys, key)
	})
	return dup, dup != ""
}

func article(v string) string {
	switch v {
	case "array", "object":
		return "an " + v
	}
	return "a " + v
}
