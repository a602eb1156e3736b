package chatgateway

// How backend and transport failures become the errors clients get.

import (
	"errors"
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

// invalidReply is the error for a 2xx reply the route cannot read.
func invalidReply(x *exchange) *openai.Error {
	return openai.InvalidUpstreamResponse("The backend's reply is not valid for this route (" + x.r.URL.Path + ").")
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
			return openai.DialTimeout()
		}
		status = http.StatusBadGateway
	}
	switch status {
	case http.StatusGatewayTimeout:
		return openai.UpstreamTimeout()
	case http.StatusServiceUnavailable:
		return openai.NoUpstreamAvailable()
	}
	return openai.UpstreamUnavailable()
}
