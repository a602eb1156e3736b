package chatgateway

import (
	"net/http"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// echoModel is the model echo replies name when the client named none.
const echoModel = "echo"

// modelOrEcho is model, or the echo model where echo mode answers a
// request that names none.
func (h *Handler) modelOrEcho(model string) string {
	if model == "" && h.echoMode() {
		return echoModel
	}
	return model
}

// echo answers without a backend, as the endpoint's echo mode says
// ("Echo: " and the prompt for text; stand-in vectors for embeddings),
// as a reply or as the endpoint's full stream of events, echo_delay
// apart.
func (h *Handler) echo(x *exchange) {
	meta := x.meta(echoModel)
	if !x.req.Stream {
		out, rep := x.ep.Echo(getBuffer(minPooled), x.req, meta)
		defer putBuffer(out)
		x.keepReply(rep)
		x.markFirstToken()
		x.writeJSON(http.StatusOK, out)
		return
	}
	var delay *time.Timer
	events := 0
	emit := func(ev []byte) error {
		if events > 0 && h.EchoDelay > 0 {
			if delay == nil {
				delay = time.NewTimer(time.Duration(h.EchoDelay))
			} else {
				delay.Reset(time.Duration(h.EchoDelay))
			}
			select {
			case <-delay.C:
			case <-x.r.Context().Done():
				return x.r.Context().Err()
			}
		}
		if events++; events == 2 { // the first after the stream's opening
			x.markFirstToken()
		}
		return x.out.event(ev)
	}
	rep, err := x.ep.EchoStream(x.req, meta, emit)
	x.keepReply(rep)
	if err != nil {
		x.end(openai.StatusClientClosedRequest, result{err: openai.ClientClosedRequest()})
	}
}
