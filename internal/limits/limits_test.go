package limits

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// t0 is a Thursday afternoon, UTC.
var t0 = time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC)

// storeCase opens a fresh, empty Store for one test.
type storeCase struct {
	name string
	open func(t *testing.T) Store
}

// stores is the table every behaviour test runs over: both stores must
// behave alike. The Redis one starts a redis-server of its own.
var stores = []storeCase{
	{"memory", func(t *testing.T) Store {
		m := NewMemory()
		t.Cleanup(func() { m.Close() })
		return m
	}},
	{"redis", func(t *testing.T) Store {
		return openRedis(t, redistest.Start(t).Addr, uniquePrefix(), 2*time.Second)
	}},
}

// openRedis opens a Redis store closed when t ends.
func openRedis(t testing.TB, addr, prefix string, timeout time.Duration) *Redis {
	t.Helper()
	r, err := NewRedis(RedisOptions{Address: addr, KeyPrefix: prefix, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// eachStore runs test against every store, with a Limiter on a fake
// clock starting at start.
func eachStore(t *testing.T, start time.Time, test func(t *testing.T, l *Limiter, clock *fakeClock)) {
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			clock := newFakeClock(start)
			test(t, New(sc.open(t), clock, 0), clock)
		})
	}
}

// reserve reserves or fails the test on a store error.
func reserve(t *testing.T, l *Limiter, dims []Dimension, tokens int64) Decision {
	t.Helper()
	d, err := l.Reserve(context.Background(), dims, Amount{Tokens: tokens})
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if (d.Reservation == nil) == (d.Denial == nil) {
		t.Fatalf("Reserve returned %+v: want exactly one of Reservation and Denial", d)
	}
	return d
}

func mustRate(t *testing.T, s string) Rate {
	t.Helper()
	r, err := ParseRate(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The window-edge case fixed windows get wrong: 100 at t, 100 at t+0.2s.
func TestEdgeOfWindow(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, clock *fakeClock) {
		dims := []Dimension{RequestsPer("key:a", mustRate(t, "100/1m"))}
		admitted := 0
		for i := range 100 {
			d := reserve(t, l, dims, 0)
			if d.Denial != nil {
				t.Fatalf("request %d refused: %+v", i, d.Denial)
			}
			if st := d.Status[0]; st.Remaining != int64(99-i) || st.Reset != time.Duration(i+1)*600*time.Millisecond {
				t.Fatalf("request %d: status %+v, want remaining %d reset %s", i, st, 99-i, time.Duration(i+1)*600*time.Millisecond)
			}
		}
		clock.Advance(200 * time.Millisecond)
		var last *Denial
		for range 100 {
			if d := reserve(t, l, dims, 0); d.Denial == nil {
				admitted++
			} else {
				last = d.Denial
			}
		}
		if admitted > 1 {
			t.Fatalf("%d more admitted 0.2s after the first 100, want at most 1", admitted)
		}
		if last.Used != 100 || last.Requested != 1 || last.Dimension.Kind != KindRequests || last.TooLarge {
			t.Fatalf("denial %+v, want requests used 100, requested 1, not too large", last)
		}
		// 1/3 of a request refilled in 0.2s: 2/3 more (0.4s) lets one pass.
		if last.RetryAfter != 400*time.Millisecond {
			t.Fatalf("retry after %s, want 400ms", last.RetryAfter)
		}
		clock.Advance(last.RetryAfter)
		if d := reserve(t, l, dims, 0); d.Denial != nil {
			t.Fatalf("refused after its retry-after: %+v", d.Denial)
		}
	})
}

// 50 concurrent requests of 600 tokens under 10000/1m: 16 fit.
func TestTokenBurst(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, _ *fakeClock) {
		dims := []Dimension{RequestsPer("key:a", mustRate(t, "1000/1m")), TokensPer("key:a", mustRate(t, "10000/1m"))}
		var mu sync.Mutex
		admitted := 0
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				d, err := l.Reserve(context.Background(), dims, Amount{Tokens: 600})
				if err != nil {
					t.Error(err)
					return
				}
				if d.Reservation != nil {
					mu.Lock()
					admitted++
					mu.Unlock()
				} else if d.Denial.Dimension.Kind != KindTokens || d.Denial.Requested != 600 || d.Denial.Used != 9600 {
					t.Errorf("denial %+v, want tokens used 9600, requested 600", d.Denial)
				}
			})
		}
		wg.Wait()
		if admitted != 16 {
			t.Fatalf("%d of 50 admitted, want 16", admitted)
		}
		// The refused did not take a request either: 1000-16 remain.
		d := reserve(t, l, dims[:1], 0)
		if d.Status[0].Remaining != 1000-17 {
			t.Fatalf("requests remaining %d, want %d", d.Status[0].Remaining, 1000-17)
		}
	})
}

