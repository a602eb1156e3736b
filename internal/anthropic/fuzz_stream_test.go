package anthropic

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// recording is what a recorded chat stream carries, assembled by the
// test's reference reading with encoding/json.
type recording struct {
	text   string
	tools  []recordedTool
	finish string
	usage  map[string]int64
}

type recordedTool struct{ id, name, args string }

func assemble(t testing.TB, chunks [][]byte) recording {
	t.Helper()
	var rec recording
	byIndex := map[int]int{}
	for _, c := range chunks {
		var ch struct {
			Choices []struct {
				Delta struct {
					Content   *string `json:"content"`
					ToolCalls []struct {
						Index    int    `json:"index"`
						ID       string `json:"id"`
						Function struct {
							Name      string `json:"name"`
							Arguments string `json:"arguments"`
						} `json:"function"`
					} `json:"tool_calls"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage map[string]int64 `json:"usage"`
		}
		if err := json.Unmarshal(c, &ch); err != nil {
			t.Fatal(err)
		}
		if ch.Usage != nil {
			rec.usage = ch.Usage
		}
		for _, choice := range ch.Choices {
			if choice.Delta.Content != nil {
				rec.text += *choice.Delta.Content
			}
			for _, tc := range choice.Delta.ToolCalls {
				i, ok := byIndex[tc.Index]
				if !ok {
					i = len(rec.tools)
					byIndex[tc.Index] = i
					rec.tools = append(rec.tools, recordedTool{})
				}
				rec.tools[i].id += tc.ID
				rec.tools[i].name += tc.Function.Name
				rec.tools[i].args += tc.Function.Arguments
			}
			if choice.FinishReason != nil {
				rec.finish = *choice.FinishReason
			}
		}
	}
	return rec
}

// rnd draws choices from the fuzzer's bytes; 0 once they run out.
type rnd struct{ b []byte }

func (r *rnd) n(k int) int {
	if len(r.b) == 0 || k <= 1 {
		return 0
	}
	v := int(r.b[0])
	r.b = r.b[1:]
	return v % k
}

// split cuts s into pieces of 1 to 8 bytes, moved forward to the next
// rune boundary (a JSON string cannot hold half a character).
func split(s string, r *rnd) []string {
	var out []string
	for len(s) > 0 {
		n := min(1+r.n(8), len(s))
		for n < len(s) && !utf8.RuneStart(s[n]) {
			n++
		}
		out = append(out, s[:n])
		s = s[n:]
	}
	return out
}

// Chat chunk shapes, for writing re-chunked streams.
type (
	fzFunction struct {
		Name      string  `json:"name,omitempty"`
		Arguments *string `json:"arguments,omitempty"`
	}
	fzCall struct {
		Index    int        `json:"index"`
		ID       string     `json:"id,omitempty"`
		Type     string     `json:"type,omitempty"`
		Function fzFunction `json:"function"`
	}
	fzDelta struct {
		Role      string   `json:"role,omitempty"`
		Content   *string  `json:"content,omitempty"`
		ToolCalls []fzCall `json:"tool_calls,omitempty"`
	}
	fzChoice struct {
		Index        int     `json:"index"`
		Delta        fzDelta `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	}
	fzChunk struct {
		ID      string           `json:"id"`
		Object  string           `json:"object"`
		Choices []fzChoice       `json:"choices"`
		Usage   map[string]int64 `json:"usage,omitempty"`
	}
)

// piece is one bit of content: text (tool < 0) or part of a tool call.
type piece struct {
	tool  int
	first bool // the tool call's first piece
	text  string
}

// rechunk writes rec as a new chat stream, its text and every tool
// call's arguments cut at random places, the pieces interleaved at
// random (text between tool pieces, calls between each other), several
// pieces to a chunk at times (so one chunk may repeat an index), id and
// name repeated on later pieces at times. With zeroIndex every call has
// index 0, as some servers send, and calls follow each other. It
// returns the chunks and the calls in the order they start.
func rechunk(rec recording, r *rnd, zeroIndex bool) ([][]byte, []int) {
	var text []piece
	for _, s := range split(rec.text, r) {
		text = append(text, piece{tool: -1, text: s})
	}
	queues := make([][]piece, len(rec.tools))
	for i, tc := range rec.tools {
		queues[i] = append(queues[i], piece{tool: i, first: true})
		for _, s := range split(tc.args, r) {
			queues[i] = append(queues[i], piece{tool: i, text: s})
		}
	}
	// Merge: text in order, each call's pieces in order, and with
	// zeroIndex a call only once the one before it is done.
	var order []piece
	var starts []int
	for {
		var ready []int // -1 for text, else a tool
		if len(text) > 0 {
			ready = append(ready, -1)
		}
		for i, q := range queues {
			if len(q) == 0 {
				continue
			}
			ready = append(ready, i)
			if zeroIndex {
				break
			}
		}
		if len(ready) == 0 {
			break
		}
		switch pick := ready[r.n(len(ready))]; pick {
		case -1:
			order, text = append(order, text[0]), text[1:]
		default:
			if queues[pick][0].first {
				starts = append(starts, pick)
			}
			order, queues[pick] = append(order, queues[pick][0]), queues[pick][1:]
		}
	}

	role := "assistant"
	chunks := [][]byte{mustJSON(fzChunk{ID: "c", Object: "chat.completion.chunk", Choices: []fzChoice{{Delta: fzDelta{Role: role}}}})}
	for len(order) > 0 {
		n := 1 + r.n(3)
		var d fzDelta
		for _, p := range order[:min(n, len(order))] {
			if p.tool < 0 {
				s := p.text
				if d.Content != nil {
					s = *d.Content + s
				}
				d.Content = &s
				continue
			}
			tc := rec.tools[p.tool]
			call := fzCall{Index: p.tool}
			if zeroIndex {
				call.Index = 0
			}
			if p.first || r.n(4) == 0 {
				call.ID, call.Type, call.Function.Name = tc.id, "function", tc.name
			}
			if !p.first {
				args := p.text
				call.Function.Arguments = &args
			}
			d.ToolCalls = append(d.ToolCalls, call)
		}
		order = order[min(n, len(order)):]
		chunks = append(chunks, mustJSON(fzChunk{ID: "c", Object: "chat.completion.chunk", Choices: []fzChoice{{Delta: d}}}))
	}
	finish := rec.finish
	chunks = append(chunks, mustJSON(fzChunk{ID: "c", Object: "chat.completion.chunk", Choices: []fzChoice{{FinishReason: &finish}}}))
	if rec.usage != nil {
		chunks = append(chunks, mustJSON(fzChunk{ID: "c", Object: "chat.completion.chunk", Choices: []fzChoice{}, Usage: rec.usage}))
	}
	return chunks, starts
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var recordings = []string{"vllm_tools.jsonl", "llamacpp_tools.jsonl", "text_only.jsonl"}

// FuzzStream re-chunks recorded chat streams at random and checks that
// the Messages stream is well-formed (checkStream), carries the same
// text and tool calls (one tool_use block per call, its input the
// call's arguments), and that the official SDK accumulates it to the
// same message. With corrupt, a call's arguments are cut short, which
// must end the stream with an error event, never with a silent {}.
func FuzzStream(f *testing.F) {
	f.Add(uint8(0), false, false, []byte{})
	f.Add(uint8(0), true, false, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13})
	f.Add(uint8(1), false, false, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(0), false, true, []byte{7, 3, 200, 9, 1})
	f.Add(uint8(2), false, false, []byte{5, 1, 250})
	recs := make([]recording, len(recordings))
	for i, name := range recordings {
		recs[i] = assemble(f, readChunks(f, name))
	}
	f.Fuzz(func(t *testing.T, which uint8, zeroIndex, corrupt bool, choices []byte) {
		rec := recs[int(which)%len(recs)]
		rec.tools = append([]recordedTool(nil), rec.tools...)
		if corrupt && len(rec.tools) > 0 {
			tc := &rec.tools[len(rec.tools)-1]
			tc.args = strings.TrimSuffix(tc.args, "}")
		}
		r := &rnd{choices}
		chunks, starts := rechunk(rec, r, zeroIndex)
		s := &Stream{ReplyOptions: ReplyOptions{ID: "msg_f", Model: "m"}}
		out := translate(s, chunks)
		res, err := checkStream(parseEvents(t, out))
		if err != nil {
			t.Fatalf("%v\nchunks:\n%s\nout:\n%s", err, joinLines(chunks), out)
		}
		if corrupt && len(rec.tools) > 0 {
			if res.failed != TypeAPI {
				t.Fatalf("cut-short arguments: got %+v, want an api_error\n%s", res, out)
			}
			return
		}
		if res.failed != "" || res.text != rec.text || len(res.tools) != len(rec.tools) {
			t.Fatalf("got %+v, want %+v\nchunks:\n%s", res, rec, joinLines(chunks))
		}
		for i, n := range starts {
			tc, got := rec.tools[n], res.tools[i]
			if got.ID != tc.id || got.Name != tc.name || !jsonEqual([]byte(got.Input), []byte(tc.args)) {
				t.Fatalf("tool %d: got %+v, want %+v", i, got, tc)
			}
		}
		if want := map[bool]string{true: StopToolUse, false: StopEndTurn}[len(rec.tools) > 0]; res.stopReason != want {
			t.Fatalf("stop_reason %q, want %q", res.stopReason, want)
		}
		msg := sdkAccumulate(t, out)
		var text string
		var tools []tool
		for _, b := range msg.Content {
			switch b.Type {
			case "text":
				text += b.Text
			case "tool_use":
				tools = append(tools, tool{ID: b.ID, Name: b.Name, Input: string(b.Input)})
			}
		}
		if text != rec.text || len(tools) != len(res.tools) {
			t.Fatalf("SDK accumulated %s, want text %q and %d tools", msg.RawJSON(), rec.text, len(res.tools))
		}
		for i, tc := range tools {
			if tc.ID != res.tools[i].ID || !jsonEqual([]byte(tc.Input), []byte(res.tools[i].Input)) {
				t.Fatalf("SDK accumulated %s, want tool %d %+v", msg.RawJSON(), i, res.tools[i])
			}
		}
	})
}

func joinLines(chunks [][]byte) string {
	var sb strings.Builder
	for _, c := range chunks {
		sb.Write(c)
		sb.WriteByte('\n')
	}
	return sb.String()
}
