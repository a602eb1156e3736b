package chatgateway

import "sync"

// Request bodies, buffered replies and stream output are held in pooled
// buffers: a large chat would otherwise cost an allocation of its size,
// and the garbage collection of it, on every request.

// minPooled is the smallest pooled buffer; each class is 4 times the last.
const minPooled = 4 << 10

var bodyPools [8]sync.Pool // 4 KiB ... 64 MiB

// getBuffer returns an empty buffer that holds at least n bytes.
func getBuffer(n int) []byte { return *getBox(n) }

// putBuffer gives b back to the largest class it can serve.
func putBuffer(b []byte) { putBox(&b) }

// getBox is getBuffer for callers that keep the pool's *[]byte and give
// it back with putBox, so a buffer that goes round and round (once per
// stream event) costs no allocation.
func getBox(n int) *[]byte {
	for k, size := 0, minPooled; k < len(bodyPools); k, size = k+1, size*4 {
		if size >= n {
			if b, ok := bodyPools[k].Get().(*[]byte); ok {
				*b = (*b)[:0]
				return b
			}
			b := make([]byte, 0, size)
			return &b
		}
	}
	b := make([]byte, 0, n)
	return &b
}

// putBox gives *b back to the largest class it can serve.
func putBox(b *[]byte) {
	k := -1
	for size := minPooled; k+1 < len(bodyPools) && cap(*b) >= size; size *= 4 {
		k++
	}
	if k >= 0 {
		*b = (*b)[:0]
		bodyPools[k].Put(b)
	}
}

// eventBuffer is a stream's buffer of framed events, taken from the pool
// when the first is appended and given back once they are sent: a
// stream that waits for its backend holds none, and one that streams
// allocates none. It remembers its largest extent, so bursts do not
// regrow it.
type eventBuffer struct {
	buf   []byte  // the events; its array is *box's
	box   *[]byte // the pooled buffer, while held
	burst int     // the most held at once, to size the next buffer
}

// bytes returns the buffer to append to, pooled on first use.
func (e *eventBuffer) bytes() []byte {
	if e.box == nil {
		e.box = getBox(max(minPooled, e.burst))
		e.buf = *e.box
	}
	return e.buf
}

// giveBack returns the pooled buffer, b being its latest extent (nil
// for the one bytes returned).
func (e *eventBuffer) giveBack(b []byte) {
	if e.box != nil {
		if b != nil {
			*e.box = b
			e.burst = max(e.burst, len(b))
		}
		putBox(e.box)
		e.box, e.buf = nil, nil
	}
}
