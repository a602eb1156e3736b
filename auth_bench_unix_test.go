//go:build unix

package chatgateway

import (
	"context"
	"fmt"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
)

// reportCPU adds the process's CPU time per operation to a benchmark's
// results, as "cpu-ns/op": on a machine shared with other work, wall
// time per operation counts the time the benchmark waited for a core.
// Call its result when the loop ends.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// keyedEchoHandler is an echo-mode Handler with n keys, aliceKey among
// them, provisioned outside a server.
func keyedEchoHandler(b *testing.B, n int) *Handler {
	h := &Handler{Auth: &Auth{Keys: []ClientKey{{Entry: keys.Entry{Key: keys.Hash(aliceKey), ID: "alice"}}}}}
	for i := 1; i < n; i++ {
		h.Auth.Keys = append(h.Auth.Keys, ClientKey{Entry: keys.Entry{Key: keys.Hash(fmt.Sprintf("sk-cg-bench-%08d-0123456789", i))}})
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkIdentify measures the auth step of a request (header, hash,
// lookup, placeholders) with 10,000 keys configured, and without auth.
func BenchmarkIdentify(b *testing.B) {
	for _, tc := range []struct {
		name string
		keys int
	}{{"10000_keys", 10000}, {"open", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			h := new(Handler)
			if tc.keys > 0 {
				h = keyedEchoHandler(b, tc.keys)
			}
			w := httptest.NewRecorder()
			req := keyed("POST", "/v1/chat/completions", hello, "bearer", aliceKey)
			req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{})
			x := h.newExchange(w, req, nil)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if !h.identify(x) {
					b.Fatal("refused")
				}
			}
		})
	}
}

// BenchmarkAuthServe compares a whole echo request with a good key to
// one refused with 401, 10,000 keys configured: the 401 must cost less.
func BenchmarkAuthServe(b *testing.B) {
	h := keyedEchoHandler(b, 10000)
	body := chatBody(64)
	for _, tc := range []struct {
		name, key string
		want      int
	}{{"200_echo", aliceKey, 200}, {"401", wrongKey, 401}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				req := keyed("POST", "/v1/chat/completions", body, "bearer", tc.key)
				w := httptest.NewRecorder()
				req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, &caddyhttp.Server{})
				if err := h.ServeHTTP(w, req, nil); err != nil || w.Code != tc.want {
					b.Fatal(w.Code, err)
				}
			}
		})
	}
}
