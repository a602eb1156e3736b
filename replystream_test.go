package chatgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// bigEmbeddings is a backend's embeddings reply of n vectors of dim
// floats, without usage or model.
func bigEmbeddings(n, dim int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"object":"list","data":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for j := range dim {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatFloat(float64(i*dim+j)/1e7-0.05, 'f', 8, 64))
		}
		b.WriteString("]}")
	}
	b.WriteString("]}")
	return b.Bytes()
}

// postEmbeddings sends an embeddings request of a 400-byte input.
func postEmbeddings(t *testing.T, g *gateway, id string) (*http.Response, []byte, error) {
	t.Helper()
	req := g.request(`{"model":"m","input":"`+strings.Repeat("a", 400)+`"}`, "X-Request-ID", id)
	req.URL.Path = "/v1/embeddings"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// TestEmbeddingsStreamed: a large embeddings reply goes to the client
// as the backend sent it, chunked, with usage and model added at its
// end, the backend's rate-limit headers and Server-Timing as a trailer.
func TestEmbeddingsStreamed(t *testing.T) {
	reply := bigEmbeddings(500, 1024) // about 6 MB
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(reply)))
		w.Header().Set("X-Ratelimit-Remaining-Requests", "7")
		w.WriteHeader(200)
		_, _ = w.Write(reply)
	})
	g := newGateway(t, "chat_gateway "+be.URL)
	resp, body, err := postEmbeddings(t, g, "emb-big")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v, want 200", resp.StatusCode, err)
	}
	if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" ||
		resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Request-ID") != "emb-big" ||
		resp.Header.Get("X-Ratelimit-Remaining-Requests") != "7" {
		t.Fatalf("length %d, transfer encoding %v, headers %v, want chunked with no length, application/json, X-Request-ID emb-big, X-Ratelimit-Remaining-Requests 7", resp.ContentLength, resp.TransferEncoding, resp.Header)
	}
	if st := resp.Trailer.Get("Server-Timing"); !regexp.MustCompile(`^gateway;dur=[0-9.]+, upstream;dur=[0-9.]+$`).MatchString(st) {
		t.Fatalf("Server-Timing trailer %q, want gateway;dur=N, upstream;dur=N", st)
	}
	want := append(bytes.Clone(reply[:len(reply)-1]), `,"model":"m","usage":{"prompt_tokens":100,"total_tokens":100}}`...)
	if !bytes.Equal(body, want) {
		t.Fatalf("reply of %d bytes, want %d: ...%s", len(body), len(want), body[max(0, len(body)-120):])
	}
	if l := g.waitLog(t, "handled request", "emb-big"); l["outcome"] != "ok" || l["prompt_tokens"] != 100.0 {
		t.Fatalf("access log outcome %v prompt_tokens %v, want ok and 100", l["outcome"], l["prompt_tokens"])
	}

	// The SDK reads it, floats and all.
	client := sdkClient(g)
	e, err := client.Embeddings.New(context.Background(), openai.EmbeddingNewParams{Model: "m", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}})
	if err != nil || len(e.Data) != 500 || len(e.Data[499].Embedding) != 1024 || e.Usage.TotalTokens != 1 || e.Model != "m" {
		t.Fatalf("SDK: %v, want 500 embeddings of 1024 floats, 1 total token, model m", err)
	}
}

