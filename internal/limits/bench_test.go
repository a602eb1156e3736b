package limits

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// benchDims is a typical keyed request: requests, tokens and concurrency
// per identity, tokens per model.
func benchDims(scope string) []Dimension {
	return []Dimension{
		RequestsPer(scope, Rate{N: maxAmount, Window: time.Minute}),
		TokensPer(scope, Rate{N: maxAmount, Window: time.Minute}),
		ConcurrentMax(scope, maxAmount),
		TokensPer("model:m", Rate{N: maxAmount, Window: time.Minute}),
	}
}

// reportCPU reports the process's CPU time (user and system) per op as
// cpu-ns/op: on a loaded machine wall time says more about the
// neighbours than about the code. Call the result when the loop ends.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

// cpuTime is the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchReserveReconcile reserves and reconciles one request per op, over
// 1000 identities.
func benchReserveReconcile(b *testing.B, l *Limiter) {
	ctx := context.Background()
	dims := make([][]Dimension, 1000)
	for i := range dims {
		dims[i] = benchDims("key:" + strconv.Itoa(i))
	}
	defer reportCPU(b)()
	i := 0
	for b.Loop() {
		d, err := l.Reserve(ctx, dims[i%len(dims)], Amount{Tokens: 600})
		if err != nil || d.Reservation == nil {
			b.Fatalf("%+v, %v; want a reservation", d, err)
		}
		if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 450}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkMemoryReserveReconcile(b *testing.B) {
	benchReserveReconcile(b, New(NewMemory(), nil, 0))
}

func BenchmarkMemoryReserveReconcileParallel(b *testing.B) {
	l := New(NewMemory(), nil, 0)
	defer reportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		dims := benchDims("key:" + strconv.FormatUint(idCounter.Add(1), 10))
		for pb.Next() {
			d, err := l.Reserve(ctx, dims, Amount{Tokens: 600})
			if err != nil || d.Reservation == nil {
				b.Fatalf("%+v, %v; want a reservation", d, err)
			}
			if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 450}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Two round trips per op: the reservation and the reconciliation.
func BenchmarkRedisReserveReconcile(b *testing.B) {
	srv := redistest.Start(b)
	benchReserveReconcile(b, New(openRedis(b, srv.Addr, "bench:", 5*time.Second), nil, 0))
}

// One round trip per op: the reservation on the request path.
func BenchmarkRedisReserve(b *testing.B) {
	srv := redistest.Start(b)
	l := New(openRedis(b, srv.Addr, "bench:", 5*time.Second), nil, 0)
	ctx := context.Background()
	dims := benchDims("key:a")[:2]
	defer reportCPU(b)()
	for b.Loop() {
		if d, err := l.Reserve(ctx, dims, Amount{Tokens: 600}); err != nil || d.Reservation == nil {
			b.Fatalf("%+v, %v; want a reservation", d, err)
		}
	}
}
