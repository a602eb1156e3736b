package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	sdk "github.com/openai/openai-go/v3"
)

func TestEmbeddingsParse(t *testing.T) {
	req, e := Embeddings.Parse([]byte(`{"model":"e5","input":["ab","cd"],"encoding_format":"base64","dimensions":8,"stream":true}`))
	if e != nil || req.Model != "e5" || req.PromptBytes != 4 || !req.base64 || req.Stream {
		t.Fatalf("%+v %v; want e5, 4 prompt bytes, base64, no stream", req, e)
	}
	if req, e = Embeddings.Parse([]byte(`{"input":[[1,2,3]],"encoding_format":"float"}`)); e != nil || req.PromptBytes != 12 || req.base64 {
		t.Fatalf("%+v %v; want 12 prompt bytes, floats", req, e)
	}
	tests := []struct{ body, param, code string }{
		{`{}`, "input", "missing_required_parameter"},
		{`{"input":null}`, "input", "missing_required_parameter"},
		{`{"input":""}`, "input", "empty_string"},
		{`{"input":[]}`, "input", "empty_array"},
		{`{"input":7}`, "input", "invalid_type"},
		{`{"input":[{"text":"x"}]}`, "input", "invalid_type"},
		{`{"input":["x",[1]]}`, "input", "invalid_type"},
		{`{"input":"x","encoding_format":"binary"}`, "encoding_format", "invalid_value"},
		{`{"input":"x","encoding_format":1}`, "encoding_format", "invalid_value"},
		{`{"input":"x","model":["m"]}`, "model", "invalid_type"},
		{`{"input":"x"} x`, "", "invalid_json"},
	}
	for _, tt := range tests {
		_, e := Embeddings.Parse([]byte(tt.body))
		if e == nil {
			t.Errorf("%s: accepted", tt.body)
			continue
		}
		if e.Status != 400 || e.Param != tt.param || e.Code != tt.code {
			t.Errorf("%s: got param=%q code=%q (%s), want 400 param=%q code=%q", tt.body, e.Param, e.Code, e.Message, tt.param, tt.code)
		}
	}
}

func TestEmbeddingsNormalize(t *testing.T) {
	m := Meta{ID: "req-1", Model: "asked", PromptBytes: 40}
	tests := []struct {
		name, in, want string
		usage          Usage
	}{
		{"complete: untouched",
			`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2e-3]}],"model":"e5","usage":{"prompt_tokens":3,"total_tokens":3}}`,
			`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2e-3]}],"model":"e5","usage":{"prompt_tokens":3,"total_tokens":3}}`,
			Usage{PromptTokens: 3}},
		{"no usage, no model (llama.cpp's key order, base64)",
			`{"data":[{"embedding":"AACAPw==","index":0,"object":"embedding"}],"object":"list"}`,
			`{"data":[{"embedding":"AACAPw==","index":0,"object":"embedding"}],"object":"list","model":"asked","usage":{"prompt_tokens":10,"total_tokens":10}}`,
			Usage{PromptTokens: 10, Estimated: true}},
		{"usage without total, model null, spaces kept",
			"{ \"model\" : null,\n \"usage\": {\"prompt_tokens\": 4, \"x\":1},\"data\": [ {\"embedding\": [ 1 ]} ] }\n",
			"{ \"model\" : \"asked\",\n \"usage\": {\"prompt_tokens\":4,\"x\":1,\"total_tokens\":4},\"data\": [ {\"embedding\": [ 1 ]} ] }\n",
			Usage{PromptTokens: 4}},
		{"only total; usage before model",
			`{"data":[],"usage":{"total_tokens":6},"model":""}`,
			`{"data":[],"usage":{"total_tokens":6,"prompt_tokens":6},"model":"asked"}`,
			Usage{PromptTokens: 6}},
		{"usage null",
			`{"data":[[1,2]],"model":"e5","usage":null}`,
			`{"data":[[1,2]],"model":"e5","usage":{"prompt_tokens":10,"total_tokens":10}}`,
			Usage{PromptTokens: 10, Estimated: true}},
	}
	for _, tt := range tests {
		for _, dst := range []string{"", "x"} {
			out, rep, err := Embeddings.Normalize([]byte(dst), []byte(tt.in), m)
			if err != nil || string(out) != dst+tt.want || rep.Usage != tt.usage {
				t.Errorf("%s (dst %q):\n got %s %+v %v\nwant %s", tt.name, dst, out, rep, err, tt.want)
			}
		}
		if out, _, err := Embeddings.Normalize(nil, []byte(tt.in), m); err != nil || string(out) != tt.want {
			t.Errorf("%s, nil dst: %s %v; want %s", tt.name, out, err, tt.want)
		}
		var r sdk.CreateEmbeddingResponse
		decodeInto(t, []byte(tt.want), &r)
	}
	for _, bad := range []string{``, `[]`, `{"object":"list"}`, `{"data":{}}`, `{"data":[1,2}`, `{"data":[1,2]`, `{"data":["x]}`,
		`{"data":[],"model":}`, `{"data":[]} x`, `{"data":[[1,2]}]}`} {
		if _, _, err := Embeddings.Normalize(nil, []byte(bad), m); !errors.Is(err, ErrInvalidEmbeddings) {
			t.Errorf("%q: %v, want ErrInvalidEmbeddings", bad, err)
		}
	}
}

