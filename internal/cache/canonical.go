package cache

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// RequestKey is Key of fields and then of body's canonical form: body,
// a JSON object, with its members sorted by name at every depth (names
// that differ only in case, or not at all, kept in their order: decoders
// that match names regardless of case read them by their order), no
// whitespace, strings escaped one way, an integer as its literal and any
// other number as the shortest text of its float64, the value a backend
// reads; the top-level members skip names are left out.
// Two requests that differ only in member order, whitespace, escapes,
// the spelling of a number or skipped members have one canonical form;
// two that a backend reads differently never do (a lone surrogate
// escape, which decoders read differently, keeps its escape). It reads
// the request once and writes it twice (in its order, then each object's
// members in theirs), decoding nothing into values, in buffers reused
// from one request to the next.
func RequestKey(body []byte, skip func(name string) bool, fields ...[]byte) (string, error) {
	c := canonicalizers.Get().(*canonicalizer)
	defer c.release()
	canonical, err := c.canonical(body, skip)
	if err != nil {
		return "", err
	}
	return Key(append(fields, canonical)...), nil
}

// canonicalizers are reused: their buffers outlive a request.
var canonicalizers = sync.Pool{New: func() any { return new(canonicalizer) }}

// maxPooledCanonical bounds the bytes of the buffers of a canonicalizer
// that goes back to the pool: a rare large request does not pin its size.
const maxPooledCanonical = 1 << 20

// release forgets the request and gives c back to the pool, unless its
// buffers together hold more than maxPooledCanonical bytes.
func (c *canonicalizer) release() {
	held := cap(c.out) + cap(c.ord) + cap(c.keys) + (cap(c.stack)+cap(c.kept))*int(unsafe.Sizeof(member{})) + cap(c.unordered)*int(unsafe.Sizeof(object{}))
	if held > maxPooledCanonical {
		return
	}
	c.in, c.out, c.ord = nil, c.out[:0], c.ord[:0]
	c.unordered, c.stack, c.kept, c.keys = c.unordered[:0], c.stack[:0], c.kept[:0], c.keys[:0]
	canonicalizers.Put(c)
}

// canonical returns body's canonical form (see RequestKey), which is c's
// until c is released.
func (c *canonicalizer) canonical(body []byte, skip func(name string) bool) ([]byte, error) {
	if !utf8.Valid(body) {
		return nil, errNotUTF8
	}
	c.in, c.out = body, slices.Grow(c.out, len(body))
	i := jsonwalk.SkipSpace(body, 0)
	if i == len(body) || body[i] != '{' {
		return nil, errors.New("cache: the request is not a JSON object")
	}
	i, err := c.object(i, 1, skip)
	if err != nil {
		return nil, err
	}
	if jsonwalk.SkipSpace(body, i) != len(body) {
		return nil, errors.New("cache: data after the request's JSON object")
	}
	return c.ordered(), nil
}

// canonicalJSON is the JSON value b in canonical form.
func canonicalJSON(b []byte) ([]byte, error) {
	if !utf8.Valid(b) {
		return nil, errNotUTF8
	}
	c := canonicalizer{in: b}
	i, err := c.value(jsonwalk.SkipSpace(b, 0), 0)
	if err != nil {
		return nil, err
	}
	if jsonwalk.SkipSpace(b, i) != len(b) {
		return nil, errSyntax
	}
	return c.ordered(), nil
}

// maxDepth bounds the nesting of a request with a canonical form, and
// so the depth of the writer's recursion. A request nested deeper is not
// cached.
const maxDepth = 128

var (
	errSyntax  = errors.New("cache: the request is not valid JSON")
	errTooDeep = errors.New("cache: the request nests too deep to be cached")
	errNotUTF8 = errors.New("cache: the request is not valid UTF-8")
)

// canonicalizer writes in's canonical form to out in the request's
// order, noting each object whose members are not in order (unordered,
// by the end of the object); ordered then writes it again, to ord, with
// those members in order.
type canonicalizer struct {
	in, out, ord []byte
	unordered    []object
	stack        []member // the members of the objects being written, the innermost's last
	kept         []member // the members of the unordered objects, in order, each object's together
	keys         []byte   // the members' fold keys
}

// object is where an object out of order is in out, and where its
// members are in kept.
type object struct {
	start, end int
	members    [2]int
}

// member is where an object's member, written as in the request, is in
// the output: its name (in quotes) and the member entire; and where the
// key it is ordered by is in keys.
type member struct {
	name, all, key [2]int
}

// value writes the value at in[i], depth levels deep, and returns the
// offset past it.
func (c *canonicalizer) value(i, depth int) (int, error) {
	if i >= len(c.in) {
		return 0, errSyntax
	}
	switch b := c.in[i]; {
	case b == '{':
		return c.object(i, depth+1, nil)
	case b == '[':
		return c.array(i, depth+1)
	case b == '"':
		return c.str(i)
	case b == '-' || b >= '0' && b <= '9':
		j := i + numberLen(c.in[i:])
		if j == i {
			return 0, errSyntax
		}
		var err error
		c.out, err = appendCanonicalNumber(c.out, c.in[i:j])
		return j, err
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(c.in[i:], []byte(lit)) {
				c.out = append(c.out, lit...)
				return i + len(lit), nil
			}
		}
		return 0, errSyntax
	}
}

