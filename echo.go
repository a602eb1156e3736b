package chatgateway

import (
	"net/http"
	"strings"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// echoModel is the model echo replies name when the client named none.
const echoModel = "echo"

// echo answers without a backend: "Echo: " and the prompt, as a reply or
// as a stream of one chunk per word, through the same normalization as a
// backend's reply.
func (h *Handler) echo(x *exchange) {
	text := "Echo: " + x.req.Prompt()
	meta := x.meta(echoModel)
	if !x.req.Stream {
		out, rep, err := openai.AppendNormalizedCompletion(nil, openai.Completion(text), meta)
		if err != nil {
			panic(err) // the gateway's own reply is always valid
		}
		x.usage, x.finishReason, x.completionBytes = rep.Usage, rep.FinishReason, rep.CompletionBytes
		x.markFirstToken()
		x.writeJSON(http.StatusOK, out)
		return
	}

	st := &openai.Stream{Meta: meta}
	out := x.out
	write := func(chunk []byte) bool {
		if err := out.event(chunk); err != nil {
			x.outcome, x.status = outcomeClientCancelled, 499
			return false
		}
		return true
	}
	if !write(st.AppendDelta(nil, 0, "assistant", "", "")) {
		return
	}
	var delay *time.Timer
	for i, word := range strings.SplitAfter(text, " ") {
		if i > 0 && h.EchoDelay > 0 {
			if delay == nil {
				delay = time.NewTimer(time.Duration(h.EchoDelay))
			} else {
				delay.Reset(time.Duration(h.EchoDelay))
			}
			select {
			case <-delay.C:
			case <-x.r.Context().Done():
				x.outcome, x.status = outcomeClientCancelled, 499
				return
			}
		}
		if !write(st.AppendDelta(nil, 0, "", word, "")) {
			return
		}
		x.markFirstToken()
	}
	if !write(st.AppendDelta(nil, 0, "", "", "stop")) {
		return
	}
	if out.finishStream(st, x.req.IncludeUsage) != nil {
		x.outcome, x.status = outcomeClientCancelled, 499
	}
	x.usage, x.finishReason, x.completionBytes = st.Usage(), st.FinishReason, st.CompletionBytes
}

// meta is what the gateway stamps on this request's reply.
func (x *exchange) meta(defaultModel string) openai.Meta {
	model := x.req.Model
	if model == "" {
		model = defaultModel
	}
	return openai.Meta{ID: x.id, Model: model, Created: x.start.Unix(), PromptBytes: x.req.ContentBytes}
}