// TestEmbeddingsSDK reads echo mode's vectors and a backend's reply
// with the official SDK's Embeddings.New, as floats and as base64.
func TestEmbeddingsSDK(t *testing.T) {
	client := sdkClient(serveEndpoint(t, Embeddings, nil))
	input := sdk.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"alpha", "beta", "alpha"}}
	floats, err := client.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5", Input: input})
	if err != nil {
		t.Fatal(err)
	}
	b64, err := client.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5", Input: input, EncodingFormat: sdk.EmbeddingNewParamsEncodingFormatBase64})
	if err != nil {
		t.Fatal(err)
	}
	// 14 bytes of input: 4 tokens estimated.
	if len(floats.Data) != 3 || floats.Model != "e5" || floats.Usage.PromptTokens != 4 || floats.Usage.TotalTokens != 4 || len(b64.Data) != 3 {
		t.Fatalf("%d vectors, model %q, usage %+v; want 3 both ways, e5, 4 tokens", len(floats.Data), floats.Model, floats.Usage)
	}
	for i, d := range floats.Data {
		var norm float64
		for _, x := range d.Embedding {
			norm += x * x
		}
		if len(d.Embedding) != echoDimensions || d.Index != int64(i) || math.Abs(norm-1) > 1e-5 {
			t.Fatalf("vector %d: %d dimensions, norm %v; want %d, norm 1, index %d", i, len(d.Embedding), norm, echoDimensions, i)
		}
		for j, x := range d.Embedding { // the same float32 values both ways
			if float32(x) != float32(b64.Data[i].Embedding[j]) {
				t.Fatalf("vector %d [%d]: float %v, base64 %v; want the same float32", i, j, x, b64.Data[i].Embedding[j])
			}
		}
	}
	if fmt.Sprint(floats.Data[0].Embedding) != fmt.Sprint(floats.Data[2].Embedding) || fmt.Sprint(floats.Data[0].Embedding) == fmt.Sprint(floats.Data[1].Embedding) {
		t.Fatal("equal inputs must give equal vectors, different inputs different ones")
	}
	tokens, err := client.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5", Input: sdk.EmbeddingNewParamsInputUnion{OfArrayOfTokens: []int64{1, 2}}})
	if err != nil || len(tokens.Data) != 1 || tokens.Usage.PromptTokens != 2 {
		t.Fatalf("%v: usage %+v; want 1 vector, 2 prompt tokens", err, tokens.Usage)
	}

	backend := sdkClient(serveEndpoint(t, Embeddings, func(*Request) backendReply {
		return backendReply{json: `{"data":[{"embedding":[0.5,0.25],"index":0,"object":"embedding"}],"object":"list"}`}
	}))
	r, err := backend.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5", Input: sdk.EmbeddingNewParamsInputUnion{OfString: sdk.String("12345678")}})
	if err != nil || r.Model != "e5" || r.Usage.PromptTokens != 2 || r.Usage.TotalTokens != 2 || fmt.Sprint(r.Data[0].Embedding) != "[0.5 0.25]" {
		t.Fatalf("%+v %v; want e5, 2 tokens, [0.5 0.25]", r, err)
	}
	_, err = backend.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5"})
	var apiErr *sdk.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "input" {
		t.Fatalf("%v, want a 400 on input", err)
	}
}

