package chatgateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"github.com/openai/openai-go/v3/responses"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
)

// The request bodies of the routes beside chat, as a client sends them.
const (
	completionsBody       = `{"model":"m","prompt":"hello world"}`
	completionsStreamBody = `{"model":"m","prompt":"hello world","stream":true}`
	embeddingsBody        = `{"model":"m","input":"hello world"}`
	responsesBody         = `{"model":"m","input":"hello world"}`
	responsesStreamBody   = `{"model":"m","input":"hello world","stream":true}`
)

// postTo sends body to path on the gateway and returns the response
// with its body read.
func (g *gateway) postTo(t *testing.T, path, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req := g.request(body, header...)
	req.URL.Path = path
	return do(t, req)
}

// sseFrame is one Server-Sent Event: its event name (empty if none)
// and its data.
type sseFrame struct{ Name, Data string }

// frames reads a Server-Sent Events body into its events.
func frames(body string) []sseFrame {
	var out []sseFrame
	var cur sseFrame
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.Data != "" {
				out = append(out, cur)
			}
			cur = sseFrame{}
		case strings.HasPrefix(line, "event: "):
			cur.Name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.Data += strings.TrimPrefix(line, "data: ")
		}
	}
	if cur.Data != "" {
		out = append(out, cur)
	}
	return out
}

// responseEvent is what the tests read of a Responses API event.
type responseEvent struct {
	Type           string `json:"type"`
	SequenceNumber int64  `json:"sequence_number"`
	Delta          string `json:"delta"`
	Code           string `json:"code"`
	Message        string `json:"message"`
	Response       *struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Usage  *struct {
			Input  int64 `json:"input_tokens"`
			Output int64 `json:"output_tokens"`
		} `json:"usage"`
	} `json:"response"`
}

// responseEvents decodes a Responses API stream, checking that every
// event is named after its type.
func responseEvents(t *testing.T, body string) []responseEvent {
	t.Helper()
	var out []responseEvent
	for _, f := range frames(body) {
		var ev responseEvent
		if err := json.Unmarshal([]byte(f.Data), &ev); err != nil {
			t.Fatalf("event %q: %v\n%s", f.Data, err, body)
		}
		if f.Name != ev.Type {
			t.Fatalf("event named %q carries type %q, want them equal:\n%s", f.Name, ev.Type, body)
		}
		out = append(out, ev)
	}
	if len(out) == 0 {
		t.Fatalf("no events in %q", body)
	}
	return out
}

// dialect is how a fake backend words its replies: as llama.cpp's
// server or as vLLM's OpenAI-compatible server.
type dialect string

const (
	llamaCpp dialect = "llama.cpp"
	vLLM     dialect = "vLLM"
)

// backendVector is every embedding the fake backends answer: a unit
// vector exact in float32.
var backendVector = []float32{0.5, -0.5, 0.5, -0.5}

// backendResponse is the Response the fake backends answer, with its
// own id and usage.
const backendResponse = `{"id":"resp_backend1","object":"response","created_at":7,"status":"completed","error":null,` +
	`"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"llama",` +
	`"output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[],"logprobs":[]}]}],` +
	`"parallel_tool_calls":true,"previous_response_id":null,"store":false,"temperature":1.0,"text":{"format":{"type":"text"}},` +
	`"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled",` +
	`"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":7},"metadata":{}}`

// endpointsBackend answers /v1/completions (streamed or not),
// /v1/embeddings and /v1/responses (streamed or not) as d does, and
// /v1/chat/completions with one plain reply.
func endpointsBackend(d dialect) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		body := upstreamBody(r)
		stream := strings.Contains(body, `"stream":true`)
		switch r.URL.Path {
		case "/v1/completions":
			if stream {
				completionsStream(w, d, strings.Contains(body, `"include_usage":true`))
				return
			}
			if d == llamaCpp {
				writeJSON(w, 200, `{"choices":[{"text":"Hello","index":0,"logprobs":null,"finish_reason":"stop"}],"created":7,"model":"llama",`+
					`"system_fingerprint":"b6000","object":"text_completion","usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5},"id":"chatcmpl-llama","timings":{}}`)
				return
			}
			writeJSON(w, 200, `{"id":"cmpl-vllm","object":"text_completion","created":7,"model":"llama","choices":[{"index":0,"text":"Hello","logprobs":null,`+
				`"finish_reason":"stop","stop_reason":null,"prompt_logprobs":null}],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2,"prompt_tokens_details":null},"kv_transfer_params":null}`)
		case "/v1/chat/completions":
			writeJSON(w, 200, `{"choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
		case "/v1/embeddings":
			embeddingsReply(w, d, body)
		case "/v1/responses":
			if stream {
				responsesStream(w, d, true)
				return
			}
			writeJSON(w, 200, backendResponse)
		default:
			writeJSON(w, 404, `{"error":{"message":"no such route","type":"invalid_request_error"}}`)
		}
	}
}

// completionsStream streams "Hello" in two chunks: llama.cpp puts the
// finish reason and usage in a last empty chunk, vLLM the finish reason
// in the last text chunk and usage in a chunk of its own when asked.
func completionsStream(w http.ResponseWriter, d dialect, usage bool) {
	startSSE(w)
	if d == llamaCpp {
		for _, tok := range []string{"Hel", "lo"} {
			sseEvent(w, fmt.Sprintf(`{"choices":[{"text":%q,"index":0,"logprobs":null,"finish_reason":null}],"created":7,"model":"llama","system_fingerprint":"b6000","object":"text_completion","id":"chatcmpl-llama"}`, tok))
		}
		sseEvent(w, `{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}],"created":7,"model":"llama","system_fingerprint":"b6000","object":"text_completion","id":"chatcmpl-llama","usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5},"timings":{}}`)
	} else {
		sseEvent(w, `{"id":"cmpl-vllm","object":"text_completion","created":7,"model":"llama","choices":[{"index":0,"text":"Hel","logprobs":null,"finish_reason":null,"stop_reason":null}]}`)
		sseEvent(w, `{"id":"cmpl-vllm","object":"text_completion","created":7,"model":"llama","choices":[{"index":0,"text":"lo","logprobs":null,"finish_reason":"stop","stop_reason":null}]}`)
		if usage {
			sseEvent(w, `{"id":"cmpl-vllm","object":"text_completion","created":7,"model":"llama","choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}`)
		}
	}
	sseEvent(w, "[DONE]")
}

// embeddingsReply answers backendVector for each input, as floats or,
// when asked, as base64 of little-endian float32.
func embeddingsReply(w http.ResponseWriter, d dialect, body string) {
	var req struct {
		Input          json.RawMessage `json:"input"`
		EncodingFormat string          `json:"encoding_format"`
	}
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		writeJSON(w, 400, `{"error":{"message":"bad json","type":"invalid_request_error"}}`)
		return
	}
	n := 1
	var inputs []json.RawMessage
	if json.Unmarshal(req.Input, &inputs) == nil && len(inputs) > 0 && strings.HasPrefix(string(inputs[0]), `"`) {
		n = len(inputs)
	}
	var vector string
	if req.EncodingFormat == "base64" {
		raw := make([]byte, 4*len(backendVector))
		for i, x := range backendVector {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
		}
		vector = `"` + base64.StdEncoding.EncodeToString(raw) + `"`
	} else {
		v, _ := json.Marshal(backendVector)
		vector = string(v)
	}
	items := make([]string, n)
	for i := range items {
		if d == llamaCpp {
			items[i] = fmt.Sprintf(`{"embedding":%s,"index":%d,"object":"embedding"}`, vector, i)
		} else {
			items[i] = fmt.Sprintf(`{"index":%d,"object":"embedding","embedding":%s}`, i, vector)
		}
	}
	data := "[" + strings.Join(items, ",") + "]"
	if d == llamaCpp {
		writeJSON(w, 200, `{"model":"llama","object":"list","usage":{"prompt_tokens":4,"total_tokens":4},"data":`+data+`}`)
		return
	}
	writeJSON(w, 200, `{"id":"embd-vllm","object":"list","created":7,"model":"llama","data":`+data+
		`,"usage":{"prompt_tokens":4,"total_tokens":4,"completion_tokens":0,"prompt_tokens_details":null}}`)
}