// A lone request larger than the limit passes capped; its overage is
// debt that delays the next.
func TestLoneLargeRequestDebt(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, clock *fakeClock) {
		dims := []Dimension{TokensPer("key:a", mustRate(t, "1000/1m"))}
		d := reserve(t, l, dims, 1000)
		if d.Denial != nil {
			t.Fatalf("lone request refused: %+v", d.Denial)
		}
		if err := l.Reconcile(context.Background(), d.Reservation, Amount{Tokens: 3000}); err != nil {
			t.Fatal(err)
		}
		next := reserve(t, l, dims, 100)
		if next.Denial == nil {
			t.Fatal("request after a 2000-token overage admitted")
		}
		// 3000 used, 900 must drain for 100 to fit: 2100 tokens at 1000/min.
		if next.Denial.Used != 3000 || next.Denial.RetryAfter != 126*time.Second {
			t.Fatalf("denial %+v, want used 3000, retry after 2m6s", next.Denial)
		}
		clock.Advance(126*time.Second - time.Millisecond)
		if reserve(t, l, dims, 100).Denial == nil {
			t.Fatal("admitted before its retry-after")
		}
		clock.Advance(time.Millisecond)
		d = reserve(t, l, dims, 100)
		if d.Denial != nil {
			t.Fatalf("refused at its retry-after: %+v", d.Denial)
		}
		if st := d.Status[0]; st.Remaining != 0 || st.Reset != time.Minute {
			t.Fatalf("status %+v, want remaining 0, reset 1m", st)
		}
	})
}

// A request needing more than the whole limit can never pass.
func TestTooLarge(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, _ *fakeClock) {
		dims := []Dimension{RequestsPer("key:a", mustRate(t, "10/1m")), TokensPer("key:a", mustRate(t, "1000/1m"))}
		d := reserve(t, l, dims, 1001)
		if d.Denial == nil || !d.Denial.TooLarge || d.Denial.RetryAfter != 0 || d.Denial.Requested != 1001 || d.Denial.Dimension.Kind != KindTokens {
			t.Fatalf("decision %+v, want too large", d.Denial)
		}
		if d.Status != nil {
			t.Fatalf("status %+v for a request no store saw", d.Status)
		}
		if st := reserve(t, l, dims, 1000).Status; st[0].Remaining != 9 || st[1].Remaining != 0 {
			t.Fatalf("the too-large request took something: %+v", st)
		}
	})
}

func TestReconcileAndRefund(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, _ *fakeClock) {
		ctx := context.Background()
		dims := []Dimension{RequestsPer("key:a", mustRate(t, "2/1m")), TokensPer("key:a", mustRate(t, "1000/1m"))}
		// Refunds give back the request and every token, any number of times.
		for range 5 {
			d := reserve(t, l, dims, 800)
			if d.Denial != nil {
				t.Fatalf("refused after refunds: %+v", d.Denial)
			}
			if err := l.Refund(ctx, d.Reservation); err != nil {
				t.Fatal(err)
			}
			if err := l.Refund(ctx, d.Reservation); !errors.Is(err, ErrSettled) {
				t.Fatalf("second refund: %v, want ErrSettled", err)
			}
			if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 5}); !errors.Is(err, ErrSettled) {
				t.Fatalf("reconcile after refund: %v, want ErrSettled", err)
			}
		}
		// Reconciling below the estimate refunds the difference.
		d := reserve(t, l, dims, 800)
		if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 200}); err != nil {
			t.Fatal(err)
		}
		d = reserve(t, l, dims, 800)
		if d.Denial != nil {
			t.Fatalf("800 refused with 800 left: %+v", d.Denial)
		}
		if st := d.Status; st[0].Remaining != 0 || st[1].Remaining != 0 {
			t.Fatalf("status %+v, want nothing left", st)
		}
		if d.Reservation.Tokens() != 800 {
			t.Fatalf("Tokens() = %d, want 800", d.Reservation.Tokens())
		}
	})
}

