package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// routingWorkloadNames name the workloads for -only, with -routing.
var routingWorkloadNames = []string{"multi-turn", "documents", "control", "llama.cpp"}

// routingPolicies are the lb_policy values compared, in a backend of
// the replicas behind one chat_gateway.
var routingPolicies = []string{"round_robin", "least_conn", "prefix_affinity"}

// The simulated fleet: 4 replicas of 4 slots each, a KV cache of 16,384
// tokens each (less than a workload's prefixes: what one replica can
// keep of them is what decides), prefill at 40,000 tokens/s and decode
// at 100 tokens/s per request.
var simFleet = simConfig{Slots: 4, Prefill: 25 * time.Microsecond, Decode: 10 * time.Millisecond, CacheTokens: 16384, BlockTokens: 16}

const simReplicas = 4

// turnsOf is a conversation: its system prompt and user messages, sent
// one turn at a time, each with the turns and the replies before it.
type turnsOf struct {
	system string
	users  []string
	start  time.Duration   // after the workload starts
	think  []time.Duration // before each turn after the first
}

// workload is a set of conversations run together.
type workload struct {
	Name, Title string
	MaxTokens   int
	convs       []turnsOf
}

// words returns n tokens of text (bytesPerToken each on the simulated
// tokenizer) that seed makes unique: a system prompt, a document.
func words(seed uint64, n int) string {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var b strings.Builder
	for b.Len() < n*bytesPerToken {
		fmt.Fprintf(&b, "w%03d ", rng.IntN(1000))
	}
	return b.String()[:n*bytesPerToken]
}

// routingWorkloads are the three: multi-turn chats over shared
// system prompts, questions over shared documents, and a control with
// nothing shared. scale < 1 shrinks them for -quick.
func routingWorkloads(scale float64) []workload {
	n := func(v int) int { return max(2, int(float64(v)*scale)) }
	rng := rand.New(rand.NewPCG(7, 7))
	think := func() time.Duration { return time.Duration(500+rng.IntN(1000)) * time.Millisecond }

	chats := workload{Name: "multi-turn", Title: fmt.Sprintf("%d users, 6 turns each, 8 system prompts of 2,000 tokens", n(64)), MaxTokens: 20}
	for u := range n(64) {
		c := turnsOf{system: words(uint64(u%8), 2000), start: time.Duration(u) * 150 * time.Millisecond}
		for turn := range 6 {
			c.users = append(c.users, fmt.Sprintf("User %d asks question %d: %s", u, turn, words(uint64(1000+u*10+turn), 60)))
			if turn > 0 {
				c.think = append(c.think, think())
			}
		}
		chats.convs = append(chats.convs, c)
	}

	docs := workload{Name: "documents", Title: fmt.Sprintf("16 documents of 3,000 tokens, %d questions each", n(16)), MaxTokens: 20}
	// The questions come in a random order: in document order, round
	// robin over 4 replicas would send each document to one replica.
	order := rng.Perm(16 * n(16))
	for i, k := range order {
		q, d := k/16, k%16
		docs.convs = append(docs.convs, turnsOf{system: "Answer from the document.", start: time.Duration(i) * 40 * time.Millisecond,
			users: []string{words(uint64(100+d), 3000) + fmt.Sprintf("\nQuestion %d: %s", q, words(uint64(5000+k), 30))}})
	}

	control := workload{Name: "control", Title: fmt.Sprintf("%d prompts of 1,500 tokens, nothing shared", n(256)), MaxTokens: 20}
	for i := range n(256) {
		control.convs = append(control.convs, turnsOf{system: words(uint64(20000+i), 1500), start: time.Duration(i) * 40 * time.Millisecond,
			users: []string{"Summarize."}})
	}
	return []workload{chats, docs, control}
}

