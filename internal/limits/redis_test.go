package limits

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// commandCounter is a go-redis hook that records the commands sent.
type commandCounter struct {
	mu    sync.Mutex
	names []string
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.names = append(c.names, cmd.Name())
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		c.names = append(c.names, "pipeline")
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

// take returns the commands recorded since the last take.
func (c *commandCounter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := c.names
	c.names = nil
	return names
}

// rawClient is a plain client on addr, for looking at the keys.
func rawClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// Exactly one round trip per reservation and per settlement, none for a
// request that can never pass.
func TestRedisOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	store := openRedis(t, srv.Addr, uniquePrefix(), 2*time.Second)
	counter := &commandCounter{}
	store.AddHook(counter)
	l := New(store, nil, 0)
	ctx := context.Background()
	dims := []Dimension{
		RequestsPer("key:a", mustRate(t, "1000/1m")), TokensPer("key:a", mustRate(t, "100000/1m")),
		ConcurrentMax("key:a", 100), QuotaOf("key:a", Quota{1 << 40, Month}), TokensPer("model:m", mustRate(t, "100000/1m")),
	}
	// A new connection sends HELLO first; pooled, it is set up once.
	if err := store.client.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if got := counter.take(); strings.Join(got, " ") != "ping hello" {
		t.Fatalf("connection setup sent %v, want ping hello", got)
	}
	// The first call finds the script uncached: EVALSHA, then EVAL.
	d := reserve(t, l, dims, 10)
	if got := counter.take(); strings.Join(got, " ") != "evalsha eval" {
		t.Fatalf("first reservation sent %v, want evalsha eval", got)
	}
	if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 5}); err != nil {
		t.Fatal(err)
	}
	counter.take()
	for range 10 {
		d := reserve(t, l, dims, 10)
		if got := counter.take(); len(got) != 1 || got[0] != "evalsha" {
			t.Fatalf("reservation sent %v, want one evalsha", got)
		}
		if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 20}); err != nil {
			t.Fatal(err)
		}
		if got := counter.take(); len(got) != 1 || got[0] != "evalsha" {
			t.Fatalf("reconciliation sent %v, want one evalsha", got)
		}
	}
	// Nothing to settle without a tokens change or a concurrency slot.
	d = reserve(t, l, dims[:1], 10)
	counter.take()
	if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 3}); err != nil {
		t.Fatal(err)
	}
	if got := counter.take(); len(got) != 0 {
		t.Fatalf("reconciling only a request count sent %v, want nothing", got)
	}
	if d := reserve(t, l, dims, 1<<20); d.Denial == nil || !d.Denial.TooLarge {
		t.Fatalf("want too large, got %+v", d)
	}
	if got := counter.take(); len(got) != 0 {
		t.Fatalf("a request that can never pass sent %v, want nothing", got)
	}
	// After SCRIPT FLUSH (or a restart) the script is sent again.
	if err := rawClient(t, srv.Addr).ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if d := reserve(t, l, dims, 10); d.Denial != nil {
		t.Fatalf("refused after script flush: %+v", d.Denial)
	}
	if got := counter.take(); strings.Join(got, " ") != "evalsha eval" {
		t.Fatalf("reservation after a flush sent %v, want evalsha eval", got)
	}
}