func TestConcurrency(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, _ *fakeClock) {
		ctx := context.Background()
		dims := []Dimension{ConcurrentMax("key:a", 2), RequestsPer("key:a", mustRate(t, "100/1m"))}
		a, b := reserve(t, l, dims, 0), reserve(t, l, dims, 0)
		if a.Denial != nil || b.Denial != nil {
			t.Fatal("two requests refused under concurrent 2")
		}
		if b.Status[0].Remaining != 0 || b.Status[0].Reset != 0 {
			t.Fatalf("status %+v, want remaining 0, reset 0", b.Status[0])
		}
		c := reserve(t, l, dims, 0)
		if c.Denial == nil || c.Denial.Dimension.Kind != KindConcurrent || c.Denial.Used != 2 || c.Denial.RetryAfter != time.Second {
			t.Fatalf("third request: %+v, want refused on concurrency", c.Denial)
		}
		if err := l.Reconcile(ctx, a.Reservation, Amount{Tokens: 0}); err != nil {
			t.Fatal(err)
		}
		// Settling again must not release a second slot.
		if err := l.Reconcile(ctx, a.Reservation, Amount{Tokens: 0}); !errors.Is(err, ErrSettled) {
			t.Fatalf("second reconcile: %v, want ErrSettled", err)
		}
		if d := reserve(t, l, dims, 0); d.Denial != nil {
			t.Fatalf("refused after a release: %+v", d.Denial)
		}
		if d := reserve(t, l, dims, 0); d.Denial == nil {
			t.Fatal("a double release freed a slot")
		}
		if err := l.Refund(ctx, b.Reservation); err != nil {
			t.Fatal(err)
		}
		if d := reserve(t, l, dims, 0); d.Denial != nil {
			t.Fatalf("refused after a refund: %+v", d.Denial)
		}
	})
}

// A daily quota runs out, stays out until midnight UTC, then restarts.
func TestQuotaPeriodBoundary(t *testing.T) {
	start := time.Date(2026, 11, 26, 23, 59, 59, 500e6, time.UTC)
	eachStore(t, start, func(t *testing.T, l *Limiter, clock *fakeClock) {
		dims := []Dimension{QuotaOf("key:a", Quota{1000, Day}), TokensPer("key:a", mustRate(t, "100000/1m"))}
		d := reserve(t, l, dims, 600)
		if d.Denial != nil {
			t.Fatalf("refused: %+v", d.Denial)
		}
		if st := d.Status[0]; st.Remaining != 400 || st.Reset != 500*time.Millisecond {
			t.Fatalf("quota status %+v, want 400 left, reset 500ms", st)
		}
		if err := l.Reconcile(context.Background(), d.Reservation, Amount{Tokens: 1200}); err != nil {
			t.Fatal(err)
		}
		d = reserve(t, l, dims, 1)
		if d.Denial == nil || d.Denial.Dimension.Kind != KindQuota || d.Denial.Used != 1200 || d.Denial.RetryAfter != 500*time.Millisecond {
			t.Fatalf("over quota: %+v, want refused until midnight", d.Denial)
		}
		clock.Advance(500 * time.Millisecond)
		d = reserve(t, l, dims, 1000)
		if d.Denial != nil {
			t.Fatalf("refused in the new day: %+v", d.Denial)
		}
		if st := d.Status[0]; st.Remaining != 0 || st.Reset != 24*time.Hour {
			t.Fatalf("new day status %+v, want remaining 0, reset 24h", st)
		}
		// The tokens bucket is not a quota: it kept its 1200 less 0.5s of refill.
		if st := d.Status[1]; st.Remaining != 100000-1200+833-1000 {
			t.Fatalf("tokens status %+v, want remaining %d", st, 100000-1200+833-1000)
		}
	})
}

