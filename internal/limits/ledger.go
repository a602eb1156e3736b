package limits

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Ledger keeps what each identity used of each model, by UTC day: the
// counts of the usage report, beside the limits' counters (Memory and
// Redis are Ledgers), so every gateway on one Redis reports the same.
// Identities and models are kept as scope names (short printable
// tokens, else a hash): never a secret or prompt text.
type Ledger interface {
	// Record adds one request that used u to its identity's and
	// model's counts of the UTC day holding at. It does no I/O: Redis
	// sends what it records in batches.
	Record(at time.Time, u Use)
	// Usage returns the counts of the UTC days from start to end
	// (excluded), added up by identity and model.
	Usage(ctx context.Context, start, end time.Time) ([]UsageRow, error)
}

// Use is what one request used.
type Use struct {
	// Identity and Model are scope names: who asked, for which model.
	Identity, Model string
	// Prompt and Completion are its tokens.
	Prompt, Completion int64
	// Micros is its cost, in millionths of a US dollar.
	Micros int64
}

// UsageRow is what an identity used of a model over some days.
type UsageRow struct {
	// Identity and Model are as recorded (Use's).
	Identity string `json:"identity"`
	Model    string `json:"model"`
	// Requests is the requests recorded, Prompt their prompt tokens.
	Requests int64 `json:"requests"`
	Prompt   int64 `json:"prompt_tokens"`
	// Completion is the completion tokens.
	Completion int64 `json:"completion_tokens"`
	// Micros is the cost, in millionths of a US dollar.
	Micros int64 `json:"cost_micros"`
}

// ledgerDays is how long the days of a ledger are kept: a month's
// report and some.
const ledgerDays = 40

// MaxLedgerRows bounds the identity and model pairs a store keeps for
// one day (Memory), or sends for one day (each gateway on a Redis); past
// it, new pairs count as one pair, LedgerOverflow for both.
const MaxLedgerRows = 10000

// LedgerOverflow names the identity and model of the uses past
// MaxLedgerRows pairs in a day. No scope name has a space: it is none.
const LedgerOverflow = "(over the row cap)"

// overflowKey is the pair the uses past the cap count under.
var overflowKey = [2]string{LedgerOverflow, LedgerOverflow}

// dayOf is the UTC day holding t, as a ledger names it.
func dayOf(t time.Time) string { return t.UTC().Format("20060102") }

// days are the UTC days from start to end (excluded).
func days(start, end time.Time) []string {
	var out []string
	for d := start.UTC().Truncate(24 * time.Hour); d.Before(end); d = d.AddDate(0, 0, 1) {
		out = append(out, dayOf(d))
	}
	return out
}

// add adds u's counts to r's.
func (r *UsageRow) add(u UsageRow) {
	r.Requests += u.Requests
	r.Prompt += u.Prompt
	r.Completion += u.Completion
	r.Micros += u.Micros
}

// usageSum is counts added up by identity and model.
type usageSum map[[2]string]*UsageRow

// of returns the row of the identity and model of key, empty when new.
func (s usageSum) of(key [2]string) *UsageRow {
	r := s[key]
	if r == nil {
		r = &UsageRow{Identity: key[0], Model: key[1]}
		s[key] = r
	}
	return r
}

// rows returns the rows, ordered by identity, then model.
func (s usageSum) rows() []UsageRow {
	out := make([]UsageRow, 0, len(s))
	for _, r := range s {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b UsageRow) int {
		if c := strings.Compare(a.Identity, b.Identity); c != 0 {
			return c
		}
		return strings.Compare(a.Model, b.Model)
	})
	return out
}

// memoryLedger is a Memory store's ledger.
type memoryLedger struct {
	mu   sync.Mutex
	days map[string]usageSum
}

// Record implements Ledger.
func (m *Memory) Record(at time.Time, u Use) {
	l := &m.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	day := dayOf(at)
	if l.days == nil {
		l.days = make(map[string]usageSum)
	}
	rows := l.days[day]
	if rows == nil {
		rows = make(usageSum)
		l.days[day] = rows
		oldest := dayOf(at.AddDate(0, 0, -ledgerDays))
		for d := range l.days {
			if d < oldest {
				delete(l.days, d)
			}
		}
	}
	key := [2]string{u.Identity, u.Model}
	if rows[key] == nil && len(rows) >= MaxLedgerRows {
		key = overflowKey
	}
	rows.of(key).add(u.row())
}

// row is u as one request's counts.
func (u Use) row() UsageRow {
	return UsageRow{Identity: u.Identity, Model: u.Model, Requests: 1, Prompt: u.Prompt, Completion: u.Completion, Micros: u.Micros}
}

// Usage implements Ledger.
func (m *Memory) Usage(_ context.Context, start, end time.Time) ([]UsageRow, error) {
	l := &m.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	sum := usageSum{}
	for _, day := range days(start, end) {
		for key, r := range l.days[day] {
			sum.of(key).add(*r)
		}
	}
	return sum.rows(), nil
}

