// Package jsonwalk walks JSON that has already been validated: it finds
// value and member boundaries without decoding, so the gateway can copy
// what it does not change byte for byte. Keys are compared as decoded
// (RFC 8259): "mod\u0065l" is model.
package jsonwalk

import (
	"bytes"
	"encoding/json"
)

// SkipSpace returns the index of the first byte at or after i that is
// not JSON whitespace.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// SkipValue returns the index just past the value starting at b[i].
func SkipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		for i++; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return i + 1
			}
		}
		return i
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = SkipValue(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default:
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return i
			}
		}
		return i
	}
}

// KeyIs reports whether the raw key names name, which is not empty.
// Keys with escapes are decoded; plain keys are compared in place.
func KeyIs(key []byte, name string) bool {
	if len(key) < 2 {
		return false
	}
	inner := key[1 : len(key)-1]
	if string(inner) == name {
		return true
	}
	// A key that spells name with escapes is longer than name and
	// starts with its first byte or an escape.
	if len(inner) <= len(name) || inner[0] != name[0] && inner[0] != '\\' || bytes.IndexByte(inner, '\\') < 0 {
		return false
	}
	var s string
	return json.Unmarshal(key, &s) == nil && s == name
}

// IsNull reports whether v is absent or JSON null.
func IsNull(v []byte) bool { return len(v) == 0 || string(v) == "null" }
