package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a store in a Redis server, shared by every gateway that uses
// it: each entry one string value, expiring with the entry.
type Redis struct {
	client   *redis.Client
	prefix   string
	maxEntry int64
}

// NewRedis returns a store of client's server, its keys under prefix,
// refusing entries of more than maxEntry bytes.
func NewRedis(client *redis.Client, prefix string, maxEntry int64) *Redis {
	return &Redis{client: client, prefix: prefix, maxEntry: maxEntry}
}

// Get returns the entries of keys held, in one round trip.
func (r *Redis) Get(ctx context.Context, keys ...string) ([]*Entry, error) {
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = r.prefix + k
	}
	vals, err := r.client.MGet(ctx, full...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*Entry, len(keys))
	for i, v := range vals {
		if s, ok := v.(string); ok {
			e, err := decode([]byte(s))
			if err != nil {
				return nil, err
			}
			out[i] = &e
		}
	}
	return out, nil
}

// Set stores the items until they expire, in one round trip; an entry
// past maxEntry is left out.
func (r *Redis) Set(ctx context.Context, items ...Item) error {
	pipe := r.client.Pipeline()
	for _, it := range items {
		ttl := time.Until(it.Entry.Expires)
		if it.Entry.size(it.Key) > r.maxEntry || ttl < time.Millisecond {
			continue
		}
		pipe.Set(ctx, r.prefix+it.Key, encode(it.Entry), ttl)
	}
	if pipe.Len() == 0 {
		return nil
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Destruct closes the connections.
func (r *Redis) Destruct() error { return r.client.Close() }

// An entry as Redis holds it: a version byte, the stored and expiry
// times in Unix milliseconds, the content type's length and the content
// type, then the body.
const encodingVersion = 1

func encode(e Entry) []byte {
	b := make([]byte, 0, 19+len(e.ContentType)+len(e.Body))
	b = append(b, encodingVersion)
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Stored.UnixMilli()))
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Expires.UnixMilli()))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(e.ContentType)))
	b = append(b, e.ContentType...)
	return append(b, e.Body...)
}

var errBadEntry = errors.New("cache: an entry in Redis that this gateway did not write")

func decode(b []byte) (Entry, error) {
	if len(b) < 19 || b[0] != encodingVersion {
		return Entry{}, errBadEntry
	}
	n := int(binary.LittleEndian.Uint16(b[17:]))
	if len(b) < 19+n {
		return Entry{}, errBadEntry
	}
	return Entry{
		Stored:      time.UnixMilli(int64(binary.LittleEndian.Uint64(b[1:]))),
		Expires:     time.UnixMilli(int64(binary.LittleEndian.Uint64(b[9:]))),
		ContentType: string(b[19 : 19+n]),
		Body:        b[19+n:],
	}, nil
}
