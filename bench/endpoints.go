package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// The embeddings reply the mock sends: vectors of floats, about 40 MB
// of JSON, as a RAG pipeline gets for a batch of chunks.
const (
	embeddingVectors    = 1000
	embeddingDimensions = 4096
	embeddingClients    = 4 // concurrent clients of the embeddings row
)

// responsesDeltas is the number of output_text.delta events of a
// streamed Response the mock sends.
const responsesDeltas = 100

// responsesEvents is the number of events of a streamed Response of n
// deltas: response.created, the deltas and response.completed.
func responsesEvents(n int) int { return n + 2 }

// Rows of the embeddings and responses figures.
var (
	embeddingsRow = fmt.Sprintf("%d × %d floats, %d clients", embeddingVectors, embeddingDimensions, embeddingClients)
	responsesRow  = fmt.Sprintf("%d-event streams, 8 clients", responsesEvents(responsesDeltas))
)

// embeddingsReply is an embeddings list of vectors of dims floats (in
// [-0.1, 0.1), 7 decimals, from a fixed pseudo-random sequence), with
// its usage, as OpenAI and vLLM answer.
func embeddingsReply(vectors, dims int) []byte {
	b := make([]byte, 0, vectors*(dims*12+64)+128)
	b = append(b, `{"object":"list","data":[`...)
	x := uint64(1)
	for i := range vectors {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for j := range dims {
			if j > 0 {
				b = append(b, ',')
			}
			x = x*6364136223846793005 + 1442695040888963407 // Knuth's MMIX LCG
			b = strconv.AppendFloat(b, (float64(x>>11)/(1<<53)-0.5)/5, 'f', 7, 64)
		}
		b = append(b, "]}"...)
	}
	return fmt.Appendf(b, `],"model":"m","usage":{"prompt_tokens":%d,"total_tokens":%d}}`, vectors, vectors)
}

// embeddingsBody is an embeddings request of n short inputs.
func embeddingsBody(n int) []byte {
	b := []byte(`{"model":"m","input":[`)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `"chunk %d of the document"`, i)
	}
	return append(b, "]}"...)
}

