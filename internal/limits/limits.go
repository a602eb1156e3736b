// Package limits admits requests against rate limits, concurrency limits
// and token quotas, and charges them their real usage afterwards.
//
// Every limit is a Dimension: a scope (an identity such as a key id, or a
// model for limits shared by all callers) and what it counts. Requests and
// tokens per window are continuous token buckets (equivalently GCRA): the
// capacity is the limit and it refills at limit/window, so there is no
// window edge to burst across. Concurrent counts requests in flight. A
// quota is a token budget per UTC calendar period that starts afresh at
// each boundary.
//
// A Limiter reserves all dimensions of one request at once, all or none,
// in a Store: Memory in the process, or Redis shared by every gateway
// instance (one script, one round trip). The reservation is reconciled
// with the real usage when the reply ends: unused tokens are refunded,
// overage becomes debt that delays later requests.
package limits

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// Kind says what a dimension counts.
type Kind uint8

// The kinds of dimension. Their values are part of the Redis script's
// arguments: do not renumber them.
const (
	// KindRequests counts requests in a token bucket of Limit per Window.
	KindRequests Kind = iota + 1
	// KindTokens counts tokens in a token bucket of Limit per Window.
	KindTokens
	// KindConcurrent counts requests in flight, at most Limit.
	KindConcurrent
	// KindQuota counts tokens per calendar Period, at most Limit.
	KindQuota
	// KindBudget counts money, in millionths of a US dollar, per
	// calendar Period, at most Limit: a quota of cost.
	KindBudget
)