// FuzzEmbeddingsReply feeds a reply to the streaming normalizer in
// chunks split anywhere: it gives what Normalize gives for the reply in
// one piece, fails where Normalize fails, and for a valid reply writes
// valid JSON with usage counts and a model, data kept as sent.
func FuzzEmbeddingsReply(f *testing.F) {
	f.Add([]byte(`{"data":[{"embedding":[0.1,-2e-3]}],"model":"e5","usage":{"prompt_tokens":3,"total_tokens":3}}`), []byte{5, 1, 30})
	f.Add([]byte(`{"data":[{"embedding":"AACAPw=="}],"object":"list"}`), []byte{1})
	f.Add([]byte("{ \"model\" : null, \"usage\": {\"prompt_tokens\": 4},\"data\": [ ] }"), []byte{3, 7})
	f.Add([]byte(`{"usage":{"total_tokens":6},"data":[[{"a":"]\u00e9\\"}]],"model":""}`), []byte{2, 9, 1})
	f.Add([]byte(`{"data":[],"x":1,"y":true,"usage":7} `), []byte{4})
	f.Fuzz(func(t *testing.T, body, splits []byte) {
		m := Meta{ID: "r", Model: "m", PromptBytes: 8}
		whole, rep, err := Embeddings.Normalize([]byte{}, body, m)
		var out bytes.Buffer
		chunked, rep2, err2 := feedChunks(&out, body, m, splits)
		if (err == nil) != (err2 == nil) || err == nil && (!bytes.Equal(whole, chunked) || rep != rep2) {
			t.Fatalf("%q in chunks %v: whole %s (%v), chunked %s (%v); want the same", body, splits, whole, err, chunked, err2)
		}
		if err != nil {
			if json.Valid(body) && bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) && bytes.HasPrefix(bytes.TrimSpace(Member(body, "data")), []byte("[")) {
				t.Fatalf("valid reply %s refused: %v", body, err)
			}
			return
		}
		if !json.Valid(body) {
			return // only data is not fully checked; it passes as sent
		}
		// model and usage are read by their exact keys, as clients read
		// them: encoding/json would also take "Model" or "Usage" for them.
		var model string
		var u struct {
			PromptTokens *int64 `json:"prompt_tokens"`
			TotalTokens  *int64 `json:"total_tokens"`
		}
		if !json.Valid(whole) || json.Unmarshal(Member(whole, "model"), &model) != nil || json.Unmarshal(Member(whole, "usage"), &u) != nil ||
			model == "" || u.PromptTokens == nil || u.TotalTokens == nil || *u.PromptTokens != rep.Usage.PromptTokens {
			t.Fatalf("%s gave %s, want valid JSON with a model and usage counts, prompt tokens as reported", body, whole)
		}
		if !bytes.Equal(Member(whole, "data"), Member(body, "data")) {
			t.Fatalf("data changed: %s gave %s", body, whole)
		}
	})
}

// feedChunks feeds body to the embeddings normalizer in chunks of the
// sizes in splits (in turn, 0 standing for 1; the rest in one), and
// returns what it wrote to out, the reply and the first error.
func feedChunks(out *bytes.Buffer, body []byte, m Meta, splits []byte) ([]byte, Reply, error) {
	w := Embeddings.(ReplyStreamer).NewReplyWriter(out, m)
	for k := 0; len(body) > 0; k++ {
		n := len(body)
		if k < len(splits) {
			n = min(n, max(int(splits[k]), 1))
		}
		if _, err := w.Write(body[:n]); err != nil {
			rep, _ := w.Close()
			return out.Bytes(), rep, err
		}
		body = body[n:]
	}
	rep, err := w.Close()
	return out.Bytes(), rep, err
}