// responsesStream is the events of a streamed Response of n deltas,
// each framed and ready to write: response.created, n
// response.output_text.delta, then response.completed with the full
// text and the usage.
func responsesStream(n int) [][]byte {
	const response = `{"id":"resp_bench","object":"response","created_at":1,"status":%q,"model":"m","output":%s,"usage":%s}`
	event := func(typ, data string) []byte { return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", typ, data) }
	events := [][]byte{event("response.created",
		fmt.Sprintf(`{"type":"response.created","sequence_number":0,"response":`+response+`}`, "in_progress", "[]", "null"))}
	var text strings.Builder
	for i := range n {
		delta := fmt.Sprintf("tok%d ", i)
		text.WriteString(delta)
		events = append(events, event("response.output_text.delta",
			fmt.Sprintf(`{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_bench","output_index":0,"content_index":0,"delta":%q}`, i+1, delta)))
	}
	output := fmt.Sprintf(`[{"type":"message","id":"msg_bench","status":"completed","role":"assistant","content":[{"type":"output_text","text":%q,"annotations":[]}]}]`, text.String())
	usage := fmt.Sprintf(`{"input_tokens":10,"output_tokens":%d,"total_tokens":%d}`, n, 10+n)
	return append(events, event("response.completed",
		fmt.Sprintf(`{"type":"response.completed","sequence_number":%d,"response":`+response+`}`, n+1, "completed", output, usage)))
}

// endpointMock answers POST /v1/embeddings with reply and POST
// /v1/responses with events (written and flushed one by one, in a
// burst), and passes everything else to next.
func endpointMock(reply []byte, events [][]byte, next http.Handler) http.Handler {
	length := strconv.Itoa(len(reply))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		switch r.URL.Path {
		case "/v1/embeddings":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", length)
			w.Write(reply)
		case "/v1/responses":
			rc := http.NewResponseController(w)
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			for _, e := range events {
				if _, err := w.Write(e); err != nil || rc.Flush() != nil {
					return
				}
			}
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// endpoints: CPU per 40 MB embeddings reply and the peak memory it
// takes, and CPU per event of streamed Responses, through
// reverse_proxy and chat_gateway.
func (h *harness) endpoints(ctx context.Context) error {
	cpu := h.results.figure("embeddings_cpu", "CPU per embeddings reply (about 40 MB of JSON)", "µs")
	peak := h.results.figure("embeddings_rss", "Peak RSS during an embeddings round", "MiB")
	copies := h.results.figure("embeddings_copies", "Copies of each embeddings reply in flight chat_gateway holds beyond reverse_proxy ((peak RSS difference) / (bytes of the replies in flight))", "")
	events := h.results.figure("responses_cpu_per_event", "CPU per event of streamed Responses (sent in a burst)", "µs")
	embed := embeddingsBody(embeddingVectors)
	stream := fmt.Appendf(nil, `{"model":"m","stream":true,"input":"say %d words"}`, responsesDeltas)
	size, err := h.embeddingsSize(ctx, embed)
	if err != nil {
		return err
	}
	targets := h.caddies[:2]
	for r := range h.rounds {
		peaks := map[string]float64{}
		for _, t := range targets {
			et := *t
			et.path = "/v1/embeddings"
			if err := resetPeakRSS(t.pid); err != nil {
				return err
			}
			res := closedLoop(ctx, &et, embeddingClients, 2*h.round, embed, "")
			hwm, err := peakRSSKiB(t.pid)
			if err != nil {
				return err
			}
			if res.requests > 0 {
				cpu.add(embeddingsRow, t.name, micros(res.cpuPerRequest()))
				peaks[t.name] = float64(hwm) / 1024
				peak.add(embeddingsRow, t.name, peaks[t.name])
			} else {
				why := fmt.Sprintf("no reply completed in the round (%d failed; %s)", res.errors, answer(ctx, &et, embed))
				for _, f := range []string{"embeddings_cpu", "embeddings_rss", "embeddings_copies"} {
					h.results.fail(f, t.name, why)
				}
			}

			rt := *t
			rt.path = "/v1/responses"
			if res := closedLoop(ctx, &rt, 8, h.round, stream, ""); res.requests > 0 {
				events.add(responsesRow, t.name, micros(res.cpuPerRequest())/float64(responsesEvents(responsesDeltas)))
			} else {
				h.results.fail("responses_cpu_per_event", t.name, fmt.Sprintf("every stream failed (%d errors; %s)", res.errors, answer(ctx, &rt, stream)))
			}
		}
		if len(peaks) == len(targets) {
			copies.add(embeddingsRow, "chat_gateway", embeddingsCopies(peaks["chat_gateway"], peaks["reverse_proxy"], size))
		}
		log.Printf("embeddings and responses: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// answer is the status and error code (or the first bytes) of t's reply
// to body, to say why a target fails.
func answer(ctx context.Context, t *target, body []byte) string {
	resp, err := http.DefaultClient.Do(t.request(ctx, body, ""))
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
		return fmt.Sprintf("it answers %d %s", resp.StatusCode, e.Error.Code)
	}
	return fmt.Sprintf("it answers %d %.80q", resp.StatusCode, b)
}

// embeddingsSize is the length of the mock's embeddings reply, asked of
// the mock directly.
func (h *harness) embeddingsSize(ctx context.Context, body []byte) (int, error) {
	t := *h.mock
	t.path = "/v1/embeddings"
	resp, err := http.DefaultClient.Do(t.request(ctx, body, ""))
	if err != nil {
		return 0, fmt.Errorf("mock embeddings: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength <= 0 {
		return 0, fmt.Errorf("mock embeddings: status %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	return int(resp.ContentLength), nil
}

// resetPeakRSS resets the peak resident set size (VmHWM) of the process
// pid to its current RSS.
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// peakRSSKiB reads the peak resident set size (VmHWM) of the process
// pid since it started or since resetPeakRSS.
func peakRSSKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmHWM:")); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(v)), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// embeddingsCopies is how many copies of each embeddings reply in
// flight chat_gateway holds beyond what reverse_proxy holds: the
// difference of their peak RSS (MiB) over the bytes of the replies in
// flight.
func embeddingsCopies(gatewayMiB, proxyMiB float64, replyBytes int) float64 {
	return (gatewayMiB - proxyMiB) * (1 << 20) / float64(embeddingClients*replyBytes)
}
