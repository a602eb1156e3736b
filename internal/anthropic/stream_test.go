package anthropic

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// event is one SSE event the translator produced.
type event struct {
	name string
	data []byte
}

// parseEvents splits out into events with the gateway's own SSE parser.
func parseEvents(t testing.TB, out []byte) []event {
	t.Helper()
	var evs []event
	var p sse.Parser
	err := p.Feed(out, func(e sse.Event) error {
		evs = append(evs, event{string(e.Type), bytes.Clone(e.Data)})
		return nil
	})
	if err != nil || p.Pending() {
		t.Fatalf("unparsable SSE (err %v, pending %v): %q", err, p.Pending(), out)
	}
	return evs
}

// result is what a well-formed stream of events carries.
type result struct {
	text       string // every text block's text, concatenated
	tools      []tool // the tool_use blocks, in order
	stopReason string
	stopSeq    string
	usage      [2]int64 // input, output from message_delta
	failed     string   // the error event's type, if the stream ended with one
}

type tool struct {
	ID, Name string
	Input    string // the concatenated partial_json
}

// checkStream checks that evs follow Anthropic's sequence: message_start
// first; blocks started at contiguous indexes from 0, one open at a time,
// each started and stopped once, deltas only to the open block and of
// its kind; message_delta with no block open, then message_stop last; or
// an error event last. Each event's name is its data's type, every data
// a JSON object, and every tool's input_json_delta concatenation a JSON
// object.
func checkStream(evs []event) (result, error) {
	var r result
	open := -1
	openType := ""
	next := 0
	sawDelta := false
	var ids = map[string]bool{}
	for i, ev := range evs {
		var d struct {
			Type         string          `json:"type"`
			Index        *int            `json:"index"`
			Message      json.RawMessage `json:"message"`
			ContentBlock *struct {
				Type  string          `json:"type"`
				Text  *string         `json:"text"`
				ID    string          `json:"id"`
				Name  string          `json:"name"`
				Input json.RawMessage `json:"input"`
			} `json:"content_block"`
			Delta struct {
				Type         string  `json:"type"`
				Text         *string `json:"text"`
				PartialJSON  *string `json:"partial_json"`
				StopReason   *string `json:"stop_reason"`
				StopSequence *string `json:"stop_sequence"`
			} `json:"delta"`
			Usage *struct {
				InputTokens  int64 `json:"input_tokens"`
				OutputTokens int64 `json:"output_tokens"`
			} `json:"usage"`
			Error *struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(ev.data, &d); err != nil {
			return r, fmt.Errorf("event %d: data is not JSON: %v", i, err)
		}
		if d.Type != ev.name {
			return r, fmt.Errorf("event %d: named %q, typed %q", i, ev.name, d.Type)
		}
		if i == 0 && ev.name != "message_start" && ev.name != "error" {
			return r, fmt.Errorf("first event is %s", ev.name)
		}
		if r.failed != "" {
			return r, fmt.Errorf("event %d after the error", i)
		}
		switch ev.name {
		case "message_start":
			if i != 0 || len(d.Message) == 0 {
				return r, fmt.Errorf("event %d: message_start not first or without a message", i)
			}
		case "ping":
		case "content_block_start":
			switch {
			case open >= 0:
				return r, fmt.Errorf("event %d: block %d started while %d is open", i, *d.Index, open)
			case d.Index == nil || *d.Index != next:
				return r, fmt.Errorf("event %d: block index %v, want %d", i, d.Index, next)
			case d.ContentBlock == nil:
				return r, fmt.Errorf("event %d: no content_block", i)
			}
			open, openType, next = *d.Index, d.ContentBlock.Type, next+1
			switch openType {
			case "text":
				if d.ContentBlock.Text == nil || *d.ContentBlock.Text != "" {
					return r, fmt.Errorf("event %d: text block starts with text", i)
				}
			case "tool_use":
				if d.ContentBlock.ID == "" || d.ContentBlock.Name == "" || string(d.ContentBlock.Input) != "{}" || ids[d.ContentBlock.ID] {
					return r, fmt.Errorf("event %d: bad tool_use start %s", i, ev.data)
				}
				ids[d.ContentBlock.ID] = true
				r.tools = append(r.tools, tool{ID: d.ContentBlock.ID, Name: d.ContentBlock.Name})
			default:
				return r, fmt.Errorf("event %d: block type %q", i, openType)
			}
		case "content_block_delta":
			if d.Index == nil || *d.Index != open {
				return r, fmt.Errorf("event %d: delta for block %v, open %d", i, d.Index, open)
			}
			switch {
			case openType == "text" && d.Delta.Type == "text_delta" && d.Delta.Text != nil:
				r.text += *d.Delta.Text
			case openType == "tool_use" && d.Delta.Type == "input_json_delta" && d.Delta.PartialJSON != nil:
				r.tools[len(r.tools)-1].Input += *d.Delta.PartialJSON
			default:
				return r, fmt.Errorf("event %d: delta %s in a %s block", i, ev.data, openType)
			}
		case "content_block_stop":
			if d.Index == nil || *d.Index != open {
				return r, fmt.Errorf("event %d: stop for block %v, open %d", i, d.Index, open)
			}
			if openType == "tool_use" {
				in := r.tools[len(r.tools)-1].Input
				var obj map[string]any
				if err := json.Unmarshal([]byte(in), &obj); err != nil || obj == nil {
					return r, fmt.Errorf("event %d: tool input %q is not a JSON object", i, in)
				}
			}
			open = -1
		case "message_delta":
			if open >= 0 || sawDelta || d.Delta.StopReason == nil || d.Usage == nil {
				return r, fmt.Errorf("event %d: bad message_delta %s (open block %d)", i, ev.data, open)
			}
			sawDelta = true
			r.stopReason = *d.Delta.StopReason
			if d.Delta.StopSequence != nil {
				r.stopSeq = *d.Delta.StopSequence
			}
			r.usage = [2]int64{d.Usage.InputTokens, d.Usage.OutputTokens}
		case "message_stop":
			if !sawDelta || i != len(evs)-1 {
				return r, fmt.Errorf("event %d: message_stop without message_delta or not last", i)
			}
			return r, nil
		case "error":
			if d.Error == nil || d.Error.Type == "" || d.Error.Message == "" {
				return r, fmt.Errorf("event %d: bad error %s", i, ev.data)
			}
			r.failed = d.Error.Type
		default:
			return r, fmt.Errorf("event %d: unknown event %q", i, ev.name)
		}
	}
	if r.failed != "" {
		return r, nil
	}
	return r, fmt.Errorf("no message_stop")
}

// readChunks reads a recorded chat stream: one chunk's data a line.
func readChunks(t testing.TB, name string) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var chunks [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
			chunks = append(chunks, bytes.Clone(line))
		}
	}
	return chunks
}

