package routing

import "sync"

// maxHolders is how many replicas an Index remembers for one block: a
// prefix a spill sent elsewhere lives on several.
const maxHolders = 4

// Index remembers which replicas were last sent each block of the
// prompts it saw, for its capacity's most recently used blocks: memory
// is bounded by the blocks, whatever the prompts. Replicas are small
// ids (Intern). It is safe for concurrent use.
type Index struct {
	mu       sync.Mutex
	capacity int
	byHash   map[uint64]*node
	lru      node // sentinel: lru.next is the most recently used
	keys     []string
	ids      map[string]uint16
	held     []int // by id - 1: the blocks remembered as sent to the replica
}

// node is one block's record: the replicas that were sent it, the most
// recent first (ids plus one; 0 is none), whether a prompt sent ended
// with it, and its place in the LRU list.
type node struct {
	hash       uint64
	holders    [maxHolders]uint16
	end        bool
	prev, next *node
}

// NewIndex returns an index of at most capacity blocks.
func NewIndex(capacity int) *Index {
	ix := &Index{capacity: max(capacity, 1), byHash: make(map[uint64]*node), ids: make(map[string]uint16)}
	ix.lru.next, ix.lru.prev = &ix.lru, &ix.lru
	return ix
}

// Len is the number of blocks remembered.
func (ix *Index) Len() int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return len(ix.byHash)
}

// intern returns the id of replica key, ix.mu held. An index meets few
// replicas; past 65,534 of them (replicas renamed without end), ids are
// reused from the first.
func (ix *Index) intern(key string) uint16 {
	if id, ok := ix.ids[key]; ok {
		return id
	}
	if len(ix.keys) == 1<<16-2 {
		clear(ix.ids)
		ix.keys, ix.held = ix.keys[:0], ix.held[:0]
	}
	ix.keys, ix.held = append(ix.keys, key), append(ix.held, 0)
	id := uint16(len(ix.keys))
	ix.ids[key] = id
	return id
}

// longest returns how many of the blocks of hashes one of the replicas
// ok accepts holds, from the first, which of them hold the longest run
// (most recent first, then empty strings), and whether a prompt sent
// ended with its last block: the run is all of an earlier prompt, the
// turn before this one. A replica sent a block was sent every block
// before it, so the run is found by bisection; the LRU may have dropped
// a block within a run, which makes the answer shorter, never wrong
// about a replica holding what it says.
func (ix *Index) longest(hashes []uint64, ok func(key string) bool) (n int, holders [maxHolders]string, end bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	holdersOf := func(i int) ([maxHolders]string, bool) {
		var out [maxHolders]string
		n := ix.byHash[hashes[i]]
		found := false
		if n != nil {
			k := 0
			for _, id := range n.holders {
				if id != 0 && ok(ix.keys[id-1]) {
					out[k], k, found = ix.keys[id-1], k+1, true
				}
			}
		}
		return out, found
	}
	lo, hi := 0, len(hashes) // blocks 0..lo-1 are held; hi and past not known to be
	for lo < hi {
		mid := (lo + hi + 1) / 2 // is block mid-1 held?
		if h, found := holdersOf(mid - 1); found {
			lo, holders = mid, h
		} else {
			hi = mid - 1
		}
	}
	return lo, holders, lo > 0 && ix.byHash[hashes[lo-1]].end
}

// record notes that replica key was sent the blocks of hashes, a prompt
// ending with the last: each is its most recent holder and the most
// recently used block.
func (ix *Index) record(hashes []uint64, key string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	id := ix.intern(key)
	for i, h := range hashes {
		n := ix.byHash[h]
		if n == nil {
			n = ix.evictFor()
			n.hash, n.holders, n.end = h, [maxHolders]uint16{}, false
			ix.byHash[h] = n
		} else {
			n.prev.next, n.next.prev = n.next, n.prev // unlink
		}
		// id first, the others after it in their order; past
		// maxHolders, the least recent drops out.
		prev := id
		for i := 0; i < maxHolders && prev != 0; i++ {
			prev, n.holders[i] = n.holders[i], prev
			if prev == id {
				break
			}
		}
		if prev != id {
			ix.count(id, 1)
			ix.count(prev, -1)
		}
		if i == len(hashes)-1 {
			n.end = true
		}
		n.prev, n.next = &ix.lru, ix.lru.next
		ix.lru.next.prev = n
		ix.lru.next = n
	}
}

// evictFor returns a node for a new block: a new one while there is
// room, else the least recently used one, forgotten.
func (ix *Index) evictFor() *node {
	if len(ix.byHash) < ix.capacity {
		return new(node)
	}
	n := ix.lru.prev
	n.prev.next, n.next.prev = n.next, n.prev
	delete(ix.byHash, n.hash)
	for _, id := range n.holders {
		ix.count(id, -1)
	}
	return n
}

// count adds delta to the blocks remembered as sent to replica id (none
// for 0), ix.mu held.
func (ix *Index) count(id uint16, delta int) {
	if id != 0 && int(id) <= len(ix.held) {
		ix.held[id-1] = max(0, ix.held[id-1]+delta)
	}
}

// heldBy sets held[i] to the blocks remembered as sent to replicas[i]
// and returns their sum.
func (ix *Index) heldBy(replicas []Replica, held []int) int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	sum := 0
	for i, r := range replicas {
		held[i] = 0
		if id, ok := ix.ids[r.Key]; ok {
			held[i] = ix.held[id-1]
		}
		sum += held[i]
	}
	return sum
}
