package openai

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"strconv"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// The embeddings reply, normalized as it arrives: a reply of tens of
// megabytes of vectors goes on as the backend sent it, chunk by chunk,
// and the gateway never holds it whole. Only the members it may edit
// are held until complete (usage, model, and the other small members,
// validated as they end) and the object's closing brace, before which
// a missing usage or model is added once the reply has ended.

// maxEmbeddingsMember bounds a member of an embeddings reply other than
// its data, held until it is complete: usage, model and object are a
// few bytes.
const maxEmbeddingsMember = 1 << 20

// errMemberTooLarge refuses a reply with a huge member besides data.
var errMemberTooLarge = fmt.Errorf("%w: a member other than data is larger than 1 MiB", ErrInvalidEmbeddings)

// NewReplyWriter returns the normalizer of one embeddings reply,
// writing to w.
func (embeddingsEndpoint) NewReplyWriter(w io.Writer, m Meta) ReplyWriter {
	return &embeddingsWriter{w: w, m: m}
}

// embState is where the embeddings normalizer stands in the reply.
type embState uint8

const (
	embLead     embState = iota // before the object's '{'
	embFirstKey                 // after '{'
	embNextKey                  // after ','
	embKey                      // in a key
	embColon                    // after a key
	embValue                    // after ':'
	embData                     // in the data array, passed on as it comes
	embHeld                     // in another member's value, held until complete
	embAfter                    // after a member's value: ',' or '}'
	embTail                     // after the object's '}': space only
)

// embeddingsWriter normalizes an embeddings reply fed in chunks of any
// size. Each Write's output goes out at its end, so a chunk found
// invalid writes nothing: a small reply in one chunk is refused whole.
type embeddingsWriter struct {
	w     io.Writer
	m     Meta
	state embState
	key   []byte // the current member's key, quotes included
	// held is the value being held (embHeld); after the object, its
	// closing brace and the space after it.
	held []byte
	// kind is the held value's: '"', '{' for an object or array, 0 for
	// a number or literal, which a delimiter ends.
	kind     byte
	str      stringScan
	bulk     bulkScan
	hasData  bool
	hasModel bool
	hasUsage bool
	usage    Usage   // the last usage member's
	out      []piece // what this Write writes, in order
	extra    []byte  // the bytes of out that are not the input's
	err      error   // the first failure: every later call returns it
}

// piece is a span of one Write's output: of its input, or of extra.
type piece struct {
	extra    bool
	from, to int
}

// Write normalizes the next bytes of the reply and writes them on. It
// fails with ErrInvalidEmbeddings when the reply is not an embeddings
// list, or with w's error.
func (e *embeddingsWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	e.out, e.extra = e.out[:0], e.extra[:0]
	if err := e.feed(p); err != nil {
		e.err = err
		return 0, err
	}
	for _, pc := range e.out {
		b := p
		if pc.extra {
			b = e.extra
		}
		if _, err := e.w.Write(b[pc.from:pc.to]); err != nil {
			e.err = err
			return 0, err
		}
	}
	return len(p), nil
}

// pass adds p[from:to] to the output, if any.
func (e *embeddingsWriter) pass(from, to int) {
	if from >= 0 && to > from {
		e.out = append(e.out, piece{from: from, to: to})
	}
}

// hold adds b to the held bytes, within their bound.
func (e *embeddingsWriter) hold(b []byte) error {
	if len(e.held)+len(b) > maxEmbeddingsMember {
		return errMemberTooLarge
	}
	e.held = append(e.held, b...)
	return nil
}