// responseStreamEvents are the events of a stream of backendResponse,
// response.completed last.
var responseStreamEvents = func() []string {
	pending := strings.Replace(strings.Replace(backendResponse, `"status":"completed"`, `"status":"in_progress"`, 1),
		`"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":7}`, `"usage":null`, 1)
	pending = pending[:strings.Index(pending, `"output":`)] + `"output":[],` + pending[strings.Index(pending, `"parallel_tool_calls"`):]
	where := `"item_id":"msg_1","output_index":0,"content_index":0`
	return []string{
		`{"type":"response.created","sequence_number":0,"response":` + pending + `}`,
		`{"type":"response.in_progress","sequence_number":1,"response":` + pending + `}`,
		`{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}`,
		`{"type":"response.content_part.added","sequence_number":3,` + where + `,"part":{"type":"output_text","text":"","annotations":[],"logprobs":[]}}`,
		`{"type":"response.output_text.delta","sequence_number":4,` + where + `,"delta":"Hel","logprobs":[]}`,
		`{"type":"response.output_text.delta","sequence_number":5,` + where + `,"delta":"lo","logprobs":[]}`,
		`{"type":"response.output_text.done","sequence_number":6,` + where + `,"text":"Hello","logprobs":[]}`,
		`{"type":"response.content_part.done","sequence_number":7,` + where + `,"part":{"type":"output_text","text":"Hello","annotations":[],"logprobs":[]}}`,
		`{"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[],"logprobs":[]}]}}`,
		`{"type":"response.completed","sequence_number":9,"response":` + backendResponse + `}`,
	}
}()

// responsesStream streams backendResponse, up to its last delta only
// unless complete. vLLM names each event; the llama.cpp dialect sends
// data lines only, as some servers do, and the gateway names them.
func responsesStream(w http.ResponseWriter, d dialect, complete bool) {
	startSSE(w)
	evs := responseStreamEvents
	if !complete {
		evs = evs[:6]
	}
	for _, ev := range evs {
		if d == vLLM {
			var typ struct{ Type string }
			_ = json.Unmarshal([]byte(ev), &typ)
			_, _ = io.WriteString(w, "event: "+typ.Type+"\n")
		}
		sseEvent(w, ev)
	}
}

// checkUnitVector fails unless v has n dimensions and unit length.
func checkUnitVector(t *testing.T, v []float64, n int) {
	t.Helper()
	var sum float64
	for _, x := range v {
		sum += x * x
	}
	if len(v) != n || math.Abs(sum-1) > 1e-4 {
		t.Fatalf("vector of %d dimensions (want %d), squared length %v (want 1)", len(v), n, sum)
	}
}

// decodeBase64Vector decodes an embedding sent as a JSON string of
// base64 little-endian float32.
func decodeBase64Vector(t *testing.T, raw string) []float64 {
	t.Helper()
	var s string
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		t.Fatalf("embedding %.80s is not a string: %v", raw, err)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		t.Fatalf("embedding %.80s: %v, %d bytes, want base64 of a multiple of 4 bytes", s, err, len(b))
	}
	v := make([]float64, len(b)/4)
	for i := range v {
		v[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return v
}

// TestEndpointsSDKEcho runs the official SDK's completions, embeddings
// and responses calls, streamed and not, against echo mode.
func TestEndpointsSDKEcho(t *testing.T) {
	g := newGateway(t, `chat_gateway`)
	client := sdkClient(g)
	ctx := context.Background()

	t.Run("completions", func(t *testing.T) {
		var httpResp *http.Response
		c, err := client.Completions.New(ctx, openai.CompletionNewParams{Model: "m", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hello world")}},
			option.WithHeader("X-Request-ID", "ep-echo-1"), option.WithResponseInto(&httpResp))
		if err != nil {
			t.Fatal(err)
		}
		if c.ID != "ep-echo-1" || httpResp.Header.Get("X-Request-ID") != "ep-echo-1" || c.Object != "text_completion" || len(c.Choices) != 1 ||
			c.Choices[0].Text != "Echo: hello world" || c.Choices[0].FinishReason != "stop" ||
			c.Usage.CompletionTokens == 0 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
			t.Fatalf("%+v, want id and X-Request-ID ep-echo-1, one text_completion choice \"Echo: hello world\" finished stop, completion tokens and total = prompt + completion", c)
		}

		params := openai.CompletionNewParams{Model: "m", Prompt: openai.CompletionNewParamsPromptUnion{OfArrayOfStrings: []string{"hello world"}},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}}
		stream := client.Completions.NewStreaming(ctx, params, option.WithHeader("X-Request-ID", "ep-echo-2"))
		text, finish, usage := readCompletionStream(t, stream, "ep-echo-2")
		if text != "Echo: hello world" || finish != "stop" || usage.TotalTokens == 0 || usage.TotalTokens != usage.PromptTokens+usage.CompletionTokens {
			t.Fatalf("streamed %q, finish %q, usage %+v, want \"Echo: hello world\", stop, total tokens > 0 = prompt + completion", text, finish, usage)
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		var httpResp *http.Response
		params := openai.EmbeddingNewParams{Model: "m", Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"hello world", "other", "hello world"}}}
		e, err := client.Embeddings.New(ctx, params, option.WithHeader("X-Request-ID", "ep-echo-3"), option.WithResponseInto(&httpResp))
		if err != nil {
			t.Fatal(err)
		}
		if httpResp.Header.Get("X-Request-ID") != "ep-echo-3" || len(e.Data) != 3 || e.Usage.PromptTokens == 0 || e.Usage.TotalTokens != e.Usage.PromptTokens {
			t.Fatalf("%d %+v, want 3 embeddings, prompt tokens > 0 = total, X-Request-ID ep-echo-3", len(e.Data), e.Usage)
		}
		for i, d := range e.Data {
			if d.Index != int64(i) {
				t.Fatalf("embedding %d has index %d, want %d", i, d.Index, i)
			}
			checkUnitVector(t, d.Embedding, 256)
		}
		if !equalVectors(e.Data[0].Embedding, e.Data[2].Embedding, 0) || equalVectors(e.Data[0].Embedding, e.Data[1].Embedding, 1e-3) {
			t.Fatal("equal inputs must give equal vectors and different inputs different ones")
		}

		params.EncodingFormat = openai.EmbeddingNewParamsEncodingFormatBase64
		b, err := client.Embeddings.New(ctx, params)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Data) != 3 {
			t.Fatalf("%d embeddings, want 3", len(b.Data))
		}
		for i, d := range b.Data {
			v := decodeBase64Vector(t, d.JSON.Embedding.Raw())
			checkUnitVector(t, v, 256)
			if !equalVectors(v, e.Data[i].Embedding, 1e-6) || !equalVectors(v, d.Embedding, 0) {
				t.Fatalf("embedding %d: base64 and float vectors differ", i)
			}
		}
	})

	t.Run("responses", func(t *testing.T) {
		var httpResp *http.Response
		params := responses.ResponseNewParams{Model: "m", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hello world")}}
		r, err := client.Responses.New(ctx, params, option.WithHeader("X-Request-ID", "ep-echo-4"), option.WithResponseInto(&httpResp))
		if err != nil {
			t.Fatal(err)
		}
		if httpResp.Header.Get("X-Request-ID") != "ep-echo-4" || !strings.HasPrefix(r.ID, "resp_") || r.ID == "ep-echo-4" || r.Status != "completed" ||
			r.OutputText() != "Echo: hello world" || r.Usage.OutputTokens == 0 || r.Usage.TotalTokens != r.Usage.InputTokens+r.Usage.OutputTokens {
			t.Fatalf("%s, want a resp_ id other than the request id, X-Request-ID ep-echo-4, status completed, text \"Echo: hello world\", output tokens and total = input + output", r.RawJSON())
		}

		stream := client.Responses.NewStreaming(ctx, params, option.WithHeader("X-Request-ID", "ep-echo-5"))
		text, completed := readResponseStream(t, stream)
		if text != "Echo: hello world" || completed.OutputText() != text || completed.Status != "completed" || completed.Usage.OutputTokens == 0 {
			t.Fatalf("streamed %q, completed %s, want \"Echo: hello world\" streamed and completed, with output tokens", text, completed.RawJSON())
		}
	})
}

