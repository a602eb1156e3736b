package chatgateway

// How backend and transport failures become the errors clients get, with
// the upstream keys taken out of whatever a backend said.

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// maxBackendErrorLog bounds the backend's error text in the module log.
const maxBackendErrorLog = 512

// backendErrorText is what a backend's failed reply says, for the log:
// its OpenAI error message, else its body, cut to maxBackendErrorLog
// bytes of valid UTF-8.
func backendErrorText(body []byte) string {
	text := strings.TrimSpace(string(body))
	if e, ok := openai.ParseError(body); ok && e.Message != "" {
		text = e.Message
	}
	if len(text) > maxBackendErrorLog {
		text = text[:maxBackendErrorLog]
		for !utf8.ValidString(text) {
			text = text[:len(text)-1]
		}
	}
	return strings.ToValidUTF8(text, "")
}

// firstTokenTimeout is the error of a backend that did not start
// answering in time, streamed or not.
func firstTokenTimeout() *openai.Error {
	return timeoutError("first_token_timeout", "The backend did not start answering within first_token_timeout.")
}

func clientClosed() *openai.Error {
	return &openai.Error{Status: 499, Type: openai.TypeInvalidRequest, Code: "client_closed_request", Message: "The client closed the request."}
}

func replyTooLarge() *openai.Error {
	return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_reply_too_large",
		Message: "The backend's reply is larger than the gateway accepts."}
}

func replyIncomplete() *openai.Error {
	return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_reply_incomplete",
		Message: "The backend's reply was cut short."}
}

// invalidReply is the error for a 2xx reply the route cannot read.
func invalidReply(x *exchange) *openai.Error {
	return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "invalid_upstream_response",
		Message: "The backend's reply is not valid for this route (" + x.r.URL.Path + ")."}
}

func timeoutError(code, msg string) *openai.Error {
	return &openai.Error{Status: http.StatusGatewayTimeout, Type: openai.TypeTimeout, Code: code, Message: msg}
}

// proxyError maps an error of the reverse proxy, which may name the
// backend's address, to one that names nothing.
func proxyError(err error) *openai.Error {
	status := http.StatusBadGateway
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok && he.StatusCode != 0 {
		status = he.StatusCode
	}
	if de, ok := errors.AsType[reverseproxy.DialError](err); ok {
		// DialError hides its cause (and reverse_proxy reports it as a
		// 502); a dial that ran out of time says so in its text.
		if strings.Contains(de.Error(), "i/o timeout") {
			return timeoutError("dial_timeout", "The backend could not be connected to within dial_timeout.")
		}
		status = http.StatusBadGateway
	}
	switch status {
	case http.StatusGatewayTimeout:
		return timeoutError("upstream_timeout", "The backend did not answer in time.")
	case http.StatusServiceUnavailable:
		return &openai.Error{Status: http.StatusServiceUnavailable, Type: openai.TypeUpstream, Code: "no_upstream_available",
			Message: "No backend is available to serve the request."}
	}
	return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_unavailable",
		Message: "The backend could not be reached."}
}

// upstreamStatusError reads a backend's non-2xx reply. A 4xx passes on
// with its status and the backend's message; a 5xx becomes a 502.
func upstreamStatusError(status int, body []byte) *openai.Error {
	if status >= 500 {
		return &openai.Error{Status: http.StatusBadGateway, Type: openai.TypeUpstream, Code: "upstream_error",
			Message: fmt.Sprintf("The backend failed to answer (status %d).", status)}
	}
	e, ok := openai.ParseError(body)
	if !ok {
		e = &openai.Error{Message: fmt.Sprintf("The backend refused the request (status %d).", status)}
	}
	e.Status = status
	return e
}

// upstreamErrorDefaults fills what a backend's error left out and takes
// the upstream key out of its message.
func (x *exchange) upstreamErrorDefaults(e *openai.Error, status int) *openai.Error {
	if e.Status == 0 {
		e.Status = status
	}
	if e.Message == "" {
		e.Message = "The backend reported an error."
	}
	if e.Type == "" {
		switch e.Status {
		case http.StatusUnauthorized, http.StatusForbidden:
			e.Type = openai.TypeAuthentication
		case http.StatusTooManyRequests:
			e.Type = openai.TypeRateLimit
		default:
			if e.Status >= 500 {
				e.Type = openai.TypeUpstream
			} else {
				e.Type = openai.TypeInvalidRequest
			}
		}
	}
	e.Message, e.Type, e.Param, e.Code = x.h.redactUpstreamKeys(e.Message), x.h.redactUpstreamKeys(e.Type), x.h.redactUpstreamKeys(e.Param), x.h.redactUpstreamKeys(e.Code)
	return e
}

// redactUpstreamKeys replaces every backend's api_key in s, which came
// from a backend (it may quote the credential it was sent anywhere),
// with "[redacted]".
func (h *Handler) redactUpstreamKeys(s string) string {
	for _, b := range h.Backends {
		if len(b.apiKey) >= 8 && strings.Contains(s, b.apiKey) {
			s = strings.ReplaceAll(s, b.apiKey, "[redacted]")
		}
	}
	return s
}
