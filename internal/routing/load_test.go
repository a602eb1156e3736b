package routing

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Pages as each server writes them (abridged): llama.cpp's with
// --metrics, vLLM's and SGLang's with a label per model.
func TestReadLoad(t *testing.T) {
	for _, tc := range []struct {
		format, page string
		want         int
	}{
		{"llamacpp", "# HELP llamacpp:requests_processing Number of requests processing.\n# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n# HELP llamacpp:requests_deferred Number of requests deferred.\n# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 3\n# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.5\n", 5},
		{"vllm", "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"llama\"} 7.0\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"llama\"} 1.0\nvllm:num_requests_waiting{engine=\"1\",model_name=\"llama\"} 2.0\n", 10},
		{"sglang", "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name=\"q\"} 4.0\n# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name=\"q\"} 0.0\n", 4},
		{"vllm", "vllm:num_requests_running 1\n", 1}, // untyped
	} {
		got, err := ReadLoad(strings.NewReader(tc.page), LoadFormats[tc.format])
		if err != nil || got != tc.want {
			t.Errorf("%s: %d, %v, want %d", tc.format, got, err, tc.want)
		}
	}
	for page, want := range map[string]string{
		"# TYPE other gauge\nother 1\n": "has neither vllm:num_requests_running nor vllm:num_requests_waiting",
		"vllm:num_requests_running {":   "reading /metrics",
	} {
		if _, err := ReadLoad(strings.NewReader(page), LoadFormats["vllm"]); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", page, err, want)
		}
	}
	if n, err := ReadLoad(strings.NewReader("vllm:num_requests_running NaN\nvllm:num_requests_waiting -3\n"), LoadFormats["vllm"]); err != nil || n != 0 {
		t.Errorf("NaN and a negative gauge: %d, %v, want 0", n, err)
	}
	if _, err := NewLoads("tgi", time.Second); err == nil {
		t.Error("an unknown format was accepted")
	}
}

// Loads polls the replicas asked about, keeps what each reported while
// it is fresh, and stops reporting a replica whose poll fails.
func TestLoads(t *testing.T) {
	l, err := NewLoads("llamacpp", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var queued atomic.Int64
	queued.Store(4)
	fetch := func(_ context.Context, addr string) (*http.Response, error) {
		if addr == "down:1" {
			return nil, errors.New("connection refused")
		}
		page := "llamacpp:requests_processing 1\nllamacpp:requests_deferred " + strconv.FormatInt(queued.Load(), 10) + "\n"
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(page))}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx, fetch)
	if _, ok := l.Reported("up:1", time.Now()); ok {
		t.Fatal("a replica never polled has a report")
	}
	l.Reported("down:1", time.Now())
	waitUntil(t, func() bool { n, ok := l.Reported("up:1", time.Now()); return ok && n == 5 })
	queued.Store(0)
	waitUntil(t, func() bool { n, ok := l.Reported("up:1", time.Now()); return ok && n == 1 })
	if _, ok := l.Reported("down:1", time.Now()); ok {
		t.Error("a replica whose poll fails has a report")
	}
	if n, ok := l.Reported("up:1", time.Now().Add(time.Second)); ok {
		t.Errorf("a report a second old (ten intervals): %d, want none", n)
	}
	seen := map[string]bool{}
	l.Each(func(addr string, _ int, err error) { seen[addr] = err == nil })
	if !seen["up:1"] || seen["down:1"] {
		t.Errorf("Each reported %v, want up:1 well and down:1 failing", seen)
	}
}

// waitUntil polls ok until it holds, failing after 30 s: long enough
// for a loaded machine, which only slows what is awaited.
func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30s")
		}
	}
}