// object writes the object at in[i], its members sorted by name,
// leaving out those skip names: each member is written where it comes,
// then the object's members are put in order, one copy of the object
// per level of nesting.
func (c *canonicalizer) object(i, depth int, skip func(string) bool) (int, error) {
	if depth > maxDepth {
		return 0, errTooDeep
	}
	start, base := len(c.out), len(c.stack)
	c.out = append(c.out, '{')
	i = jsonwalk.SkipSpace(c.in, i+1)
	if i < len(c.in) && c.in[i] == '}' {
		c.out = append(c.out, '}')
		return i + 1, nil
	}
	for {
		if i >= len(c.in) || c.in[i] != '"' {
			return 0, errSyntax
		}
		first := len(c.stack) == base
		if !first {
			c.out = append(c.out, ',')
		}
		m := member{all: [2]int{len(c.out), 0}}
		j, err := c.str(i)
		if err != nil {
			return 0, err
		}
		m.name = [2]int{m.all[0], len(c.out)}
		i = jsonwalk.SkipSpace(c.in, j)
		if i >= len(c.in) || c.in[i] != ':' {
			return 0, errSyntax
		}
		c.out = append(c.out, ':')
		if i, err = c.value(jsonwalk.SkipSpace(c.in, i+1), depth); err != nil {
			return 0, err
		}
		m.all[1] = len(c.out)
		name := c.out[m.name[0]+1 : m.name[1]-1]
		if skip != nil && skip(string(name)) {
			c.out = c.out[:m.all[0]]
			if !first {
				c.out = c.out[:len(c.out)-1] // and its comma
			}
			for n := len(c.unordered); n > 0 && c.unordered[n-1].end > len(c.out); n-- {
				c.kept = c.kept[:c.unordered[n-1].members[0]] // its objects too
				c.unordered = c.unordered[:n-1]
			}
		} else {
			m.key[0] = len(c.keys)
			c.keys = appendFoldKey(c.keys, name)
			m.key[1] = len(c.keys)
			c.stack = append(c.stack, m)
		}
		i = jsonwalk.SkipSpace(c.in, i)
		if i >= len(c.in) {
			return 0, errSyntax
		}
		if c.in[i] == '}' {
			break
		}
		if c.in[i] != ',' {
			return 0, errSyntax
		}
		i = jsonwalk.SkipSpace(c.in, i+1)
	}
	c.out = append(c.out, '}')
	members := c.stack[base:]
	order := func(a, b member) int { return bytes.Compare(c.keys[a.key[0]:a.key[1]], c.keys[b.key[0]:b.key[1]]) }
	if !slices.IsSortedFunc(members, order) {
		slices.SortStableFunc(members, order)
		kept := len(c.kept)
		c.kept = append(c.kept, members...)
		c.unordered = append(c.unordered, object{start: start, end: len(c.out), members: [2]int{kept, len(c.kept)}})
	}
	c.stack = c.stack[:base]
	return i + 1, nil
}

// ordered is out with the members of each object out of order written in
// order: out once more, in one pass.
func (c *canonicalizer) ordered() []byte {
	if len(c.unordered) == 0 {
		return c.out
	}
	slices.SortFunc(c.unordered, func(a, b object) int { return a.start - b.start })
	c.ord = c.write(slices.Grow(c.ord[:0], len(c.out)), 0, len(c.out))
	return c.ord
}

// write appends out[from:to] to dst, the objects out of order in it
// written in order.
func (c *canonicalizer) write(dst []byte, from, to int) []byte {
	for {
		next, _ := slices.BinarySearchFunc(c.unordered, from, func(o object, at int) int { return o.start - at })
		if next == len(c.unordered) || c.unordered[next].start >= to {
			break
		}
		o := &c.unordered[next]
		dst = append(dst, c.out[from:o.start]...)
		dst = append(dst, '{')
		for n, m := range c.kept[o.members[0]:o.members[1]] {
			if n > 0 {
				dst = append(dst, ',')
			}
			dst = c.write(dst, m.all[0], m.all[1])
		}
		dst = append(dst, '}')
		from = o.end
	}
	return append(dst, c.out[from:to]...)
}

// array writes the array at in[i].
func (c *canonicalizer) array(i, depth int) (int, error) {
	if depth > maxDepth {
		return 0, errTooDeep
	}
	c.out = append(c.out, '[')
	i = jsonwalk.SkipSpace(c.in, i+1)
	if i < len(c.in) && c.in[i] == ']' {
		c.out = append(c.out, ']')
		return i + 1, nil
	}
	for {
		j, err := c.value(i, depth)
		if err != nil {
			return 0, err
		}
		i = jsonwalk.SkipSpace(c.in, j)
		if i >= len(c.in) {
			return 0, errSyntax
		}
		if c.in[i] == ']' {
			c.out = append(c.out, ']')
			return i + 1, nil
		}
		if c.in[i] != ',' {
			return 0, errSyntax
		}
		c.out = append(c.out, ',')
		i = jsonwalk.SkipSpace(c.in, i+1)
	}
}

