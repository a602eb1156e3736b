package openai

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// The helpers below walk JSON that has already been validated (by
// valid or the request decoder). They find member and element
// boundaries without decoding values, so a chunk can be edited where it
// must and copied byte for byte everywhere else.

// members calls fn for each member of the object v, with the raw key
// (quotes included) and the raw value. It reports whether v is an object.
func members(v []byte, fn func(key, val []byte)) bool {
	i := jsonwalk.SkipSpace(v, 0)
	if i >= len(v) || v[i] != '{' {
		return false
	}
	for i = jsonwalk.SkipSpace(v, i+1); i < len(v) && v[i] != '}'; {
		k := i
		i = jsonwalk.SkipValue(v, i)
		key := v[k:i]
		i = jsonwalk.SkipSpace(v, i) + 1 // ':'
		i = jsonwalk.SkipSpace(v, i)
		s := i
		i = jsonwalk.SkipValue(v, i)
		fn(key, v[s:i])
		i = jsonwalk.SkipSpace(v, i)
		if i < len(v) && v[i] == ',' {
			i = jsonwalk.SkipSpace(v, i+1)
		}
	}
	return true
}

// span is an object member: its raw key and value, and the name the key
// spells when it is one the gateway reads or writes (see fieldName).
type span struct {
	key, val []byte
	name     string
}

// appendMembers appends the members of the object v to dst.
func appendMembers(dst []span, v []byte) []span {
	members(v, func(k, val []byte) { dst = append(dst, span{k, val, fieldName(k)}) })
	return dst
}

// fieldName returns the name the raw key spells, escapes read, when it
// is one the chunk, reply and Responses event normalizers look at, else
// "". Reading a key once and comparing names after is what keeps those
// normalizers cheap: a chunk's every key used to be compared with every
// name it might be.
func fieldName(key []byte) string {
	if len(key) < 2 {
		return ""
	}
	inner := key[1 : len(key)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		var s string
		if json.Unmarshal(key, &s) != nil {
			return ""
		}
		inner = []byte(s)
	}
	switch string(inner) {
	case "id":
		return "id"
	case "object":
		return "object"
	case "created":
		return "created"
	case "model":
		return "model"
	case "choices":
		return "choices"
	case "usage":
		return "usage"
	case "index":
		return "index"
	case "delta":
		return "delta"
	case "message":
		return "message"
	case "text":
		return "text"
	case "finish_reason":
		return "finish_reason"
	case "role":
		return "role"
	case "content":
		return "content"
	case "tool_calls":
		return "tool_calls"
	case "refusal":
		return "refusal"
	case "function_call":
		return "function_call"
	case "reasoning_content":
		return "reasoning_content"
	case "type":
		return "type"
	case "sequence_number":
		return "sequence_number"
	case "response":
		return "response"
	case "code":
		return "code"
	case "output":
		return "output"
	case "status":
		return "status"
	}
	return ""
}

// elements calls fn for each element of the array v. It reports whether
// v is an array.
func elements(v []byte, fn func(i int, el []byte)) bool {
	i := jsonwalk.SkipSpace(v, 0)
	if i >= len(v) || v[i] != '[' {
		return false
	}
	n := 0
	for i = jsonwalk.SkipSpace(v, i+1); i < len(v) && v[i] != ']'; n++ {
		s := i
		i = jsonwalk.SkipValue(v, i)
		fn(n, v[s:i])
		i = jsonwalk.SkipSpace(v, i)
		if i < len(v) && v[i] == ',' {
			i = jsonwalk.SkipSpace(v, i+1)
		}
	}
	return true
}

// hasValue reports whether v holds something other than null, "" or [].
func hasValue(v []byte) bool {
	switch string(v) {
	case "", "null", `""`, "[]":
		return false
	}
	return true
}

// object appends the members of one JSON object to buf.
type object struct {
	buf []byte
	n   int
}

func (o *object) open(dst []byte) { o.buf, o.n = append(dst, '{'), 0 }

// key starts a member; k is one of the gateway's own plain names.
func (o *object) key(k string) {
	if o.n > 0 {
		o.buf = append(o.buf, ',')
	}
	o.n++
	o.buf = append(o.buf, '"')
	o.buf = append(o.buf, k...)
	o.buf = append(o.buf, '"', ':')
}

func (o *object) raw(k string, v []byte) { o.key(k); o.buf = append(o.buf, v...) }

func (o *object) str(k, v string) { o.key(k); o.buf = appendString(o.buf, v) }

func (o *object) int(k string, v int64) { o.key(k); o.buf = strconv.AppendInt(o.buf, v, 10) }

// member copies a member found by members, raw key and all.
func (o *object) member(key, val []byte) {
	if o.n > 0 {
		o.buf = append(o.buf, ',')
	}
	o.n++
	o.buf = append(o.buf, key...)
	o.buf = append(o.buf, ':')
	o.buf = append(o.buf, val...)
}

func (o *object) close() []byte { return append(o.buf, '}') }

// others copies the members of a reply or chunk other than those the
// gateway writes itself: id, object, created, model, choices, usage.
func (o *object) others(top []span) {
	for _, m := range top {
		switch m.name {
		case "id", "object", "created", "model", "choices", "usage":
		default:
			o.member(m.key, m.val)
		}
	}
}

// appendString appends s as a JSON string.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			b, _ := json.Marshal(s) // never fails for a string
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// Member returns the raw value of obj's member key, or nil.
func Member(obj []byte, key string) []byte {
	var found []byte
	members(obj, func(k, v []byte) {
		if found == nil && jsonwalk.KeyIs(k, key) {
			found = v
		}
	})
	return found
}

// Members returns the values of keys in the object obj, as Member does
// each, in one pass over obj.
func Members(obj []byte, keys ...string) [][]byte {
	found := make([][]byte, len(keys))
	members(obj, func(k, v []byte) {
		for i, key := range keys {
			if found[i] == nil && jsonwalk.KeyIs(k, key) {
				found[i] = v
			}
		}
	})
	return found
}

// SetMember returns the JSON object obj with member key set to the raw
// JSON val: replaced where it stands, else added at the end. The rest of
// obj is kept byte for byte. obj must be a valid JSON object.
func SetMember(obj []byte, key string, val []byte) []byte {
	if old := Member(obj, key); old != nil {
		start := cap(obj) - cap(old) // old is a subslice of obj
		out := make([]byte, 0, len(obj)-len(old)+len(val))
		out = append(out, obj[:start]...)
		out = append(out, val...)
		return append(out, obj[start+len(old):]...)
	}
	end := len(obj) - 1
	for end > 0 && obj[end] != '}' {
		end--
	}
	empty := true
	for _, c := range obj[bytes.IndexByte(obj, '{')+1 : end] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			empty = false
			break
		}
	}
	out := make([]byte, 0, len(obj)+len(key)+len(val)+4)
	out = append(out, obj[:end]...)
	if !empty {
		out = append(out, ',')
	}
	out = strconv.AppendQuote(out, key)
	out = append(out, ':')
	out = append(out, val...)
	return append(out, obj[end:]...)
}

// stringValue decodes a raw JSON string value; anything else reads as "".
func stringValue(v []byte) string {
	if len(v) < 2 || v[0] != '"' {
		return ""
	}
	return unquote(v)
}