// feed reads p through the reply's top-level object, noting in e.out
// what goes out: the input as it is but for the held values, which go
// as edited once complete.
func (e *embeddingsWriter) feed(p []byte) error {
	run := 0 // where the input passed as is starts; -1 while holding
	if e.state == embHeld || e.state == embTail {
		run = -1
	}
	for i := 0; i < len(p); {
		switch e.state {
		case embData:
			end, done, err := e.bulk.scan(p, i)
			if err != nil {
				return ErrInvalidEmbeddings
			}
			if i = end; done {
				e.state = embAfter
			}
			continue
		case embKey:
			end, done, err := e.str.scan(p, i)
			if err != nil {
				return ErrInvalidEmbeddings
			}
			if len(e.key)+end-i > maxEmbeddingsMember {
				return errMemberTooLarge
			}
			e.key = append(e.key, p[i:end]...)
			if i = end; done {
				e.state = embColon
			}
			continue
		case embHeld:
			end, done, err := e.scanHeld(p, i)
			if err != nil {
				return ErrInvalidEmbeddings
			}
			if err := e.hold(p[i:end]); err != nil {
				return err
			}
			if i = end; done {
				if err := e.endHeld(); err != nil {
					return err
				}
				e.state, run = embAfter, i
			}
			continue
		}
		c := p[i]
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
			if e.state == embTail {
				if err := e.hold(p[i : i+1]); err != nil {
					return err
				}
			}
			i++
			continue
		}
		switch e.state {
		case embLead:
			if c != '{' {
				return ErrInvalidEmbeddings
			}
			e.state = embFirstKey
		case embFirstKey, embNextKey:
			if c != '"' {
				return ErrInvalidEmbeddings // '}' too: an object without data
			}
			e.key = append(e.key[:0], c)
			e.str = stringScan{}
			e.state = embKey
		case embColon:
			if c != ':' {
				return ErrInvalidEmbeddings
			}
			e.state = embValue
		case embValue:
			if c == '[' && jsonwalk.KeyIs(e.key, "data") {
				e.hasData = true
				e.bulk.reset()
				e.state = embData
				continue // the scan starts at the bracket
			}
			e.pass(run, i)
			run = -1
			e.held = e.held[:0]
			e.state, e.kind = embHeld, 0
			switch c {
			case '"':
				e.kind, e.str = c, stringScan{}
				e.held = append(e.held, c)
				i++
			case '{', '[':
				e.kind = '{'
				e.bulk.reset()
			}
			continue
		case embAfter:
			switch {
			case c == ',':
				e.state = embNextKey
			case c == '}' && e.hasData:
				e.pass(run, i)
				run = -1
				e.held = append(e.held[:0], c)
				e.state = embTail
			default:
				return ErrInvalidEmbeddings
			}
		case embTail:
			return ErrInvalidEmbeddings
		}
		i++
	}
	e.pass(run, len(p))
	return nil
}

// scanHeld moves through the held value from p[i]: the index where it
// ends and true, or len(p) and false when it goes on.
func (e *embeddingsWriter) scanHeld(p []byte, i int) (int, bool, error) {
	switch e.kind {
	case 0:
		for j := i; j < len(p); j++ {
			switch p[j] {
			case ' ', '\t', '\n', '\r', ',', '}':
				return j, true, nil
			}
		}
		return len(p), false, nil
	case '"':
		return e.str.scan(p, i)
	}
	return e.bulk.scan(p, i)
}

// endHeld validates the complete held value and adds it to the output:
// usage and model as they must be, the others as they are.
func (e *embeddingsWriter) endHeld() error {
	v := e.held
	if end, err := scanValue(v, 0, 1); err != nil || end != len(v) {
		return ErrInvalidEmbeddings
	}
	from := len(e.extra)
	switch {
	case jsonwalk.KeyIs(e.key, "usage"):
		e.hasUsage = true
		e.extra, e.usage = appendEmbeddingsUsage(e.extra, v, e.m.PromptBytes)
	case jsonwalk.KeyIs(e.key, "model"):
		e.hasModel = true
		if len(v) > 2 && v[0] == '"' {
			e.extra = append(e.extra, v...)
		} else {
			e.extra = appendString(e.extra, e.m.Model)
		}
	default:
		e.extra = append(e.extra, v...)
	}
	e.out = append(e.out, piece{extra: true, from: from, to: len(e.extra)})
	e.held = e.held[:0]
	return nil
}

// Close ends the reply: the model and usage the backend left out go
// before the closing brace. It returns the reply's usage (the last
// usage member's, else estimated from the prompt), also when the reply
// failed, and ErrInvalidEmbeddings for a reply that ended incomplete.
func (e *embeddingsWriter) Close() (Reply, error) {
	var rep Reply
	var add []byte
	if !e.hasModel {
		add = appendString(append(add, `,"model":`...), e.m.Model)
	}
	if e.hasUsage {
		rep.Usage = e.usage
	} else {
		add, rep.Usage = appendEmbeddingsUsage(append(add, `,"usage":`...), nil, e.m.PromptBytes)
	}
	switch {
	case e.err != nil:
		return rep, e.err
	case e.state != embTail:
		e.err = ErrInvalidEmbeddings
		return rep, e.err
	}
	_, err := e.w.Write(append(add, e.held...))
	e.err = errClosed
	return rep, err
}

