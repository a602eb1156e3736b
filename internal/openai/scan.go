package openai

import (
	"errors"
	"strconv"
	"sync"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// The request decoder validates a body as JSON (RFC 8259) in one pass
// and, on the way, keeps the few values the gateway needs. It exists
// because encoding/json scans a body twice (validity, then decoding) at
// about 100 MB/s, which made a 1 MiB request cost ten times what Caddy
// spends proxying it; strings, the bulk of any chat, are skipped here
// eight bytes at a time. FuzzChatRequest checks it against encoding/json.

// maxDepth bounds nesting, as encoding/json does.
const maxDepth = 10000

var errDepth = errors.New("nesting is deeper than 10000 levels")

// syntaxError is a JSON syntax error at an offset.
type syntaxError struct {
	msg string
	off int
}

func (e *syntaxError) Error() string { return e.msg + " at offset " + strconv.Itoa(e.off) }

func errAt(msg string, off int) error { return &syntaxError{msg, off} }

// scanValue validates the JSON value starting at b[i] (no leading
// space) and returns the index just past it.
func scanValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, errAt("unexpected end of input", i)
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i)
	case c == '{':
		return scanObject(b, i, depth+1, nil)
	case c == '[':
		return scanArray(b, i, depth+1, nil)
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	case c == '-' || c >= '0' && c <= '9':
		return scanNumber(b, i)
	}
	return i, errAt("invalid character "+strconv.QuoteRune(rune(b[i]))+" looking for a value", i)
}

func scanLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, errAt("invalid literal", i)
	}
	return i + len(lit), nil
}

func scanNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return i, errAt("invalid number", start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return i, errAt("invalid number", start)
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return i, errAt("invalid number", start)
		}
	}
	return i, nil
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// specialBytes marks, with its high bit, each of the 8 bytes of v that is
// a quote, a backslash or a control character. Bytes from 0x80 up are
// not marked: the body's UTF-8 is checked on its own. A borrow can mark
// a plain byte above a marked one, never below, so the lowest mark is
// always true.
func specialBytes(v uint64) uint64 {
	quote := v ^ (ones * '"')
	slash := v ^ (ones * '\\')
	return ((quote-ones)&^quote | (slash-ones)&^slash | (v-ones*0x20)&^v) & highs
}

// scanString validates the string starting at b[i] and returns the index
// just past its closing quote.
func scanString(b []byte, i int) (int, error) {
	var s stringScan
	end, done, err := s.scan(b, i+1)
	if err == nil && !done {
		err = errAt("unterminated string", i)
	}
	return end, err
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// scanObject validates the object at b[i]; member, if not nil, is called
// with each raw key and the index of its value, and returns the index
// past the value (having validated it). It is for what a backend sends:
// a request body is read by a reader with dup set.
func scanObject(b []byte, i, depth int, member func(key []byte, at int) (int, error)) (int, error) {
	r := reader{b: b}
	return r.object(i, depth, member)
}

// scanArray validates the array at b[i]; elem, if not nil, is called
// with each element's index in the array and its offset.
func scanArray(b []byte, i, depth int, elem func(n, at int) (int, error)) (int, error) {
	r := reader{b: b}
	return r.array(i, depth, elem)
}

// reader validates the JSON in b. With dup set, it also reports each
// member whose name an earlier member of the same object had, compared
// as decoded ("mod\u0065l" is model): JSON leaves such a body's meaning
// open (encoding/json keeps the last, others the first), so a request
// that names anything twice is refused wherever it does, and the
// gateway and any backend read one request the same way.
type reader struct {
	b []byte
	// dup, when set, is told the offset of each key that repeats a name.
	dup *RequestReader
}

// value validates the JSON value starting at b[i] (no leading space)
// and returns the index just past it.
func (r *reader) value(i, depth int) (int, error) {
	b := r.b
	if i >= len(b) {
		return i, errAt("unexpected end of input", i)
	}
	switch c := b[i]; {
	case c == '{':
		return r.object(i, depth+1, nil)
	case c == '[':
		return r.array(i, depth+1, nil)
	}
	return scanValue(b, i, depth)
}

// object validates the object at b[i]; member, if not nil, is called
// with each raw key and the index of its value, and returns the index
// past the value (having validated it, with r).
func (r *reader) object(i, depth int, member func(key []byte, at int) (int, error)) (int, error) {
	if depth > maxDepth {
		return i, errDepth
	}
	b := r.b
	i = jsonwalk.SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	var seen memberNames
	for {
		if i >= len(b) || b[i] != '"' {
			return i, errAt("expected a string key", i)
		}
		end, err := scanString(b, i)
		if err != nil {
			return end, err
		}
		key := b[i:end]
		if r.dup != nil && seen.repeats(KeyName(key)) {
			r.dup.duplicate(i)
		}
		i = jsonwalk.SkipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return i, errAt("expected ':'", i)
		}
		i = jsonwalk.SkipSpace(b, i+1)
		if i >= len(b) {
			return i, errAt("unexpected end of input", i)
		}
		if member != nil {
			i, err = member(key, i)
		} else {
			i, err = r.value(i, depth)
		}
		if err != nil {
			return i, err
		}
		var more bool
		if i, more, err = afterItem(b, i, '}'); err != nil || !more {
			return i, err
		}
	}
}

