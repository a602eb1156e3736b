package chatgateway

// The stream relay: each event the backend sends, normalized by the
// endpoint, held while the attempt may still be retried, then written
// to the client with the events that came in the same read; keep-alives
// while the backend has not started.

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// keepalive writes a keep-alive every interval until the backend's
// first event, so proxies in front do not close an idle stream. The
// first starts the client's stream (status 200). It returns a function
// that stops it and waits for it to end.
func (u *upstreamWriter) keepalive(ctx context.Context, interval time.Duration) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				if !u.ping() {
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// ping writes one keep-alive unless the backend's first event has come:
// the stream's own event where it has one, else a ": keep-alive"
// comment. It reports false once keep-alives are over.
func (u *upstreamWriter) ping() bool {
	u.firstMu.Lock() // the stream is not used by onEvent meanwhile
	defer u.firstMu.Unlock()
	if u.firstEvent.Load() {
		return false
	}
	if p, ok := u.st.(openai.Pinger); ok {
		return u.out.event(p.Ping()) == nil
	}
	return u.out.comment("keep-alive") == nil
}

// onEvent relays one upstream event, normalized by the endpoint.
func (u *upstreamWriter) onEvent(ev sse.Event) error {
	if !u.firstEvent.Load() { // later events are timed by Write
		u.firstMu.Lock() // a keep-alive being written ends first
		u.firstEvent.Store(true)
		u.firstMu.Unlock()
		u.arm(u.idle)
	}
	if u.state == streamEnded {
		return nil
	}
	begin := time.Now()
	held := u.held.bytes()
	n := len(held)
	held, err := u.st.Event(held, ev.Type, ev.Data)
	u.x.addOwnTime(time.Since(begin))
	if err != nil {
		u.held.buf = held[:n]
		if e, ok := errors.AsType[*openai.Error](err); ok {
			u.failedByBackend = true
			u.failStream(u.x.h.upstreamKeys.redactError(e.FillDefaults(http.StatusBadGateway)))
		} else {
			u.failStream(openai.InvalidUpstreamResponse("The backend sent a stream event this route cannot read (" + u.x.r.URL.Path + ")."))
		}
		return nil
	}
	u.held.buf = held
	if id, ok := u.st.(openai.Identified); ok && u.x.stateful && !u.x.claimed {
		u.x.claim(id.ResponseID()) // before the event naming it goes out
	}
	if len(held) == n {
		if n == 0 {
			u.held.giveBack(nil)
		}
		return nil // nothing to send
	}
	if u.state == streamHolding {
		if !u.out.started && !u.st.Content() && len(held) < maxHeld {
			// Until content flows, the attempt can still be retried:
			// hold the role chunk and its like.
			return nil
		}
		u.state = streamRelaying
		if f := u.x.cache.capture(); f != nil {
			f.commit(nil) // no retry from here: what came is the reply
		}
	}
	if u.st.Content() {
		u.x.markFirstToken()
	}
	if !u.out.started {
		err = u.out.event(held) // the first: headers and events go out at once
	} else {
		u.out.queue(held)
	}
	u.held.giveBack(held)
	return err
}

// maxHeld bounds the events held before the first content.
const maxHeld = 64 << 10

// events returns the endpoint's normalizer of this attempt's stream.
func (u *upstreamWriter) events() openai.EventStream {
	if u.st == nil {
		u.st = u.x.ep.NewStream(u.meta)
	}
	return u.st
}

// failStream ends the stream with e: an error event once the stream
// has started, else an error reply when the proxy returns.
func (u *upstreamWriter) failStream(e *openai.Error) {
	u.failed, u.state = e, streamEnded
	if u.out.started {
		_ = u.events().Fail(e, u.out.event)
	}
}
