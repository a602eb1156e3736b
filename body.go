package chatgateway

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Request bodies are read into pooled buffers (pool.go). A buffer goes
// back to its pool when the request is over and every reader handed to
// the backend's transport has read it to the end.

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
	if r.ContentLength > limit {
		return nil, openai.RequestTooLarge(humanBytes(limit))
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
			return nil, openai.RequestTooLarge(humanBytes(limit))
		}
		if err == io.EOF {
			if len(buf) < minPooled/4 {
				// A stream holds its body to its end: a small one is
				// kept in a buffer of its size, not in a pooled one.
				small := append([]byte(nil), buf...)
				putBuffer(buf)
				buf = small
			}
			return buf, nil
		}
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				return nil, openai.RequestTooLarge(humanBytes(limit))
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, openai.RequestTimeout()
			}
			return nil, openai.BodyReadError()
		}
	}
}
