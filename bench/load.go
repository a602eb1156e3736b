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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

// chatBody is a chat request whose messages hold about size bytes. Its
// model names the fault too (see faultFromModel), for gateways that do
// not forward the X-Fault header.
func chatBody(size int, stream bool, fault string) []byte {
	content := strings.Repeat("lorem ipsum dolor sit amet ", size/27+1)[:max(size-60, 1)]
	model := "m"
	if fault != "" {
		model = modelFaultPrefix + fault
	}
	m, _ := json.Marshal(model)
	return fmt.Appendf(nil, `{"model":%s,"stream":%v,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":%q}]}`, m, stream, content)
}

// request makes a request to t's path: its own headers (a peer's
// config, a client key), then the fault for the mock.
func (t *target) request(ctx context.Context, body []byte, fault string) *http.Request {
	path := t.path
	if path == "" {
		path = "/v1/chat/completions"
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", t.url+path, bytes.NewReader(body))
	for k, v := range t.header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	if fault != "" {
		req.Header.Set("X-Fault", fault)
	}
	return req
}

// wantStatus is the status t answers when it works as measured: 200, or
// the refusal a refusing target is there to measure.
func (t *target) wantStatus() int {
	if t.status != 0 {
		return t.status
	}
	return http.StatusOK
}

// client makes a load generator's HTTP client: one keep-alive connection
// per worker, no compression.
func client(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: 0,
		DisableCompression: true, IdleConnTimeout: time.Minute,
	}}
}

// processTree is pid and its descendants, so that a gateway started
// through a wrapper (npx, a shell) or running workers is measured whole.
func processTree(pid int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(p); len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		for p, pp := range parent {
			if pp == tree[i] {
				tree = append(tree, p)
			}
		}
	}
	return tree
}

// statFields are the fields of /proc/pid/stat after the command name
// (which is in parentheses): state, ppid...
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	return strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
}

// cpuTicks reads utime+stime of a process and its descendants, in
// clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	var sum int64
	for _, p := range processTree(pid) {
		if f := statFields(p); len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			sum += ut + st
		}
	}
	return sum
}

const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux

// rssKiB reads the resident set size of a process and its descendants.
func rssKiB(pid int) int64 {
	var sum int64
	for _, p := range processTree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				sum += n
			}
		}
	}
	return sum
}

// run is the outcome of one closed-loop round.
type run struct {
	requests  int
	errors    int
	elapsed   time.Duration
	cpu       time.Duration // of the target process
	latencies []time.Duration
}

func (r run) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r run) cpuPerRequest() time.Duration {
	if r.requests == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.requests)
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// closedLoop runs workers that each send body back to back for d, and
// measures the target's CPU over the round.
func closedLoop(ctx context.Context, t *target, workers int, d time.Duration, body []byte, fault string) run {
	c := client(workers)
	defer c.CloseIdleConnections()
	send := func() (time.Duration, bool) {
		start := time.Now()
		resp, err := c.Do(t.request(ctx, body, fault))
		if err != nil {
			return 0, false
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start), err == nil && resp.StatusCode == t.wantStatus()
	}
	for range workers { // open the connections before measuring
		send()
	}
	var mu sync.Mutex
	var res run
	stop := make(chan struct{})
	var wg sync.WaitGroup
	cpu0, start := cpuTicks(t.pid), time.Now()
	for range workers {
		wg.Go(func() {
			var lat []time.Duration
			n, errs := 0, 0
			for {
				select {
				case <-stop:
					mu.Lock()
					res.requests += n
					res.errors += errs
					res.latencies = append(res.latencies, lat...)
					mu.Unlock()
					return
				default:
				}
				l, ok := send()
				if !ok {
					errs++
					continue
				}
				n++
				lat = append(lat, l)
			}
		})
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	res.elapsed = time.Since(start)
	res.cpu = time.Duration(cpuTicks(t.pid)-cpu0) * tick
	if res.errors > 0 {
		log.Printf("  %s: %d errors", t.name, res.errors)
	}
	return res
}

// openLoop sends one request every interval for d, whatever the replies
// do, and returns their latencies: latency at a fixed rate.
func openLoop(ctx context.Context, t *target, interval, d time.Duration, body []byte) []time.Duration {
	c := client(64)
	defer c.CloseIdleConnections()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tk.C {
		wg.Go(func() {
			start := time.Now()
			resp, err := c.Do(t.request(ctx, body, ""))
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			lat = append(lat, time.Since(start))
			mu.Unlock()
		})
	}
	wg.Wait()
	return lat
}

// streamTiming streams one reply and returns the time to its first
// content event and the gaps between content events.
func streamTiming(ctx context.Context, c *http.Client, t *target, body []byte, fault string) (time.Duration, []time.Duration, error) {
	start := time.Now()
	resp, err := c.Do(t.request(ctx, body, fault))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var ttft time.Duration
	var gaps []time.Duration
	last := time.Time{}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			break
		}
		if !bytes.Contains(line, []byte(`"content":"tok`)) {
			continue
		}
		now := time.Now()
		if last.IsZero() {
			ttft = now.Sub(start)
		} else {
			gaps = append(gaps, now.Sub(last))
		}
		last = now
	}
	return ttft, gaps, nil
}

