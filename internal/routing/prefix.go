// Package routing chooses, among the replicas of a backend, the one most
// likely to hold a request's prompt in its KV cache, without piling onto
// it: a prompt is a chain of hashes over fixed-size blocks of its bytes
// (Chain), an Index remembers which replicas were sent which blocks, and
// a Policy picks the replica holding the longest prefix of the prompt
// among those not loaded past a bound, placing a prompt none holds by
// rendezvous hashing among the replicas least loaded and least sent, so
// that several gateways place it alike. It has no Caddy imports.
package routing

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// DefaultBlockSize is the bytes of prompt one hash covers: about 64
// tokens, a few of an inference server's cache blocks.
const DefaultBlockSize = 256

// MaxBlocks bounds the blocks hashed of one prompt (1 MiB at the
// default block size): what a prompt holds past them does not change
// where it goes.
const MaxBlocks = 4096

// Chain returns, appended to dst, the hashes of the full blocks of
// blockSize bytes of parts read one after the other, each hash covering
// its block and all before it: two prompts share the first k hashes
// exactly when they share their first k blocks, so the next turn of a
// conversation, which repeats the turn before, shares its chain. A last
// block shorter than blockSize is not hashed: it changes as the prompt
// grows. The hash is the same in every process, so gateways agree on it.
func Chain(dst []uint64, blockSize int, parts ...[]byte) []uint64 {
	if blockSize <= 0 {
		blockSize = DefaultBlockSize
	}
	var d xxhash.Digest
	var prev [8]byte
	fill := 0 // bytes of the block under way, written to d already
	d.Reset()
	_, _ = d.Write(prev[:])
	for _, p := range parts {
		for len(p) > 0 {
			if len(dst) >= MaxBlocks {
				return dst
			}
			n := min(blockSize-fill, len(p))
			_, _ = d.Write(p[:n])
			p, fill = p[n:], fill+n
			if fill < blockSize {
				break
			}
			h := d.Sum64()
			dst = append(dst, h)
			binary.LittleEndian.PutUint64(prev[:], h)
			d.Reset()
			_, _ = d.Write(prev[:])
			fill = 0
		}
	}
	return dst
}

// score is replica key's rendezvous weight for a prompt whose first
// blocks hash to place (the chain's hash of the last of them): the
// replica with the highest places the prompt, the same in every
// gateway, and only the prompts of a replica removed move.
func score(place uint64, key string) uint64 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], place)
	var d xxhash.Digest
	d.Reset()
	_, _ = d.Write(b[:])
	_, _ = d.WriteString(key)
	return d.Sum64()
}