// embeddingsReply is a backend's reply of n vectors of dim floats, with
// usage or not.
func embeddingsReply(n, dim int, usage bool) []byte {
	var b bytes.Buffer
	b.WriteString(`{"object":"list","data":[`)
	x := 0.0123456789
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for j := range dim {
			if j > 0 {
				b.WriteByte(',')
			}
			x = math.Mod(x*7.77+0.1234567, 2) - 1
			fmt.Fprintf(&b, "%.8f", x)
		}
		b.WriteString("]}")
	}
	b.WriteString(`],"model":"e5"`)
	if usage {
		b.WriteString(`,"usage":{"prompt_tokens":1000,"total_tokens":1000}`)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// BenchmarkEmbeddingsReply normalizes 1,000 vectors of 4,096 floats
// (about 45 MB of JSON) fed in reverse_proxy's 32 KiB reads, written to
// io.Discard: with usage present, and with usage to add. B/op shows no
// copy of the reply.
func BenchmarkEmbeddingsReply(b *testing.B) {
	for _, usage := range []bool{true, false} {
		body := embeddingsReply(1000, 4096, usage)
		b.Run(fmt.Sprintf("usage=%v", usage), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				w := Embeddings.(ReplyStreamer).NewReplyWriter(io.Discard, Meta{Model: "e5", PromptBytes: 4000})
				for p := body; len(p) > 0; {
					n := min(len(p), 32<<10)
					if _, err := w.Write(p[:n]); err != nil {
						b.Fatal(err)
					}
					p = p[n:]
				}
				if _, err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestEmbeddingsReplyChunks feeds replies to the streaming normalizer
// split at every byte, and one byte at a time: the output is
// Normalize's, and a reply Normalize refuses is refused.
func TestEmbeddingsReplyChunks(t *testing.T) {
	m := Meta{Model: "asked", PromptBytes: 40}
	replies := []string{
		`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2e-3]}],"model":"e5","usage":{"prompt_tokens":3,"total_tokens":3}}`,
		`{"data":[{"embedding":"AACAPw==","index":0,"object":"embedding"}],"object":"list"}`,
		"{ \"model\" : null,\n \"usage\": {\"prompt_tokens\": 4, \"x\":1},\"data\": [ {\"embedding\": [ 1 ]} ] }\n",
		`{"data":[],"usage":{"total_tokens":6},"model":""}`,
		`{"data":[[1,2]],"model":"e5","usage":null}`,
		`{"usage":{"prompt_tokens":2,"total_tokens":2,"d":{"a":[1,"}"]}},"data":[{"s":"\u00e9\"\\]{"}],"n":-1.5e3,"t":true,"f":false,"z":null} ` + "\t\r\n",
		`{"data":[1],"usage":{"prompt_tokens":1},"usage":{"total_tokens":9}}`, // each fixed; the last counts
		// Refused:
		``, ` `, `[]`, `{}`, `{"object":"list"}`, `{"data":{}}`, `{"data":[1,2}`, `{"data":[1,2]`, `{"data":["x]}`,
		`{"data":[],"model":}`, `{"data":[]} x`, `{"data":[[1,2]}]}`, `{"data":[],"n":1x}`, `{"data":[],"n":tru}`,
		`{"data":[],"n":01}`, `{"data":[] "n":1}`, `{"data":[],}`, `{"data":["\x"]}`, `{"data":["\u12g4"]}`,
		"{\"data\":[\"\x01\"]}", `{"data":[],"s":"\u12"}`, `{"da` + "\n" + `ta":[]}`, `{"data":[]}}`, `{"data"[]}`,
	}
	for _, in := range replies {
		whole, rep, err := Embeddings.Normalize(nil, []byte(in), m)
		for at := 0; at <= len(in); at++ {
			for _, splits := range [][]byte{{byte(at)}, bytes.Repeat([]byte{1}, len(in))} {
				var out bytes.Buffer
				got, rep2, err2 := feedChunks(&out, []byte(in), m, splits)
				if (err == nil) != (err2 == nil) || err == nil && (!bytes.Equal(got, whole) || rep != rep2) {
					t.Fatalf("%q split %v:\n got %s %+v %v\nwant %s %+v %v", in, splits, got, rep2, err2, whole, rep, err)
				}
				if err2 != nil && !errors.Is(err2, ErrInvalidEmbeddings) {
					t.Fatalf("%q: %v, want ErrInvalidEmbeddings", in, err2)
				}
			}
		}
	}
}

// TestEmbeddingsReplyWrites: the output goes out as the input comes,
// the data array as it arrives; a chunk found invalid writes nothing;
// the end (brace, added usage and model) waits for Close.
func TestEmbeddingsReplyWrites(t *testing.T) {
	var out bytes.Buffer
	w := Embeddings.(ReplyStreamer).NewReplyWriter(&out, Meta{Model: "m", PromptBytes: 8})
	steps := []struct{ in, out string }{
		{`{"object":"li`, `{"object":`}, // the value held until complete
		{`st","data":[[0.5,`, `{"object":"list","data":[[0.5,`},
		{`1]]`, `{"object":"list","data":[[0.5,1]]`},
		{`}`, `{"object":"list","data":[[0.5,1]]`}, // the brace waits for the end
		{" \n", `{"object":"list","data":[[0.5,1]]`},
	}
	for _, s := range steps {
		if _, err := w.Write([]byte(s.in)); err != nil || out.String() != s.out {
			t.Fatalf("after %q: %s %v; want %s", s.in, out.String(), err, s.out)
		}
	}
	rep, err := w.Close()
	if want := `{"object":"list","data":[[0.5,1]],"model":"m","usage":{"prompt_tokens":2,"total_tokens":2}}` + " \n"; err != nil || out.String() != want || rep.Usage != (Usage{PromptTokens: 2, Estimated: true}) {
		t.Fatalf("closed: %s %+v %v; want %s, estimated usage 2", out.String(), rep, err, want)
	}

	out.Reset()
	w = Embeddings.(ReplyStreamer).NewReplyWriter(&out, Meta{Model: "m"})
	if _, err := w.Write([]byte(`{"data":[[1,2],`)); err != nil || out.String() != `{"data":[[1,2],` {
		t.Fatalf(`%s %v; want {"data":[[1,2],`, out.String(), err)
	}
	if _, err := w.Write([]byte(`[3]],"usage":{"prompt_tokens":5},"x":}`)); !errors.Is(err, ErrInvalidEmbeddings) || out.String() != `{"data":[[1,2],` {
		t.Fatalf("invalid chunk: wrote %s, %v; want nothing more, ErrInvalidEmbeddings", out.String(), err)
	}
	if rep, err := w.Close(); !errors.Is(err, ErrInvalidEmbeddings) || rep.Usage.PromptTokens != 5 || out.String() != `{"data":[[1,2],` {
		t.Fatalf("closed after a failure: %s %+v %v; want nothing more, 5 prompt tokens, ErrInvalidEmbeddings", out.String(), rep, err)
	}
}

// TestEmbeddingsReplyBounds: a huge vector passes; a huge member other
// than data is refused rather than held.
func TestEmbeddingsReplyBounds(t *testing.T) {
	big := `"` + strings.Repeat("A", maxEmbeddingsMember) + `"`
	if _, _, err := Embeddings.Normalize(nil, []byte(`{"data":[`+big+`]}`), Meta{}); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{`{"data":[],"x":` + big + `}`, `{"data":[],` + big + `:1}`, `{"data":[]}` + strings.Repeat(" ", maxEmbeddingsMember)} {
		if _, _, err := Embeddings.Normalize(nil, []byte(in), Meta{}); !errors.Is(err, errMemberTooLarge) {
			t.Fatalf("%.30q: %v, want errMemberTooLarge", in, err)
		}
	}
}
