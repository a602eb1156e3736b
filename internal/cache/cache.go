// Package cache keeps backends' replies for the gateway to answer
// repeated requests with: the key of a request (Key, over its canonical
// form, Canonical), the stores of replies (Memory, bounded in bytes;
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

// size is what an entry costs a store, key included.
func (e *Entry) size(key string) int64 {
	return int64(len(key) + len(e.ContentType) + len(e.Body) + entryOverhead)
}

// entryOverhead is an entry's bookkeeping beyond its bytes: the list
// element, the map entry, the times.
const entryOverhead = 160

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
