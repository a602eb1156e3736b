package limits

import (
	"context"
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// memoryShards is the number of independently locked parts of a Memory
// store: enough that two cores rarely wait on one another.
const memoryShards = 64

// sweepEvery is how often, by the Limiter's clock, a shard drops its
// cells that have emptied or whose quota period is over.
const sweepEvery = float64(time.Minute / time.Microsecond)

// Memory is a Store in the process's memory. All dimensions of one scope
// live in one shard; a request spanning several scopes locks their shards
// in order, so a reservation is atomic. Keep one Memory across config
// reloads (caddy.UsagePool) so counts survive them.
type Memory struct {
	seed   maphash.Seed
	shards [memoryShards]shard
	owners memoryOwners
	ledger memoryLedger
}

// shard is one locked part of a Memory.
type shard struct {
	mu        sync.Mutex
	cells     map[string]*cell
	nextSweep float64
}

// cell is one dimension's counter.
type cell struct {
	level float64 // bucket level, requests in flight or quota spent
	ts    float64 // when level was computed (buckets), in µs
	// expires is when the cell holds nothing worth keeping, in µs.
	expires float64
}

// NewMemory returns an empty in-process store.
func NewMemory() *Memory {
	m := &Memory{seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].cells = make(map[string]*cell)
	}
	return m
}

// Close drops every counter.
func (m *Memory) Close() error {
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		clear(s.cells)
		s.mu.Unlock()
	}
	return nil
}

// Destruct is Close, for caddy.UsagePool.
func (m *Memory) Destruct() error { return m.Close() }

// reserve implements Store.
func (m *Memory) reserve(_ context.Context, p *plan) (int, []float64, error) {
	var buf [16]int
	shardOf, locked := m.lock(p, buf[:0])
	defer m.unlock(locked)
	levels := make([]float64, len(p.steps))
	denied := -1
	for i, s := range p.steps {
		levels[i] = m.level(shardOf[i], p, s)
		if denied < 0 && !fits(levels[i], s.amount, s.limit) {
			denied = i
		}
	}
	if denied >= 0 {
		return denied, levels, nil
	}
	for i, s := range p.steps {
		levels[i] = m.set(shardOf[i], p, s, levels[i]+s.amount)
	}
	return -1, levels, nil
}

// settle implements Store.
func (m *Memory) settle(_ context.Context, p *plan) error {
	var buf [16]int
	shardOf, locked := m.lock(p, buf[:0])
	defer m.unlock(locked)
	for i, s := range p.steps {
		amount := s.amount
		if s.kind == KindConcurrent {
			amount = -1
		}
		m.set(shardOf[i], p, s, m.level(shardOf[i], p, s)+amount)
	}
	return nil
}

// renew implements Store: a slot in memory lasts until it is settled.
func (m *Memory) renew(context.Context, *plan) error { return nil }

// leases implements Store: Memory never loses a settlement.
func (m *Memory) leases() bool { return false }

// level is the current level of step s's cell in shard sh (0 if none).
func (m *Memory) level(sh int, p *plan, s step) float64 {
	c := m.shards[sh].cells[s.key]
	if c == nil {
		return 0
	}
	if s.kind == KindRequests || s.kind == KindTokens {
		return drain(c.level, c.ts, p.now, s.limit, s.span)
	}
	return c.level
}

// set sets step s's cell in shard sh to level (at least 0) and returns it.
func (m *Memory) set(sh int, p *plan, s step, level float64) float64 {
	level = max(level, 0)
	cells := m.shards[sh].cells
	c := cells[s.key]
	if c == nil {
		c = &cell{}
		cells[s.key] = c
	}
	c.level = level
	c.ts = max(c.ts, p.now)
	switch s.kind {
	case KindRequests, KindTokens:
		c.expires = p.now + level*s.span/s.limit
	case KindQuota, KindBudget:
		c.expires = p.now + s.span
	case KindConcurrent:
		c.expires = math.Inf(1)
		if level == 0 {
			c.expires = p.now
		}
	}
	return level
}

// shardIndex is the shard of key: the hash of its "{scope}" tag, so
// every dimension of a scope lands in one shard.
func (m *Memory) shardIndex(key string) int {
	tag := key
	if i := strings.IndexByte(key, '}'); i > 0 {
		tag = key[:i]
	}
	return int(maphash.String(m.seed, tag) % memoryShards)
}

// lock locks the shards p touches, in index order so that concurrent
// plans cannot deadlock, and sweeps them if due. It returns the shard of
// each step and the shards locked, both appended to buf.
func (m *Memory) lock(p *plan, buf []int) (shardOf, locked []int) {
	for _, s := range p.steps {
		buf = append(buf, m.shardIndex(s.key))
	}
	shardOf = buf[:len(p.steps)]
	for _, i := range shardOf {
		if !slices.Contains(buf[len(p.steps):], i) {
			buf = append(buf, i)
		}
	}
	locked = buf[len(p.steps):]
	slices.Sort(locked)
	for _, i := range locked {
		sh := &m.shards[i]
		sh.mu.Lock()
		if p.now >= sh.nextSweep {
			sh.sweep(p.now)
		}
	}
	return shardOf, locked
}

// unlock unlocks the shards lock locked.
func (m *Memory) unlock(locked []int) {
	for _, i := range locked {
		m.shards[i].mu.Unlock()
	}
}

// sweep drops the cells that hold nothing by now.
func (s *shard) sweep(now float64) {
	for k, c := range s.cells {
		if c.expires <= now {
			delete(s.cells, k)
		}
	}
	s.nextSweep = now + sweepEvery
}

var _ Store = (*Memory)(nil)
