package anthropic

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// block is a content block of a request, decoded for translation.
type block struct {
	Type      string          `json:"type"`
	Text      *string         `json:"text"`
	Source    *source         `json:"source"`
	Title     string          `json:"title"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Input     json.RawMessage `json:"input"`
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
}

// source is where an image or document block's data is.
type source struct {
	Type      string          `json:"type"`
	MediaType string          `json:"media_type"`
	Data      string          `json:"data"`
	URL       string          `json:"url"`
	Content   json.RawMessage `json:"content"`
}

// chatMessage is a chat-completions message.
type chatMessage struct {
	Role       string     `json:"role"`
	Content    any        `json:"content"` // string, []chatPart or nil
	ToolCalls  []chatCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// chatPart is a chat-completions content part.
type chatPart struct {
	Type     string    `json:"type"`
	Text     string    `json:"text,omitempty"`
	ImageURL *chatURL  `json:"image_url,omitempty"`
	File     *chatFile `json:"file,omitempty"`
}

type chatURL struct {
	URL string `json:"url"`
}

type chatFile struct {
	Filename string `json:"filename,omitempty"`
	FileData string `json:"file_data"`
}

type chatCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function chatFunction `json:"function"`
}

type chatFunction struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// ChatBody translates the request into a chat-completions request body:
// system -> a system message; text, image and document blocks -> content
// parts; tool_use blocks -> the assistant's tool_calls; tool_result
// blocks -> "tool" messages (images in a result follow in a user
// message, as tool messages carry text only); tools, tool_choice,
// stop_sequences -> stop, temperature, top_p, top_k, metadata.user_id ->
// user; stream with stream_options.include_usage. thinking blocks and
// the thinking parameter are dropped: chat backends have no equivalent.
// A request that has no chat equivalent (an unknown block type, a server
// tool, a document by URL) is a 400 naming the parameter.
func (r *Request) ChatBody() ([]byte, *openai.Error) {
	msgs, e := r.chatMessages()
	if e != nil {
		return nil, e
	}
	if len(msgs) == 0 {
		return nil, invalid("messages", openai.EmptyArray, "must hold content a chat backend can read, not only thinking blocks")
	}
	var buf bytes.Buffer
	buf.WriteString(`{"model":`)
	buf.Write(appendString(nil, r.Model))
	buf.WriteString(`,"messages":`)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(msgs) // plain types: never fails
	buf.Truncate(buf.Len() - 1)
	if r.MaxTokens > 0 {
		buf.WriteString(`,"max_tokens":`)
		buf.WriteString(strconv.FormatInt(r.MaxTokens, 10))
	}
	if len(r.StopSequences) > 0 {
		buf.WriteString(`,"stop":`)
		_ = enc.Encode(r.StopSequences)
		buf.Truncate(buf.Len() - 1)
	}
	for i, v := range r.sampling {
		if !jsonwalk.IsNull(v) {
			buf.WriteString(`,"` + samplingParams[i] + `":`)
			buf.Write(v)
		}
	}
	if user, e := r.user(); e != nil {
		return nil, e
	} else if user != "" {
		buf.WriteString(`,"user":`)
		buf.Write(appendString(nil, user))
	}
	if e := r.appendTools(&buf, enc); e != nil {
		return nil, e
	}
	if r.Stream {
		buf.WriteString(`,"stream":true,"stream_options":{"include_usage":true}`)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// chatMessages translates the system parameter and the messages. Chat
// templates (Llama 3, Mistral, Gemma in llama.cpp and vLLM) take one
// system message, first: the system parameter and the system messages
// before the conversation starts become it, joined by a blank line; a
// system message later in the conversation (Claude Code sends them
// after the user's turn) joins the user message it follows or precedes
// as text, which keeps the roles alternating and every earlier message,
// so the backend's prompt cache, as it was.
func (r *Request) chatMessages() ([]chatMessage, *openai.Error) {
	var system []string
	if !jsonwalk.IsNull(r.system) {
		text, e := systemText("system", r.system)
		if e != nil {
			return nil, e
		}
		system = append(system, text)
	}
	var msgs []chatMessage
	joinNext := false // the last message holds a later system message's text
	for i, m := range r.messages {
		param := "messages." + strconv.Itoa(i)
		if m.Role == "system" {
			text, e := systemText(param+".content", m.Content)
			switch {
			case e != nil:
				return nil, e
			case len(msgs) == 0:
				system = append(system, text)
			case msgs[len(msgs)-1].Role == "user":
				msgs[len(msgs)-1].Content = joinContent(msgs[len(msgs)-1].Content, text)
			default:
				msgs = append(msgs, chatMessage{Role: "user", Content: text})
				joinNext = true
			}
			continue
		}
		out, e := translateMessage(param, m)
		if e != nil {
			return nil, e
		}
		if joinNext && len(out) > 0 && out[0].Role == "user" {
			msgs[len(msgs)-1].Content = joinContent(msgs[len(msgs)-1].Content, out[0].Content)
			out = out[1:]
		}
		joinNext = joinNext && len(out) == 0
		msgs = append(msgs, out...)
	}
	if len(system) > 0 {
		msgs = slices.Insert(msgs, 0, chatMessage{Role: "system", Content: strings.Join(system, "\n\n")})
	}
	return msgs, nil
}

// joinContent is the content of a user message with more after it: text
// joined by a blank line, else the parts of both.
func joinContent(a, b any) any {
	as, aText := a.(string)
	bs, bText := b.(string)
	if aText && bText {
		return as + "\n\n" + bs
	}
	return append(asParts(a), asParts(b)...)
}

// asParts is a content as parts.
func asParts(c any) []chatPart {
	switch c := c.(type) {
	case string:
		return []chatPart{{Type: "text", Text: c}}
	case []chatPart:
		return c
	}
	return nil
}

// systemText is the text of system instructions (the system parameter,
// or the content of a message with role "system", named param): the
// string, or its text blocks joined by "\n".
func systemText(param string, v json.RawMessage) (string, *openai.Error) {
	if v[0] == '"' {
		return contentText(v), nil
	}
	var blocks []block
	if json.Unmarshal(v, &blocks) != nil {
		return "", invalid(param, openai.InvalidType, "must be a string or an array of text blocks")
	}
	for i, b := range blocks {
		if b.Type != "text" || b.Text == nil {
			return "", invalid(param+"."+strconv.Itoa(i), openai.InvalidValue, "must be a text block")
		}
	}
	return contentText(v), nil
}

// translateMessage turns one Messages message into chat messages: one,
// or for a user message with tool results, a "tool" message per result
// followed by a user message with the rest.
func translateMessage(param string, m rawMessage) ([]chatMessage, *openai.Error) {
	if m.Content[0] == '"' {
		return []chatMessage{{Role: m.Role, Content: contentText(m.Content)}}, nil
	}
	var blocks []block
	if err := json.Unmarshal(m.Content, &blocks); err != nil {
		return nil, invalid(param+".content", openai.InvalidType, "must be a string or an array of content blocks: "+typeErrorField(err))
	}
	var out []chatMessage
	var parts []chatPart
	var calls []chatCall
	var followUp []chatPart // images from tool results
	for j, b := range blocks {
		bp := param + ".content." + strconv.Itoa(j)
		switch b.Type {
		case "thinking", "redacted_thinking":
			continue
		case "tool_use":
			if m.Role != "assistant" {
				return nil, invalid(bp+".type", openai.InvalidValue, "tool_use blocks belong in assistant messages")
			}
			if b.ID == "" || b.Name == "" {
				return nil, invalid(bp, openai.MissingRequiredParameter, "a tool_use block needs an id and a name")
			}
			args := "{}"
			if !jsonwalk.IsNull(b.Input) {
				if b.Input[0] != '{' {
					return nil, invalid(bp+".input", openai.InvalidType, "must be an object")
				}
				args = string(b.Input)
			}
			calls = append(calls, chatCall{ID: b.ID, Type: "function", Function: chatFunction{Name: b.Name, Arguments: args}})
			continue
		case "tool_result":
			if m.Role != "user" {
				return nil, invalid(bp+".type", openai.InvalidValue, "tool_result blocks belong in user messages")
			}
			if b.ToolUseID == "" {
				return nil, missing(bp + ".tool_use_id")
			}
			text, images, e := toolResult(bp+".content", b.Content)
			if e != nil {
				return nil, e
			}
			out = append(out, chatMessage{Role: "tool", ToolCallID: b.ToolUseID, Content: text})
			followUp = append(followUp, images...)
			continue
		}
		p, e := contentPart(bp, b)
		if e != nil {
			return nil, e
		}
		parts = append(parts, p)
	}
	if len(followUp) > 0 {
		out = append(out, chatMessage{Role: "user", Content: followUp})
	}
	if len(parts) == 0 && len(calls) == 0 {
		return out, nil
	}
	msg := chatMessage{Role: m.Role, Content: partsContent(parts), ToolCalls: calls}
	return append(out, msg), nil
}

// partsContent is a message's content: the text when every part is
// text (joined by "\n", as every chat backend reads a string), the parts
// otherwise, nil when there are none.
func partsContent(parts []chatPart) any {
	if len(parts) == 0 {
		return nil
	}
	var text []byte
	for i, p := range parts {
		if p.Type != "text" {
			return parts
		}
		if i > 0 {
			text = append(text, '\n')
		}
		text = append(text, p.Text...)
	}
	return string(text)
}

// contentPart translates a text, image or document block.
func contentPart(param string, b block) (chatPart, *openai.Error) {
	switch b.Type {
	case "text":
		if b.Text == nil {
			return chatPart{}, missing(param + ".text")
		}
		return chatPart{Type: "text", Text: *b.Text}, nil
	case "image":
		if b.Source == nil {
			return chatPart{}, missing(param + ".source")
		}
		switch b.Source.Type {
		case "base64":
			return chatPart{Type: "image_url", ImageURL: &chatURL{URL: dataURL(b.Source)}}, nil
		case "url":
			return chatPart{Type: "image_url", ImageURL: &chatURL{URL: b.Source.URL}}, nil
		}
		return chatPart{}, invalid(param+".source.type", openai.InvalidValue, "an image source must be base64 or url")
	case "document":
		if b.Source == nil {
			return chatPart{}, missing(param + ".source")
		}
		switch b.Source.Type {
		case "base64":
			return chatPart{Type: "file", File: &chatFile{Filename: documentName(b), FileData: dataURL(b.Source)}}, nil
		case "text":
			return chatPart{Type: "text", Text: b.Source.Data}, nil
		case "content":
			text, _, e := toolResult(param+".source.content", b.Source.Content)
			return chatPart{Type: "text", Text: text}, e
		}
		return chatPart{}, invalid(param+".source.type", openai.InvalidValue, "a document source must be base64, text or content here: chat backends cannot fetch documents by URL")
	}
	return chatPart{}, invalid(param+".type", openai.InvalidValue, "content block type "+strconv.Quote(b.Type)+" has no chat-completions equivalent")
}

// dataURL is a base64 source as a data: URL.
func dataURL(s *source) string { return "data:" + s.MediaType + ";base64," + s.Data }

// documentName is the file name a document is sent under.
func documentName(b block) string {
	if b.Title != "" {
		return b.Title
	}
	return "document.pdf"
}

// toolResult is the content of a tool_result block (or of a document's
// content source): its text, from a string or text blocks joined by
// "\n", and its images as content parts.
func toolResult(param string, v json.RawMessage) (string, []chatPart, *openai.Error) {
	if jsonwalk.IsNull(v) {
		return "", nil, nil
	}
	if v[0] == '"' {
		return contentText(v), nil, nil
	}
	var blocks []block
	if v[0] != '[' || json.Unmarshal(v, &blocks) != nil {
		return "", nil, invalid(param, openai.InvalidType, "must be a string or an array of text and image blocks")
	}
	var text []byte
	var images []chatPart
	for i, b := range blocks {
		p, e := contentPart(param+"."+strconv.Itoa(i), b)
		if e != nil {
			return "", nil, e
		}
		if p.Type != "text" {
			images = append(images, p)
			continue
		}
		if len(text) > 0 {
			text = append(text, '\n')
		}
		text = append(text, p.Text...)
	}
	return string(text), images, nil
}

// user is metadata.user_id.
func (r *Request) user() (string, *openai.Error) {
	if jsonwalk.IsNull(r.metadata) {
		return "", nil
	}
	var md struct {
		UserID *string `json:"user_id"`
	}
	if json.Unmarshal(r.metadata, &md) != nil {
		return "", invalid("metadata", openai.InvalidType, "must be an object with a string user_id")
	}
	if md.UserID == nil {
		return "", nil
	}
	return *md.UserID, nil
}

// appendTools appends tools (input_schema -> parameters), tool_choice
// and parallel_tool_calls.
func (r *Request) appendTools(buf *bytes.Buffer, enc *json.Encoder) *openai.Error {
	if !jsonwalk.IsNull(r.tools) {
		var tools []struct {
			Type        string          `json:"type"`
			Name        string          `json:"name"`
			Description string          `json:"description"`
			InputSchema json.RawMessage `json:"input_schema"`
		}
		if json.Unmarshal(r.tools, &tools) != nil {
			return invalid("tools", openai.InvalidType, "must be an array of tools with a name and an input_schema")
		}
		type function struct {
			Name        string          `json:"name"`
			Description string          `json:"description,omitempty"`
			Parameters  json.RawMessage `json:"parameters"`
		}
		type tool struct {
			Type     string   `json:"type"`
			Function function `json:"function"`
		}
		out := make([]tool, 0, len(tools))
		for i, t := range tools {
			param := "tools." + strconv.Itoa(i)
			switch {
			case t.Type != "" && t.Type != "custom":
				return invalid(param+".type", openai.InvalidValue, "server tool "+strconv.Quote(t.Type)+" has no chat-completions equivalent")
			case t.Name == "":
				return missing(param + ".name")
			case jsonwalk.IsNull(t.InputSchema) || t.InputSchema[0] != '{':
				return missing(param + ".input_schema")
			}
			out = append(out, tool{Type: "function", Function: function{Name: t.Name, Description: t.Description, Parameters: t.InputSchema}})
		}
		if len(out) > 0 {
			buf.WriteString(`,"tools":`)
			_ = enc.Encode(out)
			buf.Truncate(buf.Len() - 1)
		}
	}
	if jsonwalk.IsNull(r.toolChoice) {
		return nil
	}
	var tc struct {
		Type                   string `json:"type"`
		Name                   string `json:"name"`
		DisableParallelToolUse bool   `json:"disable_parallel_tool_use"`
	}
	if json.Unmarshal(r.toolChoice, &tc) != nil {
		return invalid("tool_choice", openai.InvalidType, "must be an object with a type")
	}
	buf.WriteString(`,"tool_choice":`)
	switch tc.Type {
	case "auto", "none":
		buf.WriteString(`"` + tc.Type + `"`)
	case "any":
		buf.WriteString(`"required"`)
	case "tool":
		if tc.Name == "" {
			return missing("tool_choice.name")
		}
		buf.WriteString(`{"type":"function","function":{"name":`)
		buf.Write(appendString(nil, tc.Name))
		buf.WriteString(`}}`)
	default:
		return invalid("tool_choice.type", openai.InvalidValue, "must be auto, any, tool or none")
	}
	if tc.DisableParallelToolUse {
		buf.WriteString(`,"parallel_tool_calls":false`)
	}
	return nil
}

// typeErrorField names the field a decoding error is about, if any.
func typeErrorField(err error) string {
	if te, ok := err.(*json.UnmarshalTypeError); ok && te.Field != "" {
		return te.Field + " has the wrong type"
	}
	return "a block has the wrong shape"
}
