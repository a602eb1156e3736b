package anthropic

import (
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// The helpers below walk JSON that encoding/json's Valid accepted: they
// find member and element boundaries without decoding values, so the
// stream translator can copy strings from a chunk into its events as
// they are, with no allocation.

// iter walks the members of an object or the elements of an array.
type iter struct {
	b   []byte
	i   int
	obj bool
}

// walk starts an iter over v when v is a value of the kind open ('{' or
// '['); it reports false otherwise.
func walk(v []byte, open byte) (iter, bool) {
	i := jsonwalk.SkipSpace(v, 0)
	if i >= len(v) || v[i] != open {
		return iter{}, false
	}
	return iter{b: v, i: i + 1, obj: open == '{'}, true
}

// next returns the next member (raw quoted key and raw value) or element
// (key nil); ok is false at the end.
func (it *iter) next() (key, val []byte, ok bool) {
	b := it.b
	it.i = jsonwalk.SkipSpace(b, it.i)
	if it.i < len(b) && b[it.i] == ',' {
		it.i = jsonwalk.SkipSpace(b, it.i+1)
	}
	if it.i >= len(b) || b[it.i] == '}' || b[it.i] == ']' {
		return nil, nil, false
	}
	if it.obj {
		k := it.i
		it.i = jsonwalk.SkipValue(b, it.i)
		key = b[k:it.i]
		it.i = jsonwalk.SkipSpace(b, jsonwalk.SkipSpace(b, it.i)+1) // past ':'
	}
	s := it.i
	it.i = jsonwalk.SkipValue(b, it.i)
	return key, b[s:it.i], true
}

func hasByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

// isString reports whether v is a JSON string with at least one
// character.
func isString(v []byte) bool { return len(v) > 2 && v[0] == '"' }

// appendUnquoted appends the text of the valid JSON string v. A lone
// UTF-16 surrogate or an invalid UTF-8 byte becomes U+FFFD, as with
// encoding/json.
func appendUnquoted(dst, v []byte) []byte {
	v = v[1 : len(v)-1]
	for i := 0; i < len(v); {
		c := v[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(v[i:])
			dst = utf8.AppendRune(dst, r) // an invalid byte: U+FFFD
			i += size
			continue
		}
		if c != '\\' {
			j := i + 1
			for j < len(v) && v[j] != '\\' && v[j] < utf8.RuneSelf {
				j++
			}
			dst = append(dst, v[i:j]...)
			i = j
			continue
		}
		i++
		switch v[i] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(v[i+1:])
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 < len(v) && v[i+1] == '\\' && v[i+2] == 'u' {
					r2 = hex4(v[i+3:])
				}
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					r = d
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, v[i])
		}
		i++
	}
	return dst
}

func hex4(b []byte) rune {
	n, _ := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(n)
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as with encoding/json; <, > and & are kept as they are.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but end lines in JavaScript.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
