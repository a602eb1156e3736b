package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
)

// Prefix begins every key New makes, so a leaked one is recognizable.
const Prefix = "sk-cg-"

// randomChars is the number of base62 characters after Prefix: 43 of
// them hold 256 bits, as much as 32 random bytes.
const randomChars = 43

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// New returns a new random key: Prefix and 43 base62 characters drawn
// from crypto/rand without bias.
func New() string {
	out := make([]byte, 0, len(Prefix)+randomChars)
	out = append(out, Prefix...)
	var buf [64]byte
	for len(out) < cap(out) {
		_, _ = rand.Read(buf[:]) // never fails, per crypto/rand
		for _, b := range buf {
			// 248 is the largest multiple of 62 under 256: rejecting
			// larger bytes keeps every character equally likely.
			if b < 248 && len(out) < cap(out) {
				out = append(out, base62[b%62])
			}
		}
	}
	return string(out)
}

// Hash returns the form of key to put in a config: "sha256:<64 hex>".
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hashPrefix + hex.EncodeToString(sum[:])
}
