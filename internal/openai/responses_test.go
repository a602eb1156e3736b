package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	sdk "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"
)

func TestResponsesParse(t *testing.T) {
	req, e := Responses.Parse([]byte(`{"model":"gpt","input":"hello","instructions":"be brief","stream":true,"max_output_tokens":64,"previous_response_id":"resp_9","store":true}`))
	if e != nil || req.Model != "gpt" || !req.Stream || req.MaxOutputTokens != 64 || req.PreviousResponseID != "resp_9" || req.PromptBytes != 13 ||
		inputText(req.echo) != "hello" {
		t.Fatalf("%+v %v; want gpt, stream, 64 output tokens, resp_9, 13 prompt bytes, input hello", req, e)
	}
	items := `[{"role":"user","content":"first"},{"role":"assistant","content":[{"type":"output_text","text":"ok"}]},` +
		`{"type":"message","role":"user","content":[{"type":"input_text","text":"second"},{"type":"input_image","image_url":"data:x"},{"type":"input_text","text":"third"}]}]`
	if req, e = Responses.Parse([]byte(`{"input":` + items + `,"store":false}`)); e != nil || req.PromptBytes != len(items) || inputText(req.echo) != "second\nthird" || req.Stream {
		t.Fatalf(`%+v %v; want %d prompt bytes, input "second\nthird", no stream`, req, e, len(items))
	}
	if req, e = Responses.Parse([]byte(`{"previous_response_id":null,"prompt":{"id":"p"}}`)); e != nil || req.PreviousResponseID != "" || inputText(req.echo) != "" {
		t.Fatalf("%+v %v; want no previous response, no input", req, e)
	}
	tests := []struct{ body, param, code string }{
		{`{"input":5}`, "input", "invalid_type"},
		{`{"input":{"role":"user"}}`, "input", "invalid_type"},
		{`{"input":["hi"]}`, "input", "invalid_type"},
		{`{"input":"x","previous_response_id":1}`, "previous_response_id", "invalid_type"},
		{`{"input":"x","max_output_tokens":"lots"}`, "max_output_tokens", "invalid_type"},
		{`{"input":"x","stream":1}`, "stream", "invalid_type"},
		{`{"input":"x","input":"y"}`, "input", "duplicate_key"},
		{`{"input":"x",}`, "", "invalid_json"},
		{`"x"`, "", "invalid_type"},
	}
	for _, tt := range tests {
		_, e := Responses.Parse([]byte(tt.body))
		if e == nil {
			t.Errorf("%s: accepted", tt.body)
			continue
		}
		if e.Status != 400 || e.Param != tt.param || e.Code != tt.code {
			t.Errorf("%s: got param=%q code=%q (%s), want 400 param=%q code=%q", tt.body, e.Param, e.Code, e.Message, tt.param, tt.code)
		}
	}
}

// vllmResponse is a Response as vLLM sends it.
const vllmResponse = `{"id":"resp_abc","object":"response","created_at":1700000000,"model":"qwen","status":"completed",
"output":[{"type":"reasoning","id":"rs_1","summary":[]},{"type":"message","id":"msg_1","status":"completed","role":"assistant",
"content":[{"type":"output_text","text":"Hello there","annotations":[]}]}],"parallel_tool_calls":true,"tool_choice":"auto","tools":[],
"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":7}}`

func TestResponsesNormalize(t *testing.T) {
	m := Meta{ID: "req-1", Model: "asked", PromptBytes: 40}
	out, rep, err := Responses.Normalize(nil, []byte(vllmResponse), m)
	if err != nil || string(out) != vllmResponse {
		t.Fatalf("changed: %s %v", out, err)
	}
	var r responses.Response
	decodeInto(t, out, &r)
	if r.ID != "resp_abc" || r.OutputText() != "Hello there" || rep.Usage != (Usage{PromptTokens: 5, CompletionTokens: 2}) || rep.FinishReason != "completed" {
		t.Fatalf("%+v %+v, want resp_abc, Hello there, usage 5 and 2, completed", r, rep)
	}
	// No usage: estimated from the prompt and the output text.
	_, rep, err = Responses.Normalize(nil, []byte(`{"id":"r","status":"incomplete","output":[{"type":"message","content":[{"type":"output_text","text":"12345678"}]}]}`), m)
	if err != nil || rep.Usage != (Usage{PromptTokens: 10, CompletionTokens: 2, Estimated: true}) || rep.FinishReason != "incomplete" {
		t.Fatalf("%+v %v; want estimated usage 10 and 2, incomplete", rep, err)
	}
	for _, bad := range []string{``, `[]`, `{"id":`, `"response"`} {
		if _, _, err := Responses.Normalize(nil, []byte(bad), m); !errors.Is(err, ErrInvalidResponse) {
			t.Errorf("%q: %v, want ErrInvalidResponse", bad, err)
		}
	}
}

