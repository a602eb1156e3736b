package anthropic

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Message is a Messages reply.
type Message struct {
	// ID is the reply's id: the gateway's request id.
	ID string
	// Model is the model the client asked for.
	Model string
	// Content is the reply's text and tool_use blocks, in order.
	Content []Block
	// StopReason is end_turn, max_tokens, stop_sequence, tool_use or
	// refusal.
	StopReason string
	// StopSequence is the stop sequence that ended the reply, when
	// StopReason is stop_sequence.
	StopSequence string
	// Usage is the reply's token accounting.
	Usage Usage
}

// Block is a content block of a reply: text, or a tool call.
type Block struct {
	// Type is "text" or "tool_use".
	Type string
	// Text is a text block's text.
	Text string
	// ID is a tool_use block's id.
	ID string
	// Name is a tool_use block's tool name.
	Name string
	// Input is a tool_use block's input: a JSON object.
	Input json.RawMessage
}

// Usage is the token accounting of a reply, in Anthropic's terms.
type Usage struct {
	// InputTokens is the prompt tokens not read from the backend's
	// prompt cache: a chat backend's prompt_tokens less its
	// cached_tokens.
	InputTokens int64
	// CacheReadTokens is the prompt tokens read from the cache (a chat
	// backend's cached_tokens); CacheCreationTokens those a native
	// backend wrote to it.
	CacheReadTokens, CacheCreationTokens int64
	// OutputTokens is the backend's completion_tokens.
	OutputTokens int64
	// Estimated is true when the backend reported nothing and the
	// figures are the gateway's estimates.
	Estimated bool
}

// Stop reasons.
const (
	StopEndTurn   = "end_turn"
	StopMaxTokens = "max_tokens"
	StopSequence  = "stop_sequence"
	StopToolUse   = "tool_use"
	StopRefusal   = "refusal"
)

// AppendJSON appends the reply as Anthropic sends it:
// {"id","type":"message","role":"assistant","model","content",
// "stop_reason","stop_sequence","usage"}.
func (m *Message) AppendJSON(dst []byte) []byte {
	dst = m.appendHead(dst)
	for i, b := range m.Content {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = b.appendJSON(dst, b.Input)
	}
	dst = append(dst, `],"stop_reason":`...)
	dst = appendNullable(dst, m.StopReason)
	dst = append(dst, `,"stop_sequence":`...)
	dst = appendNullable(dst, m.StopSequence)
	dst = append(dst, `,"usage":`...)
	dst = appendUsage(dst, m.Usage)
	return append(dst, '}')
}

// appendHead appends the reply up to the opening of its content array.
func (m *Message) appendHead(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, m.ID)
	dst = append(dst, `,"type":"message","role":"assistant","model":`...)
	dst = appendString(dst, m.Model)
	return append(dst, `,"content":[`...)
}

// appendJSON appends the block with input as a tool_use block's input
// ("{}" in content_block_start, whose input comes in deltas).
func (b *Block) appendJSON(dst, input []byte) []byte {
	if b.Type == "text" {
		dst = append(dst, `{"type":"text","text":`...)
		dst = appendString(dst, b.Text)
		return append(dst, '}')
	}
	dst = append(dst, `{"type":"tool_use","id":`...)
	dst = appendString(dst, b.ID)
	dst = append(dst, `,"name":`...)
	dst = appendString(dst, b.Name)
	dst = append(dst, `,"input":`...)
	dst = append(dst, input...)
	return append(dst, '}')
}

// appendUsage appends a usage object.
func appendUsage(dst []byte, u Usage) []byte {
	dst = append(dst, `{"input_tokens":`...)
	dst = strconv.AppendInt(dst, u.InputTokens, 10)
	dst = append(dst, `,"cache_creation_input_tokens":`...)
	dst = strconv.AppendInt(dst, u.CacheCreationTokens, 10)
	dst = append(dst, `,"cache_read_input_tokens":`...)
	dst = strconv.AppendInt(dst, u.CacheReadTokens, 10)
	dst = append(dst, `,"output_tokens":`...)
	dst = strconv.AppendInt(dst, u.OutputTokens, 10)
	return append(dst, '}')
}

// gateway is u in the gateway's terms: every prompt token counted, those
// read from the cache among them.
func (u Usage) gateway() openai.Usage {
	return openai.Usage{PromptTokens: u.InputTokens + u.CacheReadTokens + u.CacheCreationTokens, CachedTokens: u.CacheReadTokens,
		CacheWriteTokens: u.CacheCreationTokens, CompletionTokens: u.OutputTokens, Estimated: u.Estimated}
}

// chatUsage is a chat backend's prompt and completion tokens, cached
// being the prompt tokens it read from its cache, in Anthropic's terms.
func chatUsage(prompt, cached, completion int64) Usage {
	cached = min(cached, prompt)
	return Usage{InputTokens: prompt - cached, CacheReadTokens: cached, OutputTokens: completion}
}

func appendNullable(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, "null"...)
	}
	return appendString(dst, s)
}

// ReplyOptions is what reply and stream translation need of the request.
type ReplyOptions struct {
	// ID is the reply's id: the gateway's request id.
	ID string
	// Model is the model the client asked for, which the reply names.
	Model string
	// StopSequences is the request's stop_sequences, to tell a reply
	// that ended on one.
	StopSequences []string
	// PromptBytes is Request.PromptBytes, for the input estimate when the
	// backend reports no usage.
	PromptBytes int
}