// llamaWorkload is the measurement on real llama.cpp servers:
// 16 conversations of 4 turns over 4 system prompts of about 1,800
// tokens of the tiny model's vocabulary.
func llamaWorkload(scale float64) workload {
	n := max(4, int(16*scale))
	w := workload{Name: "llama.cpp multi-turn", Title: fmt.Sprintf("%d conversations of 4 turns, 4 system prompts of about 1,800 tokens, 4 llama-server -np 2", n), MaxTokens: 8}
	rng := rand.New(rand.NewPCG(9, 9))
	for c := range n {
		conv := turnsOf{system: englishish(uint64(c%4), 1500), start: time.Duration(c) * 250 * time.Millisecond}
		for turn := range 4 {
			conv.users = append(conv.users, fmt.Sprintf("Conversation %d, question %d: %s", c, turn, englishish(uint64(100+c*10+turn), 40)))
			if turn > 0 {
				conv.think = append(conv.think, time.Duration(200+rng.IntN(400))*time.Millisecond)
			}
		}
		w.convs = append(w.convs, conv)
	}
	return w
}

// englishish is n words of plain English, which an SPM vocabulary
// tokenizes at about 1.2 tokens a word.
func englishish(seed uint64, n int) string {
	vocab := strings.Fields("the a model server cache token prompt request reply gateway replica system user question answer time load slot queue prefix block memory hash route policy test value number result table figure text word line page document every other first last next")
	rng := rand.New(rand.NewPCG(seed, seed+1))
	out := make([]string, n)
	for i := range out {
		out[i] = vocab[rng.IntN(len(vocab))]
	}
	return strings.Join(out, " ")
}

// RoutingResult is one workload under one policy.
type RoutingResult struct {
	Workload       string  `json:"workload"`
	Policy         string  `json:"policy"`
	Requests       int     `json:"requests"`
	Errors         int     `json:"errors"`
	PromptSent     int64   `json:"prompt_tokens_sent"`
	PromptComputed int64   `json:"prompt_tokens_computed"`
	TTFTp50        float64 `json:"ttft_p50_ms"`
	TTFTp99        float64 `json:"ttft_p99_ms"`
	PerReplica     []int64 `json:"requests_per_replica"`
	// Decisions are prefix_affinity's, by reason, from the gateway's
	// metrics.
	Decisions  map[string]int `json:"decisions,omitempty"`
	Throughput float64        `json:"requests_per_second"`
	Seconds    float64        `json:"seconds"`
	TTFTs      []float64      `json:"-"`
}

// computedShare is the prompt tokens computed over those sent.
func (r RoutingResult) computedShare() float64 {
	return float64(r.PromptComputed) / float64(max(r.PromptSent, 1))
}

// choices says how prefix_affinity chose: "matched 300, placed 80...".
func (r RoutingResult) choices() string {
	var parts []string
	for _, reason := range []string{"matched", "placed", "overloaded", "no_prefix"} {
		if n := r.Decisions[reason]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", reason, n))
		}
	}
	return strings.Join(parts, ", ")
}

// maxOverMean is the busiest replica's requests over the mean.
func (r RoutingResult) maxOverMean() float64 {
	var sum, most int64
	for _, n := range r.PerReplica {
		sum, most = sum+n, max(most, n)
	}
	return float64(most) * float64(len(r.PerReplica)) / float64(max(sum, 1))
}

// replicaSet is a fleet under measurement: its URLs and, per replica,
// the requests it served and the prompt tokens it computed (and was
// sent, when it counts them; else the replies' usage says).
type replicaSet interface {
	urls() []string
	counters() (requests, sent, computed []int64)
	stop()
}

type simSet []*simReplica

func (s simSet) urls() []string {
	var out []string
	for _, r := range s {
		out = append(out, r.url)
	}
	return out
}

func (s simSet) counters() (requests, sent, computed []int64) {
	for _, r := range s {
		requests, sent, computed = append(requests, r.requests.Load()), append(sent, r.sent.Load()), append(computed, r.computed.Load())
	}
	return
}

func (s simSet) stop() {
	for _, r := range s {
		r.close()
	}
}