// translate runs chunks through a Stream and returns its output, ended
// with Finish, or with an error event when a step fails.
func translate(s *Stream, chunks [][]byte) []byte {
	var out []byte
	var e *openai.Error
	for _, c := range chunks {
		if out, e = s.Chunk(out, c); e != nil {
			return AppendErrorEvent(out, e)
		}
	}
	if out, e = s.Finish(out); e != nil {
		return AppendErrorEvent(out, e)
	}
	return out
}

func TestStreamGolden(t *testing.T) {
	for _, name := range []string{"vllm_tools", "llamacpp_tools", "text_only"} {
		t.Run(name, func(t *testing.T) {
			s := &Stream{ReplyOptions: ReplyOptions{ID: "msg_1", Model: "claude-x", PromptBytes: 400}}
			out := translate(s, readChunks(t, name+".jsonl"))
			golden := filepath.Join("testdata", name+".events")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("got\n%s\nwant\n%s", out, want)
			}
			if _, err := checkStream(parseEvents(t, out)); err != nil {
				t.Error(err)
			}
			if want := map[string]string{"text_only": StopEndTurn}[name]; want == "" && s.StopReason() != StopToolUse || want != "" && s.StopReason() != want {
				t.Errorf("stop reason %q, want end_turn for text_only, tool_use otherwise", s.StopReason())
			}
			if s.OutputBytes() == 0 {
				t.Error("no output bytes counted")
			}
		})
	}
}

func TestStreamInterleaved(t *testing.T) {
	chunks := [][]byte{
		[]byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"fa","arguments":"{\"x\":"}}]}}]}`),
		[]byte(`{"choices":[{"delta":{"content":"held "}}]}`),
		[]byte(`{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"fb","arguments":"{\"y\""}}]}}]}`),
		[]byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}},{"index":1,"function":{"arguments":":2"}}]}}]}`),
		[]byte(`{"choices":[{"delta":{"content":"text"}}]}`),
		[]byte(`{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"}"}},{"index":0,"function":{"arguments":" "}}]}}]}`),
		[]byte(`{"choices":[{"delta":{"tool_calls":[{"index":2,"id":"c","function":{"name":"fc"}}]}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}`),
		[]byte(`{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}`),
	}
	s := &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m"}}
	out := translate(s, chunks)
	res, err := checkStream(parseEvents(t, out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := []tool{{"a", "fa", `{"x":1}`}, {"b", "fb", `{"y":2}`}, {"c", "fc", `{}`}}
	if res.text != "held text" || len(res.tools) != 3 || res.stopReason != StopToolUse || res.usage != [2]int64{3, 4} {
		t.Fatalf("%+v, want text \"held text\", 3 tools, tool_use, usage [3 4]\n%s", res, out)
	}
	for i, w := range want {
		if g := res.tools[i]; g.ID != w.ID || g.Name != w.Name || !jsonEqual([]byte(g.Input), []byte(w.Input)) {
			t.Errorf("tool %d: %+v, want %+v", i, g, w)
		}
	}
	// The blocks: a (live); the text held while a was incomplete, once a
	// is whole; b (its arguments so far, then live); the text held while
	// b was incomplete; c.
	var starts []string
	for _, ev := range parseEvents(t, out) {
		if ev.name == "content_block_start" {
			var d struct {
				ContentBlock struct{ Type, ID string } `json:"content_block"`
			}
			_ = json.Unmarshal(ev.data, &d)
			starts = append(starts, d.ContentBlock.Type+":"+d.ContentBlock.ID)
		}
	}
	if got := strings.Join(starts, " "); got != "tool_use:a text: tool_use:b text: tool_use:c" {
		t.Errorf("blocks %s, want tool_use:a text: tool_use:b text: tool_use:c", got)
	}

	// Arguments after a call's arguments were a whole object: an error.
	s = &Stream{ReplyOptions: ReplyOptions{ID: "r", Model: "m"}}
	out, e := s.Chunk(nil, []byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"fa","arguments":"{}"}}]}}]}`))
	if e == nil {
		out, e = s.Chunk(out, []byte(`{"choices":[{"delta":{"content":"then text"}}]}`))
	}
	if e == nil {
		_, e = s.Chunk(out, []byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":",\"more\":1}"}}]}}]}`))
	}
	if e == nil || e.Status != 502 {
		t.Fatalf("arguments after a whole object: %v, want a 502", e)
	}
}