// FromCompletion translates a backend's chat-completion reply (its first
// choice) into a Messages reply: content and refusal text -> a text
// block, each tool call -> a tool_use block (its arguments parsed into
// input; invalid JSON is an error, never an empty input), finish_reason
// -> stop_reason, usage -> input and output tokens (estimated when the
// backend sent none). Errors are 502s for the client.
func FromCompletion(body []byte, o ReplyOptions) (*Message, *openai.Error) {
	var c struct {
		Choices []struct {
			Message struct {
				Content   json.RawMessage `json:"content"`
				Refusal   *string         `json:"refusal"`
				ToolCalls []struct {
					ID       string `json:"id"`
					Function struct {
						Name      string          `json:"name"`
						Arguments json.RawMessage `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"message"`
			FinishReason *string         `json:"finish_reason"`
			StopReason   json.RawMessage `json:"stop_reason"` // vLLM: the stop string matched
		} `json:"choices"`
		Usage *struct {
			PromptTokens        *int64 `json:"prompt_tokens"`
			CompletionTokens    *int64 `json:"completion_tokens"`
			PromptTokensDetails struct {
				CachedTokens int64 `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if json.Unmarshal(body, &c) != nil || len(c.Choices) == 0 {
		return nil, openai.InvalidUpstreamResponse("The backend's reply is not a chat completion.")
	}
	ch := c.Choices[0]
	m := &Message{ID: o.ID, Model: o.Model}
	text, ok := messageText(ch.Message.Content)
	if !ok {
		return nil, openai.InvalidUpstreamResponse("The backend's reply has a content that is neither text nor text parts.")
	}
	if ch.Message.Refusal != nil {
		text += *ch.Message.Refusal
	}
	if text != "" {
		m.Content = append(m.Content, Block{Type: "text", Text: text})
	}
	outBytes := len(text)
	var ids toolIDs
	for _, tc := range ch.Message.ToolCalls {
		args := tc.Function.Arguments
		if len(args) > 0 && args[0] == '"' {
			var s string
			_ = json.Unmarshal(args, &s)
			args = json.RawMessage(s)
		}
		input, e := toolInput(tc.Function.Name, args)
		if e != nil {
			return nil, e
		}
		outBytes += len(args)
		m.Content = append(m.Content, Block{Type: "tool_use", ID: ids.use(tc.ID), Name: tc.Function.Name, Input: input})
	}
	finish := ""
	if ch.FinishReason != nil {
		finish = *ch.FinishReason
	}
	var matched string
	if isString(ch.StopReason) {
		_ = json.Unmarshal(ch.StopReason, &matched)
	}
	m.StopReason, m.StopSequence = stopReason(finish, len(ch.Message.ToolCalls) > 0, matched, text, o.StopSequences)
	if u := c.Usage; u != nil && u.PromptTokens != nil && u.CompletionTokens != nil {
		m.Usage = chatUsage(*u.PromptTokens, u.PromptTokensDetails.CachedTokens, *u.CompletionTokens)
	} else {
		m.Usage = Usage{InputTokens: openai.EstimateTokens(o.PromptBytes), OutputTokens: openai.EstimateTokens(outBytes), Estimated: true}
	}
	return m, nil
}

// messageText is a reply message's content: a string, text parts
// concatenated, or "" for null. It reports false for anything else.
func messageText(v json.RawMessage) (string, bool) {
	if jsonwalk.IsNull(v) {
		return "", true
	}
	if v[0] == '"' {
		var s string
		return s, json.Unmarshal(v, &s) == nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(v, &parts) != nil {
		return "", false
	}
	var sb strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			sb.WriteString(p.Text)
		}
	}
	return sb.String(), true
}

// toolInput checks a tool call's name and arguments and returns the
// arguments as a tool_use input: a JSON object ("{}" for no arguments
// at all). Arguments that are not a JSON object are an error.
func toolInput(name string, args []byte) (json.RawMessage, *openai.Error) {
	if name == "" {
		return nil, openai.InvalidUpstreamResponse("The backend sent a tool call without a function name.")
	}
	args = bytes.TrimSpace(args)
	if jsonwalk.IsNull(args) {
		return json.RawMessage("{}"), nil
	}
	if args[0] != '{' || !json.Valid(args) {
		return nil, openai.InvalidUpstreamResponse("The backend sent tool call arguments that are not a JSON object.")
	}
	return json.RawMessage(args), nil
}

// stopReason maps a chat finish_reason to Anthropic's stop_reason and
// stop_sequence. A reply with tool calls stopped for them whatever the
// backend says, unless it ran out of tokens. "stop" is stop_sequence when
// the backend named the stop string it matched (matched, as vLLM does)
// or the text ends with one of the request's stop sequences.
func stopReason(finish string, hasTools bool, matched, tail string, stops []string) (reason, sequence string) {
	switch {
	case finish == "length":
		return StopMaxTokens, ""
	case finish == "content_filter":
		return StopRefusal, ""
	case hasTools || finish == "tool_calls" || finish == "function_call":
		return StopToolUse, ""
	}
	for _, s := range stops {
		if s != "" && (s == matched || strings.HasSuffix(tail, s)) {
			return StopSequence, s
		}
	}
	return StopEndTurn, ""
}

// toolIDs hands out the ids of a reply's tool_use blocks: the backend's,
// or a new toolu_ id when it sent none or one already used.
type toolIDs map[string]struct{}

func (t *toolIDs) use(id string) string {
	if *t == nil {
		*t = toolIDs{}
	}
	if _, dup := (*t)[id]; id == "" || dup {
		id = newToolID()
	}
	(*t)[id] = struct{}{}
	return id
}

// newToolID mints a tool_use id in Anthropic's form: "toolu_" and 24
// random base-62 characters.
func newToolID() string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	var b [24]byte
	_, _ = rand.Read(b[:]) // never fails
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "toolu_" + string(b[:])
}
