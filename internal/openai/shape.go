package openai

// Most events of a stream differ from the one before only in a few
// values: the text of a delta, a sequence number. A shape is an event
// the gateway fully validated and normalized, with those values marked
// as holes. An event equal to it outside the holes, with a JSON value of
// the hole's kind in each, is valid JSON with the same members (a string
// put in the place of a string keeps JSON valid), so it is read by
// comparing the bytes around the holes and scanning only the new
// values, not validated again from its first byte. FuzzShapes checks
// that every stream gives the same output and state with shapes as
// without.

// maxHoles bounds the holes of a shape.
const maxHoles = 8

// hole is a value of a shape's event that may change.
type hole struct {
	start, end int    // the value's bytes in the event, quotes included
	name       string // the member's name, as fieldName reads it
	number     bool   // an unsigned integer; else a string
}

// maxMisses is how many events in a row may differ from their shape
// before a stream takes no more shapes: a backend that varies more than
// the holes (a random member in every chunk) costs no copies for them.
const maxMisses = 4

// shape is an event with its holes; the zero shape matches nothing.
type shape struct {
	event  []byte
	holes  []hole // in order
	misses int    // events in a row that did not match
}

// match reports whether data has the shape, and puts the values of its
// holes in vals.
func (s *shape) match(data []byte, vals *[maxHoles][]byte) bool {
	if len(s.holes) == 0 {
		return false
	}
	if !s.matches(data, vals) {
		s.misses++
		return false
	}
	s.misses = 0
	return true
}

func (s *shape) matches(data []byte, vals *[maxHoles][]byte) bool {
	at, i := 0, 0 // in the shape's event, in data
	for k, h := range s.holes {
		fixed := s.event[at:h.start]
		if len(data)-i < len(fixed) || string(data[i:i+len(fixed)]) != string(fixed) {
			return false
		}
		i += len(fixed)
		end, ok := scanHole(data, i, h.number)
		if !ok {
			return false
		}
		vals[k] = data[i:end]
		at, i = h.end, end
	}
	return string(data[i:]) == string(s.event[at:])
}

// scanHole returns the index past the value at b[i]: an unsigned
// integer in JSON's grammar if number, else a string with no control
// characters and valid escapes.
func scanHole(b []byte, i int, number bool) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	if number {
		switch {
		case b[i] == '0':
			return i + 1, true
		case b[i] < '1' || b[i] > '9':
			return i, false
		}
		for i++; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
		return i, true
	}
	if b[i] != '"' {
		return i, false
	}
	var s stringScan
	end, done, err := s.scan(b, i+1)
	return end, done && err == nil
}

// take makes data, whose values at holes may change, the shape. Holes
// must be in order and not overlap, and the caller's: what it reads from
// the holes of an event that matches must be what reading the event in
// full would give it (a member read twice, once in a hole, would not).
func (s *shape) take(data []byte, holes []hole) bool {
	s.holes = s.holes[:0]
	if s.misses >= maxMisses || len(holes) == 0 || len(holes) > maxHoles {
		return false
	}
	for k := 1; k < len(holes); k++ {
		if holes[k].start < holes[k-1].end {
			return false
		}
	}
	s.event = append(s.event[:0], data...)
	s.holes = append(s.holes, holes...)
	return true
}

// clear makes the shape match nothing.
func (s *shape) clear() { s.holes = s.holes[:0] }

// holeAt is the hole of value v, a member named name of data.
func holeAt(data, v []byte, name string) hole {
	start := offset(data, v)
	return hole{start: start, end: start + len(v), name: name, number: v[0] != '"'}
}

// offset is where v, a subslice of data, starts in data.
func offset(data, v []byte) int { return cap(data) - cap(v) }

// chunkShape is the shape of a chat or completions chunk whose one
// choice, holes and all, went to the normalized chunk as it came.
type chunkShape struct {
	shape
	from, to   int    // the choice, in the shape's event
	head, tail []byte // the normalized chunk before and after it
}

// append appends the normalized form of data if it has the shape, with
// the values of its holes in texts.
func (c *chunkShape) append(dst, data []byte, texts *[maxHoles][]byte) ([]byte, bool) {
	if !c.match(data, texts) {
		return dst, false
	}
	dst = append(dst, c.head...)
	dst = append(dst, data[c.from:c.to+len(data)-len(c.event)]...)
	return append(dst, c.tail...), true
}

// take makes data the shape when it had one choice, choice (a subslice
// of data), which went into out, its normalized form, as it came, at
// out[at:]; texts are the holes, in choice.
func (c *chunkShape) take(data, out, choice []byte, at int, texts []span) {
	var buf [maxHoles]hole
	holes := buf[:0]
	for _, t := range texts {
		holes = append(holes, holeAt(data, t.val, t.name))
	}
	if !c.shape.take(data, holes) {
		return
	}
	c.from = offset(data, choice)
	c.to = c.from + len(choice)
	c.head = append(c.head[:0], out[:at]...)
	c.tail = append(c.tail[:0], out[at+len(choice):]...)
}

// textBytes is the size of texts, strings with their quotes.
func textBytes(texts [][]byte) int {
	n := 0
	for _, t := range texts {
		n += len(t) - 2
	}
	return n
}
