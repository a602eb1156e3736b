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

// Get returns the first of keys held and not expired.
func (m *Memory) Get(_ context.Context, keys ...string) (Entry, int, error) {
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
		return it.entry, i, nil
	}
	return Entry{}, -1, nil
}

// Set stores e under key, in place of what key held, evicting the least
// recently used entries past the capacity. An entry of more than a
// quarter of the capacity is refused with ErrTooLarge.
func (m *Memory) Set(_ context.Context, key string, e Entry) error {
	size := e.size(key)
	if size > m.capacity/4 {
		return ErrTooLarge
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		m.remove(el)
	}
	m.items[key] = m.lru.PushFront(&item{key: key, entry: e, size: size})
	m.size += size
	for m.size > m.capacity {
		m.remove(m.lru.Back())
		m.evictions++
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
