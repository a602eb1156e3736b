package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

var sizes = []struct {
	label string
	bytes int
}{{"100 B", 100}, {"1 KiB", 1 << 10}, {"10 KiB", 10 << 10}, {"100 KiB", 100 << 10}, {"1 MiB", 1 << 20}}

// cpuBySize: CPU per request against message size, 8 workers; the
// configurations alternate within each round.
func (h *harness) cpuBySize(ctx context.Context) error {
	f := h.results.figure("cpu_per_request", "CPU per request by message size (8 concurrent, non-streaming)", "µs")
	for r := range h.rounds {
		for _, s := range sizes {
			body := chatBody(s.bytes, false, "")
			for _, t := range h.caddies {
				res := closedLoop(ctx, t, 8, h.round, body, "")
				f.add(s.label, t.name, micros(res.cpuPerRequest()))
			}
		}
		log.Printf("cpu by size: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// concurrency: CPU per request, throughput and latency of small requests
// at 1 to 128 concurrent clients.
func (h *harness) concurrency(ctx context.Context) error {
	cpu := h.results.figure("cpu_by_concurrency", "CPU per request by concurrency (100 B, non-streaming)", "µs")
	rps := h.results.figure("throughput", "Throughput by concurrency (100 B, non-streaming)", "req/s")
	p50 := h.results.figure("latency_p50", "Latency p50 by concurrency (100 B, non-streaming)", "ms")
	p99 := h.results.figure("latency_p99", "Latency p99 by concurrency (100 B, non-streaming)", "ms")
	body := chatBody(100, false, "")
	for r := range h.rounds {
		for _, w := range []int{1, 8, 32, 128} {
			row := fmt.Sprintf("%d clients", w)
			for _, t := range h.caddies {
				res := closedLoop(ctx, t, w, h.round, body, "")
				cpu.add(row, t.name, micros(res.cpuPerRequest()))
				rps.add(row, t.name, res.rps())
				p50.add(row, t.name, millis(percentile(res.latencies, .5)))
				p99.add(row, t.name, millis(percentile(res.latencies, .99)))
			}
		}
		log.Printf("concurrency: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// fixedRate: latency at 200 requests a second, well below saturation,
// for the mock itself and each configuration in front of it.
func (h *harness) fixedRate(ctx context.Context) error {
	const rate = 200
	p50 := h.results.figure("fixed_rate_p50", fmt.Sprintf("Latency p50 at %d req/s (100 B)", rate), "ms")
	p99 := h.results.figure("fixed_rate_p99", fmt.Sprintf("Latency p99 at %d req/s (100 B)", rate), "ms")
	body := chatBody(100, false, "")
	targets := append([]*target{h.mock}, h.caddies...)
	for r := range h.rounds {
		for _, t := range targets {
			lat := openLoop(ctx, t, time.Second/rate, 2*h.round, body)
			p50.add("latency", t.name, millis(percentile(lat, .5)))
			p99.add("latency", t.name, millis(percentile(lat, .99)))
		}
		log.Printf("fixed rate: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// pooledP99 is the row of the time to first token over every round.
const pooledP99 = "p99, all rounds"

// streamEvents is the number of events of a reply of n content
// events: the role, the contents, the finish and [DONE].
func streamEvents(n int) int { return n + 3 }

// streaming: CPU per streamed event in replies of 20 and 100 events
// sent in a burst, and the time to first token and between events,
// against the mock streamed directly.
func (h *harness) streaming(ctx context.Context) error {
	cpu := h.results.figure("cpu_per_event", "CPU per streamed event (replies sent in a burst, 8 concurrent)", "µs")
	ttft := h.results.figure("ttft", fmt.Sprintf("Time to first token (%d streams a round, one at a time, targets in turn, 4 events 20 ms apart)", h.timed), "ms")
	gap := h.results.figure("chunk_gap", fmt.Sprintf("Time between events (%d streams a round, one at a time, targets in turn, 4 events 20 ms apart)", h.timed), "ms")
	slow := fb.Header(fb.Fault{Tokens: 4, TokenDelay: 20 * time.Millisecond})
	slowBody := chatBody(100, true, slow)
	c := client(1)
	defer c.CloseIdleConnections()
	targets := []*target{h.mock, h.caddies[0], h.caddies[1]}
	pooled := make([][]time.Duration, len(targets)) // every round's times to first token
	for r := range h.rounds {
		for _, n := range []int{20, 100} {
			fast := fb.Header(fb.Fault{Tokens: n})
			body := chatBody(100, true, fast)
			for _, t := range h.caddies[:2] { // echo streams its own words
				res := closedLoop(ctx, t, 8, h.round, body, fast)
				cpu.add(fmt.Sprintf("%d-event replies", streamEvents(n)), t.name, micros(res.cpuPerRequest())/float64(streamEvents(n)))
			}
		}
		// The timed streams go to the three targets in turn, one stream
		// each, so a pause of the machine falls on all three alike.
		firsts, gaps := make([][]time.Duration, len(targets)), make([][]time.Duration, len(targets))
		for _, t := range targets {
			if _, _, err := streamTiming(ctx, c, t, slowBody, slow); err != nil { // warm the connections
				return err
			}
		}
		for range h.timed {
			for i, t := range targets {
				f, g, err := streamTiming(ctx, c, t, slowBody, slow)
				if err != nil {
					return err
				}
				firsts[i], gaps[i] = append(firsts[i], f), append(gaps[i], g...)
			}
		}
		for i, t := range targets {
			pooled[i] = append(pooled[i], firsts[i]...)
			ttft.add("p50", t.name, millis(percentile(firsts[i], .5)))
			ttft.add("p99", t.name, millis(percentile(firsts[i], .99)))
			gap.add("p50", t.name, millis(percentile(gaps[i], .5)))
			gap.add("p99", t.name, millis(percentile(gaps[i], .99)))
		}
		log.Printf("streaming: round %d/%d", r+1, h.rounds)
	}
	// A round's p99 is its one or two slowest streams; over every round
	// it rests on several.
	for i, t := range targets {
		ttft.add(pooledP99, t.name, millis(percentile(pooled[i], .99)))
	}
	return ctx.Err()
}

// Paced streams: as many streams as a busy server holds, each an event
// every 20 ms, as a model generates tokens.
const (
	pacedCount    = 256
	pacedInterval = 20 * time.Millisecond
	pacedTokens   = 50 // a second a stream, then the next
)

// pacedStreamsRow is the row of the paced streams figure.
var pacedStreamsRow = fmt.Sprintf("%d streams, an event every %s", pacedCount, pacedInterval)

// pacedStreams: CPU per event of streams paced as real backends send
// them, one event per read, through reverse_proxy, chat_gateway and the
// peers.
func (h *harness) pacedStreams(ctx context.Context) error {
	cpu := h.results.figure("paced_cpu_per_event", "CPU per event of paced streams", "µs")
	rate := h.results.figure("paced_events", "Events received per second, paced streams", "events/s")
	targets := append([]*target{h.caddies[0], h.caddies[1]}, h.peers...)
	for r := range h.rounds {
		for _, t := range targets {
			res := pacedStreams(ctx, t, pacedCount, pacedTokens, pacedInterval, time.Second, h.paced)
			if res.events == 0 {
				h.results.fail("paced_cpu_per_event", t.name, fmt.Sprintf("no event arrived (%d streams broken)", res.broken))
				continue
			}
			cpu.add(pacedStreamsRow, t.name, micros(res.cpu)/float64(res.events))
			rate.add(pacedStreamsRow, t.name, float64(res.events)/res.elapsed.Seconds())
		}
		log.Printf("paced streams: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// refusalP50 is the row of the refusal figure with the latency at
// refusalRate, for the store's added latency.
var refusalP50 = fmt.Sprintf("p50 latency (µs; %d req/s)", refusalRate)

// refusalRate is the fixed rate of refusalP50.
const refusalRate = 200

// refusalCost: CPU per request of echo behind a key and limits (200),
// of a bad key (401) and of a request over its limit (429), against
// plain echo (200), where this build has keys and limits; and the
// latency of echo with and without a key and limits at a fixed rate.
func (h *harness) refusalCost(ctx context.Context) error {
	if len(h.refusals) == 0 {
		return nil
	}
	f := h.results.figure("cpu_by_status", "CPU per request of refusals against a 200 echo (100 B, 8 concurrent)", "µs")
	body := chatBody(100, false, "")
	targets := append([]*target{h.caddies[2]}, h.refusals...)
	for r := range h.rounds {
		for _, t := range targets {
			res := closedLoop(ctx, t, 8, h.round, body, "")
			f.add("per request", t.name, micros(res.cpuPerRequest()))
			if t.wantStatus() == http.StatusOK {
				f.add(refusalP50, t.name, micros(percentile(openLoop(ctx, t, time.Second/refusalRate, h.round, body), .5)))
			}
		}
		log.Printf("refusals: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// Rows of the peer comparison.
const (
	peerCPURequest = "CPU per request (µs; 100 B, 8 clients)"
	peerCPUEvent   = "CPU per streamed event (µs; 103-event replies, 8 clients)"
	peerThroughput = "Throughput (req/s; 100 B, 32 clients)"
	peerRSS        = "RSS after the round (MiB)"
)

var (
	peerAddedP50 = fmt.Sprintf("Added latency p50 (ms; %d req/s, over the mock)", peerRate)
	peerAddedP99 = fmt.Sprintf("Added latency p99 (ms; %d req/s, over the mock)", peerRate)
)

// peerRate is the fixed rate of the peer comparison's latency: one
// every gateway sustains on a loaded 2-core machine, so the figure is
// the latency a gateway adds, not a queue.
const peerRate = 100

// peerComparison: the figures users compare gateways by, for
// reverse_proxy, chat_gateway and each peer, alternating in each round.
func (h *harness) peerComparison(ctx context.Context) error {
	if len(h.peers) == 0 {
		return nil
	}
	f := h.results.figure("peers", "chat_gateway and other gateways, same mock and load", "")
	small := chatBody(100, false, "")
	const events = 100
	fast := fb.Header(fb.Fault{Tokens: events})
	stream := chatBody(100, true, fast)
	targets := append([]*target{h.caddies[0], h.caddies[1]}, h.peers...)
	for r := range h.rounds {
		mock := percentiles(openLoop(ctx, h.mock, time.Second/peerRate, 2*h.round, small))
		for _, t := range targets {
			res := closedLoop(ctx, t, 8, h.round, small, "")
			f.add(peerCPURequest, t.name, micros(res.cpuPerRequest()))
			if res := closedLoop(ctx, t, 8, h.round, stream, fast); res.requests > 0 {
				f.add(peerCPUEvent, t.name, micros(res.cpuPerRequest())/float64(streamEvents(events)))
			} else {
				h.results.fail("peers", t.name, fmt.Sprintf("every stream failed (%d errors)", res.errors))
			}
			f.add(peerThroughput, t.name, closedLoop(ctx, t, 32, h.round, small, "").rps())
			lat := percentiles(openLoop(ctx, t, time.Second/peerRate, 2*h.round, small))
			f.add(peerAddedP50, t.name, lat[0]-mock[0])
			f.add(peerAddedP99, t.name, lat[1]-mock[1])
			f.add(peerRSS, t.name, float64(rssKiB(t.pid))/1024)
		}
		log.Printf("peers: round %d/%d", r+1, h.rounds)
	}
	return ctx.Err()
}

// percentiles are the p50 and p99 of latencies, in ms.
func percentiles(lat []time.Duration) [2]float64 {
	return [2]float64{millis(percentile(lat, .5)), millis(percentile(lat, .99))}
}

// memory: resident memory and goroutines of Caddy holding n open, idle
// streams (a token a second), as KiB per stream.
func (h *harness) memory(ctx context.Context) error {
	per := h.results.figure("memory_per_stream", "Memory per open stream (RSS growth / streams)", "KiB")
	rss := h.results.figure("rss", "Resident memory holding the streams", "MiB")
	gor := h.results.figure("goroutines", "Goroutines holding the streams", "")
	for _, n := range h.streams {
		row := fmt.Sprintf("%d streams", n)
		for _, t := range h.caddies[:2] {
			http.DefaultClient.CloseIdleConnections()
			time.Sleep(2 * time.Second) // let connections of the last figure close
			base := rssKiB(t.pid)
			closeAll, err := holdStreams(ctx, t, n)
			if err != nil {
				return err
			}
			time.Sleep(time.Second)
			held, g := rssKiB(t.pid), metric(t, "go_goroutines")
			closeAll()
			per.add(row, t.name, float64(held-base)/float64(n))
			rss.add(row, t.name, float64(held)/1024)
			gor.add(row, t.name, g)
			log.Printf("memory: %s %s: %d KiB -> %d KiB, %.0f goroutines", row, t.name, base, held, g)
		}
	}
	return ctx.Err()
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
