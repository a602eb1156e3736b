// Package sse reads and writes Server-Sent Events as the WHATWG HTML
// standard defines them (section 9.2, "Server-sent events").
//
// The Parser is push based: bytes are fed as they arrive, in pieces of
// any size, and each complete event is handed to a callback. It keeps at
// most one line plus one event in memory, so a stream costs a small
// constant no matter how long it runs.
package sse

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// DefaultMaxLineSize is the longest line a Parser accepts unless told
// otherwise: large enough for a base64 image in one data line.
const DefaultMaxLineSize = 8 << 20

// ErrLineTooLong is returned by Feed when a line exceeds the parser's
// maximum line size. The stream cannot be resynchronised after it.
var ErrLineTooLong = errors.New("sse: line too long")

// Event is one dispatched event. Its slices are only valid during the
// callback that receives them.
type Event struct {
	// Type is the event type, from the "event" field; empty means "message".
	Type []byte
	// Data is the event's data: its "data" lines joined by "\n".
	Data []byte
	// ID is the last "id" field seen in the stream, as WHATWG defines it.
	ID []byte
	// Retry is the reconnection time in milliseconds from a "retry"
	// field of this event, or -1 if it had none.
	Retry int64
}

// Parser turns a byte stream into events. The zero value is ready to use
// with DefaultMaxLineSize.
type Parser struct {
	// MaxLineSize bounds one line (and so one data field); 0 means
	// DefaultMaxLineSize.
	MaxLineSize int

	line     []byte // the partial line carried between Feed calls
	data     []byte
	typ      []byte
	id       []byte
	retry    int64
	hasRetry bool
	hasData  bool
	afterCR  bool // the previous byte was a CR: a following LF belongs to it
	started  bool // the optional leading BOM has been dealt with
	bom      int  // bytes of a leading BOM seen so far
}

// Feed parses b and calls fn for each event completed by it. An error
// from fn stops parsing and is returned as is.
func (p *Parser) Feed(b []byte, fn func(Event) error) error {
	if !p.started {
		// A UTF-8 BOM may open the stream, possibly split across reads.
		n := 0
		for n < len(b) && p.bom+n < len(bom) && b[n] == bom[p.bom+n] {
			n++
		}
		switch {
		case p.bom+n == len(bom):
			p.started = true
			b = b[n:]
		case n == len(b):
			p.bom += n
			return nil
		default:
			// Not a BOM after all: what was held back is ordinary input.
			p.started = true
			held := bom[:p.bom]
			p.bom = 0
			if err := p.feed(held, fn); err != nil {
				return err
			}
		}
	}
	return p.feed(b, fn)
}

var bom = []byte("\xef\xbb\xbf")

// lineEnd returns the index of the first CR or LF in b, or -1. Two
// vectorized searches cost less than bytes.IndexAny's byte by byte one.
func lineEnd(b []byte) int {
	lf := bytes.IndexByte(b, '\n')
	in := b
	if lf >= 0 {
		in = b[:lf]
	}
	if cr := bytes.IndexByte(in, '\r'); cr >= 0 {
		return cr
	}
	return lf
}

func (p *Parser) feed(b []byte, fn func(Event) error) error {
	for len(b) > 0 {
		if p.afterCR {
			p.afterCR = false
			if b[0] == '\n' {
				b = b[1:]
				continue
			}
		}
		i := lineEnd(b)
		if i < 0 {
			if err := p.grow(len(b)); err != nil {
				return err
			}
			p.line = append(p.line, b...)
			return nil
		}
		if err := p.grow(i); err != nil {
			return err
		}
		var line []byte
		if len(p.line) > 0 {
			p.line = append(p.line, b[:i]...)
			line = p.line
		} else {
			line = b[:i]
		}
		p.afterCR = b[i] == '\r'
		b = b[i+1:]
		if err := p.processLine(line, fn); err != nil {
			return err
		}
		p.line = p.line[:0]
	}
	return nil
}

func (p *Parser) grow(n int) error {
	max := p.MaxLineSize
	if max <= 0 {
		max = DefaultMaxLineSize
	}
	if len(p.line)+n > max {
		return fmt.Errorf("%w: more than %d bytes", ErrLineTooLong, max)
	}
	return nil
}

// Pending reports whether bytes of an event not yet dispatched are held:
// a stream that ends now has been cut in the middle of an event.
func (p *Parser) Pending() bool {
	return len(p.line) > 0 || p.hasData || len(p.typ) > 0
}

func (p *Parser) processLine(line []byte, fn func(Event) error) error {
	if len(line) == 0 {
		return p.dispatch(fn)
	}
	if line[0] == ':' {
		return nil // comment
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "data":
		if p.hasData {
			p.data = append(p.data, '\n')
		}
		p.data = append(p.data, value...)
		p.hasData = true
	case "event":
		p.typ = append(p.typ[:0], value...)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			p.id = append(p.id[:0], value...)
		}
	case "retry":
		if n, err := strconv.ParseUint(string(value), 10, 63); err == nil {
			p.retry, p.hasRetry = int64(n), true
		}
	}
	return nil
}

// dispatch hands the buffered event to fn. Per WHATWG, an event with no
// data field is not dispatched; its type is discarded.
func (p *Parser) dispatch(fn func(Event) error) error {
	ev := Event{Type: p.typ, Data: p.data, ID: p.id, Retry: -1}
	if p.hasRetry {
		ev.Retry = p.retry
	}
	hasData := p.hasData
	p.data, p.typ = p.data[:0], p.typ[:0]
	p.hasData, p.hasRetry = false, false
	if !hasData {
		return nil
	}
	return fn(ev)
}