// Two stores (two gateways) on one server enforce one limit exactly, and
// a new store (a restarted gateway) finds the counts where they were.
func TestRedisSharedAndPersistent(t *testing.T) {
	srv := redistest.Start(t)
	prefix := uniquePrefix()
	clock := newFakeClock(t0)
	a := New(openRedis(t, srv.Addr, prefix, 2*time.Second), clock, 0)
	b := New(openRedis(t, srv.Addr, prefix, 2*time.Second), clock, 0)
	dims := []Dimension{RequestsPer("key:a", mustRate(t, "100/1m")), TokensPer("key:a", mustRate(t, "10000/1m"))}
	admitted := 0
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 300 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Go(func() {
			d, err := l.Reserve(context.Background(), dims, Amount{Tokens: 10})
			if err != nil {
				t.Error(err)
				return
			}
			if d.Reservation != nil {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if admitted != 100 {
		t.Fatalf("two stores admitted %d, want 100", admitted)
	}
	clock.Advance(6 * time.Second) // 10 requests refill
	restarted := New(openRedis(t, srv.Addr, prefix, 2*time.Second), clock, 0)
	for i := range 10 {
		d := reserve(t, restarted, dims, 10)
		if d.Denial != nil {
			t.Fatalf("request %d after 6s refused: %+v", i, d.Denial)
		}
		if st := d.Status[1]; st.Remaining != 10000-1000+1000-int64(i+1)*10 {
			t.Fatalf("tokens status %+v, want remaining %d", st, 10000-1000+1000-int64(i+1)*10)
		}
	}
	if d := reserve(t, restarted, dims, 10); d.Denial == nil || d.Denial.Used != 100 {
		t.Fatalf("11th request after 6s: %+v, want refused at 100 used", d.Denial)
	}
}

// Keys are hash-tagged by scope, prefixed, and expire.
func TestRedisKeys(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock(t0)
	l := New(openRedis(t, srv.Addr, "gw:", 2*time.Second), clock, 30*time.Minute)
	ctx := context.Background()
	dims := []Dimension{
		RequestsPer("key:a", mustRate(t, "10/1m")), TokensPer("key:a", mustRate(t, "1000/1m")),
		ConcurrentMax("key:a", 2), QuotaOf("key:a", Quota{5000, Day}), TokensPer("model:m", mustRate(t, "1000/1m")),
	}
	d := reserve(t, l, dims, 500)
	raw := rawClient(t, srv.Addr)
	// The bucket expires when it would be full again, plus a second.
	want := map[string]time.Duration{
		"gw:{key:a}:requests":       6*time.Second + time.Second,
		"gw:{key:a}:tokens":         30*time.Second + time.Second,
		"gw:{key:a}:concurrent":     30 * time.Minute,
		"gw:{key:a}:quota:20261126": t0.Truncate(24 * time.Hour).Add(48 * time.Hour).Sub(t0),
		"gw:{model:m}:tokens":       30*time.Second + time.Second,
	}
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(want) {
		t.Fatalf("keys %v, want %d", keys, len(want))
	}
	for k, ttl := range want {
		got, err := raw.PTTL(ctx, k).Result()
		if err != nil || got > ttl || got < ttl-time.Minute/2 {
			t.Errorf("PTTL %s = %s, %v; want about %s", k, got, err, ttl)
		}
	}
	// A refund empties the buckets and the lease set: their keys go.
	if err := l.Refund(ctx, d.Reservation); err != nil {
		t.Fatal(err)
	}
	keys, err = raw.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 1 || keys[0] != "gw:{key:a}:quota:20261126" {
		t.Fatalf("keys after a refund: %v, %v; want only the quota's", keys, err)
	}
	if _, err := NewRedis(RedisOptions{Address: srv.Addr, KeyPrefix: "a{b}:"}); err == nil {
		t.Fatal("a key prefix with a hash tag accepted")
	}
}

// A server that stops answering, dies or comes back: errors within the
// timeout, then service again within seconds.
func TestRedisOutage(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 100 * time.Millisecond
	// Scheduling on a loaded machine, not Redis, takes the margin.
	const margin = 400 * time.Millisecond
	l := New(openRedis(t, srv.Addr, uniquePrefix(), timeout), nil, 0)
	dims := []Dimension{RequestsPer("key:a", mustRate(t, "1000000/1m")), ConcurrentMax("key:a", 1000)}
	ctx := context.Background()
	reserveTimed := func() (time.Duration, error) {
		start := time.Now()
		_, err := l.Reserve(ctx, dims, Amount{Tokens: 0})
		return time.Since(start), err
	}
	if _, err := reserveTimed(); err != nil {
		t.Fatal(err)
	}

	srv.Pause()
	for range 3 {
		if took, err := reserveTimed(); err == nil || took > timeout+margin {
			t.Fatalf("paused server: %v after %s, want an error within %s", err, took, timeout)
		}
	}
	srv.Resume()
	waitRecovery(t, l, dims)

	srv.Kill()
	for range 3 {
		if took, err := reserveTimed(); err == nil || took > timeout+margin {
			t.Fatalf("dead server: %v after %s, want an error within %s", err, took, timeout)
		}
	}
	srv.Restart()
	waitRecovery(t, l, dims)
}

// waitRecovery fails t unless a reservation succeeds within 5 seconds.
func waitRecovery(t *testing.T, l *Limiter, dims []Dimension) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := l.Reserve(context.Background(), dims, Amount{Tokens: 0})
		if err == nil {
			if d.Denial != nil {
				t.Fatalf("refused after recovery: %+v", d.Denial)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery within 5s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ACL users and passwords work, and a wrong password's error does not
// repeat it.
func TestRedisAuth(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "s3cret-pw", "--user", "gw", "on", ">gw-pw-123", "~*", "+@all")
	dims := []Dimension{RequestsPer("key:a", mustRate(t, "10/1m"))}
	for _, o := range []RedisOptions{
		{Address: srv.Addr, Password: "s3cret-pw"},
		{Address: srv.Addr, Username: "gw", Password: "gw-pw-123", DB: 3},
	} {
		r, err := NewRedis(o)
		if err != nil {
			t.Fatal(err)
		}
		if d := reserve(t, New(r, nil, 0), dims, 0); d.Denial != nil {
			t.Fatalf("refused: %+v", d.Denial)
		}
		r.Close()
	}
	for db, want := range map[int]int64{3: 1, 5: 0} {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr, Password: "s3cret-pw", DB: db})
		n, err := c.Exists(context.Background(), "{key:a}:requests").Result()
		c.Close()
		if err != nil || n != want {
			t.Fatalf("db %d holds %d bucket keys, %v; want %d", db, n, err, want)
		}
	}
	for _, o := range []RedisOptions{
		{Address: srv.Addr, Password: "wrong-pw-456"},
		{Address: srv.Addr, Username: "gw", Password: "wrong-pw-456"},
		{Address: srv.Addr},
	} {
		r, err := NewRedis(o)
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(r, nil, 0).Reserve(context.Background(), dims, Amount{Tokens: 0})
		r.Close()
		if err == nil || strings.Contains(err.Error(), "wrong-pw") || strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("bad credentials: error %v, want an error not naming a password", err)
		}
	}
}

// With TLS set, the store speaks TLS; without it, it cannot talk to a
// TLS-only server.
func TestRedisTLS(t *testing.T) {
	srv, conf := redistest.StartTLS(t)
	dims := []Dimension{RequestsPer("key:a", mustRate(t, "1/1m"))}
	r, err := NewRedis(RedisOptions{Address: srv.Addr, TLS: conf, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l := New(r, nil, 0)
	if d := reserve(t, l, dims, 0); d.Denial != nil {
		t.Fatalf("refused: %+v", d.Denial)
	}
	if d := reserve(t, l, dims, 0); d.Denial == nil {
		t.Fatal("second request admitted: the bucket was not kept")
	}
	plain := openRedis(t, srv.Addr, "", 200*time.Millisecond)
	if _, err := New(plain, nil, 0).Reserve(context.Background(), dims, Amount{Tokens: 0}); err == nil {
		t.Fatal("plain connection to a TLS-only server succeeded")
	}
}

// A concurrency slot in Redis is leased: one whose request was never
// settled (its gateway lost touch, or died) is free a lease later;
// renewing it keeps it for as long as its request runs; a renewal that
// comes after the release does not bring it back.
func TestRedisLeases(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	l := New(openRedis(t, srv.Addr, uniquePrefix(), time.Second), clock, 0)
	dims := []Dimension{ConcurrentMax("key:lease", 1)}
	ctx := context.Background()
	admitted := func() *Reservation {
		t.Helper()
		d, err := l.Reserve(ctx, dims, Amount{Tokens: 0})
		if err != nil {
			t.Fatal(err)
		}
		return d.Reservation
	}
	if admitted() == nil { // never settled
		t.Fatal("the first request was refused")
	}
	clock.Advance(DefaultLease - time.Second)
	if admitted() != nil {
		t.Fatal("a second request was admitted while the first one's lease runs")
	}
	clock.Advance(2 * time.Second)
	held := admitted()
	if held == nil {
		t.Fatal("the lease of a request never settled did not end")
	}
	for range 3 { // three leases long, renewed twice a lease
		clock.Advance(DefaultLease / 2)
		if err := l.Renew(ctx, held); err != nil {
			t.Fatal(err)
		}
		if admitted() != nil {
			t.Fatal("a renewed slot was taken")
		}
	}
	if err := l.Refund(ctx, held); err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx, held); err != nil {
		t.Fatal(err)
	}
	if again := admitted(); again == nil {
		t.Fatal("a renewal after the release brought the slot back")
	} else if err := l.Refund(ctx, again); err != nil {
		t.Fatal(err)
	}
}

// A settlement Redis does not take (the server paused, as in a network
// cut) is sent again once it answers: the slot is free at once, not a
// lease later, and later settlements follow it in order.
func TestRedisSettlementRetried(t *testing.T) {
	srv := redistest.Start(t)
	store := openRedis(t, srv.Addr, uniquePrefix(), 50*time.Millisecond)
	clock := newFakeClock(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	l := New(store, clock, 0)
	dims := []Dimension{ConcurrentMax("key:cut", 1), TokensPer("key:cut", mustRate(t, "1000/1h"))}
	ctx := context.Background()
	d, err := l.Reserve(ctx, dims, Amount{Tokens: 600})
	if err != nil || d.Reservation == nil {
		t.Fatalf("%+v %v, want a reservation", d, err)
	}
	srv.Pause()
	if err := l.Reconcile(ctx, d.Reservation, Amount{Tokens: 100}); err == nil {
		t.Fatal("a paused server took the settlement")
	}
	if waiting, _ := store.Pending(); waiting != 1 {
		t.Fatalf("%d settlements waiting, want 1", waiting)
	}
	srv.Resume()
	deadline := time.Now().Add(30 * time.Second)
	for waiting, _ := store.Pending(); waiting > 0; waiting, _ = store.Pending() {
		if time.Now().After(deadline) {
			t.Fatalf("%d settlements still waiting 30s after the server came back", waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The slot is free and the 500 tokens not used are back: 900 fit.
	d, err = l.Reserve(ctx, dims, Amount{Tokens: 900})
	if err != nil || d.Reservation == nil {
		t.Fatalf("after the settlement was sent again: %+v %v; want 900 tokens admitted", d.Denial, err)
	}
	if _, dropped := store.Pending(); dropped != 0 {
		t.Fatalf("%d settlements dropped, want 0", dropped)
	}
}
