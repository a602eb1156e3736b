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
			body := chatBody(s.bytes, false)
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
	body := chatBody(100, false)
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
	body := chatBody(100, false)
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

// streaming: CPU per streamed chunk, and the time to first token and
// between chunks, against the mock streamed directly.
func (h *harness) streaming(ctx context.Context) error {
	cpu := h.results.figure("cpu_per_chunk", "CPU per streamed chunk (100-chunk streams, 8 concurrent)", "µs")
	ttft := h.results.figure("ttft", fmt.Sprintf("Time to first token (%d streams a round, one at a time, targets in turn, 4 chunks 20 ms apart)", h.timed), "ms")
	gap := h.results.figure("chunk_gap", fmt.Sprintf("Time between chunks (%d streams a round, one at a time, targets in turn, 4 chunks 20 ms apart)", h.timed), "ms")
	const chunks = 100
	fast := fb.Header(fb.Fault{Tokens: chunks})
	slow := fb.Header(fb.Fault{Tokens: 4, TokenDelay: 20 * time.Millisecond})
	body := chatBody(100, true)
	c := client(1)
	defer c.CloseIdleConnections()
	targets := []*target{h.mock, h.caddies[0], h.caddies[1]}
	pooled := make([][]time.Duration, len(targets)) // every round's times to first token
	for r := range h.rounds {
		for _, t := range h.caddies[:2] { // echo streams its own words
			res := closedLoop(ctx, t, 8, h.round, body, fast)
			cpu.add("per chunk", t.name, micros(res.cpuPerRequest())/(chunks+3)) // role, content, finish, [DONE]
		}
		// The timed streams go to the three targets in turn, one stream
		// each, so a pause of the machine falls on all three alike.
		firsts, gaps := make([][]time.Duration, len(targets)), make([][]time.Duration, len(targets))
		for _, t := range targets {
			if _, _, err := streamTiming(ctx, c, t, body, slow); err != nil { // warm the connections
				return err
			}
		}
		for range h.timed {
			for i, t := range targets {
				f, g, err := streamTiming(ctx, c, t, body, slow)
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
			held, g := rssKiB(t.pid), goroutines(t)
			closeAll()
			per.add(row, t.name, float64(held-base)/float64(n))
			rss.add(row, t.name, float64(held)/1024)
			gor.add(row, t.name, float64(g))
			log.Printf("memory: %s %s: %d KiB -> %d KiB, %d goroutines", row, t.name, base, held, g)
		}
	}
	return ctx.Err()
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
