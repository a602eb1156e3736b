package chatgateway

// A non-streamed reply normalized as it arrives (embeddings: tens of
// megabytes of vectors): the endpoint's ReplyWriter passes it on to the
// client in batches, and the gateway never holds it whole. The client's
// headers go with the first batch: a reply that fails before it (a reply
// smaller than a batch, wherever it fails) gets an error status and may
// be retried; one that fails after aborts the client's connection.

import (
	"errors"
	"net/http"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// replyStream is the client's side of a reply normalized as it arrives.
// The endpoint's ReplyWriter writes to it.
type replyStream struct {
	u     *upstreamWriter
	rw    openai.ReplyWriter
	read  int64 // bytes of the backend's reply, for the reply cap
	wrote bool  // headers and bytes went to the client: no status left to change
	// batch holds normalized bytes until a batch is full: a chunked
	// write costs the client's connection two syscalls (its chunk header
	// and the start of the data are flushed first), so the reply goes in
	// batches of replyBatch rather than per read of the backend.
	batch   []byte
	invalid bool  // the endpoint refused the reply
	err     error // the first write error: the client is gone; or errReplyAbandoned
	// writing is the time the last feed spent writing to the client:
	// network I/O, not the gateway's own work.
	writing time.Duration
}

// replyBatch is the size of the writes of a streamed reply to the client.
const replyBatch = 256 << 10

// errReplyAbandoned stops the writes of a reply that failed: what the
// normalizer still holds does not go out.
var errReplyAbandoned = errors.New("reply abandoned")

// streamReply starts relaying a 2xx reply through rs's normalizer.
// From here idle_timeout bounds the backend's silence, as in a stream.
func (u *upstreamWriter) streamReply(rs openai.ReplyStreamer) {
	u.state = replyStreaming
	u.js = &replyStream{u: u}
	u.js.rw = rs.NewReplyWriter(u.js, u.meta)
	u.firstEvent.Store(true)
	u.arm(u.idle)
}

// feed passes one read of the backend's reply to the normalizer, within
// the reply cap.
func (s *replyStream) feed(p []byte) (int, error) {
	u := s.u
	s.read += int64(len(p))
	if limit := int64(u.maxReply()); s.read > limit || u.declared > limit {
		u.tooLarge = true
		return 0, errReplyTooLarge
	}
	begin := time.Now()
	s.writing = 0
	n, err := s.rw.Write(p)
	u.x.addOwnTime(time.Since(begin) - s.writing)
	if err != nil && s.err == nil {
		s.invalid = true
	}
	return n, err
}

// Write takes normalized bytes for the client, sent when a batch is
// full.
func (s *replyStream) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.batch == nil {
		s.batch = getBuffer(replyBatch)
	}
	if len(s.batch) > 0 && len(s.batch)+len(p) > cap(s.batch) {
		if err := s.flush(false); err != nil {
			return 0, err
		}
	}
	s.batch = append(s.batch, p...)
	return len(p), nil
}

// flush sends the batch, the upstream keys taken out. Until the last,
// it keeps back what could be the start of a key the next bytes end.
func (s *replyStream) flush(last bool) error {
	if len(s.batch) == 0 {
		return s.err
	}
	keys := s.u.x.h.upstreamKeys
	out := keys.redact(s.batch)
	keep := 0
	if !last && keys.longest > 0 {
		keep = min(len(out), keys.longest-1)
	}
	err := s.send(out[:len(out)-keep])
	s.batch = append(s.batch[:0], out[len(out)-keep:]...)
	return err
}

// send writes b to the client, its headers first: the backend's
// rate-limit headers, no Content-Length (the length may differ from the
// backend's), and Server-Timing announced as a trailer, since its
// figures are known only at the end.
func (s *replyStream) send(b []byte) error {
	x := s.u.x
	begin := time.Now()
	if !s.wrote {
		s.wrote = true
		x.markFirstToken()
		hdr := x.w.Header()
		x.h.passHeaders(hdr, s.u.header)
		hdr.Set("Content-Type", "application/json")
		hdr.Del("Content-Length")
		hdr.Set("Trailer", "Server-Timing")
		x.w.WriteHeader(http.StatusOK)
	}
	_, err := x.w.Write(b)
	s.writing += time.Since(begin)
	if err != nil {
		s.err = err
	}
	return err
}

// settle ends the reply once the proxy returned: its end written and
// its usage noted, or the failure returned. A failure after bytes went
// out cannot be told to the client: fail aborts its connection.
func (s *replyStream) settle(cause, proxyErr error, aborted bool) *openai.Error {
	u, x := s.u, s.u.x
	defer func() {
		if s.batch != nil {
			putBuffer(s.batch)
			s.batch = nil
		}
	}()
	var e *openai.Error
	switch {
	case x.r.Context().Err() != nil || s.err != nil:
		e = openai.ClientClosedRequest()
	case errors.Is(cause, errTimeout):
		e = openai.Timeout()
	case errors.Is(cause, errIdleTimeout):
		e = openai.IdleTimeout()
	case u.tooLarge:
		e = openai.UpstreamReplyTooLarge()
	case s.invalid:
		e = invalidReply(x)
	case proxyErr != nil:
		e = proxyError(proxyErr)
	case aborted:
		e = openai.UpstreamReplyIncomplete("reply")
	}
	if e != nil && s.err == nil {
		s.err = errReplyAbandoned
	}
	rep, err := s.rw.Close()
	x.keepReply(rep) // what the backend counted, or the estimate: limits settle with it
	if e == nil && err == nil {
		s.writing = 0
		begin := time.Now()
		_ = s.flush(true)
		x.addOwnTime(time.Since(begin) - s.writing)
	}
	switch {
	case e != nil:
		return e
	case s.err != nil:
		return openai.ClientClosedRequest()
	case err != nil: // the reply ended before its end
		return invalidReply(x)
	}
	x.setServerTiming(x.w.Header())
	return nil
}
