// Package keys holds the gateway's client API keys: the set of keys a
// config accepts, looked up by the SHA-256 of the key a client presents,
// the model allow-list of each, the keys_file format, where clients put
// their key in a request, and how keys are made and hashed. It has no
// Caddy imports.
package keys

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// hashPrefix marks a key written as its SHA-256 rather than as itself.
const hashPrefix = "sha256:"

// MinPlainLength is the shortest key accepted in plain form: keys are
// looked up by a fast hash, so they must be too long to guess.
const MinPlainLength = 16

// Entry is one client key as configured, in the Caddy JSON config and in
// a keys_file.
type Entry struct {
	// Key is the key's SHA-256 as "sha256:<64 hex digits>" (recommended:
	// the config then holds no secret) or the key itself, at least 16
	// characters. A plain key is hashed when the config loads and not
	// kept as text.
	Key string `json:"key"`

	// ID names the key's owner in logs, metrics and the placeholders
	// {http.auth.user.id} and {http.chat_gateway.key_id}. Default: the
	// first 8 hex digits of the key's SHA-256.
	ID string `json:"id,omitempty"`

	// Models the key may use, as names or globs where * stands for any
	// run of characters ("gpt-4o*", "*"). Default: every model.
	Models []string `json:"models,omitempty"`

	// Expires is when the key stops being accepted, in RFC 3339.
	// Default: never.
	Expires time.Time `json:"expires,omitzero"`

	// Disabled keeps the key in the config but refuses it.
	Disabled bool `json:"disabled,omitempty"`
}

// Key is an accepted key: its identity and what it may do. It holds no
// form of the key but its hash.
type Key struct {
	// ID is the key's identity.
	ID string
	// Index is the position of the key's entry among those Build got,
	// for the caller's own settings of the key.
	Index    int
	hash     [sha256.Size]byte
	models   *Models // nil: every model
	expires  time.Time
	disabled bool
}

// Valid reports whether the key may be used at now: not disabled, not
// expired.
func (k *Key) Valid(now time.Time) bool {
	return !k.disabled && (k.expires.IsZero() || now.Before(k.expires))
}

// Allowed reports whether the key may use model.
func (k *Key) Allowed(model string) bool {
	return k.models == nil || k.models.Match(model)
}

// Set is the keys of one config, by hash.
type Set struct {
	byHash map[[sha256.Size]byte]*Key
}

// Build makes the set of entries. Plain keys are hashed; a key given
// twice, a malformed hash or a short plain key is an error naming the
// entry by its position or id, never by its key.
func Build(entries []Entry) (*Set, error) {
	s := &Set{byHash: make(map[[sha256.Size]byte]*Key, len(entries))}
	for i, e := range entries {
		name := EntryName(i, e.ID)
		sum, err := parseKey(e.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if _, dup := s.byHash[sum]; dup {
			return nil, fmt.Errorf("%s: the same key is configured twice", name)
		}
		k := &Key{ID: e.ID, Index: i, hash: sum, expires: e.Expires, disabled: e.Disabled}
		if k.ID == "" {
			k.ID = defaultID(sum)
		}
		if len(e.Models) > 0 {
			if k.models, err = CompileModels(e.Models); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		s.byHash[sum] = k
	}
	return s, nil
}

// EntryName names the i-th entry (from 0) in errors, by its position
// and id, never by its key: "key 2 (team)".
func EntryName(i int, id string) string {
	if id == "" {
		return fmt.Sprintf("key %d", i+1)
	}
	return fmt.Sprintf("key %d (%s)", i+1, id)
}

// DefaultID is the id of a key configured without one: the first 8 hex
// digits of its SHA-256.
func DefaultID(key string) string { return defaultID(sha256.Sum256([]byte(key))) }

func defaultID(sum [sha256.Size]byte) string { return hex.EncodeToString(sum[:4]) }

// parseKey returns the SHA-256 an entry's key stands for.
func parseKey(key string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if h, ok := strings.CutPrefix(key, hashPrefix); ok {
		if len(h) != hex.EncodedLen(sha256.Size) {
			return sum, fmt.Errorf("a sha256: key needs 64 hex digits, not %d characters", len(h))
		}
		if _, err := hex.Decode(sum[:], []byte(h)); err != nil {
			return sum, errors.New("a sha256: key needs 64 hex digits")
		}
		return sum, nil
	}
	switch {
	case key == "":
		return sum, errors.New("empty key (an unset environment variable?)")
	case len(key) < MinPlainLength:
		return sum, fmt.Errorf("a plain key needs at least %d characters", MinPlainLength)
	case len(key) == hex.EncodedLen(sha256.Size) && isHex(key):
		// A hash pasted without its prefix would be taken for a plain
		// key that no client has, and refuse every call without a hint.
		// It is named as a 401 names a key: it may be a secret.
		return sum, fmt.Errorf("64 hex digits look like a key's SHA-256: did you mean sha256:%s? A plain key of 64 hex digits is refused for that reason: hash it with `caddy chat-gateway hash-key`", Hint(key))
	}
	return sha256.Sum256([]byte(key)), nil
}

// isHex reports whether s is made of hex digits only.
func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// Len is the number of keys in the set.
func (s *Set) Len() int { return len(s.byHash) }

// Each calls fn with each key of the set, in no order.
func (s *Set) Each(fn func(*Key)) {
	for _, k := range s.byHash {
		fn(k)
	}
}

// Lookup returns the key a client presented, if the set has it, valid
// or not. It costs one SHA-256 and one map access; the hashes are
// compared in constant time.
func (s *Set) Lookup(presented string) (*Key, bool) {
	sum := sha256.Sum256([]byte(presented))
	k, ok := s.byHash[sum]
	if !ok || subtle.ConstantTimeCompare(k.hash[:], sum[:]) != 1 {
		return nil, false
	}
	return k, true
}

// ParseFile reads a keys_file: {"keys":[{"key":"sha256:...","id":"...",
// "models":[...],"expires":"<RFC 3339>","disabled":false}]}, each key an
// E: an Entry, or a caller's type holding one with settings of its own.
// Unknown fields are errors, so a misspelt "models" does not open every
// model.
func ParseFile[E any](data []byte) ([]E, error) {
	var f struct {
		Keys []E `json:"keys"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("want {\"keys\":[{\"key\":\"sha256:...\",\"id\":\"...\"}]}: %w", err)
	}
	if dec.More() {
		return nil, errors.New("data after the keys object")
	}
	return f.Keys, nil
}