// readCompletionStream reads a completions stream to its end, checking
// each chunk's id, and returns its text, finish reason and usage.
func readCompletionStream(t *testing.T, stream *ssestream.Stream[openai.Completion], id string) (string, string, openai.CompletionUsage) {
	t.Helper()
	var text strings.Builder
	var finish string
	var usage openai.CompletionUsage
	for stream.Next() {
		c := stream.Current()
		if (id != "" && c.ID != id) || c.Object != "text_completion" {
			t.Fatalf("chunk %s, want id %q and object text_completion", c.RawJSON(), id)
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Text)
			if ch.FinishReason != "" {
				finish = string(ch.FinishReason)
			}
		}
		if c.JSON.Usage.Valid() && c.Usage.TotalTokens > 0 {
			if usage.TotalTokens != 0 {
				t.Fatalf("a second usage chunk: %s", c.RawJSON())
			}
			usage = c.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return text.String(), finish, usage
}

// readResponseStream reads a Responses stream to its end, checking the
// events' order, and returns its text and the completed Response.
func readResponseStream(t *testing.T, stream *ssestream.Stream[responses.ResponseStreamEventUnion]) (string, responses.Response) {
	t.Helper()
	var text strings.Builder
	var types []string
	var completed responses.Response
	last := int64(-1)
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		if ev.SequenceNumber <= last {
			t.Fatalf("sequence_number %d after %d, want increasing", ev.SequenceNumber, last)
		}
		last = ev.SequenceNumber
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "response.completed":
			completed = ev.AsResponseCompleted().Response
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(types) < 3 || types[0] != "response.created" || types[len(types)-1] != "response.completed" {
		t.Fatalf("event types %v, want at least 3, response.created first and response.completed last", types)
	}
	return text.String(), completed
}

// equalVectors reports whether a and b have the same length and differ
// by at most tol in every dimension.
func equalVectors(a, b []float64, tol float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > tol {
			return false
		}
	}
	return true
}

// TestEndpointsSDKBackend runs the official SDK's calls against a
// backend that answers as llama.cpp and as vLLM do.
func TestEndpointsSDKBackend(t *testing.T) {
	for _, d := range []dialect{llamaCpp, vLLM} {
		t.Run(string(d), func(t *testing.T) {
			be := newFakeBackend(t, endpointsBackend(d))
			g := newGateway(t, "chat_gateway "+be.URL)
			client := sdkClient(g)
			ctx := context.Background()
			forwarded := func(t *testing.T, path, id string) {
				t.Helper()
				got := be.last(t)
				if got.Path != path || got.Header.Get("X-Request-ID") != id || got.Header.Get("Authorization") != "" {
					t.Fatalf("upstream got %s %s, X-Request-ID %q, Authorization %q, want %s, %q, no Authorization", got.Method, got.Path, got.Header.Get("X-Request-ID"), got.Header.Get("Authorization"), path, id)
				}
			}

			c, err := client.Completions.New(ctx, openai.CompletionNewParams{Model: "m", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")},
				Suffix: openai.String("end")}, option.WithHeader("X-Request-ID", "ep-be-1"))
			if err != nil {
				t.Fatal(err)
			}
			if c.ID != "ep-be-1" || c.Object != "text_completion" || c.Choices[0].Text != "Hello" || c.Choices[0].FinishReason != "stop" || c.Usage.TotalTokens != 5 {
				t.Fatalf("%s, want id ep-be-1, text_completion \"Hello\" finished stop, 5 total tokens", c.RawJSON())
			}
			forwarded(t, "/v1/completions", "ep-be-1")
			if body := be.last(t).Body; !strings.Contains(body, `"suffix":"end"`) {
				t.Fatalf("suffix not forwarded: %s", body)
			}

			for _, usage := range []bool{false, true} {
				params := openai.CompletionNewParams{Model: "m", Prompt: openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: []int64{1, 2, 3}}}
				if usage {
					params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
				}
				stream := client.Completions.NewStreaming(ctx, params, option.WithHeader("X-Request-ID", "ep-be-2"))
				text, finish, u := readCompletionStream(t, stream, "ep-be-2")
				if text != "Hello" || finish != "stop" || (u.TotalTokens == 5) != usage {
					t.Fatalf("include_usage %v: streamed %q, finish %q, usage %+v, want \"Hello\", stop, 5 total tokens only with include_usage", usage, text, finish, u)
				}
				forwarded(t, "/v1/completions", "ep-be-2")
			}

			params := openai.EmbeddingNewParams{Model: "m", Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}}}
			e, err := client.Embeddings.New(ctx, params, option.WithHeader("X-Request-ID", "ep-be-3"))
			if err != nil {
				t.Fatal(err)
			}
			if len(e.Data) != 2 || e.Usage.PromptTokens != 4 || e.Usage.TotalTokens != 4 || !equalVectors(e.Data[1].Embedding, []float64{0.5, -0.5, 0.5, -0.5}, 0) {
				t.Fatalf("%s, want 2 embeddings of the backend's vector, 4 prompt and total tokens", e.RawJSON())
			}
			forwarded(t, "/v1/embeddings", "ep-be-3")
			params.EncodingFormat = openai.EmbeddingNewParamsEncodingFormatBase64
			e, err = client.Embeddings.New(ctx, params)
			if err != nil {
				t.Fatal(err)
			}
			if len(e.Data) != 2 || !equalVectors(decodeBase64Vector(t, e.Data[0].JSON.Embedding.Raw()), []float64{0.5, -0.5, 0.5, -0.5}, 0) {
				t.Fatalf("%s, want 2 base64 embeddings of the backend's vector", e.RawJSON())
			}
			if body := be.last(t).Body; !strings.Contains(body, `"encoding_format":"base64"`) {
				t.Fatalf("encoding_format not forwarded: %s", body)
			}

			rparams := responses.ResponseNewParams{Model: "m", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}
			var httpResp *http.Response
			r, err := client.Responses.New(ctx, rparams, option.WithHeader("X-Request-ID", "ep-be-4"), option.WithResponseInto(&httpResp))
			if err != nil {
				t.Fatal(err)
			}
			if r.ID != "resp_backend1" || httpResp.Header.Get("X-Request-ID") != "ep-be-4" || r.OutputText() != "Hello" || r.Usage.TotalTokens != 7 {
				t.Fatalf("%s, want id resp_backend1, X-Request-ID ep-be-4, text \"Hello\", 7 total tokens", r.RawJSON())
			}
			forwarded(t, "/v1/responses", "ep-be-4")

			stream := client.Responses.NewStreaming(ctx, rparams, option.WithHeader("X-Request-ID", "ep-be-5"))
			text, completed := readResponseStream(t, stream)
			if text != "Hello" || completed.ID != "resp_backend1" || completed.Usage.InputTokens != 5 || completed.Usage.OutputTokens != 2 {
				t.Fatalf("streamed %q, completed %s, want \"Hello\", resp_backend1 with 5 input and 2 output tokens", text, completed.RawJSON())
			}
			forwarded(t, "/v1/responses", "ep-be-5")
		})
	}
}