// errClosed is what a reply writer answers once closed.
var errClosed = fmt.Errorf("%w: written after its end", ErrInvalidEmbeddings)

// appendEmbeddingsUsage appends usage, the value of an embeddings
// reply's usage member (nil if none), with prompt_tokens and
// total_tokens filled in where missing: from each other, else estimated
// from the prompt's size. A usage with both is kept as sent.
func appendEmbeddingsUsage(dst, usage []byte, promptBytes int) ([]byte, Usage) {
	prompt, total, hasPrompt, hasTotal := readCounts(usage, "prompt_tokens", "total_tokens")
	var u Usage
	switch {
	case hasPrompt && hasTotal:
		u.PromptTokens = prompt
		return append(dst, usage...), u
	case hasPrompt:
		total = prompt
	case hasTotal:
		prompt = total
	default:
		prompt = EstimateTokens(promptBytes)
		total = prompt
		u.Estimated = true
	}
	u.PromptTokens = prompt
	if u.Estimated || usage[0] != '{' {
		dst = strconv.AppendInt(append(dst, `{"prompt_tokens":`...), prompt, 10)
		dst = strconv.AppendInt(append(dst, `,"total_tokens":`...), total, 10)
		return append(dst, '}'), u
	}
	var o object
	o.open(dst)
	members(usage, o.member)
	if !hasPrompt {
		o.int("prompt_tokens", prompt)
	}
	if !hasTotal {
		o.int("total_tokens", total)
	}
	return o.close(), u
}

// bulkScan finds the end of an array or object, checking only that
// brackets match and strings are valid. Between them, as across the
// numbers of a vector, skip jumps to the next quote or bracket many
// bytes at a time (bulk_amd64.s; bulk.go elsewhere). It resumes where the
// last chunk ended.
type bulkScan struct {
	open  []byte // the closing brackets awaited, innermost last
	inStr bool
	str   stringScan
	next  bulkNext // skip's state in the chunk being scanned
}

// bulkBytes are the bytes bulkScan stops at.
const bulkBytes = `"[]{}`

func (s *bulkScan) reset() { s.open, s.inStr = s.open[:0], false }

// scan moves through b from i, the value's opening bracket or where
// the last chunk ended: it returns the index past the value and true,
// or len(b) and false when the value goes on.
func (s *bulkScan) scan(b []byte, i int) (int, bool, error) {
	s.next.reset() // a new chunk
	for i < len(b) {
		if s.inStr {
			end, done, err := s.str.scan(b, i)
			if err != nil || !done {
				return end, false, err
			}
			i, s.inStr = end, false
			continue
		}
		if i = s.skip(b, i); i >= len(b) {
			break
		}
		switch c := b[i]; c {
		case '"':
			s.inStr, s.str = true, stringScan{}
		case '[', '{':
			if len(s.open) >= maxDepth {
				return i, false, errDepth
			}
			s.open = append(s.open, c+2) // ']' and '}' follow '[' and '{' by 2
		case ']', '}':
			if len(s.open) == 0 || s.open[len(s.open)-1] != c {
				return i, false, errAt("mismatched "+string(c), i)
			}
			if s.open = s.open[:len(s.open)-1]; len(s.open) == 0 {
				return i + 1, true, nil
			}
		}
		i++
	}
	return len(b), false, nil
}

// stringScan validates a string's bytes after its opening quote (no
// control characters, valid escapes), resuming where the last chunk
// ended, in the middle of an escape included.
type stringScan struct {
	esc bool  // after a backslash
	hex uint8 // hex digits of a \u escape still to come
}

// scan moves through b from i: the index past the closing quote and
// true, or len(b) and false when the string goes on.
func (s *stringScan) scan(b []byte, i int) (int, bool, error) {
	for i < len(b) {
		switch {
		case s.esc:
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				s.hex = 4
			default:
				return i, false, errAt("invalid escape", i)
			}
			s.esc = false
			i++
			continue
		case s.hex > 0:
			if !isHex(b[i]) {
				return i, false, errAt("invalid \\u escape", i)
			}
			s.hex--
			i++
			continue
		}
		// Eight bytes at a time to the first that is not plain.
		for i+8 <= len(b) {
			if m := specialBytes(binary.LittleEndian.Uint64(b[i:])); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(b) {
			break
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, true, nil
		case c == '\\':
			s.esc = true
		case c < 0x20:
			return i, false, errAt("control character in string", i)
		}
		i++
	}
	return len(b), false, nil
}