// All dimensions of a request are reserved or none: a refusal on the
// model's limit takes nothing from the identity's.
func TestAllOrNone(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, _ *fakeClock) {
		model := TokensPer("model:m", mustRate(t, "1000/1m"))
		a := []Dimension{RequestsPer("key:a", mustRate(t, "10/1m")), ConcurrentMax("key:a", 1), QuotaOf("key:a", Quota{5000, Month}), model}
		b := []Dimension{RequestsPer("key:b", mustRate(t, "10/1m")), model}
		if d := reserve(t, l, b, 900); d.Denial != nil {
			t.Fatalf("b refused: %+v", d.Denial)
		}
		d := reserve(t, l, a, 200)
		if d.Denial == nil || d.Denial.Dimension.Scope != "model:m" || d.Denial.Used != 900 {
			t.Fatalf("a: %+v, want refused on the model", d.Denial)
		}
		// A refusal reports every dimension as it stays, for the 429's headers.
		if st := d.Status; len(st) != 4 || st[0].Remaining != 10 || st[1].Remaining != 1 || st[2].Remaining != 5000 ||
			st[3].Remaining != 100 || st[3].Reset != 54*time.Second {
			t.Fatalf("status on refusal: %+v, want 4 remaining 10, 1, 5000, 100, the last resetting in 54s", st)
		}
		d = reserve(t, l, a, 100)
		if d.Denial != nil {
			t.Fatalf("a refused: %+v", d.Denial)
		}
		want := []int64{9, 0, 4900, 0}
		for i, st := range d.Status {
			if st.Remaining != want[i] {
				t.Fatalf("status %d: %+v, want remaining %d", i, st, want[i])
			}
		}
	})
}

// A bucket refills continuously: one request per second at 60/1m.
func TestContinuousRefill(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, clock *fakeClock) {
		dims := []Dimension{RequestsPer("key:a", mustRate(t, "60/1m"))}
		for range 60 {
			reserve(t, l, dims, 0)
		}
		for i := range 5 {
			clock.Advance(time.Second)
			if reserve(t, l, dims, 0).Denial != nil {
				t.Fatalf("second %d: refused", i)
			}
			if reserve(t, l, dims, 0).Denial == nil {
				t.Fatalf("second %d: two admitted", i)
			}
		}
		clock.Advance(time.Hour)
		if st := reserve(t, l, dims, 0).Status[0]; st.Remaining != 59 {
			t.Fatalf("after an hour: %+v, want remaining 59", st)
		}
	})
}

func TestInvalidDimensions(t *testing.T) {
	l := New(NewMemory(), nil, 0)
	for _, dims := range [][]Dimension{
		{{Scope: "a", Kind: KindRequests, Limit: 0, Window: time.Minute}},
		{{Scope: "a", Kind: KindTokens, Limit: 10}},
		{{Scope: "a", Kind: KindQuota, Limit: 10}},
		{{Scope: "a", Kind: 9, Limit: 10}},
		{ConcurrentMax("a", 1), ConcurrentMax("a", 2)},
	} {
		if _, err := l.Reserve(context.Background(), dims, Amount{Tokens: 1}); err == nil {
			t.Errorf("Reserve(%+v) accepted", dims)
		}
	}
	if _, err := l.Reserve(context.Background(), nil, Amount{Tokens: -1}); err == nil {
		t.Error("negative tokens accepted")
	}
}

// A reply reconciled after the period boundary charges the period it was
// reserved in, not the new one.
func TestQuotaReconcileAcrossBoundary(t *testing.T) {
	start := time.Date(2026, 11, 29, 23, 59, 59, 0, time.UTC) // a Sunday
	eachStore(t, start, func(t *testing.T, l *Limiter, clock *fakeClock) {
		dims := []Dimension{QuotaOf("key:a", Quota{1000, Week})}
		d := reserve(t, l, dims, 100)
		clock.Advance(2 * time.Second) // into the next ISO week
		if err := l.Reconcile(context.Background(), d.Reservation, Amount{Tokens: 900}); err != nil {
			t.Fatal(err)
		}
		if st := reserve(t, l, dims, 1).Status[0]; st.Remaining != 999 || st.Reset != 7*24*time.Hour-time.Second {
			t.Fatalf("new week: %+v, want 999 left, reset 7d less 1s", st)
		}
	})
}

