package chatgateway

import (
	"net/http"
	"sync"
)

// sseWriter writes a Server-Sent Events reply to the client, one
// flushed event at a time.
type sseWriter struct {
	mu          sync.Mutex // keep-alive comments come from another goroutine
	w           http.ResponseWriter
	rc          *http.ResponseController
	eventBuffer // events queued
	started     bool
	err         error        // the first write error: the client is gone
	keys        upstreamKeys // taken out of every event
}

func newSSEWriter(w http.ResponseWriter, keys upstreamKeys) *sseWriter {
	return &sseWriter{w: w, keys: keys}
}

// start writes the stream's headers, which go out with its first event.
func (s *sseWriter) start() {
	if s.started {
		return
	}
	s.started = true
	hdr := s.w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	hdr.Del("Content-Length")
	s.w.WriteHeader(http.StatusOK)
}

// editHeader lets edit change the response headers if they have not
// been sent yet.
func (s *sseWriter) editHeader(edit func(http.Header)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		edit(s.w.Header())
	}
}

// event writes one framed event and flushes it, with any queued before.
// It is the endpoints' openai.Emit.
func (s *sseWriter) event(ev []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(append(s.bytes(), ev...))
}

// release gives back a buffer still held (events queued but never sent);
// the writer is done.
func (s *sseWriter) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.giveBack(nil)
}

// queue adds framed events to go out with the next send or event:
// events that arrived from the backend together leave together, in one
// write.
func (s *sseWriter) queue(evs []byte) {
	s.mu.Lock()
	s.buf = append(s.bytes(), evs...)
	s.mu.Unlock()
}

// send writes and flushes the queued events.
func (s *sseWriter) send() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) == 0 {
		return s.err
	}
	return s.write(s.buf)
}

// comment writes a comment line, which clients ignore.
func (s *sseWriter) comment(text string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(append(append(append(s.bytes(), ": "...), text...), "\n\n"...))
}

// write writes b (the buffer with what was queued, whole events, which
// may come from a backend: the upstream keys are taken out) and
// flushes. The buffer goes back to the pool until the next event, so an
// idle stream holds none.
func (s *sseWriter) write(b []byte) error {
	defer s.giveBack(b)
	s.start()
	if s.err != nil {
		return s.err
	}
	if _, err := s.w.Write(s.keys.redact(b)); err != nil {
		s.err = err
		return err
	}
	return s.flush()
}

func (s *sseWriter) flush() error {
	if s.rc == nil {
		s.rc = http.NewResponseController(s.w)
	}
	if err := s.rc.Flush(); err != nil && s.err == nil {
		s.err = err
	}
	return s.err
}
