package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"

	sdk "github.com/openai/openai-go/v3"
)

func TestEmbeddingsParse(t *testing.T) {
	req, e := Embeddings.Parse([]byte(`{"model":"e5","input":["ab","cd"],"encoding_format":"base64","dimensions":8,"stream":true}`))
	if e != nil || req.Model != "e5" || req.PromptBytes != 4 || !req.base64 || req.Stream {
		t.Fatalf("%+v %v", req, e)
	}
	if req, e = Embeddings.Parse([]byte(`{"input":[[1,2,3]],"encoding_format":"float"}`)); e != nil || req.PromptBytes != 12 || req.base64 {
		t.Fatalf("%+v %v", req, e)
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
			t.Errorf("%s: got param=%q code=%q (%s)", tt.body, e.Param, e.Code, e.Message)
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
		// In place, with and without room to grow; and appended to dst.
		for _, room := range []int{0, 256} {
			body := append(make([]byte, 0, len(tt.in)+room), tt.in...)
			out, rep, err := Embeddings.Normalize(nil, body, m)
			if err != nil || string(out) != tt.want || rep.Usage != tt.usage {
				t.Errorf("%s (room %d):\n got %s %+v %v\nwant %s", tt.name, room, out, rep, err, tt.want)
			}
			if room > 0 && &out[0] != &body[0] {
				t.Errorf("%s: copied although it fitted", tt.name)
			}
		}
		out, _, err := Embeddings.Normalize([]byte("x"), []byte(tt.in), m)
		if err != nil || string(out) != "x"+tt.want {
			t.Errorf("%s, appended: %s %v", tt.name, out, err)
		}
		var r sdk.CreateEmbeddingResponse
		decodeInto(t, []byte(tt.want), &r)
	}
	for _, bad := range []string{``, `[]`, `{"object":"list"}`, `{"data":{}}`, `{"data":[1,2}`, `{"data":[1,2]`, `{"data":["x]}`,
		`{"data":[],"model":}`, `{"data":[]} x`, `{"data":[[1,2]}]}`} {
		if _, _, err := Embeddings.Normalize(nil, []byte(bad), m); !errors.Is(err, ErrInvalidEmbeddings) {
			t.Errorf("%q: %v", bad, err)
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
		t.Fatalf("%d vectors, model %q, usage %+v", len(floats.Data), floats.Model, floats.Usage)
	}
	for i, d := range floats.Data {
		var norm float64
		for _, x := range d.Embedding {
			norm += x * x
		}
		if len(d.Embedding) != echoDimensions || d.Index != int64(i) || math.Abs(norm-1) > 1e-5 {
			t.Fatalf("vector %d: %d dimensions, norm %v", i, len(d.Embedding), norm)
		}
		for j, x := range d.Embedding { // the same float32 values both ways
			if float32(x) != float32(b64.Data[i].Embedding[j]) {
				t.Fatalf("vector %d [%d]: float %v, base64 %v", i, j, x, b64.Data[i].Embedding[j])
			}
		}
	}
	if fmt.Sprint(floats.Data[0].Embedding) != fmt.Sprint(floats.Data[2].Embedding) || fmt.Sprint(floats.Data[0].Embedding) == fmt.Sprint(floats.Data[1].Embedding) {
		t.Fatal("equal inputs must give equal vectors, different inputs different ones")
	}
	tokens, err := client.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5", Input: sdk.EmbeddingNewParamsInputUnion{OfArrayOfTokens: []int64{1, 2}}})
	if err != nil || len(tokens.Data) != 1 || tokens.Usage.PromptTokens != 2 {
		t.Fatalf("%v: usage %+v", err, tokens.Usage)
	}

	backend := sdkClient(serveEndpoint(t, Embeddings, func(*Request) backendReply {
		return backendReply{json: `{"data":[{"embedding":[0.5,0.25],"index":0,"object":"embedding"}],"object":"list"}`}
	}))
	r, err := backend.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5", Input: sdk.EmbeddingNewParamsInputUnion{OfString: sdk.String("12345678")}})
	if err != nil || r.Model != "e5" || r.Usage.PromptTokens != 2 || r.Usage.TotalTokens != 2 || fmt.Sprint(r.Data[0].Embedding) != "[0.5 0.25]" {
		t.Fatalf("%+v %v", r, err)
	}
	_, err = backend.Embeddings.New(t.Context(), sdk.EmbeddingNewParams{Model: "e5"})
	var apiErr *sdk.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "input" {
		t.Fatal(err)
	}
}

// FuzzEmbeddingsNormalize checks the in-place editor: for a valid reply
// it gives valid JSON with usage counts and a model, the same in place
// as appended, and every byte it does not own kept.
func FuzzEmbeddingsNormalize(f *testing.F) {
	f.Add([]byte(`{"data":[{"embedding":[0.1,-2e-3]}],"model":"e5","usage":{"prompt_tokens":3,"total_tokens":3}}`))
	f.Add([]byte(`{"data":[{"embedding":"AACAPw=="}],"object":"list"}`))
	f.Add([]byte("{ \"model\" : null, \"usage\": {\"prompt_tokens\": 4},\"data\": [ ] }"))
	f.Add([]byte(`{"usage":{"total_tokens":6},"data":[[{"a":"]"}]],"model":""}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m := Meta{ID: "r", Model: "m", PromptBytes: 8}
		appended, rep, err := Embeddings.Normalize([]byte{}, body, m)
		inPlace, rep2, err2 := Embeddings.Normalize(nil, bytes.Clone(body), m)
		if (err == nil) != (err2 == nil) || err == nil && (!bytes.Equal(appended, inPlace) || rep != rep2) {
			t.Fatalf("%s: appended %s (%v), in place %s (%v)", body, appended, err, inPlace, err2)
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
		var r struct {
			Model *string
			Usage struct{ PromptTokens, TotalTokens *int64 } `json:"usage"`
		}
		var u struct {
			PromptTokens *int64 `json:"prompt_tokens"`
			TotalTokens  *int64 `json:"total_tokens"`
		}
		if !json.Valid(inPlace) || json.Unmarshal(inPlace, &r) != nil || json.Unmarshal(Member(inPlace, "usage"), &u) != nil ||
			r.Model == nil || *r.Model == "" || u.PromptTokens == nil || u.TotalTokens == nil || *u.PromptTokens != rep.Usage.PromptTokens {
			t.Fatalf("%s gave %s", body, inPlace)
		}
		if !bytes.Equal(Member(inPlace, "data"), Member(body, "data")) {
			t.Fatalf("data changed: %s gave %s", body, inPlace)
		}
	})
}

// embeddingsReply is a backend's reply of n vectors of dim floats, with
// room to grow by room bytes.
func embeddingsReply(n, dim int, usage bool, room int) []byte {
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
	return append(make([]byte, 0, b.Len()+room), b.Bytes()...)
}

// BenchmarkEmbeddingsNormalize normalizes 1,000 vectors of 4,096 floats
// (about 45 MB of JSON) in place: with usage present, and with usage to
// add (in the room the caller left). B/op shows no copy of the reply.
func BenchmarkEmbeddingsNormalize(b *testing.B) {
	for _, usage := range []bool{true, false} {
		body := embeddingsReply(1000, 4096, usage, 256)
		b.Run(fmt.Sprintf("usage=%v", usage), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				body[len(body)-1] = '}' // where the last run put its usage
				out, _, err := Embeddings.Normalize(nil, body[:len(body):cap(body)], Meta{Model: "e5", PromptBytes: 4000})
				if err != nil || &out[0] != &body[0] {
					b.Fatal(err)
				}
			}
		})
	}
}