// str writes the string at in[i] decoded and escaped one way: '"' and
// '\' with a backslash, control characters and lone surrogates as \u
// and four lower-case hex digits, everything else as its UTF-8 bytes.
func (c *canonicalizer) str(i int) (int, error) {
	c.out = append(c.out, '"')
	for i++; i < len(c.in); {
		plain := i // a run of bytes written as they are
		i = jsonwalk.PlainRun(c.in, i)
		c.out = append(c.out, c.in[plain:i]...)
		switch {
		case i >= len(c.in) || c.in[i] < 0x20:
			return 0, errSyntax
		case c.in[i] == '"':
			c.out = append(c.out, '"')
			return i + 1, nil
		}
		if i+1 >= len(c.in) {
			return 0, errSyntax
		}
		switch e := c.in[i+1]; e {
		case '"', '\\', '/':
			c.rune(rune(e))
			i += 2
		case 'b', 'f', 'n', 'r', 't':
			c.rune(rune("\b\f\n\r\t"[strings.IndexByte("bfnrt", e)]))
			i += 2
		case 'u':
			r, ok := hex4(c.in[i+2:])
			if !ok {
				return 0, errSyntax
			}
			i += 6
			if utf16.IsSurrogate(r) {
				if r2, ok := lowSurrogate(c.in[i:]); ok && r < 0xdc00 {
					if pair := utf16.DecodeRune(r, r2); pair != utf8.RuneError {
						c.out = utf8.AppendRune(c.out, pair)
						i += 6
						continue
					}
				}
				c.out = append(c.out, `\u`...)
				c.out = append(c.out, strconv.FormatInt(int64(r), 16)...)
				continue
			}
			c.rune(r)
		default:
			return 0, errSyntax
		}
	}
	return 0, errSyntax
}

// rune writes r, decoded from an escape, as a string's content.
func (c *canonicalizer) rune(r rune) {
	switch {
	case r == '"' || r == '\\':
		c.out = append(c.out, '\\', byte(r))
	case r < 0x20:
		c.out = append(c.out, `\u00`...)
		c.out = append(c.out, "0123456789abcdef"[r>>4], "0123456789abcdef"[r&0xf])
	default:
		c.out = utf8.AppendRune(c.out, r)
	}
}

// hex4 decodes the four hex digits starting b.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(n), err == nil
}

// lowSurrogate decodes a \u escape of a low surrogate starting b.
func lowSurrogate(b []byte) (rune, bool) {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return 0, false
	}
	r, ok := hex4(b[2:])
	return r, ok && r >= 0xdc00 && r < 0xe000
}

// numberLen is the length of the JSON number starting b (RFC 8259's
// grammar), or 0 when b does not start with one.
func numberLen(b []byte) int {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i, n = i+1, n+1
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return 0
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0
		}
	}
	return i
}

// appendCanonicalNumber appends n's canonical text to dst: an integer
// literal as written (JSON allows one spelling of it, -0 aside), any
// other number as the shortest text of its float64; a number past
// float64's range, which backends read differently, has none.
func appendCanonicalNumber(dst, n []byte) ([]byte, error) {
	if !bytes.ContainsAny(n, ".eE") {
		if string(n) == "-0" {
			return append(dst, '0'), nil
		}
		return append(dst, n...), nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return dst, errors.New("cache: a number past float64's range")
	}
	if f == 0 {
		return append(dst, '0'), nil
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64), nil
}

// appendFoldKey appends to dst what a member name (as written, without
// its quotes) sorts by: its case folding (Unicode's simple folding, as Go's
// encoding/json matches names), each rune the least of its orbit, and a
// lone surrogate as U+FFFD, as decoders read it. Names equal but for
// case sort together, kept in the order of the request: decoders that
// match names regardless of case read them by their order.
func appendFoldKey(key, name []byte) []byte {
	for i := 0; i < len(name); {
		if b := name[i]; b < utf8.RuneSelf && b != '\\' {
			if 'a' <= b && b <= 'z' { // the least of an ASCII letter's orbit is its capital, k's and s's too
				b -= 'a' - 'A'
			}
			key = append(key, b)
			i++
			continue
		}
		r, n := utf8.DecodeRune(name[i:])
		if r == '\\' { // an escape the canonical form wrote
			switch name[i+1] {
			case 'u':
				v, _ := hex4(name[i+2:])
				r, n = v, 6
				if utf16.IsSurrogate(r) {
					r = utf8.RuneError
				}
			default:
				r, n = rune(name[i+1]), 2
			}
		}
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		key = utf8.AppendRune(key, least)
		i += n
	}
	return key
}