// TestResponsesStreamRelayed: a Responses stream reaches the client
// event by event as the backend sent it, each named after its type
// (vLLM names them, the llama.cpp dialect does not); echo mode streams
// the same shape.
func TestResponsesStreamRelayed(t *testing.T) {
	for _, d := range []dialect{llamaCpp, vLLM} {
		t.Run(string(d), func(t *testing.T) {
			be := newFakeBackend(t, endpointsBackend(d))
			g := newGateway(t, "chat_gateway "+be.URL)
			resp, body := g.postTo(t, "/v1/responses", responsesStreamBody)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("%d %v %s, want 200 text/event-stream", resp.StatusCode, resp.Header, body)
			}
			got := frames(body)
			if len(got) != len(responseStreamEvents) {
				t.Fatalf("%d events, want %d:\n%s", len(got), len(responseStreamEvents), body)
			}
			for i, f := range got {
				if f.Data != responseStreamEvents[i] {
					t.Fatalf("event %d changed:\n got %s\nwant %s", i, f.Data, responseStreamEvents[i])
				}
			}
			responseEvents(t, body) // names match types
		})
	}
	g := newGateway(t, `chat_gateway`)
	resp, body := g.postTo(t, "/v1/responses", responsesStreamBody)
	evs := responseEvents(t, body)
	if resp.StatusCode != 200 || evs[0].Type != "response.created" || evs[len(evs)-1].Type != "response.completed" ||
		evs[len(evs)-1].Response.Usage == nil || evs[len(evs)-1].Response.Usage.Output == 0 {
		t.Fatalf("%d %s, want 200, response.created to response.completed with output tokens", resp.StatusCode, body)
	}
}

// TestEndpointsRequestErrors: each route answers its wrong methods with
// 405 and a body it cannot serve with 400 naming the param, with a
// request id and without contacting the backend.
func TestEndpointsRequestErrors(t *testing.T) {
	be := newFakeBackend(t, endpointsBackend(vLLM))
	g := newGateway(t, "chat_gateway "+be.URL)
	for _, path := range []string{"/v1/completions", "/v1/embeddings", "/v1/responses"} {
		for _, method := range []string{"GET", "PUT", "DELETE"} {
			req, _ := http.NewRequest(method, g.URL+path, nil)
			resp, body := do(t, req)
			if e := apiError(t, body); resp.StatusCode != 405 || e["code"] != "method_not_allowed" || !strings.Contains(resp.Header.Get("Allow"), "POST") ||
				resp.Header.Get("X-Request-ID") == "" {
				t.Errorf("%s %s: %d %v %s, want 405 method_not_allowed, Allow with POST, an X-Request-ID", method, path, resp.StatusCode, resp.Header, body)
			}
		}
	}
	tests := []struct {
		name, path, body string
		code, param      string
	}{
		{"completions without prompt", "/v1/completions", `{"model":"m"}`, "missing_required_parameter", "prompt"},
		{"completions null prompt", "/v1/completions", `{"model":"m","prompt":null}`, "missing_required_parameter", "prompt"},
		{"completions prompt object", "/v1/completions", `{"model":"m","prompt":{"text":"x"}}`, "invalid_type", "prompt"},
		{"completions mixed prompt", "/v1/completions", `{"model":"m","prompt":["x",1]}`, "invalid_type", "prompt"},
		{"completions suffix number", "/v1/completions", `{"model":"m","prompt":"x","suffix":1}`, "invalid_type", "suffix"},
		{"completions stream string", "/v1/completions", `{"model":"m","prompt":"x","stream":"yes"}`, "invalid_type", "stream"},
		{"embeddings without input", "/v1/embeddings", `{"model":"m"}`, "missing_required_parameter", "input"},
		{"embeddings empty input", "/v1/embeddings", `{"model":"m","input":""}`, "", "input"},
		{"embeddings empty array", "/v1/embeddings", `{"model":"m","input":[]}`, "", "input"},
		{"embeddings bad format", "/v1/embeddings", `{"model":"m","input":"x","encoding_format":"int8"}`, "invalid_value", "encoding_format"},
		{"responses input number", "/v1/responses", `{"model":"m","input":1}`, "invalid_type", "input"},
		{"responses input items not objects", "/v1/responses", `{"model":"m","input":["x"]}`, "invalid_type", "input"},
		{"responses previous id number", "/v1/responses", `{"model":"m","input":"x","previous_response_id":1}`, "invalid_type", "previous_response_id"},
		{"responses invalid json", "/v1/responses", `{"model":"m","input":`, "invalid_json", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := g.postTo(t, tt.path, tt.body, "X-Request-ID", "ep-bad")
			e := apiError(t, body)
			if resp.StatusCode != 400 || e["type"] != "invalid_request_error" || (tt.code != "" && e["code"] != tt.code) || (tt.param != "" && e["param"] != tt.param) ||
				resp.Header.Get("X-Request-ID") != "ep-bad" {
				t.Fatalf("%d %s, want 400 invalid_request_error with code %q param %q, X-Request-ID ep-bad", resp.StatusCode, body, tt.code, tt.param)
			}
		})
	}
	if n := be.count(); n != 0 {
		t.Fatalf("the backend got %d requests, want 0", n)
	}

	// Other /v1 paths are unknown URLs, the gateway's to answer (no
	// stored Response is read by id: GET /v1/responses/{id} is one).
	for _, path := range []string{"/v1/audio/speech", "/v1/rerank", "/v1/responses/resp_1", "/v1/embeddings/x"} {
		if resp, body := g.postTo(t, path, embeddingsBody); resp.StatusCode != 404 || apiError(t, body)["code"] != "unknown_url" {
			t.Errorf("%s: %d %q, want 404 unknown_url", path, resp.StatusCode, body)
		}
	}

	// The body limit is the same on every route.
	small := newGateway(t, "chat_gateway {\n max_request_body 1KiB\n}")
	big := strings.Repeat("x", 2000)
	for path, body := range map[string]string{"/v1/completions": `{"prompt":"` + big + `"}`, "/v1/embeddings": `{"input":"` + big + `"}`, "/v1/responses": `{"input":"` + big + `"}`} {
		if resp, b := small.postTo(t, path, body); resp.StatusCode != 413 || apiError(t, b)["code"] != "request_too_large" {
			t.Errorf("%s: %d %s, want 413 request_too_large", path, resp.StatusCode, b)
		}
	}
}