// holdStreams opens n streams of a slow reply (a token a second) and
// waits until each has received its first content event. It returns a
// function that closes them all. The streams come over HTTP/2 without
// TLS (h2c), a few hundred per connection: this machine allows 20,000
// open files a process, and Caddy holds one upstream connection per
// stream already.
func holdStreams(ctx context.Context, t *target, n int) (func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	tr := &http.Transport{DisableCompression: true, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: tr}
	fault := fb.Header(fb.Fault{Tokens: 600, TokenDelay: time.Second})
	body := chatBody(100, true, fault)
	var ready, failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200) // open connections at a bounded pace
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			resp, err := c.Do(t.request(ctx, body, fault))
			if err != nil {
				<-sem
				failed.Add(1)
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReaderSize(resp.Body, 512)
			signalled := false
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					break
				}
				if !signalled && bytes.Contains(line, []byte(`"content":"tok`)) {
					signalled = true
					ready.Add(1)
					<-sem
				}
			}
			if !signalled {
				<-sem
				failed.Add(1)
			}
		})
	}
	for deadline := time.Now().Add(2 * time.Minute); ready.Load()+failed.Load() < int64(n); {
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	closeAll := func() {
		cancel()
		wg.Wait()
		c.CloseIdleConnections()
	}
	if f := failed.Load(); f > 0 || ready.Load() < int64(n) {
		closeAll()
		return nil, fmt.Errorf("%s: %d of %d streams opened (%d failed)", t.name, ready.Load(), n, f)
	}
	return closeAll, nil
}

// paced is the outcome of a round of paced streams.
type paced struct {
	events  int64 // events received in the measured window
	elapsed time.Duration
	cpu     time.Duration // of the target process over the window
	broken  int64         // streams that failed or ended early
}

// pacedStreams keeps n streams open on t, each an event every interval
// from the mock, as real backends send tokens: a stream ends after
// tokens events and its worker opens the next at once. After warmup it
// counts the events clients receive and the target's CPU for d.
func pacedStreams(ctx context.Context, t *target, n, tokens int, interval, warmup, d time.Duration) paced {
	ctx, cancel := context.WithCancel(ctx)
	c := client(n)
	defer c.CloseIdleConnections()
	fault := fb.Header(fb.Fault{Tokens: tokens, TokenDelay: interval})
	body := chatBody(100, true, fault)
	var events, broken atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := c.Do(t.request(ctx, body, fault))
				if err != nil {
					if ctx.Err() == nil {
						broken.Add(1)
					}
					select { // a target that refuses must not make this spin
					case <-ctx.Done():
					case <-time.After(interval):
					}
					continue
				}
				br := bufio.NewReader(resp.Body)
				done := false
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						break
					}
					if bytes.HasPrefix(line, []byte("data:")) {
						events.Add(1)
						done = done || bytes.HasPrefix(line, []byte("data: [DONE]"))
					}
				}
				resp.Body.Close()
				if !done && ctx.Err() == nil {
					broken.Add(1)
				}
			}
		})
	}
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
	}
	ev0, br0, cpu0, start := events.Load(), broken.Load(), cpuTicks(t.pid), time.Now()
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	res := paced{events: events.Load() - ev0, broken: broken.Load() - br0, elapsed: time.Since(start), cpu: time.Duration(cpuTicks(t.pid)-cpu0) * tick}
	cancel()
	wg.Wait()
	if res.broken > 0 {
		log.Printf("  %s: %d paced streams broken", t.name, res.broken)
	}
	return res
}