// TestEmbeddingsStreamedFailures: a reply refused before anything was
// written (before its first batch) is an error reply; one that fails after its first bytes went
// out aborts the client's connection, so the client sees a failure and
// never a body that looks whole; both are logged as the backend's.
func TestEmbeddingsStreamedFailures(t *testing.T) {
	reply := bigEmbeddings(200, 1024) // about 2.4 MB
	half := reply[:len(reply)/2]      // in the middle of a vector
	if half[len(half)-1] == ']' {
		t.Fatal("the cut is not mid-vector")
	}
	startJSON := func(w http.ResponseWriter, length int) {
		w.Header().Set("Content-Type", "application/json")
		if length > 0 {
			w.Header().Set("Content-Length", strconv.Itoa(length))
		}
		w.WriteHeader(200)
	}
	cases := []struct {
		name    string
		handle  func(w http.ResponseWriter, r *http.Request)
		status  int // 0: the connection is aborted after a 200
		code    string
		outcome string
	}{
		{"cut mid-vector", func(w http.ResponseWriter, r *http.Request) {
			startJSON(w, len(reply))
			_, _ = w.Write(half) // then the connection closes short of its length
		}, 0, "upstream_reply_incomplete", "upstream_error"},
		{"ends incomplete", func(w http.ResponseWriter, r *http.Request) {
			startJSON(w, 0)
			_, _ = w.Write(half) // a chunked reply, ended properly
		}, 0, "invalid_upstream_response", "upstream_error"},
		{"invalid after its first bytes", func(w http.ResponseWriter, r *http.Request) {
			startJSON(w, 0)
			_, _ = w.Write(half)
			http.NewResponseController(w).Flush()
			time.Sleep(50 * time.Millisecond)
			_, _ = w.Write([]byte("]}}}"))
		}, 0, "invalid_upstream_response", "upstream_error"},
		{"silent mid-reply", func(w http.ResponseWriter, r *http.Request) {
			startJSON(w, 0)
			_, _ = w.Write(half)
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}, 0, "idle_timeout", "timeout"},
		{"small reply cut short", func(w http.ResponseWriter, r *http.Request) {
			startJSON(w, 100) // smaller than a batch: nothing went out yet
			_, _ = w.Write([]byte(`{"data":[[0.5,0.25`))
		}, 502, "upstream_reply_incomplete", "upstream_error"},
		{"invalid at once", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, `{"data":[1,2]}}`)
		}, 502, "invalid_upstream_response", "upstream_error"},
		{"an event stream", func(w http.ResponseWriter, r *http.Request) {
			startSSE(w)
			sseEvent(w, `{"data":[]}`)
		}, 502, "invalid_upstream_response", "upstream_error"},
		{"declared larger than the cap", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(maxStreamedReply+1))
			w.WriteHeader(200)
			_, _ = w.Write(half)
		}, 502, "upstream_reply_too_large", "upstream_error"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be := newFakeBackend(t, c.handle)
			g := newGateway(t, fmt.Sprintf("chat_gateway %s {\n idle_timeout 300ms\n}", be.URL))
			id := fmt.Sprintf("emb-fail-%d", i)
			resp, body, err := postEmbeddings(t, g, id)
			switch {
			case c.status == 0 && (resp.StatusCode != 200 || err == nil):
				t.Fatalf("%d, read error %v, %d bytes: want an aborted 200", resp.StatusCode, err, len(body))
			case c.status == 0 && json.Valid(body):
				t.Fatal("the client got a valid body")
			case c.status != 0 && (resp.StatusCode != c.status || err != nil || apiError(t, string(body))["code"] != c.code):
				t.Fatalf("%d %s %v, want %d %s", resp.StatusCode, body, err, c.status, c.code)
			}
			if l := g.waitLog(t, "request failed", id); l["code"] != c.code || l["outcome"] != c.outcome {
				t.Fatalf("log code %v outcome %v, want %s %s", l["code"], l["outcome"], c.code, c.outcome)
			}
			if c.name == "cut mid-vector" {
				client := sdkClient(g)
				_, err := client.Embeddings.New(context.Background(), openai.EmbeddingNewParams{Model: "m", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}})
				if err == nil {
					t.Fatal("the SDK saw no failure")
				}
				var apiErr *openai.Error
				if errors.As(err, &apiErr) {
					t.Fatalf("the SDK saw an API error: %v", err)
				}
			}
		})
	}
}

// A reply normalized as it arrives goes out in batches; an upstream key
// the backend quoted is taken out even where it spans two batches.
func TestReplyStreamRedactsAcrossBatches(t *testing.T) {
	const key = "sk-upstream-secret-key-42"
	text := strings.Repeat("x", 20) + key + strings.Repeat("y", 50) + key + `"}`
	want := strings.ReplaceAll(text, key, "[redacted]")
	for _, piece := range []int{1, 7, 16, 31, len(text)} {
		w := httptest.NewRecorder()
		h := &Handler{upstreamKeys: newUpstreamKeys([]*Backend{{apiKey: key}})}
		x := &exchange{h: h, w: w, r: httptest.NewRequest("POST", "/v1/embeddings", nil), start: time.Now()}
		s := &replyStream{u: &upstreamWriter{x: x}, batch: make([]byte, 0, 32)}
		for rest := text; rest != ""; {
			n := min(piece, len(rest))
			if _, err := s.Write([]byte(rest[:n])); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := s.flush(true); err != nil {
			t.Fatal(err)
		}
		if got := w.Body.String(); got != want {
			t.Errorf("pieces of %d: sent %q, want %q", piece, got, want)
		}
	}
}