// TestEndpointsModelRouting: each route goes to the backend that serves
// its model, with an alias rewritten upstream.
func TestEndpointsModelRouting(t *testing.T) {
	a := newFakeBackend(t, endpointsBackend(llamaCpp))
	b := newFakeBackend(t, endpointsBackend(vLLM))
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models qwen
			alias text-embedding-3-small qwen
		}
		backend %s {
			models llama
		}
	}`, b.URL, a.URL))
	for _, tt := range []struct{ path, body string }{
		{"/v1/completions", `{"model":"%s","prompt":"x"}`},
		{"/v1/completions", `{"model":"%s","prompt":"x","stream":true}`},
		{"/v1/embeddings", `{"model":"%s","input":"x"}`},
		{"/v1/responses", `{"model":"%s","input":"x"}`},
		{"/v1/responses", `{"model":"%s","input":"x","stream":true}`},
	} {
		for model, want := range map[string]*backend{"qwen": b, "text-embedding-3-small": b, "llama": a} {
			before := want.count()
			resp, body := g.postTo(t, tt.path, fmt.Sprintf(tt.body, model))
			if resp.StatusCode != 200 || want.count() != before+1 {
				t.Fatalf("%s %s: %d, want 200 served by the model's backend: %s", tt.path, model, resp.StatusCode, body)
			}
			got := want.last(t)
			if wantModel := map[string]string{"text-embedding-3-small": "qwen"}[model]; wantModel != "" && !strings.Contains(got.Body, `"model":"qwen"`) {
				t.Fatalf("%s: alias not rewritten upstream: %s", tt.path, got.Body)
			}
			if got.Path != tt.path {
				t.Fatalf("upstream path %s, want %s", got.Path, tt.path)
			}
		}
		resp, body := g.postTo(t, tt.path, fmt.Sprintf(tt.body, "gpt-5"))
		if e := apiError(t, body); resp.StatusCode != 404 || e["code"] != "model_not_found" || e["param"] != "model" {
			t.Fatalf("%s unknown model: %d %s, want 404 model_not_found naming model", tt.path, resp.StatusCode, body)
		}
	}
}

// TestEndpointsErrorsBeforeFirstByte: a backend failure before any
// output is a status and a JSON error, for every route, streamed or not.
func TestEndpointsErrorsBeforeFirstByte(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 500, `{"error":{"message":"backend exploded","type":"server_error"}}`)
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	for _, tt := range []struct{ path, body string }{
		{"/v1/completions", completionsBody}, {"/v1/completions", completionsStreamBody}, {"/v1/embeddings", embeddingsBody},
		{"/v1/responses", responsesBody}, {"/v1/responses", responsesStreamBody},
	} {
		resp, body := g.postTo(t, tt.path, tt.body, "X-Request-ID", "ep-500")
		if e := apiError(t, body); resp.StatusCode != 502 || e["code"] != "upstream_error" || resp.Header.Get("X-Request-ID") != "ep-500" ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %s, want 502 upstream_error in JSON, X-Request-ID ep-500", tt.path, tt.body, resp.StatusCode, body)
		}
	}

	// A stream that fails before its first event fails the same way.
	cut := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { startSSE(w) })
	g = newGateway(t, "chat_gateway "+cut.URL)
	for _, tt := range []struct{ path, body string }{{"/v1/completions", completionsStreamBody}, {"/v1/responses", responsesStreamBody}} {
		resp, body := g.postTo(t, tt.path, tt.body)
		if e := apiError(t, body); resp.StatusCode != 502 || e["code"] != "stream_truncated" {
			t.Errorf("%s: %d %s, want 502 stream_truncated", tt.path, resp.StatusCode, body)
		}
	}
}

// TestEndpointsErrorsAfterFirstByte: once output has gone out, a failure
// ends the stream with the route's error event.
func TestEndpointsErrorsAfterFirstByte(t *testing.T) {
	t.Run("completions cut", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			sseEvent(w, `{"id":"cmpl-vllm","object":"text_completion","created":7,"model":"llama","choices":[{"index":0,"text":"Hel","logprobs":null,"finish_reason":null}]}`)
		})
		g := newGateway(t, "chat_gateway "+be.URL)
		resp, body := g.postTo(t, "/v1/completions", completionsStreamBody, "X-Request-ID", "ep-cut-1")
		evs := events(body)
		if resp.StatusCode != 200 || len(evs) < 2 || evs[len(evs)-1] == "[DONE]" {
			t.Fatalf("%d %s, want 200, at least 2 events, no [DONE] at the end", resp.StatusCode, body)
		}
		var first struct {
			ID      string
			Choices []struct{ Text string }
		}
		if err := json.Unmarshal([]byte(evs[0]), &first); err != nil || first.ID != "ep-cut-1" || first.Choices[0].Text != "Hel" {
			t.Fatalf("first event %s: %v, want id ep-cut-1 and text Hel", evs[0], err)
		}
		var last struct {
			Error *struct{ Code, Message string }
		}
		if err := json.Unmarshal([]byte(evs[len(evs)-1]), &last); err != nil || last.Error == nil || last.Error.Code != "stream_truncated" {
			t.Fatalf("last event %s: %v, want an error with code stream_truncated", evs[len(evs)-1], err)
		}
		if l := g.waitLog(t, "handled request", "ep-cut-1"); l["outcome"] != "truncated" {
			t.Fatalf("access log outcome %v, want truncated", l["outcome"])
		}

		client := sdkClient(g)
		stream := client.Completions.NewStreaming(context.Background(), openai.CompletionNewParams{Model: "m", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")}})
		for stream.Next() {
		}
		var se *ssestream.StreamError
		if err := stream.Err(); !errors.As(err, &se) {
			t.Fatalf("SDK stream error %v, want an *ssestream.StreamError", err)
		}
	})

	for _, d := range []dialect{llamaCpp, vLLM} {
		t.Run("responses cut "+string(d), func(t *testing.T) {
			be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { responsesStream(w, d, false) })
			g := newGateway(t, "chat_gateway "+be.URL)
			resp, body := g.postTo(t, "/v1/responses", responsesStreamBody, "X-Request-ID", "ep-cut-2")
			evs := responseEvents(t, body)
			last := evs[len(evs)-1]
			if resp.StatusCode != 200 || len(evs) != 7 || last.Type != "error" || last.Code != "stream_truncated" || last.Message == "" ||
				last.SequenceNumber <= evs[len(evs)-2].SequenceNumber {
				t.Fatalf("%d %s, want 200, 7 events, the last a stream_truncated error with a message and a later sequence_number", resp.StatusCode, body)
			}
			if l := g.waitLog(t, "handled request", "ep-cut-2"); l["outcome"] != "truncated" {
				t.Fatalf("access log outcome %v, want truncated", l["outcome"])
			}

			client := sdkClient(g)
			stream := client.Responses.NewStreaming(context.Background(), responses.ResponseNewParams{Model: "m", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")}})
			var types []string
			for stream.Next() {
				types = append(types, stream.Current().Type)
			}
			if err := stream.Err(); err != nil || types[len(types)-1] != "error" || stream.Current().AsError().Code != "stream_truncated" {
				t.Fatalf("SDK saw %v, %v, want no error and a last stream_truncated error event", types, err)
			}
		})
	}

	t.Run("responses backend error event", func(t *testing.T) {
		be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			for _, ev := range responseStreamEvents[:5] {
				sseEvent(w, ev)
			}
			_, _ = io.WriteString(w, "event: error\n")
			sseEvent(w, `{"type":"error","code":"server_error","message":"model crashed","param":null,"sequence_number":5}`)
		})
		g := newGateway(t, "chat_gateway "+be.URL)
		resp, body := g.postTo(t, "/v1/responses", responsesStreamBody, "X-Request-ID", "ep-cut-3")
		evs := responseEvents(t, body)
		last := evs[len(evs)-1]
		if resp.StatusCode != 200 || last.Type != "error" || last.Code != "server_error" || !strings.Contains(last.Message, "model crashed") {
			t.Fatalf("%d %s, want 200 ending in the backend's server_error event \"model crashed\"", resp.StatusCode, body)
		}
		if n := strings.Count(body, "event: error"); n != 1 {
			t.Fatalf("%d error events, want 1:\n%s", n, body)
		}
		if l := g.waitLog(t, "handled request", "ep-cut-3"); l["outcome"] != "upstream_error" {
			t.Fatalf("access log outcome %v, want upstream_error", l["outcome"])
		}
	})
}

// TestEndpointsDisconnectCancelsUpstream closes the client while the
// backend works on each route and checks that the backend's request
// context ends.
func TestEndpointsDisconnectCancelsUpstream(t *testing.T) {
	phases := []struct {
		name, path, body string
		handle           func(w http.ResponseWriter, r *http.Request, sent chan<- struct{})
	}{
		{"embeddings waiting for headers", "/v1/embeddings", embeddingsBody, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			close(sent)
			<-r.Context().Done()
		}},
		{"embeddings mid-reply", "/v1/embeddings", embeddingsBody, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5`)
			http.NewResponseController(w).Flush()
			close(sent)
			for r.Context().Err() == nil {
				_, _ = io.WriteString(w, ",0.25")
				http.NewResponseController(w).Flush()
				time.Sleep(5 * time.Millisecond)
			}
		}},
		{"completions mid-stream", "/v1/completions", completionsStreamBody, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			startSSE(w)
			sseEvent(w, `{"choices":[{"index":0,"text":"a","finish_reason":null}]}`)
			close(sent)
			for r.Context().Err() == nil {
				sseEvent(w, `{"choices":[{"index":0,"text":"a","finish_reason":null}]}`)
				time.Sleep(5 * time.Millisecond)
			}
		}},
		{"responses mid-stream", "/v1/responses", responsesStreamBody, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			startSSE(w)
			for _, ev := range responseStreamEvents[:5] {
				sseEvent(w, ev)
			}
			close(sent)
			for i := 5; r.Context().Err() == nil; i++ {
				sseEvent(w, fmt.Sprintf(`{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"a","logprobs":[]}`, i))
				time.Sleep(5 * time.Millisecond)
			}
		}},
		{"responses waiting for first event", "/v1/responses", responsesStreamBody, func(w http.ResponseWriter, r *http.Request, sent chan<- struct{}) {
			startSSE(w)
			close(sent)
			<-r.Context().Done()
		}},
	}
	for _, ph := range phases {
		t.Run(ph.name, func(t *testing.T) {
			sent := make(chan struct{})
			be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) { ph.handle(w, r, sent) })
			g := newGateway(t, "chat_gateway "+be.URL)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", g.URL+ph.path, strings.NewReader(ph.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Request-ID", "ep-gone")
			go func() {
				<-sent
				cancel()
			}()
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			be.waitCancelled(t)
			if l := g.waitLog(t, "handled request", "ep-gone"); l["outcome"] != "client_cancelled" {
				t.Fatalf("access log outcome %v, want client_cancelled", l["outcome"])
			}
		})
	}
}