// runRouting runs each workload under each policy on a fresh fleet (empty
// caches) behind a fresh Caddy (an empty index), and, with LLAMA_SERVER
// set, the llama.cpp workload on 4 real servers.
func (h *harness) runRouting(ctx context.Context, out string, quick bool, only map[string]bool) error {
	dir, err := os.MkdirTemp("", "chat-gateway-routing")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := h.build(ctx, dir); err != nil {
		return err
	}
	scale := 1.0
	if quick {
		scale = 0.25
	}
	var results []RoutingResult
	start := time.Now()
	// each runs w under every policy, on a fresh fleet each time.
	each := func(w workload, fleet func() (replicaSet, error)) error {
		for _, policy := range routingPolicies {
			f, err := fleet()
			if err != nil {
				return err
			}
			r, err := h.routingRun(ctx, dir, w, policy, f)
			f.stop()
			if err != nil {
				return err
			}
			results = append(results, r)
		}
		return nil
	}
	for _, w := range routingWorkloads(scale) {
		if only != nil && !only[w.Name] {
			continue
		}
		err := each(w, func() (replicaSet, error) {
			fleet := make(simSet, simReplicas)
			for i := range fleet {
				var err error
				if fleet[i], err = startSimReplica(simFleet); err != nil {
					return nil, err
				}
			}
			return fleet, nil
		})
		if err != nil {
			return err
		}
	}
	if server := os.Getenv("LLAMA_SERVER"); server != "" && (only == nil || only["llama.cpp"]) {
		if err := each(llamaWorkload(scale), func() (replicaSet, error) { return h.startLlama(ctx, dir, server, 4) }); err != nil {
			return err
		}
	}
	report := routingReport(results, time.Since(start), quick)
	fmt.Print(report)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	raw, _ := json.MarshalIndent(struct {
		Date    string          `json:"date"`
		Command string          `json:"command"`
		Fleet   simConfig       `json:"simulated_replica"`
		Results []RoutingResult `json:"results"`
	}{time.Now().UTC().Format(time.RFC3339), strings.Join(os.Args, " "), simFleet, results}, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "routing.json"), raw, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "routing.md"), []byte(report), 0o644); err != nil {
		return err
	}
	log.Printf("wrote routing.json and routing.md to %s", out)
	return nil
}

