package limits

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// DefaultRedisTimeout bounds every Redis call unless RedisOptions says
// otherwise.
const DefaultRedisTimeout = 50 * time.Millisecond

// RedisOptions configures a Redis store.
type RedisOptions struct {
	// Address is the server's host:port.
	Address string
	// Username is the ACL user; empty means the default user.
	Username string
	// Password authenticates the connection; empty means none.
	Password string
	// DB is the database number (default 0).
	DB int
	// TLS, when set, is used to connect with TLS.
	TLS *tls.Config
	// KeyPrefix starts every key (e.g. "chat_gateway:"). It must not
	// contain '{': the hash tag that follows it must be the key's first.
	KeyPrefix string
	// Timeout bounds every call, connection included: no call waits
	// longer. Default DefaultRedisTimeout.
	Timeout time.Duration
}

// Redis is a Store in a Redis server, shared by every gateway instance
// that uses it, so they enforce one limit together and a restart loses
// nothing.
//
// A reservation is one EVALSHA round trip (EVAL once more after the
// server's script cache is flushed) running a script that refills, checks
// and reserves every dimension; a settlement is another. Times come from
// the Limiter's clock, not Redis's TIME, so a fake clock drives it in
// tests; gateways sharing a Redis need synchronised clocks (NTP), and a
// clock behind a bucket's last update refills nothing rather than going
// back. Every key expires once it holds nothing worth keeping (a full
// bucket, a past quota period, an idle concurrency set), so idle
// identities do not accumulate.
//
// Keys are "<prefix>{<scope>}:<kind>[:<period start>]": all keys of one
// scope share a hash tag, hence a Redis Cluster slot. A request limited
// both per identity and per model touches two scopes; this store talks to
// one server (standalone, or a Sentinel-managed primary), where one
// script over both scopes is atomic. A Cluster deployment would need the
// two scopes reserved in two phases (the model's, then the identity's,
// refunding the first when the second is refused), which this store does
// not do.
type Redis struct {
	client  *redis.Client
	prefix  string
	timeout time.Duration
	retry   retryQueue
	ledger  redisLedger
}

// The scripts, hashed once; Run sends EVALSHA and falls back to EVAL.
var (
	reserveLua = redis.NewScript(reserveScript)
	settleLua  = redis.NewScript(settleScript)
	renewLua   = redis.NewScript(renewScript)
)

// Settlements the server did not take are kept and sent again, in
// order, until it takes them: a refund, a charge or the release of a
// concurrency slot lost to a network cut would otherwise count against
// the client (a slot until its lease ends). The queue holds at most
// maxPending settlements, each for at most maxRetryAge; the oldest go
// first when it is full.
const (
	maxPending  = 10000
	maxRetryAge = 10 * time.Minute
	// retryBackoff and maxRetryBackoff space the attempts while the
	// server does not answer.
	retryBackoff    = 50 * time.Millisecond
	maxRetryBackoff = 2 * time.Second
)

// retryQueue is a Redis store's settlements waiting to be sent again.
type retryQueue struct {
	mu      sync.Mutex
	plans   []pendingPlan
	running bool          // a goroutine is sending them
	closed  chan struct{} // closed by Close: the goroutine stops
	dropped int           // settlements given up, too old or too many
}

// pendingPlan is a settlement waiting, and since when.
type pendingPlan struct {
	p     *plan
	since time.Time
}

// NewRedis returns a store using the Redis server at o.Address. It does
// not connect until the first call.
func NewRedis(o RedisOptions) (*Redis, error) {
	if o.Address == "" {
		return nil, errors.New("limits: redis address missing")
	}
	if strings.ContainsAny(o.KeyPrefix, "{}") {
		return nil, errors.New("limits: redis key_prefix must not contain '{' or '}'")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultRedisTimeout
	}
	return &Redis{client: NewRedisClient(o), prefix: o.KeyPrefix, timeout: o.Timeout, retry: retryQueue{closed: make(chan struct{})}}, nil
}

// NewRedisClient returns a client of the server at o.Address, every
// call bounded by o.Timeout (DefaultRedisTimeout when 0), never retried,
// not connected until its first call: the limits' and the response
// cache's.
func NewRedisClient(o RedisOptions) *redis.Client {
	if o.Timeout <= 0 {
		o.Timeout = DefaultRedisTimeout
	}
	return redis.NewClient(&redis.Options{
		Addr:                  o.Address,
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		TLSConfig:             o.TLS,
		DialTimeout:           o.Timeout,
		DialerRetries:         1,
		ReadTimeout:           o.Timeout,
		WriteTimeout:          o.Timeout,
		PoolTimeout:           o.Timeout,
		ContextTimeoutEnabled: true,
		// A new connection costs one HELLO (and SELECT for a DB) and
		// nothing more: no CLIENT SETINFO, no maintenance notifications.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		// A retried script may have run already: reserving twice is
		// worse than failing once.
		MaxRetries: -1,
	})
}

