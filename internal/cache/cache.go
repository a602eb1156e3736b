// Package cache keeps backends' replies for the gateway to answer
// repeated requests with: the key of a request (RequestKey: Key over its
// canonical form), the stores of replies (Memory, bounded in bytes;
// Redis, shared by gateways), and what a client's Cache-Control asks
// (ParseControl). It has no Caddy imports.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// Entry is a stored reply: the backend's 200 reply as it sent it, so
// that the gateway normalizes it again for each request it answers, with
// that request's id.
type Entry struct {
	// ContentType is the reply's: JSON, or an event stream.
	ContentType string
	// Body is the reply as the backend sent it.
	Body []byte
	// Stored is when it was stored; Expires, when it stops being served.
	Stored, Expires time.Time
}

// size is what an entry costs a store, key included: its bytes, the
// rounding up of its body to an allocation size (a sixteenth, on
// average), and entryOverhead.
func (e *Entry) size(key string) int64 {
	return int64(len(key) + len(e.ContentType) + len(e.Body) + len(e.Body)/16 + entryOverhead)
}

// entryOverhead is an entry's bookkeeping beyond its bytes: the list
// element, the map's slot, the times, and the heap's spare room as
// entries come and go. BenchmarkMemoryDistinct measures the heap a full
// store holds against what it counts: within 10% from 100-byte to
// 40 KB replies.
const entryOverhead = 384

// Store keeps entries by key. Get returns, for each of keys, its entry,
// or nil when it holds none (or an expired one); Set stores entries, in
// place of what their keys held, and leaves out those larger than the
// store takes.
type Store interface {
	Get(ctx context.Context, keys ...string) ([]*Entry, error)
	Set(ctx context.Context, items ...Item) error
}

// Item is an entry to store under its key.
type Item struct {
	Key   string
	Entry Entry
}

// Key is the digest of what decides a reply: the scope it is kept for
// (a client key's id, an identity), the route, the model the backend is
// asked for, and the request's canonical form, each length-prefixed so
// that no two lists of fields share a key.
func Key(fields ...[]byte) string {
	h := sha256.New()
	var n [8]byte
	for _, f := range fields {
		binary.LittleEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write(f)
	}
	return hex.EncodeToString(h.Sum(nil))
}