// String returns the name used in store keys: "requests", "tokens",
// "concurrent" or "quota".
func (k Kind) String() string {
	switch k {
	case KindRequests:
		return "requests"
	case KindTokens:
		return "tokens"
	case KindConcurrent:
		return "concurrent"
	case KindQuota:
		return "quota"
	case KindBudget:
		return "budget"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Dimension is one limit on one scope.
type Dimension struct {
	// Scope is who the limit applies to, e.g. "key:team-a" or
	// "model:llama3". Every key of one scope shares a Redis hash tag.
	// It is stored as is: never a secret or prompt text.
	Scope string
	// Kind is what the dimension counts.
	Kind Kind
	// Limit is the bucket capacity, the concurrency or the quota budget.
	Limit int64
	// Window is the refill time of a requests or tokens bucket.
	Window time.Duration
	// Period is the calendar period of a quota.
	Period Period
}

// RequestsPer is a limit of r.N requests per r.Window on scope.
func RequestsPer(scope string, r Rate) Dimension {
	return Dimension{Scope: scope, Kind: KindRequests, Limit: r.N, Window: r.Window}
}

// TokensPer is a limit of r.N tokens per r.Window on scope.
func TokensPer(scope string, r Rate) Dimension {
	return Dimension{Scope: scope, Kind: KindTokens, Limit: r.N, Window: r.Window}
}

// ConcurrentMax is a limit of n requests in flight on scope.
func ConcurrentMax(scope string, n int64) Dimension {
	return Dimension{Scope: scope, Kind: KindConcurrent, Limit: n}
}

// QuotaOf is a budget of q.N tokens per q.Period on scope.
func QuotaOf(scope string, q Quota) Dimension {
	return Dimension{Scope: scope, Kind: KindQuota, Limit: q.N, Period: q.Period}
}

// BudgetOf is a budget of b.Micros millionths of a dollar per b.Period
// on scope.
func BudgetOf(scope string, b Budget) Dimension {
	return Dimension{Scope: scope, Kind: KindBudget, Limit: b.Micros, Period: b.Period}
}

// periodic reports whether the kind counts per calendar period.
func (k Kind) periodic() bool { return k == KindQuota || k == KindBudget }

// Amount is what a request takes from its limits beside itself.
type Amount struct {
	// Tokens is for tokens and quota limits.
	Tokens int64
	// Micros is a cost in millionths of a US dollar, for budgets.
	Micros int64
}

// validate reports a dimension no store can count.
func (d Dimension) validate() error {
	if d.Scope == "" {
		return errors.New("limits: empty scope")
	}
	if d.Limit < 1 || d.Limit > maxAmount {
		return fmt.Errorf("limits: %s limit %d out of range", d.Kind, d.Limit)
	}
	switch d.Kind {
	case KindRequests, KindTokens:
		if d.Window < time.Millisecond || d.Window > maxWindow {
			return fmt.Errorf("limits: %s window %s out of range", d.Kind, d.Window)
		}
	case KindQuota, KindBudget:
		if d.Period < Day || d.Period > Month {
			return fmt.Errorf("limits: %s period %d unknown", d.Kind, d.Period)
		}
	case KindConcurrent:
	default:
		return fmt.Errorf("limits: unknown kind %d", d.Kind)
	}
	return nil
}

// cost is what a request needing a takes from d.
func (d Dimension) cost(a Amount) int64 {
	switch d.Kind {
	case KindTokens, KindQuota:
		return a.Tokens
	case KindBudget:
		return a.Micros
	}
	return 1
}

// Clock tells the time. Tests pass a fake one.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function such as time.Now to a Clock.
type ClockFunc func() time.Time

// Now calls f.
func (f ClockFunc) Now() time.Time { return f() }

// Store keeps the counters. Memory and Redis are the implementations.
type Store interface {
	// reserve checks every step of p and, only if all pass, adds each
	// step's amount. It returns -1 and the level of every step after the
	// reservation, or the index of the first step that does not pass and
	// the level of every step, unchanged.
	reserve(ctx context.Context, p *plan) (denied int, levels []float64, err error)
	// settle adds each step's amount (negative: a refund) and releases
	// concurrency steps, without any check. A store that can fail
	// (Redis) retries a settlement it could not make, in order, until
	// it can.
	settle(ctx context.Context, p *plan) error
	// renew extends the lease of p's concurrency steps that the store
	// still holds to p's span from p's now.
	renew(ctx context.Context, p *plan) error
	// leases reports whether a concurrency slot expires unless renewed
	// (a store the gateway may lose touch with: Redis).
	leases() bool
	// Close releases the store's resources.
	Close() error
}

// plan is the store-level form of one reservation or settlement. Times
// are microseconds since the Unix epoch by the Limiter's clock: the
// caller's clock, not the store's, so that fake clocks drive Redis too.
type plan struct {
	now   float64
	id    string // the reservation's id: its lease in concurrency sets
	steps []step
}

// step is one dimension of a plan.
type step struct {
	key   string
	kind  Kind
	limit float64
	// span is the bucket window (requests, tokens), the key's lifetime
	// (quota: until the period ends plus a day) or the lease of an
	// in-flight request (concurrent), in microseconds.
	span float64
	// amount is the cost when reserving and the delta when settling.
	amount float64
}

// quotaGrace keeps a quota's key a day past its period, so a reply
// reconciled after the boundary still finds it.
const quotaGrace = 24 * time.Hour

// Limiter reserves and reconciles requests in a Store. It is cheap to
// make: build one per configuration around a long-lived Store.
type Limiter struct {
	store Store
	clock Clock
	lease time.Duration
}

// DefaultLease is how long a request holds a concurrency slot in Redis
// without its lease being renewed: a reservation renews it every third
// of the lease until it is settled, so a request that runs for hours
// keeps its slot, while a slot whose gateway lost touch with Redis (a
// partition, a crash) is freed within a lease.
const DefaultLease = time.Minute

// New returns a Limiter over store. A nil clock means time.Now. lease
// bounds how long an unsettled request holds a concurrency slot in Redis
// unless renewed (0 means DefaultLease); Memory never loses a
// settlement, so it ignores it.
func New(store Store, clock Clock, lease time.Duration) *Limiter {
	if clock == nil {
		clock = ClockFunc(time.Now)
	}
	if lease <= 0 {
		lease = DefaultLease
	}
	return &Limiter{store: store, clock: clock, lease: lease}
}

// Decision is the outcome of Reserve: exactly one of Reservation and
// Denial is set.
type Decision struct {
	// Reservation is set when the request is admitted; pass it to
	// Reconcile or Refund exactly once.
	Reservation *Reservation
	// Status is the state of every dimension, in the order given to
	// Reserve: after the reservation when admitted, as it stays when
	// refused. It is nil when the request is TooLarge.
	Status []Status
	// Denial is set when the request is refused.
	Denial *Denial
}

// Status is one dimension's state after a decision: what OpenAI's
// x-ratelimit-limit-*, -remaining-* and -reset-* headers carry.
type Status struct {
	// Dimension is the limit, as given to Reserve.
	Dimension Dimension
	// Remaining is what is left now, never negative.
	Remaining int64
	// Reset is the time until the bucket is full again (requests,
	// tokens) or until the quota period ends; 0 for concurrency.
	Reset time.Duration
}

// Denial says why a request was refused.
type Denial struct {
	// Dimension is the first limit the request did not fit in.
	Dimension Dimension
	// Used is the amount in use: the bucket level, the requests in
	// flight or the quota spent (0 when TooLarge).
	Used int64
	// Requested is what the request needed from that dimension.
	Requested int64
	// RetryAfter is the time until enough has refilled (requests,
	// tokens), one second (concurrent) or until the quota period ends.
	// It is 0 when TooLarge.
	RetryAfter time.Duration
	// TooLarge means the request needs more than the whole limit: it can
	// never pass, and the store was not asked.
	TooLarge bool
}

// Reservation is an admitted request's claim. Settle it exactly once,
// with Reconcile or Refund.
type Reservation struct {
	dims    []Dimension
	plan    plan
	amount  Amount
	settled atomic.Bool
	// renewal renews the lease of the reservation's concurrency slots
	// in a store that leases them, until it is settled.
	renewal atomic.Pointer[time.Timer]
}

// Tokens returns the number of tokens reserved.
func (r *Reservation) Tokens() int64 { return r.amount.Tokens }

// ErrSettled is returned when a reservation is reconciled or refunded a
// second time; nothing is charged.
var ErrSettled = errors.New("limits: reservation already settled")

// Reserve checks and reserves, atomically, one request and a in every
// dimension of dims: all or none. a is the caller's estimate, its tokens
// already capped at the tokens limit. A store error is returned as is,
// within the store's timeout; the caller decides whether to admit.
func (l *Limiter) Reserve(ctx context.Context, dims []Dimension, a Amount) (Decision, error) {
	if err := a.check(); err != nil {
		return Decision{}, err
	}
	if len(dims) == 0 {
		return Decision{Reservation: &Reservation{amount: a}}, nil
	}
	now := l.clock.Now()
	p := plan{now: micros(now), steps: make([]step, len(dims))}
	for i, d := range dims {
		if err := d.validate(); err != nil {
			return Decision{}, err
		}
		for _, e := range dims[:i] {
			if e.Scope == d.Scope && e.Kind == d.Kind {
				return Decision{}, fmt.Errorf("limits: two %s limits on one scope", d.Kind)
			}
		}
		c := d.cost(a)
		if c > d.Limit {
			return Decision{Denial: &Denial{Dimension: d, Requested: c, TooLarge: true}}, nil
		}
		p.steps[i] = l.step(d, now, float64(c))
		if d.Kind == KindConcurrent && p.id == "" {
			p.id = newID()
		}
	}
	denied, levels, err := l.store.reserve(ctx, &p)
	if err != nil {
		return Decision{}, err
	}
	status := make([]Status, len(dims))
	for i, d := range dims {
		status[i] = statusOf(d, levels[i], now)
	}
	if denied >= 0 {
		return Decision{Status: status, Denial: denial(dims[denied], p.steps[denied], levels[denied], now)}, nil
	}
	res := &Reservation{dims: slices.Clone(dims), plan: p, amount: a}
	if p.id != "" && l.store.leases() {
		l.keepLeased(res)
	}
	return Decision{Reservation: res, Status: status}, nil
}

// Levels returns the state of each periodic dimension of dims (quotas
// and budgets): what is left and until when; it reserves nothing.
func (l *Limiter) Levels(ctx context.Context, dims []Dimension) ([]Status, error) {
	now := l.clock.Now()
	p := plan{now: micros(now)}
	for _, d := range dims {
		if err := d.validate(); err != nil {
			return nil, err
		}
		if !d.Kind.periodic() {
			return nil, fmt.Errorf("limits: %s has no level to report", d.Kind)
		}
		p.steps = append(p.steps, l.step(d, now, 0))
	}
	if len(p.steps) == 0 {
		return nil, nil
	}
	_, levels, err := l.store.reserve(ctx, &p)
	if err != nil {
		return nil, err
	}
	out := make([]Status, len(dims))
	for i, d := range dims {
		out[i] = statusOf(d, levels[i], now)
	}
	return out, nil
}

// keepLeased renews r's leases every third of the lease, off the
// request's path, until r is settled. A renewal that fails is tried
// again at the next: the slot lasts a lease past the last that worked.
func (l *Limiter) keepLeased(r *Reservation) {
	every := l.lease / 3
	r.renewal.Store(time.AfterFunc(every, func() {
		if r.settled.Load() {
			return
		}
		_ = l.Renew(context.Background(), r)
		if t := r.renewal.Load(); t != nil {
			t.Reset(every)
		}
	}))
}

// Renew extends the lease of r's concurrency slots by the Limiter's
// lease from now, unless r is settled. Reserve arranges it for stores
// that lease slots; it is exported for tests of leases.
func (l *Limiter) Renew(ctx context.Context, r *Reservation) error {
	if r.settled.Load() {
		return nil
	}
	p := plan{now: micros(l.clock.Now()), id: r.plan.id}
	for i, d := range r.dims {
		if d.Kind == KindConcurrent {
			s := r.plan.steps[i]
			s.span = float64(l.lease / time.Microsecond)
			p.steps = append(p.steps, s)
		}
	}
	if len(p.steps) == 0 {
		return nil
	}
	return l.store.renew(ctx, &p)
}

// Reconcile charges the request's real usage, actual, in place of its
// estimate: the difference is refunded or added (an overage can take a
// bucket past its limit: debt that delays later requests), and its
// concurrency slots are released. Call it after the reply, off the
// client's path: with Redis it is one round trip.
func (l *Limiter) Reconcile(ctx context.Context, r *Reservation, actual Amount) error {
	if err := actual.check(); err != nil {
		return err
	}
	return l.settle(ctx, r, func(d Dimension) (float64, bool) {
		switch d.Kind {
		case KindTokens, KindQuota, KindBudget:
			delta := d.cost(actual) - d.cost(r.amount)
			return float64(delta), delta != 0
		case KindConcurrent:
			return 0, true
		}
		return 0, false
	})
}

// check reports an amount no store can count.
func (a Amount) check() error {
	if a.Tokens < 0 || a.Tokens > maxAmount || a.Micros < 0 || a.Micros > maxAmount {
		return fmt.Errorf("limits: %d tokens, %d micro-dollars: out of range", a.Tokens, a.Micros)
	}
	return nil
}

// Refund returns everything r reserved, for a request that failed before
// any byte reached the client.
func (l *Limiter) Refund(ctx context.Context, r *Reservation) error {
	return l.settle(ctx, r, func(d Dimension) (float64, bool) {
		return -float64(d.cost(r.amount)), true
	})
}

// settle applies delta's amount to each dimension it selects, once per
// reservation.
func (l *Limiter) settle(ctx context.Context, r *Reservation, delta func(Dimension) (float64, bool)) error {
	if !r.settled.CompareAndSwap(false, true) {
		return ErrSettled
	}
	if t := r.renewal.Load(); t != nil {
		t.Stop()
	}
	now := l.clock.Now()
	p := plan{now: micros(now), id: r.plan.id, steps: make([]step, 0, len(r.dims))}
	for i, d := range r.dims {
		amount, ok := delta(d)
		if !ok {
			continue
		}
		s := r.plan.steps[i]
		s.amount = amount
		if d.Kind.periodic() { // the key of the period reserved in lives on until its end
			_, end := d.Period.Bounds(time.UnixMicro(int64(r.plan.now)))
			s.span = math.Max(micros(end.Add(quotaGrace))-p.now, float64(time.Second/time.Microsecond))
		}
		p.steps = append(p.steps, s)
	}
	if len(p.steps) == 0 {
		return nil
	}
	return l.store.settle(ctx, &p)
}

// step is the store-level form of reserving amount in d at now.
func (l *Limiter) step(d Dimension, now time.Time, amount float64) step {
	s := step{key: "{" + d.Scope + "}:" + d.Kind.String(), kind: d.Kind, limit: float64(d.Limit), amount: amount}
	switch d.Kind {
	case KindRequests, KindTokens:
		s.span = float64(d.Window / time.Microsecond)
	case KindConcurrent:
		s.span = float64(l.lease / time.Microsecond)
	case KindQuota, KindBudget:
		start, end := d.Period.Bounds(now)
		s.key += ":" + start.Format("20060102")
		s.span = micros(end.Add(quotaGrace)) - micros(now)
	}
	return s
}

// denial describes the refusal of step s of dimension d at level.
func denial(d Dimension, s step, level float64, now time.Time) *Denial {
	den := &Denial{Dimension: d, Used: int64(math.Ceil(level)), Requested: int64(s.amount)}
	switch d.Kind {
	case KindConcurrent:
		den.RetryAfter = time.Second
	case KindQuota, KindBudget:
		_, end := d.Period.Bounds(now)
		den.RetryAfter = end.Sub(now)
	default:
		need := level + s.amount - s.limit
		den.RetryAfter = max(duration(need*s.span/s.limit), time.Millisecond)
	}
	return den
}

// statusOf describes dimension d at level after an admission.
func statusOf(d Dimension, level float64, now time.Time) Status {
	st := Status{Dimension: d, Remaining: int64(math.Floor(float64(d.Limit) - level))}
	st.Remaining = min(max(st.Remaining, 0), d.Limit)
	switch d.Kind {
	case KindRequests, KindTokens:
		st.Reset = duration(max(level, 0) * float64(d.Window/time.Microsecond) / float64(d.Limit))
	case KindQuota, KindBudget:
		_, end := d.Period.Bounds(now)
		st.Reset = end.Sub(now)
	}
	return st
}

// slack is how far over its limit a dimension lets a reservation go: a
// millionth, so that float rounding never refuses a request at the end of
// its RetryAfter. The Redis scripts use the same factor.
const slack = 1.000001

// fits reports whether amount more fits in a dimension at level.
func fits(level, amount, limit float64) bool { return level+amount <= limit*slack }

// micros is t in microseconds since the Unix epoch.
func micros(t time.Time) float64 { return float64(t.UnixMicro()) }

// duration converts microseconds to a Duration, rounding up what float
// rounding noise (under a nanosecond) leaves aside.
func duration(us float64) time.Duration {
	return time.Duration(math.Ceil(us-1e-3)) * time.Microsecond
}

// drain is a token bucket's level at now, given its level at ts: it
// empties at limit per window. A clock behind ts drains nothing. The
// Redis scripts compute the same.
func drain(level, ts, now, limit, window float64) float64 {
	elapsed := max(now-ts, 0)
	return max(level-elapsed*limit/window, 0)
}

// idPrefix makes reservation ids unique across processes.
var idPrefix = func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:]) + "-"
}()

// idCounter makes reservation ids unique within the process.
var idCounter atomic.Uint64

// newID returns a reservation id unique across processes.
func newID() string {
	var buf [48]byte
	return string(strconv.AppendUint(append(buf[:0], idPrefix...), idCounter.Add(1), 36))
}
