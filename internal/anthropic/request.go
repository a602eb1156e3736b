package anthropic

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Request is what the gateway needs of a Messages request
// (POST /v1/messages or /v1/messages/count_tokens). A backend that
// serves Messages natively gets the client's bytes; ChatBody translates
// the request for one that does not.
type Request struct {
	// Model is the requested model. ChatBody sends it: set it to the
	// backend's name for the model before translating.
	Model string
	// MaxTokens is max_tokens, the reply's output budget (0 for
	// count_tokens, where it is absent).
	MaxTokens int64
	// Stream is true when the client asked for Server-Sent Events.
	Stream bool
	// StopSequences is stop_sequences; a reply that stops on one
	// reports it.
	StopSequences []string
	// PromptBytes is the size of the system prompt, every message's
	// content and the tools: the base of the prompt token estimate.
	PromptBytes int

	system     json.RawMessage
	messages   []rawMessage
	tools      json.RawMessage
	toolChoice json.RawMessage
	metadata   json.RawMessage
	sampling   [3]json.RawMessage // temperature, top_p, top_k
}

// rawMessage is one element of messages, validated but not decoded.
type rawMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// samplingParams are the names of Request.sampling, in order.
var samplingParams = [3]string{"temperature", "top_p", "top_k"}

// ParseRequest validates body as a POST /v1/messages request: a JSON
// object with model, messages and max_tokens, each of the right type.
// Errors are the gateway's, 400 invalid_request_error, with the
// parameter's path in Anthropic's style (messages.1.content) in Param
// and in the message; AppendError puts them in Anthropic's shape.
func ParseRequest(body []byte) (*Request, *openai.Error) { return parse(body, true) }

// ParseCountTokens validates body as a POST /v1/messages/count_tokens
// request: as ParseRequest, without max_tokens; its answer is never a
// stream.
func ParseCountTokens(body []byte) (*Request, *openai.Error) { return parse(body, false) }

// topNames are the top-level members of a Messages request the gateway
// reads.
var topNames = []string{"model", "messages", "max_tokens", "stream", "system", "stop_sequences",
	"temperature", "top_p", "top_k", "metadata", "tools", "tool_choice"}

// parse reads a Messages request: one that creates a message when
// create, else a count_tokens request.
func parse(body []byte, create bool) (*Request, *openai.Error) {
	var top struct {
		Model, Messages, MaxTokens, Stream, System, StopSequences json.RawMessage
		Temperature, TopP, TopK, Metadata, Tools, ToolChoice      json.RawMessage
	}
	fields := map[string]*json.RawMessage{"model": &top.Model, "messages": &top.Messages, "max_tokens": &top.MaxTokens,
		"stream": &top.Stream, "system": &top.System, "stop_sequences": &top.StopSequences, "temperature": &top.Temperature,
		"top_p": &top.TopP, "top_k": &top.TopK, "metadata": &top.Metadata, "tools": &top.Tools, "tool_choice": &top.ToolChoice}
	rd := openai.NewRequestReader(body, topNames...)
	rd.Dotted()
	e := rd.Read(func(key []byte, at int) (int, error) {
		var end int
		var err error
		if jsonwalk.KeyIs(key, "messages") && body[at] == '[' {
			end, err = rd.Array(at, 2, func(n, at int) (int, error) {
				if body[at] != '{' {
					return rd.Value(at, 2)
				}
				return rd.Object(at, 3, func(k []byte, at int) (int, error) {
					rd.Check(k, rd.Elem("messages", n), "role", "content")
					return rd.Value(at, 3)
				})
			})
		} else {
			end, err = rd.Value(at, 1)
		}
		if err == nil {
			if dst := fields[string(openai.KeyName(key))]; dst != nil {
				*dst = body[at:end]
			}
		}
		return end, err
	})
	if e != nil {
		return nil, e
	}
	r := &Request{system: top.System, tools: top.Tools, toolChoice: top.ToolChoice, metadata: top.Metadata,
		sampling: [3]json.RawMessage{top.Temperature, top.TopP, top.TopK}}

	if jsonwalk.IsNull(top.Model) {
		return nil, missing("model")
	}
	if json.Unmarshal(top.Model, &r.Model) != nil || r.Model == "" {
		return nil, invalid("model", openai.InvalidType, "must be a non-empty string")
	}
	if jsonwalk.IsNull(top.Messages) {
		return nil, missing("messages")
	}
	if json.Unmarshal(top.Messages, &r.messages) != nil {
		return nil, invalid("messages", openai.InvalidType, "must be an array of objects with a role and a content")
	}
	if len(r.messages) == 0 {
		return nil, invalid("messages", openai.EmptyArray, "must hold at least one message")
	}
	for i, m := range r.messages {
		if e := checkMessage(i, m); e != nil {
			return nil, e
		}
		r.PromptBytes += len(m.Content)
	}
	if create {
		if jsonwalk.IsNull(top.MaxTokens) {
			return nil, missing("max_tokens")
		}
		n, err := strconv.ParseInt(string(top.MaxTokens), 10, 64)
		if err != nil || n < 1 {
			return nil, invalid("max_tokens", openai.InvalidValue, "must be an integer of at least 1")
		}
		r.MaxTokens = n
	}
	// count_tokens answers JSON whatever the request says.
	if create && !jsonwalk.IsNull(top.Stream) && json.Unmarshal(top.Stream, &r.Stream) != nil {
		return nil, invalid("stream", openai.InvalidType, "must be a boolean")
	}
	if !jsonwalk.IsNull(top.System) && top.System[0] != '"' && top.System[0] != '[' {
		return nil, invalid("system", openai.InvalidType, "must be a string or an array of text blocks")
	}
	if !jsonwalk.IsNull(top.StopSequences) && json.Unmarshal(top.StopSequences, &r.StopSequences) != nil {
		return nil, invalid("stop_sequences", openai.InvalidType, "must be an array of strings")
	}
	for i, v := range r.sampling {
		if !jsonwalk.IsNull(v) && (v[0] < '0' || v[0] > '9') && v[0] != '-' {
			return nil, invalid(samplingParams[i], openai.InvalidType, "must be a number")
		}
	}
	if !jsonwalk.IsNull(top.Tools) && top.Tools[0] != '[' {
		return nil, invalid("tools", openai.InvalidType, "must be an array of tools")
	}
	r.PromptBytes += len(top.System) + len(top.Tools)
	return r, nil
}