// routingRun runs w through a chat_gateway whose backend is fleet under
// policy.
func (h *harness) routingRun(ctx context.Context, dir string, w workload, policy string, fleet replicaSet) (RoutingResult, error) {
	name := strings.ReplaceAll(w.Name, " ", "-") + "-" + policy
	site := fmt.Sprintf(`chat_gateway {
		backend %s {
			lb_policy %s
			transport http {
				keepalive_idle_conns_per_host 512
			}
		}
	}`, strings.Join(fleet.urls(), " "), policy)
	gw, err := h.startCaddy(ctx, h.caddyBin, dir, name, site)
	if err != nil {
		return RoutingResult{}, err
	}
	defer h.stopLast()
	res := RoutingResult{Workload: w.Name, Policy: policy}
	client := client(1024)
	var mu sync.Mutex
	var wg sync.WaitGroup
	begin := time.Now()
	for _, c := range w.convs {
		wg.Go(func() {
			select {
			case <-time.After(c.start):
			case <-ctx.Done():
				return
			}
			msgs := []map[string]string{{"role": "system", "content": c.system}}
			for turn, user := range c.users {
				if turn > 0 {
					time.Sleep(c.think[turn-1])
				}
				msgs = append(msgs, map[string]string{"role": "user", "content": user})
				turn, err := chatTurn(ctx, client, gw.url, msgs, w.MaxTokens)
				mu.Lock()
				res.Requests++
				if err != nil {
					res.Errors++
					if res.Errors <= 3 {
						log.Printf("%s: %v", name, err)
					}
				} else {
					res.TTFTs = append(res.TTFTs, float64(turn.ttft)/float64(time.Millisecond))
					res.PromptSent += turn.promptTokens
				}
				mu.Unlock()
				if err != nil {
					return
				}
				msgs = append(msgs, map[string]string{"role": "assistant", "content": turn.reply})
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(begin).Seconds()
	res.Throughput = float64(res.Requests) / res.Seconds
	requests, sent, computed := fleet.counters()
	res.PerReplica = requests
	if sent != nil { // the fleet's own count, rather than the replies'
		res.PromptSent = 0
		for _, n := range sent {
			res.PromptSent += n
		}
	}
	for _, n := range computed {
		res.PromptComputed += n
	}
	for series, v := range scrapeMetrics(gw.admin + "/metrics") {
		if reason, ok := strings.CutPrefix(series, `caddy_chat_gateway_routing_decisions_total{reason="`); ok && v > 0 {
			if res.Decisions == nil {
				res.Decisions = map[string]int{}
			}
			res.Decisions[strings.TrimSuffix(reason, `"}`)] = int(v)
		}
	}
	slices.Sort(res.TTFTs)
	res.TTFTp50, res.TTFTp99 = pct(res.TTFTs, 0.5), pct(res.TTFTs, 0.99)
	log.Printf("%s: %d requests, %d errors, computed %.0f%% of %d prompt tokens, TTFT p50 %.0f ms p99 %.0f ms, per replica %v, decisions %v",
		name, res.Requests, res.Errors, 100*res.computedShare(), res.PromptSent, res.TTFTp50, res.TTFTp99, res.PerReplica, res.Decisions)
	if res.Errors > 0 {
		return res, fmt.Errorf("%s: %d of %d requests failed", name, res.Errors, res.Requests)
	}
	return res, ctx.Err()
}

// pct is the p-th quantile of sorted values.
func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

// turnResult is what a client sees of one turn.
type turnResult struct {
	reply        string
	ttft         time.Duration
	promptTokens int64 // the usage the stream ends with
}

// chatTurn streams one turn.
func chatTurn(ctx context.Context, c *http.Client, url string, msgs []map[string]string, maxTokens int) (turnResult, error) {
	body, _ := json.Marshal(map[string]any{"model": "m", "messages": msgs, "max_tokens": maxTokens, "stream": true, "temperature": 0,
		"stream_options": map[string]bool{"include_usage": true}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return turnResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return turnResult{}, fmt.Errorf("status %d", resp.StatusCode)
	}
	var reply strings.Builder
	var out turnResult
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens int64 `json:"prompt_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal([]byte(data), &chunk) != nil {
			return turnResult{}, fmt.Errorf("bad event %q", data)
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content != "" && out.ttft == 0 {
				out.ttft = time.Since(sent)
			}
			reply.WriteString(ch.Delta.Content)
		}
		if chunk.Usage != nil {
			out.promptTokens = chunk.Usage.PromptTokens
		}
	}
	if err := sc.Err(); err != nil {
		return turnResult{}, err
	}
	if out.ttft == 0 {
		return turnResult{}, fmt.Errorf("a stream without content")
	}
	out.reply = reply.String()
	return out, nil
}

// llamaSet is real llama.cpp servers, each behind a counting proxy of
// the harness: the requests per server are the proxy's, the prompt
// tokens computed its /metrics'.
type llamaSet struct {
	h       *harness
	addrs   []string // the servers'
	proxies []*countingProxy
	procs   int // how many of h.procs are theirs, the last ones
}

func (s *llamaSet) urls() []string {
	var out []string
	for _, p := range s.proxies {
		out = append(out, p.url)
	}
	return out
}

func (s *llamaSet) counters() (requests, sent, computed []int64) {
	for i, a := range s.addrs {
		requests = append(requests, s.proxies[i].requests.Load())
		computed = append(computed, int64(scrapeMetrics("http://" + a + "/metrics")["llamacpp:prompt_tokens_total"]))
	}
	return requests, nil, computed
}

func (s *llamaSet) stop() {
	for _, p := range s.proxies {
		p.srv.Close()
	}
	for range s.procs {
		s.h.stopLast()
	}
}

// countingProxy passes requests to a server and counts them.
type countingProxy struct {
	url      string
	srv      *http.Server
	requests atomic.Int64
}

func startCountingProxy(target string) (*countingProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &countingProxy{url: "http://" + l.Addr().String()}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	// llama-server closes the connection after each streamed reply though
	// it says keep-alive: a request sent on it as it closes would fail.
	rp.Transport = &http.Transport{DisableKeepAlives: true}
	p.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(l)
	return p, nil
}

// scrapeMetrics reads a Prometheus text page into series -> value.
func scrapeMetrics(url string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(url)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && !strings.HasPrefix(name, "#") {
			out[name], _ = strconv.ParseFloat(value, 64)
		}
	}
	return out
}

// startLlama starts n llama-servers of the tiny model, 2 slots each, with
// their prompt cache and metrics.
func (h *harness) startLlama(ctx context.Context, dir, server string, n int) (*llamaSet, error) {
	model, err := filepath.Abs("../shared/llama/tiny.gguf")
	if err != nil {
		return nil, err
	}
	if m := os.Getenv("LLAMA_MODEL"); m != "" {
		model = m
	}
	set := &llamaSet{h: h}
	for i := range n {
		port := freePort()
		cmd := exec.CommandContext(ctx, server, "-m", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
			"-c", "8192", "-np", "2", "-t", "1", "--metrics", "--threads-http", "8")
		t := &target{name: fmt.Sprintf("llama-%d", i), url: fmt.Sprintf("http://127.0.0.1:%d", port)}
		if err := h.start(dir, t, cmd, port); err != nil {
			set.stop()
			return nil, err
		}
		set.procs++
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p, err := startCountingProxy("http://" + addr)
		if err != nil {
			set.stop()
			return nil, err
		}
		set.addrs, set.proxies = append(set.addrs, addr), append(set.proxies, p)
	}
	return set, nil
}

// routingReport is the run's tables, in Markdown: per workload, each
// policy's prompt tokens computed, TTFT, balance and throughput, and
// prefix_affinity's against round_robin and least_conn.
func routingReport(results []RoutingResult, took time.Duration, quick bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Routing: lb_policy prefix_affinity against round_robin and least_conn\n\n")
	fmt.Fprintf(&b, "`%s`, %s, in %s", strings.Join(os.Args, " "), time.Now().UTC().Format("2006-01-02"), took.Round(time.Second))
	if quick {
		b.WriteString(" (-quick: a smoke test, not figures to publish)")
	}
	fmt.Fprintf(&b, ". Simulated replica: %d slots, prefill %s and decode %s per token, a KV cache of %d tokens in blocks of %d.\n",
		simFleet.Slots, simFleet.Prefill, simFleet.Decode, simFleet.CacheTokens, simFleet.BlockTokens)
	byWorkload := map[string]map[string]RoutingResult{}
	var order []string
	for _, r := range results {
		if byWorkload[r.Workload] == nil {
			byWorkload[r.Workload] = map[string]RoutingResult{}
			order = append(order, r.Workload)
		}
		byWorkload[r.Workload][r.Policy] = r
	}
	for _, name := range order {
		rs := byWorkload[name]
		fmt.Fprintf(&b, "\n## %s\n\n", name)
		b.WriteString("| policy | requests | prompt tokens computed / sent | TTFT p50 | TTFT p99 | requests per replica | max / mean | requests/s | choices |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range routingPolicies {
			r, ok := rs[p]
			if !ok {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d | %d / %d (%.0f%%) | %.0f ms | %.0f ms | %v | %.2f | %.1f | %s |\n", p, r.Requests, r.PromptComputed, r.PromptSent,
				100*r.computedShare(), r.TTFTp50, r.TTFTp99, r.PerReplica, r.maxOverMean(), r.Throughput, r.choices())
		}
		pa, rr, lc := rs["prefix_affinity"], rs["round_robin"], rs["least_conn"]
		fmt.Fprintf(&b, "\nprefix_affinity: prompt tokens computed %.2fx round_robin's, %.2fx least_conn's; TTFT p50 %.2fx round_robin's, %.2fx least_conn's.\n",
			float64(pa.PromptComputed)/float64(max(rr.PromptComputed, 1)), float64(pa.PromptComputed)/float64(max(lc.PromptComputed, 1)),
			pa.TTFTp50/max(rr.TTFTp50, 1e-9), pa.TTFTp50/max(lc.TTFTp50, 1e-9))
	}
	return b.String()
}