// tokensCount reads tokens_total for one model and type.
func tokensCount(model, typ string) float64 {
	return testutil.ToFloat64(gatewayMetrics.tokens.WithLabelValues(model, typ, ""))
}

// TestEndpointsUsage: the usage of embeddings and responses, as the
// backend reported it or estimated where it did not, reaches the reply,
// the access log and tokens_total.
func TestEndpointsUsage(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body := upstreamBody(r)
		switch {
		case strings.Contains(body, `"model":"bare"`): // embeddings without usage
			writeJSON(w, 200, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1,0]}],"model":"bare"}`)
		default:
			endpointsBackend(vLLM)(w, r)
		}
	})
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models emb resp bare
		}
	}`, be.URL))
	type counts struct{ embPrompt, respPrompt, respCompletion, barePrompt float64 }
	read := func() counts {
		return counts{tokensCount("emb", "prompt"), tokensCount("resp", "prompt"), tokensCount("resp", "completion"), tokensCount("bare", "prompt")}
	}
	before := read()

	g.postTo(t, "/v1/embeddings", `{"model":"emb","input":["a","b"]}`, "X-Request-ID", "ep-use-1")
	g.postTo(t, "/v1/responses", `{"model":"resp","input":"x"}`, "X-Request-ID", "ep-use-2")
	g.postTo(t, "/v1/responses", `{"model":"resp","input":"x","stream":true}`, "X-Request-ID", "ep-use-3")
	resp, body := g.postTo(t, "/v1/embeddings", `{"model":"bare","input":"`+strings.Repeat("word ", 40)+`"}`, "X-Request-ID", "ep-use-4")
	var bare struct {
		Usage struct {
			PromptTokens int64 `json:"prompt_tokens"`
			TotalTokens  int64 `json:"total_tokens"`
		} `json:"usage"`
	}
	// The estimate of a prompt: its 200 bytes at 4 bytes a token.
	const estimate = 200 / 4
	if err := json.Unmarshal([]byte(body), &bare); err != nil || resp.StatusCode != 200 || bare.Usage.PromptTokens != estimate || bare.Usage.TotalTokens != estimate {
		t.Fatalf("usage not filled in: %d %s, want 200 with prompt and total tokens %d", resp.StatusCode, body, estimate)
	}

	for id, want := range map[string][2]float64{"ep-use-1": {4, 0}, "ep-use-2": {5, 2}, "ep-use-3": {5, 2}, "ep-use-4": {estimate, 0}} {
		l := g.waitLog(t, "handled request", id)
		if l["prompt_tokens"] != want[0] || (want[1] != 0 && l["completion_tokens"] != want[1]) || l["outcome"] != "ok" {
			t.Errorf("%s: access log prompt_tokens %v completion_tokens %v outcome %v, want %v and outcome ok", id, l["prompt_tokens"], l["completion_tokens"], l["outcome"], want)
		}
	}
	after := read()
	got := counts{after.embPrompt - before.embPrompt, after.respPrompt - before.respPrompt, after.respCompletion - before.respCompletion, after.barePrompt - before.barePrompt}
	if want := (counts{4, 10, 4, estimate}); got != want {
		t.Fatalf("tokens_total deltas %+v, want %+v", got, want)
	}
	if _, raw := g.logs(t); strings.Contains(raw, "word word") {
		t.Fatal("the input was logged")
	}
}

