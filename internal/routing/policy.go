package routing

import (
	"math"
	"sync/atomic"
)

// DefaultLoadFactor is how far above the mean load a replica may be and
// still be chosen for the prefix it holds.
const DefaultLoadFactor = 1.5

// PlaceBlocks is how many of a prompt's first blocks place it: two
// prompts that share them go to the same replica, in every gateway. A
// replica holds a prompt when it holds at least these blocks of it (or
// its whole chain, when shorter), half of it, or all of a prompt it was
// sent (the turn before): a shorter match, such as an opening line
// every prompt has, is not worth a replica's load, and does not draw
// every prompt to one replica.
const PlaceBlocks = 8

// DefaultIndexBlocks is how many blocks an index remembers: about 7 MB,
// the prompts of 25 MiB at the default block size.
const DefaultIndexBlocks = 100000

// Replica is one candidate of a choice: its key (an upstream's address)
// and its load (requests in flight).
type Replica struct {
	Key  string
	Load int
}

// Reason says how a choice was made.
type Reason uint8

// The reasons of a choice.
const (
	// NoPrefix: the prompt has no full block; the least loaded replica.
	NoPrefix Reason = iota
	// Matched: the replica that holds the longest prefix of the prompt.
	Matched
	// Overloaded: the replicas holding the prefix are over the load
	// bound; it is placed among the others.
	Overloaded
	// Placed: no replica holds it; rendezvous hashing of its first
	// blocks places it (see place).
	Placed
)

// String is the reason's name in metrics.
func (r Reason) String() string {
	return [...]string{"no_prefix", "matched", "overloaded", "placed"}[r]
}

// Choice is a Policy's pick: the replica's position, why, and how many
// of the prompt's blocks it holds.
type Choice struct {
	Replica int
	Reason  Reason
	Matched int
}

// Policy chooses a replica for each prompt: the one that holds the
// longest prefix of it, among the replicas whose load is within
// LoadFactor of the mean (consistent hashing with bounded loads,
// Mirrokni et al.); a prompt none of those holds is placed by
// rendezvous hashing of its first blocks. Every choice is remembered in
// its Index.
type Policy struct {
	// LoadFactor bounds a replica's load at LoadFactor times the mean
	// (this request included), rounded up. Default DefaultLoadFactor.
	LoadFactor float64
	index      *Index
	turn       atomic.Uint32 // where a scan for the least loaded starts: ties take turns
}

// NewPolicy returns a policy that records its choices in index, which
// policies may share: a new one of DefaultIndexBlocks when nil.
func NewPolicy(loadFactor float64, index *Index) *Policy {
	if loadFactor <= 1 {
		loadFactor = DefaultLoadFactor
	}
	if index == nil {
		index = NewIndex(DefaultIndexBlocks)
	}
	return &Policy{LoadFactor: loadFactor, index: index}
}

// Index is the policy's record of what each replica was sent.
func (p *Policy) Index() *Index { return p.index }

// Choose picks a replica for the prompt whose chain is hashes and
// records it; Replica is -1 when replicas is empty.
func (p *Policy) Choose(replicas []Replica, hashes []uint64) Choice {
	if len(replicas) == 0 {
		return Choice{Replica: -1}
	}
	total := 1 // this request
	for _, r := range replicas {
		total += r.Load
	}
	bound := int(math.Ceil(p.LoadFactor * float64(total) / float64(len(replicas))))
	eligible := func(r Replica) bool { return r.Load < bound }
	byKey := func(key string) int {
		for i, r := range replicas {
			if r.Key == key {
				return i
			}
		}
		return -1
	}
	c := Choice{Replica: -1}
	if len(hashes) > 0 {
		need := min(len(hashes), PlaceBlocks)
		enough := func(n int, end bool) bool { return n >= need || n > 0 && (end || 2*n >= len(hashes)) }
		n, holders, end := p.index.longest(hashes, func(key string) bool { i := byKey(key); return i >= 0 && eligible(replicas[i]) })
		switch {
		case enough(n, end):
			c.Reason, c.Matched = Matched, n
			for _, key := range holders {
				if i := byKey(key); i >= 0 && (c.Replica < 0 || replicas[i].Load < replicas[c.Replica].Load) {
					c.Replica = i
				}
			}
		default:
			c.Reason = Placed
			if enough(p.heldAtAll(hashes, byKey)) {
				c.Reason = Overloaded
			}
			c.Replica = p.place(replicas, hashes[need-1], total)
		}
	}
	if c.Replica < 0 { // no prompt: the least loaded
		start := int(p.turn.Add(1))
		for k := range replicas {
			i := (start + k) % len(replicas)
			if c.Replica < 0 || replicas[i].Load < replicas[c.Replica].Load {
				c.Replica = i
			}
		}
	}
	if len(hashes) > 0 {
		p.index.record(hashes, replicas[c.Replica].Key)
	}
	return c
}

// heldAtAll is how many of the blocks of hashes a replica byKey knows
// holds, whatever its load, and whether a prompt sent ended there.
func (p *Policy) heldAtAll(hashes []uint64, byKey func(string) int) (int, bool) {
	n, _, end := p.index.longest(hashes, func(key string) bool { return byKey(key) >= 0 })
	return n, end
}

// place returns the home of a prompt no replica under the load bound
// holds, whose first blocks hash to key: the first replica in the
// prompt's rendezvous order (the same in every gateway) among those at
// or under the mean load, a new home gaining nothing from load, and at
// or under the mean of the blocks the index remembers them being sent,
// so that a few prompts do not share a replica while another holds
// none; the load alone decides when none passes both.
func (p *Policy) place(replicas []Replica, key uint64, total int) int {
	n := len(replicas)
	var buf [16]int
	held := buf[:0]
	if n > len(buf) {
		held = make([]int, n)
	}
	held = held[:n]
	sum := p.index.heldBy(replicas, held)
	best := -1
	var bestScore uint64
	for pass := 0; pass < 2 && best < 0; pass++ {
		for i, r := range replicas {
			if r.Load*n > total-1 || pass == 0 && held[i]*n > sum {
				continue
			}
			if s := score(key, r.Key); best < 0 || s > bestScore {
				best, bestScore = i, s
			}
		}
	}
	return best
}