func TestNoDimensions(t *testing.T) {
	l := New(NewMemory(), nil, 0)
	d, err := l.Reserve(context.Background(), nil, Amount{Tokens: 10})
	if err != nil || d.Reservation == nil || len(d.Status) != 0 {
		t.Fatalf("Reserve(nil) = %+v, %v; want admitted", d, err)
	}
	if err := l.Reconcile(context.Background(), d.Reservation, Amount{Tokens: 20}); err != nil {
		t.Fatal(err)
	}
}

// FuzzBucket drives one tokens bucket with arbitrary costs and pauses:
// it never admits more than the capacity plus what refilled, and a
// refused request passes once its RetryAfter has elapsed.
func FuzzBucket(f *testing.F) {
	f.Add(uint16(100), uint8(59), []byte{0, 10, 0, 255, 3, 128, 64, 64, 200, 1})
	f.Add(uint16(9999), uint8(0), []byte{1, 60, 1, 60, 1, 60, 255, 255})
	f.Fuzz(func(t *testing.T, limit uint16, windowSec uint8, ops []byte) {
		rate := Rate{N: int64(limit) + 1, Window: (time.Duration(windowSec) + 1) * time.Second}
		clock := newFakeClock(t0)
		l := New(NewMemory(), clock, 0)
		dims := []Dimension{TokensPer("s", rate)}
		var admitted int64
		check := func() {
			// Capacity plus refill, with a µs of slack per call for rounding.
			elapsed := clock.Now().Sub(t0)
			bound := float64(rate.N)*slack + float64(rate.N)*(elapsed.Seconds()+1e-6*float64(len(ops)))/rate.Window.Seconds()
			if float64(admitted) > bound {
				t.Fatalf("admitted %d tokens in %s, bound %.3f", admitted, elapsed, bound)
			}
		}
		for i := 0; i+1 < len(ops); i += 2 {
			clock.Advance(time.Duration(ops[i]) * rate.Window / 64)
			cost := int64(ops[i+1]) * rate.N / 255
			d, err := l.Reserve(context.Background(), dims, Amount{Tokens: cost})
			if err != nil {
				t.Fatal(err)
			}
			if d.Denial != nil {
				den := d.Denial
				if den.TooLarge || den.RetryAfter <= 0 || float64(den.Used+cost) <= float64(rate.N)-1 {
					t.Fatalf("cost %d refused with %+v, want not too large, a positive retry-after, used+cost over the limit", cost, den)
				}
				clock.Advance(den.RetryAfter)
				if d, err = l.Reserve(context.Background(), dims, Amount{Tokens: cost}); err != nil || d.Denial != nil {
					t.Fatalf("cost %d refused after its retry-after %s: %+v, %v", cost, den.RetryAfter, d.Denial, err)
				}
			}
			if st := d.Status[0]; st.Remaining < 0 || st.Remaining > rate.N || st.Reset > rate.Window+time.Microsecond {
				t.Fatalf("status %+v, want remaining 0..%d, reset at most %s", st, rate.N, rate.Window+time.Microsecond)
			}
			admitted += cost
			check()
		}
	})
}

// A clock behind the bucket's last update (another gateway's, slightly
// skewed) refills nothing, and the time it lags is not refilled twice.
func TestClockBehind(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, clock *fakeClock) {
		dims := []Dimension{RequestsPer("key:a", mustRate(t, "10/1m"))}
		for range 10 {
			reserve(t, l, dims, 0)
		}
		clock.Advance(-30 * time.Second)
		if d := reserve(t, l, dims, 0); d.Denial == nil || d.Denial.Used != 10 {
			t.Fatalf("behind: %+v, want refused at 10 used", d.Denial)
		}
		clock.Advance(30*time.Second + 6*time.Second) // one request refilled since t0
		if d := reserve(t, l, dims, 0); d.Denial != nil {
			t.Fatalf("refused after 6s: %+v", d.Denial)
		}
		if d := reserve(t, l, dims, 0); d.Denial == nil {
			t.Fatal("two admitted after 6s")
		}
	})
}