// TestEndpointsMetricsLabel: requests_total and the duration histogram
// count each route under its endpoint label.
func TestEndpointsMetricsLabel(t *testing.T) {
	be := newFakeBackend(t, endpointsBackend(vLLM))
	g := newGateway(t, fmt.Sprintf("chat_gateway {\n backend %s {\n models labelled\n }\n}", be.URL))
	routes := []struct{ endpoint, path, body string }{
		{"chat_completions", "/v1/chat/completions", `{"model":"labelled","messages":[{"role":"user","content":"x"}]}`},
		{"completions", "/v1/completions", `{"model":"labelled","prompt":"x"}`},
		{"embeddings", "/v1/embeddings", `{"model":"labelled","input":"x"}`},
		{"responses", "/v1/responses", `{"model":"labelled","input":"x"}`},
	}
	counters := make([]prometheus.Counter, len(routes))
	histograms := make([]prometheus.Observer, len(routes))
	for i, r := range routes {
		var err error
		counters[i], err = gatewayMetrics.requests.GetMetricWith(prometheus.Labels{"endpoint": r.endpoint, "model": "labelled", "stream": "false", "outcome": "ok", "key": ""})
		if err != nil {
			t.Fatalf("requests_total by endpoint: %v", err)
		}
		if histograms[i], err = gatewayMetrics.duration.GetMetricWith(prometheus.Labels{"endpoint": r.endpoint, "model": "labelled", "stream": "false"}); err != nil {
			t.Fatalf("the duration histogram by endpoint: %v", err)
		}
	}
	for i, r := range routes {
		before, beforeDuration := testutil.ToFloat64(counters[i]), histogramCount(t, histograms[i])
		if resp, body := g.postTo(t, r.path, r.body, "X-Request-ID", "ep-label-"+r.endpoint); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s, want 200", r.path, resp.StatusCode, body)
		}
		g.waitLog(t, "handled request", "ep-label-"+r.endpoint) // recorded before the access log
		if n := testutil.ToFloat64(counters[i]) - before; n != 1 {
			t.Errorf("requests_total{endpoint=%q} gained %v, want 1", r.endpoint, n)
		}
		if n := histogramCount(t, histograms[i]) - beforeDuration; n != 1 {
			t.Errorf("duration{endpoint=%q} observed %d times, want 1", r.endpoint, n)
		}
	}
}

// TestPreviousResponseID: a Responses request that continues a stored
// response goes to the backend that serves its model only if that one
// is marked `responses stateful`; else it is refused with a 400 naming
// previous_response_id, before any backend is contacted.
func TestPreviousResponseID(t *testing.T) {
	stateless := newFakeBackend(t, endpointsBackend(llamaCpp))
	stateful := newFakeBackend(t, endpointsBackend(vLLM))
	config := fmt.Sprintf(`chat_gateway {
		backend %s {
			models llama
		}
		backend %s {
			models qwen
			alias gpt-4o qwen
			responses stateful
		}
	}`, stateless.URL, stateful.URL)
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("http://127.0.0.1 {\n"+config+"\n}"), nil)
	if err != nil || !strings.Contains(string(adapted), `"responses":"stateful"`) {
		t.Fatalf("adapted to %s: %v, want \"responses\":\"stateful\"", adapted, err)
	}
	g := newGateway(t, config)
	const chained = `{"model":"%s","input":"and then?","previous_response_id":"resp_backend1","store":true}`

	resp, body := g.postTo(t, "/v1/responses", fmt.Sprintf(chained, "llama"), "X-Request-ID", "ep-prev-1")
	if e := apiError(t, body); resp.StatusCode != 400 || e["param"] != "previous_response_id" || e["type"] != "invalid_request_error" ||
		resp.Header.Get("X-Request-ID") != "ep-prev-1" {
		t.Fatalf("to a stateless backend: %d %s, want 400 invalid_request_error naming previous_response_id, X-Request-ID ep-prev-1", resp.StatusCode, body)
	}
	if n := stateless.count(); n != 0 {
		t.Fatalf("the stateless backend got %d requests, want 0", n)
	}

	// A stored response is its maker's (here the client's address: the
	// gateway is open): it makes resp_backend1 first.
	if resp, body := g.postTo(t, "/v1/responses", `{"model":"qwen","input":"x","store":true}`); resp.StatusCode != 200 || !strings.Contains(body, "resp_backend1") {
		t.Fatalf("%d %s, want 200 with resp_backend1", resp.StatusCode, body)
	}
	for _, model := range []string{"qwen", "gpt-4o"} {
		before := stateful.count()
		resp, body = g.postTo(t, "/v1/responses", fmt.Sprintf(chained, model))
		if resp.StatusCode != 200 || stateful.count() != before+1 {
			t.Fatalf("%s: %d %s, want 200 served by the stateful backend", model, resp.StatusCode, body)
		}
		if got := stateful.last(t).Body; got != fmt.Sprintf(chained, "qwen") {
			t.Fatalf("not forwarded as sent: %s", got)
		}
	}
	resp, body = g.postTo(t, "/v1/responses", strings.Replace(fmt.Sprintf(chained, "qwen"), `}`, `,"stream":true}`, 1))
	if evs := responseEvents(t, body); resp.StatusCode != 200 || evs[len(evs)-1].Type != "response.completed" ||
		!strings.Contains(stateful.last(t).Body, `"previous_response_id":"resp_backend1"`) {
		t.Fatalf("streamed: %d %s, want 200 ending in response.completed, previous_response_id forwarded", resp.StatusCode, body)
	}

	// Without previous_response_id any backend serves, store passed as sent.
	resp, body = g.postTo(t, "/v1/responses", `{"model":"llama","input":"x","store":false}`)
	if resp.StatusCode != 200 || !strings.Contains(stateless.last(t).Body, `"store":false`) {
		t.Fatalf("%d %s, want 200 with store false forwarded", resp.StatusCode, body)
	}

	// The SDK sees the 400 as an API error naming the param.
	client := sdkClient(g)
	_, err = client.Responses.New(context.Background(), responses.ResponseNewParams{Model: "llama",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")}, PreviousResponseID: openai.String("resp_backend1")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "previous_response_id" {
		t.Fatalf("SDK error %v, want a 400 API error naming previous_response_id", err)
	}
}

