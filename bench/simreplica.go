package main

import (
	"container/list"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// simConfig is how a simulated inference server behaves.
type simConfig struct {
	Slots       int           `json:"slots"`        // requests computed at once; the rest queue
	Prefill     time.Duration `json:"prefill"`      // per prompt token not in the cache
	Decode      time.Duration `json:"decode"`       // per generated token
	CacheTokens int           `json:"cache_tokens"` // the KV cache's capacity, shared by the slots
	BlockTokens int           `json:"block_tokens"` // the cache's unit
}

// bytesPerToken is the simulated tokenizer: a token is 4 bytes of the
// prompt as the chat template renders it.
const bytesPerToken = 4

// simReplica is a simulated inference server on 127.0.0.1: it renders
// a chat request's messages through a chat template, looks the longest
// cached prefix up in its KV cache (an LRU of blocks of BlockTokens
// tokens, chained as vLLM's prefix cache chains them), waits for a
// slot, then sleeps Prefill per uncached token before its first token
// and Decode per token after, streaming as a server does. Its hashing
// is its own: the gateway's blocks are of bytes of JSON, the
// replica's of tokens of rendered text.
type simReplica struct {
	cfg   simConfig
	url   string
	srv   *http.Server
	slots chan struct{}

	mu    sync.Mutex
	lru   *list.List // of uint64 block hashes, most recent first
	cache map[uint64]*list.Element

	requests, sent, computed atomic.Int64 // requests, prompt tokens sent and computed
}

func startSimReplica(cfg simConfig) (*simReplica, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &simReplica{cfg: cfg, url: "http://" + l.Addr().String(), slots: make(chan struct{}, cfg.Slots),
		lru: list.New(), cache: make(map[uint64]*list.Element)}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(l)
	return r, nil
}

func (r *simReplica) close() { r.srv.Close() }

// simRequest is what a simulated server reads of a chat request.
type simRequest struct {
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
	MaxTokens int `json:"max_tokens"`
}

func (r *simReplica) serve(w http.ResponseWriter, req *http.Request) {
	var in simRequest
	if err := json.NewDecoder(io.LimitReader(req.Body, 64<<20)).Decode(&in); err != nil || req.URL.Path != "/v1/chat/completions" {
		http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
		return
	}
	var prompt strings.Builder
	for _, m := range in.Messages {
		fmt.Fprintf(&prompt, "<|im_start|>%s\n%s<|im_end|>\n", m.Role, m.Content)
	}
	prompt.WriteString("<|im_start|>assistant\n")
	blocks := r.blocks(prompt.String())
	tokens := prompt.Len() / bytesPerToken

	select { // a slot, or the queue
	case r.slots <- struct{}{}:
	case <-req.Context().Done():
		return
	}
	defer func() { <-r.slots }()
	cached := min(r.lookup(blocks)*r.cfg.BlockTokens, tokens)
	r.requests.Add(1)
	r.sent.Add(int64(tokens))
	r.computed.Add(int64(tokens - cached))
	time.Sleep(time.Duration(tokens-cached) * r.cfg.Prefill)
	r.insert(blocks)

	w.Header().Set("Content-Type", "text/event-stream")
	flusher := http.NewResponseController(w)
	n := max(in.MaxTokens, 1)
	for i := range n {
		if i > 0 {
			time.Sleep(r.cfg.Decode)
		}
		fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word%d \"}}]}\n\n", i%10)
		if flusher.Flush() != nil {
			return
		}
	}
	fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":%d}}}\n\ndata: [DONE]\n\n",
		tokens, n, tokens+n, cached)
}

// blocks is the chain of hashes of the full blocks of the prompt's
// tokens.
func (r *simReplica) blocks(prompt string) []uint64 {
	size := r.cfg.BlockTokens * bytesPerToken
	var out []uint64
	var prev [8]byte
	for i := 0; i+size <= len(prompt); i += size {
		h := fnv.New64a()
		h.Write(prev[:])
		h.Write([]byte(prompt[i : i+size]))
		sum := h.Sum64()
		out = append(out, sum)
		binary.LittleEndian.PutUint64(prev[:], sum)
	}
	return out
}

// lookup is how many of the blocks, from the first, the cache holds.
func (r *simReplica) lookup(blocks []uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, b := range blocks {
		if _, ok := r.cache[b]; !ok {
			return i
		}
	}
	return len(blocks)
}

// insert puts the blocks in the cache, most recent, evicting the least
// recently used past its capacity. The first block ends most recent: a
// chain's tail is evicted before its head, which every later block
// needs (as vLLM evicts).
func (r *simReplica) insert(blocks []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	capacity := r.cfg.CacheTokens / r.cfg.BlockTokens
	for i := len(blocks) - 1; i >= 0; i-- {
		b := blocks[i]
		if e, ok := r.cache[b]; ok {
			r.lru.MoveToFront(e)
			continue
		}
		r.cache[b] = r.lru.PushFront(b)
		if r.lru.Len() > capacity {
			last := r.lru.Back()
			delete(r.cache, last.Value.(uint64))
			r.lru.Remove(last)
		}
	}
}
