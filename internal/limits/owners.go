package limits

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Owners records who made what a backend keeps on a client's behalf and
// hands out an id for (a stored Response, which a later request names
// as previous_response_id): every client reaches the backend with the
// same upstream key, so the backend cannot tell them apart, and only
// the gateway can keep one client from naming another's. Memory and
// Redis keep these records beside the limits' counters.
//
// Ids and owners are kept as SHA-256 digests: no client's identity or
// id is stored as it is.
type Owners interface {
	// Claim records that owner made id, for ttl.
	Claim(ctx context.Context, id, owner string, ttl time.Duration) error
	// Owns reports whether owner made id, within its ttl: false for an
	// id nobody made, or somebody else did, alike.
	Owns(ctx context.Context, id, owner string) (bool, error)
}

// digest is what is kept of an id or an owner.
type digest [16]byte

func digestOf(s string) digest {
	sum := sha256.Sum256([]byte(s))
	return digest(sum[:16])
}

// MaxMemoryOwners bounds the ids a Memory store keeps an owner for: the
// oldest are forgotten first (their owners then get "not found" too).
const MaxMemoryOwners = 100000

// memoryOwners are a Memory store's records, in the order they were
// made.
type memoryOwners struct {
	mu    sync.Mutex
	byID  map[digest]ownerRecord
	order []digest // ids, oldest first, from start
	start int
}

// ownerRecord is who made an id, and until when it counts.
type ownerRecord struct {
	owner   digest
	expires time.Time
}

// Claim implements Owners.
func (m *Memory) Claim(_ context.Context, id, owner string, ttl time.Duration) error {
	o := &m.owners
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byID == nil {
		o.byID = make(map[digest]ownerRecord)
	}
	key := digestOf(id)
	if _, ok := o.byID[key]; !ok {
		if len(o.byID) >= MaxMemoryOwners {
			delete(o.byID, o.order[o.start])
			o.start++
		}
		if o.start > len(o.order)/2 { // drop what was evicted, now and then
			o.order = append(o.order[:0], o.order[o.start:]...)
			o.start = 0
		}
		o.order = append(o.order, key)
	}
	o.byID[key] = ownerRecord{owner: digestOf(owner), expires: time.Now().Add(ttl)}
	return nil
}

// Owns implements Owners.
func (m *Memory) Owns(_ context.Context, id, owner string) (bool, error) {
	o := &m.owners
	o.mu.Lock()
	defer o.mu.Unlock()
	rec, ok := o.byID[digestOf(id)]
	return ok && rec.owner == digestOf(owner) && time.Now().Before(rec.expires), nil
}

// ownerKey is the Redis key of id's record.
func (r *Redis) ownerKey(id string) string {
	d := digestOf(id)
	return r.prefix + "owner:" + hex.EncodeToString(d[:])
}

// Claim implements Owners: one SET with its expiry.
func (r *Redis) Claim(ctx context.Context, id, owner string, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	d := digestOf(owner)
	return r.client.Set(ctx, r.ownerKey(id), d[:], ttl).Err()
}

// Owns implements Owners: one GET.
func (r *Redis) Owns(ctx context.Context, id, owner string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	got, err := r.client.Get(ctx, r.ownerKey(id)).Bytes()
	switch {
	case err == nil:
		d := digestOf(owner)
		return string(got) == string(d[:]), nil
	case errors.Is(err, redis.Nil):
		return false, nil
	}
	return false, err
}

var (
	_ Owners = (*Memory)(nil)
	_ Owners = (*Redis)(nil)
)