// Close sends the uses recorded and not yet sent, stops sending
// settlements again, drops those still waiting, and closes the
// connections.
func (r *Redis) Close() error {
	_ = r.flushLedger(context.Background())
	r.retry.mu.Lock()
	select {
	case <-r.retry.closed:
	default:
		close(r.retry.closed)
	}
	r.retry.mu.Unlock()
	return r.client.Close()
}

// closing reports whether Close has begun.
func (r *Redis) closing() bool {
	select {
	case <-r.retry.closed:
		return true
	default:
		return false
	}
}

// Pending returns the settlements waiting to be sent again and how many
// were given up (too old, or too many waiting).
func (r *Redis) Pending() (waiting, dropped int) {
	r.retry.mu.Lock()
	defer r.retry.mu.Unlock()
	return len(r.retry.plans), r.retry.dropped
}

// Destruct is Close, for caddy.UsagePool.
func (r *Redis) Destruct() error { return r.Close() }

// AddHook adds a go-redis hook to the client, e.g. to count or time
// round trips.
func (r *Redis) AddHook(h redis.Hook) { r.client.AddHook(h) }

// reserve implements Store.
func (r *Redis) reserve(ctx context.Context, p *plan) (int, []float64, error) {
	reply, err := r.run(ctx, reserveLua, p)
	if err != nil {
		return 0, nil, err
	}
	vals, ok := reply.([]any)
	if !ok || len(vals) != len(p.steps)+1 {
		return 0, nil, errors.New("limits: redis reserve: malformed reply")
	}
	head, ok := vals[0].(int64)
	if !ok || head < -1 || head >= int64(len(p.steps)) {
		return 0, nil, errors.New("limits: redis reserve: malformed reply")
	}
	levels := make([]float64, len(p.steps))
	for i, v := range vals[1:] {
		str, _ := v.(string)
		if levels[i], err = strconv.ParseFloat(str, 64); err != nil {
			return 0, nil, errors.New("limits: redis reserve: malformed level")
		}
	}
	return int(head), levels, nil
}

// settle implements Store. A settlement behind others still waiting
// waits behind them; one the server does not take joins them, and the
// error is returned all the same, for the caller to count.
func (r *Redis) settle(ctx context.Context, p *plan) error {
	q := &r.retry
	q.mu.Lock()
	if len(q.plans) > 0 {
		q.add(p)
		q.mu.Unlock()
		return nil
	}
	q.mu.Unlock()
	_, err := r.run(ctx, settleLua, p)
	if err != nil {
		q.mu.Lock()
		q.add(p)
		if !q.running {
			q.running = true
			go r.resend()
		}
		q.mu.Unlock()
	}
	return err
}

// add queues p; q.mu is held.
func (q *retryQueue) add(p *plan) {
	if len(q.plans) >= maxPending {
		q.plans = q.plans[1:]
		q.dropped++
	}
	q.plans = append(q.plans, pendingPlan{p, time.Now()})
}

// resend sends the waiting settlements, oldest first, until none is
// left or the store is closed, backing off while the server does not
// answer.
func (r *Redis) resend() {
	q := &r.retry
	wait := retryBackoff
	for {
		q.mu.Lock()
		for len(q.plans) > 0 && time.Since(q.plans[0].since) > maxRetryAge {
			q.plans = q.plans[1:]
			q.dropped++
		}
		if len(q.plans) == 0 {
			q.plans, q.running = nil, false
			q.mu.Unlock()
			return
		}
		next := q.plans[0].p
		q.mu.Unlock()
		if _, err := r.run(context.Background(), settleLua, next); err == nil {
			q.mu.Lock()
			if len(q.plans) > 0 && q.plans[0].p == next {
				q.plans = q.plans[1:]
			}
			q.mu.Unlock()
			wait = retryBackoff
			continue
		}
		select {
		case <-q.closed:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetryBackoff)
	}
}

// renew implements Store.
func (r *Redis) renew(ctx context.Context, p *plan) error {
	_, err := r.run(ctx, renewLua, p)
	return err
}

// leases implements Store: a gateway may lose touch with Redis, and a
// slot it cannot release must not last.
func (r *Redis) leases() bool { return true }

// run runs script over p's keys within the timeout.
func (r *Redis) run(ctx context.Context, script *redis.Script, p *plan) (any, error) {
	keys := make([]string, len(p.steps))
	args := make([]any, 2, 2+4*len(p.steps))
	args[0], args[1] = strconv.FormatFloat(p.now, 'f', -1, 64), p.id
	for i, s := range p.steps {
		keys[i] = r.prefix + s.key
		args = append(args, int(s.kind), s.limit, s.span, s.amount)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	reply, err := script.Run(ctx, r.client, keys, args...).Result()
	if err != nil {
		return nil, fmt.Errorf("limits: redis: %w", err)
	}
	return reply, nil
}

var _ Store = (*Redis)(nil)
