// Package jsonwalk walks JSON that has already been validated: it finds
// value and member boundaries without decoding, so the gateway can copy
// what it does not change byte for byte. Keys are compared as decoded
// (RFC 8259): "mod\u0065l" is model.
package jsonwalk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
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
		for i++; ; i++ {
			i = PlainRun(b, i)
			switch {
			case i >= len(b):
				return len(b)
			case b[i] == '\\':
				i++
			case b[i] == '"':
				return i + 1
			}
		}
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

// PlainRun returns the index of the first quote, backslash or control
// character in b from i, or len(b) when there is none (i when i is past
// it): where a run of a string's content
// that needs no decoding ends. It tests eight bytes at a time, each
// without a branch (a byte's test can be wrong only above a byte that
// matched, so the lowest match is right).
func PlainRun(b []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(b); i += 8 {
		v := binary.LittleEndian.Uint64(b[i:])
		quote, backslash := v^(ones*'"'), v^(ones*'\\')
		match := ((v-ones*0x20)&^v | (quote-ones)&^quote | (backslash-ones)&^backslash) & highs
		if match != 0 {
			return i + bits.TrailingZeros64(match)/8
		}
	}
	for i < len(b) && b[i] >= 0x20 && b[i] != '"' && b[i] != '\\' {
		i++
	}
	return i
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