// ledgerKey is a day's hash in Redis: one field per identity, model
// and count.
func (r *Redis) ledgerKey(day string) string { return r.prefix + "{ledger}:" + day }

// ledgerFields are a Redis ledger's counts: requests, prompt and
// completion tokens, micro-dollars. A field is identity, model and
// count, separated by ledgerSep, which no scope name holds.
var ledgerFields = [4]string{"r", "p", "c", "m"}

const ledgerSep = "\x1f"

// LedgerFlush is how often a Redis store sends the uses it recorded:
// added up by day, identity and model, in one round trip. A report read
// through another gateway lags by as much; a crash loses as much.
const LedgerFlush = time.Second

// redisLedger is the uses a Redis store has recorded and not yet sent,
// and the pairs it sent of each day (at most MaxLedgerRows, and as many
// pending while Redis does not answer).
type redisLedger struct {
	mu        sync.Mutex
	pending   map[[3]string]*UsageRow // by day, identity, model
	sent      map[string]map[[2]string]bool
	scheduled bool
}

// add adds row to the pending uses of day, under the overflow pair past
// the cap; l.mu is held.
func (l *redisLedger) add(day string, row UsageRow) {
	if l.pending == nil {
		l.pending = make(map[[3]string]*UsageRow)
	}
	if l.sent == nil {
		l.sent = make(map[string]map[[2]string]bool)
	}
	pair := [2]string{row.Identity, row.Model}
	sent := l.sent[day]
	if sent == nil {
		sent = make(map[[2]string]bool)
		l.sent[day] = sent
		for d := range l.sent {
			if d < day { // a gateway counts its present day only
				delete(l.sent, d)
			}
		}
	}
	if !sent[pair] {
		if len(sent) >= MaxLedgerRows {
			pair = overflowKey
			row.Identity, row.Model = pair[0], pair[1]
		}
		sent[pair] = true
	}
	key := [3]string{day, pair[0], pair[1]}
	if mine := l.pending[key]; mine != nil {
		mine.add(row)
		return
	}
	l.pending[key] = &row
}

// Record implements Ledger: it adds u to the uses the store sends within
// LedgerFlush, so that a request costs no round trip of its own.
func (r *Redis) Record(at time.Time, u Use) {
	l := &r.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	l.add(dayOf(at), u.row())
	r.scheduleFlush()
}

// scheduleFlush has the pending uses sent within LedgerFlush, unless a
// flush is scheduled already; r.ledger.mu is held.
func (r *Redis) scheduleFlush() {
	if l := &r.ledger; !l.scheduled {
		l.scheduled = true
		time.AfterFunc(LedgerFlush, func() { _ = r.flushLedger(context.Background()) })
	}
}

// flushLedger sends the uses recorded so far, each day's counts added
// to its hash atomically, in one round trip. Uses it could not send are
// kept for the next flush, within LedgerFlush.
func (r *Redis) flushLedger(ctx context.Context) error {
	l := &r.ledger
	l.mu.Lock()
	pending := l.pending
	l.pending, l.scheduled = nil, false
	l.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*r.timeout)
	defer cancel()
	pipe := r.client.TxPipeline()
	expire := map[string]bool{}
	for k, row := range pending {
		key := r.ledgerKey(k[0])
		base := k[1] + ledgerSep + k[2] + ledgerSep
		for i, n := range [4]int64{row.Requests, row.Prompt, row.Completion, row.Micros} {
			pipe.HIncrBy(ctx, key, base+ledgerFields[i], n)
		}
		expire[key] = true
	}
	for key := range expire {
		pipe.Expire(ctx, key, ledgerDays*24*time.Hour)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !r.closing() {
		l.mu.Lock()
		for k, row := range pending { // back, for the next flush
			l.add(k[0], *row)
		}
		r.scheduleFlush()
		l.mu.Unlock()
	}
	return err
}

// Usage implements Ledger: this store's uses sent first, then one
// round trip for every day.
func (r *Redis) Usage(ctx context.Context, start, end time.Time) ([]UsageRow, error) {
	if err := r.flushLedger(ctx); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*r.timeout)
	defer cancel()
	pipe := r.client.Pipeline()
	var cmds []interface {
		Result() (map[string]string, error)
	}
	for _, day := range days(start, end) {
		cmds = append(cmds, pipe.HGetAll(ctx, r.ledgerKey(day)))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	sum := usageSum{}
	for _, cmd := range cmds {
		fields, _ := cmd.Result()
		for f, v := range fields {
			parts := strings.Split(f, ledgerSep)
			n, err := strconv.ParseInt(v, 10, 64)
			i := slices.Index(ledgerFields[:], parts[len(parts)-1])
			if len(parts) != 3 || err != nil || i < 0 {
				return nil, fmt.Errorf("limits: ledger field %q: %w", f, errors.New("not one this gateway wrote"))
			}
			row := sum.of([2]string{parts[0], parts[1]})
			*[4]*int64{&row.Requests, &row.Prompt, &row.Completion, &row.Micros}[i] += n
		}
	}
	return sum.rows(), nil
}