// memberNames are the names of one object's members so far: a few in
// place, then a set, so that an object of a million members costs no
// more per member than one of ten.
type memberNames struct {
	few [8][]byte
	n   int
	set map[string]struct{}
}

// repeats records name and reports whether the object had it before.
func (m *memberNames) repeats(name []byte) bool {
	if m.set == nil {
		for _, n := range m.few[:m.n] {
			if string(n) == string(name) {
				return true
			}
		}
		if m.n < len(m.few) {
			m.few[m.n] = name
			m.n++
			return false
		}
		m.set = make(map[string]struct{}, 2*len(m.few))
		for _, n := range m.few {
			m.set[string(n)] = struct{}{}
		}
	}
	if _, ok := m.set[string(name)]; ok {
		return true
	}
	m.set[string(name)] = struct{}{}
	return false
}

// array validates the array at b[i]; elem, if not nil, is called with
// each element's index in the array and its offset.
func (r *reader) array(i, depth int, elem func(n, at int) (int, error)) (int, error) {
	if depth > maxDepth {
		return i, errDepth
	}
	b := r.b
	i = jsonwalk.SkipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for n := 0; ; n++ {
		if i >= len(b) {
			return i, errAt("unexpected end of input", i)
		}
		var err error
		if elem != nil {
			i, err = elem(n, i)
		} else {
			i, err = r.value(i, depth)
		}
		if err != nil {
			return i, err
		}
		var more bool
		if i, more, err = afterItem(b, i, ']'); err != nil || !more {
			return i, err
		}
	}
}

// afterItem moves past what follows an object member or array element:
// a comma (another item comes) or the closing byte (the index past it).
func afterItem(b []byte, i int, closing byte) (int, bool, error) {
	i = jsonwalk.SkipSpace(b, i)
	switch {
	case i < len(b) && b[i] == ',':
		return jsonwalk.SkipSpace(b, i+1), true, nil
	case i < len(b) && b[i] == closing:
		return i + 1, false, nil
	}
	return i, false, errAt("expected ',' or '"+string(closing)+"'", i)
}

// chunkParts are the members of a chunk or reply and those of its
// choices, as collectChunk finds them.
type chunkParts struct {
	top     []span
	choices []choiceSpan
	fields  []span // the choices' members, in order
}

// choiceSpan is one element of "choices": its bytes and, when it is an
// object, its members, fields[start:end] of its chunkParts.
type choiceSpan struct {
	raw        []byte
	start, end int
}

// fieldsOf returns the members of choice c.
func (p *chunkParts) fieldsOf(c choiceSpan) []span { return p.fields[c.start:c.end] }

// pooledParts keeps chunkParts for the next chunk or reply read in
// full: parts grown from nothing cost each stream about 1.4 KB of
// garbage, then that much memory for as long as the stream lasted.
var pooledParts = sync.Pool{New: func() any {
	return &chunkParts{top: make([]span, 0, 12), choices: make([]choiceSpan, 0, 4), fields: make([]span, 0, 12)}
}}

// collectPooled is collectChunk into pooled parts, which release gives
// back.
func collectPooled(b []byte) (*chunkParts, bool) {
	p := pooledParts.Get().(*chunkParts)
	parts, ok := collectChunk(b, chunkParts{top: p.top[:0], choices: p.choices[:0], fields: p.fields[:0]})
	*p = parts
	return p, ok
}

// release empties p, so that the pool holds on to no chunk's bytes, and
// gives it back.
func (p *chunkParts) release() {
	clear(p.top)
	clear(p.choices)
	clear(p.fields)
	pooledParts.Put(p)
}

// collectChunk validates b as one JSON object, appending to p its
// members, the elements of its "choices" array and their members, in a
// single pass. It reports false for anything but an object.
func collectChunk(b []byte, p chunkParts) (chunkParts, bool) {
	i := jsonwalk.SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return p, false
	}
	choice := func(_, at int) (int, error) {
		start := len(p.fields)
		var end int
		var err error
		if b[at] == '{' {
			end, err = scanObject(b, at, 3, func(key []byte, at int) (int, error) {
				end, err := scanValue(b, at, 3)
				if err == nil {
					p.fields = append(p.fields, span{key, b[at:end], fieldName(key)})
				}
				return end, err
			})
		} else {
			end, err = scanValue(b, at, 2)
		}
		if err == nil {
			p.choices = append(p.choices, choiceSpan{b[at:end], start, len(p.fields)})
		}
		return end, err
	}
	end, err := scanObject(b, i, 1, func(key []byte, at int) (int, error) {
		var end int
		var err error
		name := fieldName(key)
		if name == "choices" && b[at] == '[' {
			end, err = scanArray(b, at, 2, choice)
		} else {
			end, err = scanValue(b, at, 1)
		}
		if err == nil {
			p.top = append(p.top, span{key, b[at:end], name})
		}
		return end, err
	})
	return p, err == nil && jsonwalk.SkipSpace(b, end) == len(b)
}
