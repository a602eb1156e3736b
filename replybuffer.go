package chatgateway

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
)

// replyBuffer is a ResponseWriter for the reverse proxy that keeps the
// backend's reply, up to its limit, for the gateway to rewrite.
type replyBuffer struct {
	header   http.Header
	status   int
	limit    int   // the most it keeps; 0 for maxReplyBody
	declared int64 // the reply's Content-Length, if it had one
	body     []byte
	tooLarge bool
}

func (rb *replyBuffer) Header() http.Header {
	if rb.header == nil {
		rb.header = make(http.Header)
	}
	return rb.header
}

func (rb *replyBuffer) WriteHeader(code int) {
	if code >= 200 && rb.status == 0 { // 1xx are informational: not passed on
		rb.status = code
		if n, err := strconv.ParseInt(rb.header.Get("Content-Length"), 10, 64); err == nil {
			rb.declared = n
		}
	}
}

func (rb *replyBuffer) Write(p []byte) (int, error) {
	if rb.status == 0 {
		rb.WriteHeader(http.StatusOK)
	}
	limit := rb.maxReply()
	need := len(rb.body) + len(p)
	if need > limit || rb.declared > int64(limit) {
		// A declared length over the cap is refused before its body
		// is read.
		rb.tooLarge = true
		return 0, errReplyTooLarge
	}
	if need > cap(rb.body) {
		// Grow by doubling up to the cap, from the declared length when
		// there is one: at most one copy in use and one being made.
		size := min(max(need, 2*cap(rb.body), int(rb.declared)), limit)
		var grown []byte
		if size > limit/2 {
			grown = make([]byte, 0, size) // the pool's next class would overshoot the cap
		} else {
			grown = getBuffer(size)
		}
		grown = append(grown, rb.body...)
		rb.release()
		rb.body = grown
	}
	rb.body = append(rb.body, p...)
	return len(p), nil
}

// maxReply is the most the reply may hold.
func (rb *replyBuffer) maxReply() int {
	if rb.limit == 0 {
		return maxReplyBody
	}
	return rb.limit
}

// release gives the body's buffer back to the pool.
func (rb *replyBuffer) release() {
	if rb.body != nil {
		putBuffer(rb.body)
		rb.body = nil
	}
}

// Hijack refuses the proxy the client's connection: the gateway relays
// no upgrade (http.ResponseController finds this before Unwrap).
func (rb *replyBuffer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errNoUpgrade
}

// FlushError is called by the proxy through http.ResponseController;
// the gateway flushes its own output when it writes it.
func (rb *replyBuffer) FlushError() error { return nil }
