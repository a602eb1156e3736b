package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Names of the cache configurations: chat_gateway with a cache in
// front of the echo configuration as its backend, so that a hit's reply
// is the echo reply byte for byte.
const (
	cacheHitMemory = "cache hit"
	cacheHitRedis  = "cache hit redis"
	cacheMiB       = 32 // the memory figure's max_size
	// cacheFloor answers every request with a fixed event stream, doing
	// nothing else: the machine's floor for a stream's first byte.
	cacheFloor = "caddy respond"
)

// Rows of the cache figures.
var (
	cacheReplyRow  = fmt.Sprintf("%d KiB reply", cacheReplyBytes>>10)
	cacheLatency   = fmt.Sprintf("p50 latency (µs; %d req/s)", refusalRate)
	cacheFirstByte = "replayed stream, first byte"
)

// cacheReplyBytes is about the size of the replies of the hit figures:
// echo's "Echo: " and the prompt.
const cacheReplyBytes = 4 << 10

// cacheBody is a chat request meant to repeat (temperature 0) whose
// user message holds about size bytes, distinct for each n.
func cacheBody(size int, stream bool, n int) []byte {
	content := strconv.Itoa(n) + " " + strings.Repeat("lorem ipsum dolor sit amet ", size/27+1)[:max(size-80, 1)]
	return fmt.Appendf(nil, `{"model":"m","temperature":0,"stream":%v,"messages":[{"role":"user","content":%q}]}`, stream, content)
}

// startCache starts the cache configurations: the memory store, the
// Redis store where redis-server is installed (a server of its own, so
// that its command counts are the cache's), and the memory store
// capped at cacheMiB for the memory figure. The echo configuration is
// their backend. Caddy's respond with a fixed stream is the floor their
// first bytes are measured against.
func (h *harness) startCache(ctx context.Context, dir string) error {
	floor, err := h.startCaddy(ctx, h.caddyBin, dir, "cache_floor", "header Content-Type text/event-stream\n\trespond \"data: {}\n\ndata: [DONE]\n\n\" 200")
	if err != nil {
		return err
	}
	floor.name, h.cacheFloor = cacheFloor, floor
	echo := h.caddies[2].url
	site := func(store string) string {
		return fmt.Sprintf("chat_gateway {\n\t\tbackend %s\n\t\tcache {\n\t\t\tmax_size %dMiB%s\n\t\t}\n\t}", echo, cacheMiB, store)
	}
	t, err := h.startCaddy(ctx, h.caddyBin, dir, "cache_hit", site(""))
	if err != nil {
		return err
	}
	t.name = cacheHitMemory
	h.cached = append(h.cached, t)
	addr, reason, err := h.startRedis(ctx)
	switch {
	case err != nil:
		return err
	case reason != "":
		log.Printf("skipping %q: %s", cacheHitRedis, reason)
		h.results.skip(cacheHitRedis, reason)
		return nil
	}
	if t, err = h.startCaddy(ctx, h.caddyBin, dir, "cache_hit_redis", site("\n\t\t\tstore redis "+addr)); err != nil {
		return err
	}
	t.name = cacheHitRedis
	h.cached = append(h.cached, t)
	h.cacheRedis = addr
	return nil
}

// cacheFigures: CPU per 4 KiB reply answered from the cache against the
// same reply from echo; the latency the Redis store adds and its round
// trips per hit; the time to a replayed stream's first byte; and the
// memory store's bytes and the process's RSS over many distinct
// requests.
func (h *harness) cacheFigures(ctx context.Context) error {
	if len(h.cached) == 0 {
		return nil
	}
	cpu := h.results.figure("cache_cpu", "CPU per request answered from the cache, against echo (8 concurrent)", "µs")
	lat := h.results.figure("cache_latency", "Cache hits: latency and time to a replayed stream's first byte", "µs")
	trips := h.results.figure("cache_redis_round_trips", "Redis commands per cache hit (MGET calls / hits)", "")
	body := cacheBody(cacheReplyBytes, false, 0)
	stream := cacheBody(cacheReplyBytes, true, 0)
	targets := append([]*target{h.caddies[2]}, h.cached...)
	for _, t := range h.cached { // the first request of each misses and stores the reply
		if got := answer(ctx, t, body); !strings.HasPrefix(got, "it answers 200 ") {
			return fmt.Errorf("%s: the first request: %s", t.name, got)
		}
	}
	for r := range h.rounds {
		for _, t := range targets {
			mget0, hits0 := h.redisCalls(ctx, "mget"), cacheHits(t)
			res := closedLoop(ctx, t, 8, h.round, body, "")
			cpu.add(cacheReplyRow, t.name, micros(res.cpuPerRequest()))
			if t.name == cacheHitRedis {
				trips.add("per hit", t.name, (h.redisCalls(ctx, "mget")-mget0)/(cacheHits(t)-hits0))
			}
			lat.add(cacheLatency, t.name, micros(percentile(openLoop(ctx, t, time.Second/refusalRate, h.round, body), .5)))
			if t == h.caddies[2] {
				continue
			}
			if err := h.firstBytes(ctx, lat, t, stream); err != nil {
				return err
			}
		}
		if err := h.firstBytes(ctx, lat, h.cacheFloor, stream); err != nil {
			return err
		}
		log.Printf("cache: round %d/%d", r+1, h.rounds)
	}
	return h.cacheMemory(ctx, h.cached[0])
}