// An id belongs to who claimed it, in every store, until its ttl ends:
// nobody else owns it, nor does anybody own an id never claimed.
func TestOwners(t *testing.T) {
	srv := redistest.Start(t)
	for name, store := range map[string]Owners{"memory": NewMemory(), "redis": openRedis(t, srv.Addr, uniquePrefix(), time.Second)} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			if err := store.Claim(ctx, "resp_1", "key:alice", time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := store.Claim(ctx, "resp_short", "key:alice", 50*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			for _, tt := range []struct {
				id, owner string
				want      bool
			}{
				{"resp_1", "key:alice", true},
				{"resp_1", "key:bob", false},
				{"resp_1", "key:Alice", false},
				{"resp_2", "key:alice", false},
				{"", "key:alice", false},
			} {
				if got, err := store.Owns(ctx, tt.id, tt.owner); err != nil || got != tt.want {
					t.Errorf("%s owns %s: %v %v, want %v", tt.owner, tt.id, got, err, tt.want)
				}
			}
			time.Sleep(100 * time.Millisecond)
			if got, err := store.Owns(ctx, "resp_short", "key:alice"); err != nil || got {
				t.Errorf("an expired claim: %v %v, want false, nil", got, err)
			}
		})
	}
}

// Memory keeps the latest MaxMemoryOwners claims, forgetting the oldest.
func TestMemoryOwnersBounded(t *testing.T) {
	m := NewMemory()
	ctx := context.Background()
	for i := range MaxMemoryOwners + 10 {
		if err := m.Claim(ctx, "resp_"+strconv.Itoa(i), "o", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(m.owners.byID); n != MaxMemoryOwners {
		t.Fatalf("%d records kept, want %d", n, MaxMemoryOwners)
	}
	for i, want := range map[int]bool{0: false, 9: false, 10: true, MaxMemoryOwners + 9: true} {
		if got, _ := m.Owns(ctx, "resp_"+strconv.Itoa(i), "o"); got != want {
			t.Errorf("resp_%d: owned %v, want %v", i, got, want)
		}
	}
}

// A budget counts money as a quota counts tokens: reserved at the
// request's largest cost, settled at its real cost, refused until the
// period ends once spent, on each store; a quota beside it counts tokens
// apart.
func TestBudget(t *testing.T) {
	start := time.Date(2026, 12, 7, 23, 0, 0, 0, time.UTC)
	eachStore(t, start, func(t *testing.T, l *Limiter, clock *fakeClock) {
		ctx := context.Background()
		dims := []Dimension{BudgetOf("key:a", Budget{Micros: 1_000_000, Period: Day}), QuotaOf("key:a", Quota{N: 1_000_000, Period: Day})}
		want := Amount{Tokens: 1000, Micros: 400_000} // $0.40 at most
		var held []*Reservation
		for i := range 2 {
			d, err := l.Reserve(ctx, dims, want)
			if err != nil || d.Denial != nil {
				t.Fatalf("request %d: %+v, %v: want admitted", i, d.Denial, err)
			}
			held = append(held, d.Reservation)
		}
		d, err := l.Reserve(ctx, dims, want)
		if err != nil || d.Denial == nil || d.Denial.Dimension.Kind != KindBudget || d.Denial.Used != 800_000 || d.Denial.RetryAfter != time.Hour {
			t.Fatalf("a third $0.40 with $0.80 reserved of $1: %+v, %v; want refused by the budget until midnight", d.Denial, err)
		}
		// The first cost $0.10: $0.30 comes back, and the third fits.
		if err := l.Reconcile(ctx, held[0], Amount{Tokens: 900, Micros: 100_000}); err != nil {
			t.Fatal(err)
		}
		d, err = l.Reserve(ctx, dims, want)
		if err != nil || d.Denial != nil {
			t.Fatalf("after a settlement to $0.10: %+v, %v; want admitted", d.Denial, err)
		}
		if st := d.Status[0]; st.Remaining != 100_000 || st.Reset != time.Hour {
			t.Fatalf("budget status %+v, want $0.10 left, reset in an hour", st)
		}
		if st := d.Status[1]; st.Remaining != 1_000_000-900-2000 {
			t.Fatalf("quota status %+v, want the tokens alone counted", st)
		}
		clock.Advance(time.Hour)
		if d, err := l.Reserve(ctx, dims, Amount{Micros: 1_000_000}); err != nil || d.Denial != nil {
			t.Fatalf("the whole budget in a new day: %+v, %v; want admitted", d.Denial, err)
		}
	})
}
