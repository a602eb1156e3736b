package cache

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// Memory is a store in this process's memory, bounded in bytes: past
// its capacity, the least recently used entries go first. It is safe
// for concurrent use.
type Memory struct {
	mu        sync.Mutex
	capacity  int64
	size      int64
	lru       *list.List // of *item, the most recently used first
	items     map[string]*list.Element
	evictions uint64
	now       func() time.Time
}

type item struct {
	key   string
	entry Entry
	size  int64
}

// NewMemory returns a store of at most capacity bytes.
func NewMemory(capacity int64) *Memory {
	return &Memory{capacity: capacity, lru: list.New(), items: make(map[string]*list.Element), now: time.Now}
}

// Get returns the entries of keys held and not expired.
func (m *Memory) Get(_ context.Context, keys ...string) ([]*Entry, error) {
	out := make([]*Entry, len(keys))
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for i, key := range keys {
		el, ok := m.items[key]
		if !ok {
			continue
		}
		it := el.Value.(*item)
		if !now.Before(it.entry.Expires) {
			m.remove(el)
			continue
		}
		m.lru.MoveToFront(el)
		e := it.entry
		out[i] = &e
	}
	return out, nil
}

// Set stores the items, evicting the least recently used entries past
// the capacity. An entry of more than a quarter of the capacity is left
// out.
func (m *Memory) Set(_ context.Context, items ...Item) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, it := range items {
		size := it.Entry.size(it.Key)
		if size > m.capacity/4 {
			continue
		}
		if el, ok := m.items[it.Key]; ok {
			m.remove(el)
		}
		m.items[it.Key] = m.lru.PushFront(&item{key: it.Key, entry: it.Entry, size: size})
		m.size += size
		for m.size > m.capacity {
			m.remove(m.lru.Back())
			m.evictions++
		}
	}
	return nil
}

// remove forgets el's entry, m.mu held.
func (m *Memory) remove(el *list.Element) {
	it := m.lru.Remove(el).(*item)
	delete(m.items, it.key)
	m.size -= it.size
}

// Stats returns the bytes and entries held and the entries evicted to
// make room so far.
func (m *Memory) Stats() (bytes, entries int64, evictions uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.size, int64(len(m.items)), m.evictions
}

// Destruct lets a caddy.UsagePool hold the store: it has nothing to
// release.
func (m *Memory) Destruct() error { return nil }
