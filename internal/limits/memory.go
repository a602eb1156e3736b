package limits

import (
	"context"
	"hash/maphash"
	"math"
	"slices"
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
	unlock := m.lock(p)
	defer unlock()
	levels := make([]float64, len(p.steps))
	for i, s := range p.steps {
		levels[i] = m.level(p, s)
		if !fits(levels[i], s.amount, s.limit) {
			return i, levels, nil
		}
	}
	for i, s := range p.steps {
		levels[i] = m.add(p, s, levels[i]+s.amount)
	}
	return -1, levels, nil
}

// settle implements Store.
func (m *Memory) settle(_ context.Context, p *plan) error {
	unlock := m.lock(p)
	defer unlock()
	for _, s := range p.steps {
		if s.kind == KindConcurrent {
			m.add(p, s, m.level(p, s)-1)
		} else {
			m.add(p, s, m.level(p, s)+s.amount)
		}
	}
	return nil
}

// level is the current level of step s's cell (0 if it has none).
func (m *Memory) level(p *plan, s step) float64 {
	c := m.shard(s.key).cells[s.key]
	if c == nil {
		return 0
	}
	if s.kind == KindRequests || s.kind == KindTokens {
		return drain(c.level, c.ts, p.now, s.limit, s.span)
	}
	return c.level
}

// add sets step s's cell to level (at least 0) and returns it.
func (m *Memory) add(p *plan, s step, level float64) float64 {
	level = max(level, 0)
	sh := m.shard(s.key)
	c := sh.cells[s.key]
	if c == nil {
		c = &cell{}
		sh.cells[s.key] = c
	}
	c.level = level
	c.ts = max(c.ts, p.now)
	switch s.kind {
	case KindRequests, KindTokens:
		c.expires = p.now + level*s.span/s.limit
	case KindQuota:
		c.expires = p.now + s.span
	case KindConcurrent:
		c.expires = math.Inf(1)
		if level == 0 {
			c.expires = p.now
		}
	}
	return level
}

// shard is the shard holding key. Keys start with their "{scope}" tag,
// so every dimension of a scope lands in one shard.
func (m *Memory) shard(key string) *shard {
	return &m.shards[m.shardIndex(key)]
}

// shardIndex hashes key's hash tag.
func (m *Memory) shardIndex(key string) int {
	tag := key
	for i := 1; i < len(key); i++ {
		if key[i] == '}' {
			tag = key[:i]
			break
		}
	}
	return int(maphash.String(m.seed, tag) % memoryShards)
}

// lock locks the shards p touches, in index order so that concurrent
// plans cannot deadlock, sweeps them if due, and returns their unlock.
func (m *Memory) lock(p *plan) func() {
	var buf [4]int
	idx := buf[:0]
	for _, s := range p.steps {
		if i := m.shardIndex(s.key); !slices.Contains(idx, i) {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	for _, i := range idx {
		sh := &m.shards[i]
		sh.mu.Lock()
		if p.now >= sh.nextSweep {
			sh.sweep(p.now)
		}
	}
	return func() {
		for _, i := range idx {
			m.shards[i].mu.Unlock()
		}
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
