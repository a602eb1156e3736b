package openai

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
)

// shapeOf returns the shape a stream reads its next event by.
func shapeOf(st EventStream) *shape {
	switch s := st.(type) {
	case *chatStream:
		return &s.st.shape.shape
	case *textStream:
		return &s.shape.shape
	case *responseStream:
		return &s.shape
	}
	return nil
}

var shapeEndpoints = []Endpoint{ChatCompletions, Completions, Responses}

// streamState is what a stream shows of itself after an event.
type streamState struct {
	Out      string
	Err      error
	Result   Reply
	Content  bool
	Complete bool
}

func eventState(st EventStream, name, data []byte) streamState {
	out, err := st.Event(nil, name, data)
	return streamState{string(out), err, st.Result(), st.Content(), st.Complete()}
}

func TestShapes(t *testing.T) {
	tests := []struct {
		ep     Endpoint
		first  string
		holes  int
		next   string
		byHole bool // read by its shape
	}{
		{ChatCompletions, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"logprobs":null,"finish_reason":null}]}`, 1,
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"lo \"you\"\n"},"logprobs":null,"finish_reason":null}]}`, true},
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"a","reasoning_content":"b"}}]}`, 2,
			`{"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning_content":"bb"}}]}`, true},
		// An unescaped quote ends the text early: read in full, and refused.
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}`, 1,
			`{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"b"}}]}`, false},
		// A control character in the text: refused.
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}`, 1,
			"{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"a\x01\"}}]}", false},
		// No shape before the role went out: content would add it.
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"content":""}}]}`, 0, "", false},
		// No shape: the choice is rewritten (no index), or ends the stream.
		{ChatCompletions, `{"choices":[{"delta":{"role":"assistant","content":"a"}}]}`, 0, "", false},
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"finish_reason":"stop"}]}`, 0, "", false},
		// Tool calls are not texts; a number where a text was is no text.
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0}]}}]}`, 0, "", false},
		{ChatCompletions, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}`, 1,
			`{"choices":[{"index":0,"delta":{"role":"assistant","content":5}}]}`, false},
		{Completions, `{"choices":[{"index":0,"text":"a","finish_reason":null}]}`, 1,
			`{"choices":[{"index":0,"text":"\u00e9t\u00e9","finish_reason":null}]}`, true},
		{Responses, vllmEvents[4][1], 5, vllmEvents[5][1], true},
		{Responses, vllmEvents[4][1], 5, `{"type":"response.output_text.delta","sequence_number":05,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" there","logprobs":[]}`, false},
		{Responses, `{"type":"response.output_text.delta","delta":"a","delta":"b"}`, 0, "", false},
		{Responses, vllmEvents[0][1], 0, "", false},
	}
	for _, tt := range tests {
		st := tt.ep.NewStream(Meta{ID: "r", Model: "m"})
		full := tt.ep.NewStream(Meta{ID: "r", Model: "m"})
		first, want := eventState(st, nil, []byte(tt.first)), eventState(full, nil, []byte(tt.first))
		if first.Err != nil || !reflect.DeepEqual(first, want) {
			t.Fatalf("%s: %+v, want %+v", tt.first, first, want)
		}
		if n := len(shapeOf(st).holes); n != tt.holes {
			t.Fatalf("%s: %d holes, want %d", tt.first, n, tt.holes)
		}
		if tt.next == "" {
			continue
		}
		var vals [maxHoles][]byte
		if got := shapeOf(st).match([]byte(tt.next), &vals); got != tt.byHole {
			t.Fatalf("%s: matched %v, want %v", tt.next, got, tt.byHole)
		}
		shapeOf(full).clear()
		next, want := eventState(st, nil, []byte(tt.next)), eventState(full, nil, []byte(tt.next))
		if !reflect.DeepEqual(next, want) {
			t.Fatalf("%s: %+v, want %+v", tt.next, next, want)
		}
	}
}

// TestShapesGivenUp: a stream whose every chunk differs from the one
// before outside its text takes no more shapes after maxMisses of them.
func TestShapesGivenUp(t *testing.T) {
	st := ChatCompletions.NewStream(Meta{ID: "r", Model: "m"})
	full := ChatCompletions.NewStream(Meta{ID: "r", Model: "m"})
	for i := range 2 * maxMisses {
		chunk := fmt.Appendf(nil, `{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}],"obfuscation":"%d"}`, i)
		shapeOf(full).clear()
		if a, b := eventState(st, nil, chunk), eventState(full, nil, chunk); !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: %+v, want %+v", chunk, a, b)
		}
		if taken := len(shapeOf(st).holes) > 0; taken != (i < maxMisses) {
			t.Fatalf("chunk %d: shape taken %v, want %v", i, taken, i < maxMisses)
		}
	}
}

// FuzzShapes checks that a stream reads an event by the shape of the
// one before as it reads it in full: the same output, error and state.
// The next events are the first with a value of the fuzzer's in a hole.
func FuzzShapes(f *testing.F) {
	f.Add(uint8(0), []byte(`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"logprobs":null,"finish_reason":null}]}`), []byte(`"lo"`))
	f.Add(uint8(0), []byte(`{"choices":[{"index":0,"delta":{"role":"assistant","content":"a","reasoning_content":"b","content":"c"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`), []byte("\"\\u00e9\"\xff\"a\\\"\""))
	f.Add(uint8(1), []byte(`{"choices":[{"index":0,"text":"a","finish_reason":null}],"model":"x"}`), []byte(`"b\n"`))
	f.Add(uint8(2), []byte(vllmEvents[4][1]), []byte("12\xff\"x\"\xff007"))
	f.Add(uint8(2), []byte(`{"type":"response.output_text.delta","sequence_number":3,"sequence_number":"4","delta":"a"}`), []byte("9"))
	f.Fuzz(func(t *testing.T, endpoint uint8, first, values []byte) {
		ep := shapeEndpoints[int(endpoint)%len(shapeEndpoints)]
		st := ep.NewStream(Meta{ID: "r", Model: "m"})
		full := ep.NewStream(Meta{ID: "r", Model: "m"})
		if a, b := eventState(st, nil, first), eventState(full, nil, first); !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: %+v, want %+v as read in full", first, a, b)
		}
		holes := append([]hole(nil), shapeOf(st).holes...)
		if len(holes) == 0 {
			return
		}
		for _, v := range bytes.Split(values, []byte{0xff}) {
			h := holes[len(v)%len(holes)]
			next := append(append(append([]byte(nil), first[:h.start]...), v...), first[h.end:]...)
			shapeOf(full).clear()
			if a, b := eventState(st, nil, next), eventState(full, nil, next); !reflect.DeepEqual(a, b) {
				t.Fatalf("after %s\n%s: %+v\nread in full: %+v", first, next, a, b)
			}
		}
	})
}

// BenchmarkShapedChunk normalizes a chunk that has the shape of the one
// before, as most of a stream's chunks do.
func BenchmarkShapedChunk(b *testing.B) {
	data := []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}`)
	s := Stream{Meta: Meta{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11"}}
	out, _ := s.AppendChunk(nil, data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		out, _ = s.AppendChunk(out[:0], data)
	}
}
