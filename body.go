package chatgateway

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Request bodies are read into pooled buffers: a large chat would
// otherwise cost an allocation of its size, and the garbage collection
// of it, on every request. A buffer goes back to its pool when the
// request is over and every reader handed to the backend's transport has
// read it to the end.

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

// body is a request body in a pooled buffer and the readers lent out.
type body struct {
	buf  []byte
	open atomic.Int32 // readers not yet read to the end
}

// reader returns a reader of b to hand to the transport.
func (b *body) reader(data []byte) io.ReadCloser {
	b.open.Add(1)
	return &bodyReader{data: data, owner: b}
}

// release returns the buffer to its pool unless a reader may still use
// it (a transport that gave up mid-body); that one is left to the GC.
func (b *body) release() {
	if b.buf != nil && b.open.Load() == 0 {
		putBuffer(b.buf)
	}
	b.buf = nil
}

// bodyReader reads a body and tells its owner when it reached the end.
// It has no WriteTo, so every copy goes through Read and sees the end.
type bodyReader struct {
	data  []byte
	i     int
	owner *body
	ended bool
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.i >= len(r.data) {
		if !r.ended {
			r.ended = true
			r.owner.open.Add(-1)
		}
		return 0, io.EOF
	}
	n := copy(p, r.data[r.i:])
	r.i += n
	return n, nil
}

func (r *bodyReader) Close() error { return nil }

// readBody reads at most limit bytes of the request body into b, within
// timeout. A declared length over the limit is refused before any byte
// is read (and before a 100 Continue goes out).
func readBody(w http.ResponseWriter, r *http.Request, b *body, limit int64, timeout time.Duration) ([]byte, *openai.Error) {
	tooLarge := func() *openai.Error {
		return &openai.Error{Status: http.StatusRequestEntityTooLarge, Type: openai.TypeInvalidRequest, Code: "request_too_large",
			Message: "The request body is larger than the gateway accepts (" + humanBytes(limit) + ")."}
	}
	if r.ContentLength > limit {
		return nil, tooLarge()
	}
	if r.ContentLength != 0 && timeout > 0 {
		// Not every writer has a connection (a recorder in tests): then
		// there is no deadline to set.
		rc := http.NewResponseController(w)
		if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
			defer func() { _ = rc.SetReadDeadline(time.Time{}) }()
		}
	}
	size := int64(minPooled)
	if r.ContentLength > 0 {
		size = r.ContentLength + 1 // room to see the end without growing
	}
	buf := getBuffer(int(size))
	defer func() { b.buf = buf }()
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, tooLarge()
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				return nil, tooLarge()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, &openai.Error{Status: http.StatusRequestTimeout, Type: openai.TypeInvalidRequest, Code: "request_timeout",
					Message: "The request body did not arrive within read_body_timeout."}
			}
			return nil, &openai.Error{Status: http.StatusBadRequest, Type: openai.TypeInvalidRequest, Code: "body_read_error",
				Message: "The request body could not be read."}
		}
	}
}