// TestEndpointsFallback: a route whose backend is down falls back to
// the model its backend names, each route alike; a request continuing a
// stored response falls back only to a backend that keeps responses.
func TestEndpointsFallback(t *testing.T) {
	cloud := newFakeBackend(t, endpointsBackend(vLLM))
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models local
			fallback cloud
			responses stateful
		}
		backend %s {
			models cloud
		}
	}`, refusing(t), cloud.URL))
	for _, tt := range []struct{ path, body string }{
		{"/v1/completions", `{"model":"local","prompt":"x"}`},
		{"/v1/completions", `{"model":"local","prompt":"x","stream":true}`},
		{"/v1/embeddings", `{"model":"local","input":"x"}`},
		{"/v1/responses", `{"model":"local","input":"x"}`},
		{"/v1/responses", `{"model":"local","input":"x","stream":true}`},
	} {
		before := cloud.count()
		resp, body := g.postTo(t, tt.path, tt.body)
		if resp.StatusCode != 200 || cloud.count() != before+1 || !strings.Contains(cloud.last(t).Body, `"model":"cloud"`) {
			t.Fatalf("%s %s: %d %s, want 200 from the cloud backend as model cloud", tt.path, tt.body, resp.StatusCode, body)
		}
	}
	// resp_1 is the client's (the gateway is open: its address), made
	// before the local backend went down.
	store, _, err := limitStores.LoadOrNew(memoryStoreKey, func() (caddy.Destructor, error) { return limits.NewMemory(), nil })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = limitStores.Delete(memoryStoreKey) }()
	if err := store.(limits.Owners).Claim(context.Background(), "resp_1", "ip:127.0.0.1", time.Hour); err != nil {
		t.Fatal(err)
	}
	before := cloud.count()
	resp, body := g.postTo(t, "/v1/responses", `{"model":"local","input":"x","previous_response_id":"resp_1"}`)
	if e := apiError(t, body); resp.StatusCode != 502 || e["code"] != "upstream_unavailable" || cloud.count() != before {
		t.Fatalf("continued response: %d %s, cloud got %d, want 502 upstream_unavailable and none to cloud", resp.StatusCode, body, cloud.count()-before)
	}
}

// TestEndpointsJSONAnswerToStream: a backend that answers a streaming
// request with one JSON reply still gives the client the route's
// stream.
func TestEndpointsJSONAnswerToStream(t *testing.T) {
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/completions":
			writeJSON(w, 200, `{"id":"cmpl-1","object":"text_completion","created":7,"model":"llama","choices":[{"index":0,"text":"Hello","finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
		default:
			writeJSON(w, 200, backendResponse)
		}
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	client := sdkClient(g)
	ctx := context.Background()
	stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{Model: "m", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}}, option.WithHeader("X-Request-ID", "ep-json-1"))
	if text, finish, usage := readCompletionStream(t, stream, "ep-json-1"); text != "Hello" || finish != "stop" || usage.TotalTokens != 5 {
		t.Fatalf("streamed %q, finish %q, usage %+v, want \"Hello\", stop, 5 total tokens", text, finish, usage)
	}
	rstream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "m", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")}})
	if text, completed := readResponseStream(t, rstream); text != "Hello" || completed.ID != "resp_backend1" || completed.Usage.TotalTokens != 7 {
		t.Fatalf("streamed %q, completed %s, want \"Hello\", resp_backend1 with 7 total tokens", text, completed.RawJSON())
	}
	_, body := g.postTo(t, "/v1/responses", responsesStreamBody)
	responseEvents(t, body) // named after their types
}

// TestEndpointsLimits: the tokens an embeddings or a Responses reply
// used, as the backend reported them, count against the tokens limit.
func TestEndpointsLimits(t *testing.T) {
	who := team("endpoints")
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Mode") == "fail" {
			writeJSON(w, 500, `{"error":{"message":"down"}}`)
			return
		}
		endpointsBackend(vLLM)(w, r)
	})
	g := newGateway(t, `chat_gateway `+be.URL+` {
		limits {
			tokens 100000/365d
			per {http.request.header.X-Team}
		}
	}`)
	// remaining is the tokens left after a request that fails at the
	// backend, and so is refunded: the same reservation each time.
	remaining := func() int64 {
		resp, body := g.postTo(t, "/v1/embeddings", embeddingsBody, "X-Team", who, "X-Mode", "fail")
		if resp.StatusCode != 502 {
			t.Fatalf("probe: %d %s, want 502", resp.StatusCode, body)
		}
		_, rem, _ := rateHeaders(t, resp, "Tokens")
		return rem
	}
	for _, tt := range []struct {
		path, body string
		used       int64
	}{
		{"/v1/embeddings", `{"model":"m","input":["a","b"]}`, 4},
		{"/v1/responses", responsesBody, 7},
		{"/v1/responses", responsesStreamBody, 7},
		{"/v1/completions", completionsBody, 5},
	} {
		before := remaining()
		id := fmt.Sprintf("ep-limit-%d", before)
		if resp, body := g.postTo(t, tt.path, tt.body, "X-Team", who, "X-Request-ID", id); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s, want 200", tt.path, resp.StatusCode, body)
		}
		g.waitLog(t, "handled request", id) // the request has ended: its usage is reconciled
		if used := before - remaining(); used != tt.used {
			t.Errorf("%s %s charged %d tokens, want %d", tt.path, tt.body, used, tt.used)
		}
	}
}

// TestModelByID: GET /v1/models/{model} answers the one model, ids with
// a slash included, or a 404 model_not_found.
func TestModelByID(t *testing.T) {
	be := newFakeBackend(t, endpointsBackend(vLLM))
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
		backend %s {
			models org/model-7b llama
			alias gpt-4o llama
		}
	}`, be.URL))
	for _, id := range []string{"org/model-7b", "llama", "gpt-4o"} {
		resp, body := do(t, mustRequest("GET", g.URL+"/v1/models/"+id))
		var m struct{ ID, Object, OwnedBy string }
		if err := json.Unmarshal([]byte(body), &m); err != nil || resp.StatusCode != 200 || m.ID != id || m.Object != "model" ||
			resp.Header.Get("X-Request-ID") == "" {
			t.Errorf("%s: %d %s, want 200 with that model and an X-Request-ID", id, resp.StatusCode, body)
		}
	}
	for _, id := range []string{"gpt-5", "org/other", "org"} {
		resp, body := do(t, mustRequest("GET", g.URL+"/v1/models/"+id))
		if e := apiError(t, body); resp.StatusCode != 404 || e["code"] != "model_not_found" || resp.Header.Get("X-Request-ID") == "" {
			t.Errorf("%s: %d %s, want 404 model_not_found with an X-Request-ID", id, resp.StatusCode, body)
		}
	}
	client := sdkClient(g)
	m, err := client.Models.Get(context.Background(), "org/model-7b")
	if err != nil || m.ID != "org/model-7b" {
		t.Fatalf("SDK: %+v %v, want model org/model-7b", m, err)
	}
	_, err = client.Models.Get(context.Background(), "nope")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("SDK error %v, want a 404 model_not_found API error", err)
	}

	echo := newGateway(t, `chat_gateway`)
	if resp, body := do(t, mustRequest("GET", echo.URL+"/v1/models/echo")); resp.StatusCode != 200 || !strings.Contains(body, `"id":"echo"`) {
		t.Fatalf("echo: %d %s, want 200 with model echo", resp.StatusCode, body)
	}
	// Echo mode answers chat for any model: /v1/models/{id} agrees, but
	// for the models a key may not use.
	if resp, body := do(t, mustRequest("GET", echo.URL+"/v1/models/gpt-4o")); resp.StatusCode != 200 || !strings.Contains(body, `"id":"gpt-4o"`) {
		t.Fatalf("echo, any model: %d %s, want 200 with model gpt-4o", resp.StatusCode, body)
	}
	keyed := newGateway(t, fmt.Sprintf("chat_gateway {\n auth {\n key %s {\n models gpt-4o\n }\n }\n}", keys.Hash(aliceKey)))
	for id, want := range map[string]int{"gpt-4o": 200, "llama": 404} {
		resp, body := do(t, mustRequest("GET", keyed.URL+"/v1/models/"+id, "Authorization", "Bearer "+aliceKey))
		if resp.StatusCode != want {
			t.Errorf("echo with a key for gpt-4o, model %s: %d %s, want %d", id, resp.StatusCode, body, want)
		}
	}
}
