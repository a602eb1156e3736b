package cache

import (
	"bytes"
	"cmp"
	"errors"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// Canonical returns body, a JSON object, in a canonical form: members
// sorted by name at every depth (names that differ only in case, or not
// at all, kept in their order: decoders that match names regardless of
// case read them by their order), no whitespace, strings escaped one
// way, an integer as its literal and any other number as the shortest
// text of its float64, the value a backend reads; the top-level members
// skip names are left out.
// Two requests that differ only in member order, whitespace, escapes,
// the spelling of a number or skipped members have one canonical form;
// two that a backend reads differently never do (a lone surrogate
// escape, which decoders read differently, keeps its escape). It walks
// the bytes once per level of nesting, decoding nothing into values.
func Canonical(body []byte, skip func(name string) bool) ([]byte, error) {
	if !utf8.Valid(body) {
		return nil, errNotUTF8
	}
	c := canonicalizer{in: body, out: make([]byte, 0, len(body))}
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
	return c.out, nil
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
	return c.out, nil
}

// maxDepth bounds the nesting of a request with a canonical form: each
// level of objects may copy what it holds once more. A request nested
// deeper is not cached.
const maxDepth = 128

var (
	errSyntax  = errors.New("cache: the request is not valid JSON")
	errTooDeep = errors.New("cache: the request nests too deep to be cached")
	errNotUTF8 = errors.New("cache: the request is not valid UTF-8")
	// errTooCostly: objects nested out of order, each level copied once
	// more, past 4 times the request's size.
	errTooCostly = errors.New("cache: the request's members nest too deep out of order to be cached")
)

type canonicalizer struct {
	in, out []byte
	copied  int // bytes copied to put members in order, at most 4 times the input's
}

// member is where an object's member, written as in the request, is in
// the output: its name (in quotes) and the member entire.
type member struct {
	name, all [2]int
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
		n, err := canonicalNumber(c.in[i:j])
		c.out = append(c.out, n...)
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
	start := len(c.out)
	c.out = append(c.out, '{')
	var members []member
	i = jsonwalk.SkipSpace(c.in, i+1)
	if i < len(c.in) && c.in[i] == '}' {
		c.out = append(c.out, '}')
		return i + 1, nil
	}
	for {
		if i >= len(c.in) || c.in[i] != '"' {
			return 0, errSyntax
		}
		if len(members) > 0 {
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
			c.out = c.out[:m.all[0]-min(len(members), 1)] // and its comma
		} else {
			members = append(members, m)
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
	name := func(out []byte, m member) []byte { return out[m.name[0]-start : m.name[1]-start] }
	order := func(out []byte) func(a, b member) int {
		return func(a, b member) int { return foldCompare(name(out, a), name(out, b)) }
	}
	if !slices.IsSortedFunc(members, order(c.out[start:])) {
		if c.copied += len(c.out) - start; c.copied > 4*len(c.in)+4096 {
			return 0, errTooCostly
		}
		written := bytes.Clone(c.out[start:])
		slices.SortStableFunc(members, order(written))
		c.out = append(c.out[:start], '{')
		for n, m := range members {
			if n > 0 {
				c.out = append(c.out, ',')
			}
			c.out = append(c.out, written[m.all[0]-start:m.all[1]-start]...)
		}
	}
	c.out = append(c.out, '}')
	return i + 1, nil
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
		for i < len(c.in) && c.in[i] >= 0x20 && c.in[i] != '"' && c.in[i] != '\\' {
			i++
		}
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

// canonicalNumber is n's canonical text: an integer literal as written
// (JSON allows one spelling of it, -0 aside), any other number as the
// shortest text of its float64; a number past float64's range, which
// backends read differently, has none.
func canonicalNumber(n []byte) ([]byte, error) {
	if !bytes.ContainsAny(n, ".eE") {
		if string(n) == "-0" {
			return []byte("0"), nil
		}
		return n, nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return nil, errors.New("cache: a number past float64's range")
	}
	if f == 0 {
		return []byte("0"), nil
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

// foldCompare orders member names as written ("key", with its quotes
// and escapes decoded) by their case folding: a name and its spellings
// in another case (Unicode's simple folding, as Go's encoding/json
// matches names) sort together, kept in the order of the request,
// which decoders that match names regardless of case read by order.
func foldCompare(a, b []byte) int {
	for len(a) > 0 && len(b) > 0 {
		ra, na := fold(a)
		rb, nb := fold(b)
		if ra != rb {
			return cmp.Compare(ra, rb)
		}
		a, b = a[na:], b[nb:]
	}
	return cmp.Compare(len(a), len(b))
}

// fold decodes the rune starting b and returns the least rune of its
// case folding orbit, and its length.
func fold(b []byte) (rune, int) {
	if b[0] < utf8.RuneSelf {
		c := rune(b[0])
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != 'k' && c != 's' { // the two ASCII letters with a non-ASCII fold
			return c, 1
		}
	}
	r, n := utf8.DecodeRune(b)
	least := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		least = min(least, f)
	}
	return least, n
}