// vllmEvents is a streamed Response as a backend sends it.
var vllmEvents = [][2]string{
	{"response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"resp_abc","object":"response","status":"in_progress","output":[]}}`},
	{"response.in_progress", `{"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_abc","object":"response","status":"in_progress","output":[]}}`},
	{"response.output_item.added", `{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"type":"message","id":"msg_1","status":"in_progress","role":"assistant","content":[]}}`},
	{"response.content_part.added", `{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}`},
	{"response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello","logprobs":[]}`},
	{"", `{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" there","logprobs":[]}`},
	{"response.output_text.done", `{"type":"response.output_text.done","sequence_number":6,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hello there","logprobs":[]}`},
	{"response.content_part.done", `{"type":"response.content_part.done","sequence_number":7,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hello there","annotations":[]}}`},
	{"response.output_item.done", `{"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello there","annotations":[]}]}}`},
	{"response.completed", `{"type":"response.completed","sequence_number":9,"response":` + strings.ReplaceAll(vllmResponse, "\n", "") + `}`},
}

func TestResponsesStream(t *testing.T) {
	st := Responses.NewStream(Meta{ID: "req-1", PromptBytes: 8})
	var got []event
	emit := collectEvents(t, &got)
	for i, ev := range vllmEvents {
		out, err := st.Event(nil, []byte(ev[0]), []byte(ev[1]))
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if i == 2 && !st.Content() || i < 2 && st.Content() {
			t.Fatalf("event %d: content %v, want %v", i, st.Content(), i >= 2)
		}
		_ = emit(out)
	}
	for i, ev := range got {
		name := vllmEvents[i][0]
		if name == "" {
			name = "response.output_text.delta" // from its type
		}
		if ev.name != name || ev.data != vllmEvents[i][1] {
			t.Fatalf("event %d relayed as %s %s, want %s %s", i, ev.name, ev.data, name, vllmEvents[i][1])
		}
	}
	if r := st.Result(); !st.Complete() || r.FinishReason != "completed" || r.Usage != (Usage{PromptTokens: 5, CompletionTokens: 2}) {
		t.Fatalf("%+v, want complete, completed, usage 5 and 2", r)
	}
	// Nothing after the terminal event, and Finish adds nothing.
	if out, err := st.Event(nil, nil, []byte(`{"type":"response.output_text.delta","delta":"late"}`)); err != nil || len(out) > 0 {
		t.Fatalf("%q %v; want nothing after the terminal event", out, err)
	}
	n := len(got)
	if err := st.Finish(true, emit); err != nil || len(got) != n {
		t.Fatal("Finish emitted")
	}

	// Truncated: no terminal event; the error event follows the last
	// sequence number; the estimate counts the deltas.
	st = Responses.NewStream(Meta{ID: "req-1", PromptBytes: 8})
	for _, ev := range vllmEvents[:6] {
		if _, err := st.Event(nil, []byte(ev[0]), []byte(ev[1])); err != nil {
			t.Fatal(err)
		}
	}
	if st.Complete() {
		t.Fatal("complete without a terminal event")
	}
	got = got[:0]
	if err := st.Fail(&Error{Code: "stream_truncated", Message: "cut"}, emit); err != nil {
		t.Fatal(err)
	}
	var u responses.ResponseStreamEventUnion
	decodeInto(t, []byte(got[0].data), &u)
	e := u.AsError()
	if got[0].name != "error" || u.Type != "error" || e.Code != "stream_truncated" || e.Message != "cut" || e.SequenceNumber != 6 ||
		!strings.Contains(got[0].data, `"param":null`) {
		t.Fatalf("%+v, want an error event: stream_truncated, cut, sequence 6, param null", got)
	}
	if r := st.Result(); r.FinishReason != "failed" || r.Usage != (Usage{PromptTokens: 2, CompletionTokens: 3, Estimated: true}) {
		t.Fatalf("%+v, want failed, estimated usage 2 and 3", r)
	}

	// A backend's error event is returned for Fail; other failures.
	st = Responses.NewStream(Meta{})
	_, err := st.Event([]byte("error"), nil, []byte(`{"type":"error","code":"server_error","message":"boom","param":null,"sequence_number":3}`))
	var be *Error
	if !errors.As(err, &be) || be.Code != "server_error" || be.Message != "boom" || !st.Complete() {
		t.Fatalf("%v, want the server_error boom, complete", err)
	}
	for _, bad := range []string{`not json`, `{"sequence_number":1}`, `{"type":7}`, `[]`} {
		if _, err := Responses.NewStream(Meta{}).Event(nil, nil, []byte(bad)); !errors.Is(err, ErrInvalidResponse) {
			t.Errorf("%s: %v, want ErrInvalidResponse", bad, err)
		}
	}
	if out, err := Responses.NewStream(Meta{}).Event(nil, nil, []byte(`[DONE]`)); err != nil || len(out) > 0 {
		t.Fatalf("[DONE]: %q %v; want nothing, nil", out, err)
	}
}

// echoSequence is the event sequence of echo mode's stream of "Echo: hi there".
var echoSequence = []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
	"response.output_text.delta", "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
	"response.content_part.done", "response.output_item.done", "response.completed"}

// TestResponsesSDK drives echo mode and a backend with the official
// SDK's Responses.New and NewStreaming.
func TestResponsesSDK(t *testing.T) {
	params := responses.ResponseNewParams{Model: "m", Input: responses.ResponseNewParamsInputUnion{OfString: sdk.String("hi there")}}
	streamed := func(client sdk.Client) ([]string, responses.ResponseStreamEventUnion, string) {
		stream := client.Responses.NewStreaming(t.Context(), params)
		var types []string
		var last responses.ResponseStreamEventUnion
		var text string
		seq := int64(-1)
		for stream.Next() {
			last = stream.Current()
			if last.SequenceNumber <= seq {
				t.Fatalf("sequence %d after %d, want it increasing", last.SequenceNumber, seq)
			}
			seq = last.SequenceNumber
			types = append(types, last.Type)
			if last.Type == "response.output_text.delta" {
				text += last.AsResponseOutputTextDelta().Delta
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		return types, last, text
	}

	echo := sdkClient(serveEndpoint(t, Responses, nil))
	r, err := echo.Responses.New(t.Context(), params)
	if err != nil || r.ID != "resp_req-1" || r.Object != "response" || r.Status != "completed" || r.OutputText() != "Echo: hi there" ||
		r.Usage.InputTokens != 2 || r.Usage.OutputTokens != 4 || r.Usage.TotalTokens != 6 || r.Model != "m" {
		t.Fatalf("%v: %+v, want resp_req-1, completed, Echo: hi there, usage 2 and 4, model m", err, r)
	}
	types, last, text := streamed(echo)
	if fmt.Sprint(types) != fmt.Sprint(echoSequence) || text != "Echo: hi there" {
		t.Fatalf(`%v %q, want %v "Echo: hi there"`, types, text, echoSequence)
	}
	if done := last.AsResponseCompleted(); done.Response.OutputText() != "Echo: hi there" || done.Response.Usage.TotalTokens != 6 || done.Response.ID != "resp_req-1" {
		t.Fatalf("%+v, want Echo: hi there, 6 tokens, resp_req-1", done.Response)
	}

	backend := sdkClient(serveEndpoint(t, Responses, func(req *Request) backendReply {
		if req.Stream {
			return backendReply{events: vllmEvents}
		}
		return backendReply{json: vllmResponse}
	}))
	if r, err := backend.Responses.New(t.Context(), params); err != nil || r.ID != "resp_abc" || r.OutputText() != "Hello there" || r.Usage.TotalTokens != 7 {
		t.Fatalf("%v: %+v, want resp_abc, Hello there, 7 tokens", err, r)
	}
	if types, last, text = streamed(backend); len(types) != len(vllmEvents) || text != "Hello there" || last.AsResponseCompleted().Response.Usage.TotalTokens != 7 {
		t.Fatalf(`%v %q, want %d events, "Hello there", 7 tokens`, types, text, len(vllmEvents))
	}

	// A backend that answers a stream with JSON: the events are made
	// from the Response, its reasoning item included.
	jsonToStream := sdkClient(serveEndpoint(t, Responses, func(*Request) backendReply { return backendReply{json: vllmResponse} }))
	types, last, text = streamed(jsonToStream)
	want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.output_item.done",
		"response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.done",
		"response.content_part.done", "response.output_item.done", "response.completed"}
	if fmt.Sprint(types) != fmt.Sprint(want) || text != "Hello there" || last.AsResponseCompleted().Response.ID != "resp_abc" {
		t.Fatalf(`%v %q, want %v "Hello there", resp_abc`, types, text, want)
	}

	// Cut short: the stream ends with the Responses API error event.
	cut := sdkClient(serveEndpoint(t, Responses, func(*Request) backendReply { return backendReply{events: vllmEvents[:5]} }))
	types, last, _ = streamed(cut)
	if types[len(types)-1] != "error" || last.AsError().Code != "stream_truncated" || last.SequenceNumber != 5 {
		t.Fatalf("%v %+v, want an error event last: stream_truncated, sequence 5", types, last.AsError())
	}
}

// FuzzResponses checks the event relay and the reply check: what they
// accept is relayed unchanged, and a stream can always be ended.
func FuzzResponses(f *testing.F) {
	for _, ev := range vllmEvents {
		f.Add([]byte(ev[0]), []byte(ev[1]))
	}
	f.Add([]byte("error"), []byte(`{"type":"error","code":500,"message":"x"}`))
	f.Add([]byte(""), []byte(`{"type":"response.completed","response":{"usage":{"input_tokens":"1"}}}`))
	f.Fuzz(func(t *testing.T, name, data []byte) {
		if strings.ContainsAny(string(name), "\r\n") {
			return // the SSE parser never gives such a name
		}
		st := Responses.NewStream(Meta{ID: "r"})
		out, err := st.Event(nil, name, data)
		var evs []event
		if err == nil && len(out) > 0 {
			_ = collectEvents(t, &evs)(out)
			if evs[0].data != string(data) || !json.Valid(data) || evs[0].name == "" {
				t.Fatalf("%q %q relayed as %+v, want its data unchanged, valid JSON, named", name, data, evs)
			}
		}
		evs = evs[:0]
		if err := st.Fail(&Error{Code: "stream_truncated", Message: string(data)}, collectEvents(t, &evs)); err != nil || !json.Valid([]byte(evs[0].data)) {
			t.Fatalf("%v %+v, want a valid JSON error event", err, evs)
		}
		if reply, _, err := Responses.Normalize(nil, data, Meta{}); err == nil {
			evs = evs[:0]
			if err := Responses.NewStream(Meta{}).FromReply(reply, false, collectEvents(t, &evs)); err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				if !json.Valid([]byte(ev.data)) {
					t.Fatalf("%s gave event %s, want valid JSON", data, ev.data)
				}
			}
		}
	})
}

// BenchmarkResponsesEvent relays one text delta event, read in full and
// by the shape of the delta before.
func BenchmarkResponsesEvent(b *testing.B) {
	name, data := []byte(vllmEvents[4][0]), []byte(vllmEvents[4][1])
	for _, shaped := range []bool{false, true} {
		b.Run(map[bool]string{false: "full", true: "shaped"}[shaped], func(b *testing.B) {
			st := Responses.NewStream(Meta{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11"})
			var out []byte
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if !shaped {
					shapeOf(st).clear()
				}
				out, _ = st.Event(out[:0], name, data)
			}
		})
	}
}