// checkMessage validates the role and the shape of the content of
// message i.
func checkMessage(i int, m rawMessage) *openai.Error {
	param := "messages." + strconv.Itoa(i)
	if m.Role != "user" && m.Role != "assistant" && m.Role != "system" {
		// "system" in messages: instructions given mid-conversation, as
		// Claude Code sends them.
		return invalid(param+".role", openai.InvalidValue, "must be \"user\", \"assistant\" or \"system\"")
	}
	if jsonwalk.IsNull(m.Content) {
		return missing(param + ".content")
	}
	if m.Content[0] == '"' {
		return nil
	}
	var blocks []struct {
		Type *string `json:"type"`
	}
	if m.Content[0] != '[' || json.Unmarshal(m.Content, &blocks) != nil {
		return invalid(param+".content", openai.InvalidType, "must be a string or an array of content blocks")
	}
	for j, b := range blocks {
		if b.Type == nil {
			return missing(param + ".content." + strconv.Itoa(j) + ".type")
		}
	}
	return nil
}

// missing is the error for an absent required parameter.
func missing(param string) *openai.Error {
	return openai.MissingRequiredParameter(param, param+": Field required")
}

// invalid is the error of kind (openai.InvalidType, openai.InvalidValue
// ...) for param, which is what.
func invalid(param string, kind func(param, msg string) *openai.Error, what string) *openai.Error {
	return kind(param, param+": "+what)
}

// EstimateTokens is the gateway's estimate of the request's input
// tokens, from PromptBytes as for chat requests (openai.EstimateTokens);
// it answers count_tokens for backends that do not.
func (r *Request) EstimateTokens() int64 { return openai.EstimateTokens(r.PromptBytes) }

// AppendCountTokens appends the count_tokens reply for the estimate:
// {"input_tokens":N}.
func (r *Request) AppendCountTokens(dst []byte) []byte {
	dst = append(dst, `{"input_tokens":`...)
	dst = strconv.AppendInt(dst, r.EstimateTokens(), 10)
	return append(dst, '}')
}

// Prompt returns the text of the last user message: its string content,
// or its text blocks joined by "\n". Echo mode answers with it.
func (r *Request) Prompt() string {
	for i := len(r.messages) - 1; i >= 0; i-- {
		if m := r.messages[i]; m.Role == "user" {
			return contentText(m.Content)
		}
	}
	return ""
}

// contentText is the text of a content or system value that has been
// validated: the string itself, or its text blocks joined by "\n".
func contentText(v json.RawMessage) string {
	if jsonwalk.IsNull(v) {
		return ""
	}
	if v[0] == '"' {
		var s string
		_ = json.Unmarshal(v, &s)
		return s
	}
	var blocks []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	_ = json.Unmarshal(v, &blocks)
	var sb strings.Builder
	for _, b := range blocks {
		if b.Type != "text" {
			continue
		}
		if sb.Len() > 0 {
			sb.WriteByte('\n')
		}
		sb.WriteString(b.Text)
	}
	return sb.String()
}