// cacheMemory sends distinct requests (1,000,000; 20,000 with -quick)
// to t, 8 clients, and samples the store's bytes (its metric) and the
// process's RSS every tenth of the way.
func (h *harness) cacheMemory(ctx context.Context, t *target) error {
	f := h.results.figure("cache_memory", fmt.Sprintf("Memory store capped at %d MiB over %d distinct requests (8 clients, 600 B replies)", cacheMiB, h.distinct), "MiB")
	var next atomic.Int64
	c := client(8)
	defer c.CloseIdleConnections()
	var maxHeld, maxRSS float64
	rss0 := rssKiB(t.pid)
	step := h.distinct / 10
	for part := range 10 {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					n := next.Add(1)
					if n > int64(step*(part+1)) || ctx.Err() != nil {
						return
					}
					resp, err := c.Do(t.request(ctx, cacheBody(500, false, int(n)), ""))
					if err != nil {
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
		wg.Wait()
		next.Store(int64(step * (part + 1)))
		maxHeld = max(maxHeld, metric(t, "caddy_chat_gateway_cache_bytes")/(1<<20))
		maxRSS = max(maxRSS, float64(rssKiB(t.pid))/1024)
		log.Printf("cache memory: %d requests, %.1f MiB held, RSS %.0f MiB", step*(part+1), maxHeld, maxRSS)
	}
	f.add("store's bytes, the most sampled", t.name, maxHeld)
	f.add("RSS before", t.name, float64(rss0)/1024)
	f.add("RSS, the most sampled", t.name, maxRSS)
	f.add("entries evicted (thousands)", t.name, metric(t, "caddy_chat_gateway_cache_evictions_total")/1000)
	return ctx.Err()
}

// firstBytes adds to f the p50 and p99 times to the first byte of the
// replies to body from t, sent one at a time.
func (h *harness) firstBytes(ctx context.Context, f *Figure, t *target, body []byte) error {
	var firsts []time.Duration
	for range h.timed {
		d, err := firstByte(ctx, t, body)
		if err != nil {
			return err
		}
		firsts = append(firsts, d)
	}
	f.add(cacheFirstByte+" p50", t.name, micros(percentile(firsts, .5)))
	f.add(cacheFirstByte+" p99", t.name, micros(percentile(firsts, .99)))
	return nil
}

// firstByte is the time from sending body to the first byte of its
// reply's body, which must come from the cache but from the floor.
func firstByte(ctx context.Context, t *target, body []byte) (time.Duration, error) {
	start := time.Now()
	resp, err := http.DefaultClient.Do(t.request(ctx, body, ""))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
		return 0, fmt.Errorf("%s: a replayed stream: %w", t.name, err)
	}
	d := time.Since(start)
	if t.name != cacheFloor && !strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
		return 0, fmt.Errorf("%s: a stream not answered from the cache: Cache-Status %q", t.name, resp.Header.Get("Cache-Status"))
	}
	io.Copy(io.Discard, resp.Body)
	return d, nil
}

// cacheHits is t's count of requests answered from its cache (0 before
// the first, when the series is not there yet).
func cacheHits(t *target) float64 {
	if n := metric(t, `caddy_chat_gateway_cache_requests_total{result="hit"}`); !math.IsNaN(n) {
		return n
	}
	return 0
}

// metric reads a sample of a Caddy process's metrics, named with its
// labels as the exposition writes them; NaN when it has none.
func metric(t *target, sample string) float64 {
	resp, err := http.Get(t.admin + "/metrics")
	if err != nil {
		return math.NaN()
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return math.NaN()
}

// redisCalls is the number of times the cache's redis-server has run
// command so far (INFO commandstats); 0 without one.
func (h *harness) redisCalls(ctx context.Context, command string) float64 {
	if h.cacheRedis == "" {
		return 0
	}
	c := redis.NewClient(&redis.Options{Addr: h.cacheRedis})
	defer c.Close()
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return math.NaN()
	}
	for l := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "cmdstat_"+command+":calls="); ok {
			n, _ := strconv.ParseFloat(strings.SplitN(v, ",", 2)[0], 64)
			return n
		}
	}
	return 0
}

// cacheTargets compares the cache figures with the goals, through add
// (checkTargets').
func (r *Results) cacheTargets(add func(goal string, v float64, limit string, met bool, detail string)) {
	f := r.get("cache_cpu")
	if f == nil {
		return
	}
	v := f.median(cacheReplyRow, cacheHitMemory) / f.median(cacheReplyRow, "echo")
	add("CPU per cache hit / echo reply", v, "≤ 1.2", v <= 1.2, cacheReplyRow+", 8 concurrent")
	lat := r.get("cache_latency")
	v = lat.median(cacheFirstByte+" p50", cacheHitMemory) / 1000
	add("Replayed stream's first byte, p50 (ms)", v, "≤ 1", v <= 1, "one at a time, memory store")
	v = lat.median(cacheFirstByte+" p99", cacheHitMemory) / 1000
	add("Replayed stream's first byte, p99 (ms)", v, "≤ 1", v <= 1,
		fmt.Sprintf("one at a time, memory store; Caddy's respond: %.3g", lat.median(cacheFirstByte+" p99", cacheFloor)/1000))
	if _, ok := f.Values[cacheReplyRow][cacheHitRedis]; ok {
		v = r.get("cache_redis_round_trips").median("per hit", cacheHitRedis)
		add("Redis round trips per hit", v, "= 1", v == 1, "MGET calls / hits")
		v = lat.median(cacheLatency, cacheHitRedis) - lat.median(cacheLatency, cacheHitMemory)
		add("Latency a Redis hit adds over a memory hit, p50 (µs)", v, "published", !math.IsNaN(v), fmt.Sprintf("%d req/s", refusalRate))
	}
	v = r.get("cache_memory").median("store's bytes, the most sampled", cacheHitMemory)
	add("Memory store's bytes over distinct requests (MiB)", v, fmt.Sprintf("≤ %d", cacheMiB), v <= cacheMiB, "the most sampled, every tenth of the requests")
}
