package chatgateway

// Upstream credentials: which request headers carry credentials, and
// the upstream keys taken out of whatever a backend sends, before it
// reaches a client or a log line.

import (
	"bytes"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// credentialHeaders are the request headers that carry credentials: a
// client's, which never reach a backend, and the upstream key the
// gateway sets in their place (Authorization, and X-Api-Key for a
// backend that serves Messages), which never reaches a log line.
var credentialHeaders = [...]string{"Authorization", "X-Api-Key", "Api-Key", "Proxy-Authorization", "Cookie"}

// minRedacted is the shortest upstream key taken out of what backends
// send: a shorter one would match ordinary text.
const minRedacted = 8

// redacted stands for an upstream key in what reaches a client or a log.
const redacted = "[redacted]"

// upstreamKeys are the api_keys of a handler's backends. A backend may
// quote the key it was sent anywhere (an error message, a Response's
// error, a header, a stream event): every byte of a backend's reply goes
// through redact before it reaches the client.
type upstreamKeys struct {
	keys    [][]byte // distinct, at least minRedacted bytes
	longest int
}

// newUpstreamKeys collects the keys of backends, once provisioned.
func newUpstreamKeys(backends []*Backend) upstreamKeys {
	var k upstreamKeys
	for _, b := range backends {
		if len(b.apiKey) >= minRedacted && !slices.ContainsFunc(k.keys, func(s []byte) bool { return string(s) == b.apiKey }) {
			k.keys = append(k.keys, []byte(b.apiKey))
			k.longest = max(k.longest, len(b.apiKey))
		}
	}
	return k
}

// redact returns b with every upstream key replaced by [redacted]: b
// itself when it holds none, as nearly every reply.
func (k upstreamKeys) redact(b []byte) []byte {
	for _, key := range k.keys {
		if bytes.Contains(b, key) {
			b = bytes.ReplaceAll(b, key, []byte(redacted))
		}
	}
	return b
}

// in reports whether b holds one of the keys.
func (k upstreamKeys) in(b []byte) bool {
	return slices.ContainsFunc(k.keys, func(key []byte) bool { return bytes.Contains(b, key) })
}

// redactString is redact for text.
func (k upstreamKeys) redactString(s string) string {
	for _, key := range k.keys {
		if strings.Contains(s, string(key)) {
			s = strings.ReplaceAll(s, string(key), redacted)
		}
	}
	return s
}

// redactError takes the upstream keys out of e, a backend's error, and
// returns it.
func (k upstreamKeys) redactError(e *openai.Error) *openai.Error {
	e.Message, e.Type, e.Param, e.Code = k.redactString(e.Message), k.redactString(e.Type), k.redactString(e.Param), k.redactString(e.Code)
	return e
}

// redactHeader returns h with the upstream keys taken out of its
// values: h itself when they hold none.
func (k upstreamKeys) redactHeader(h []string) []string {
	for i, s := range h {
		if r := k.redactString(s); r != s {
			h = slices.Clone(h)
			h[i] = r
		}
	}
	return h
}

// redactLogFields makes the request that reverse_proxy adds to its debug
// lines ("upstream roundtrip") log its credential headers as REDACTED:
// Caddy redacts Authorization, not the X-Api-Key the gateway sends to a
// backend that serves Messages, nor Api-Key.
func redactLogFields(fields []zapcore.Field) []zapcore.Field {
	for i, f := range fields {
		if req, ok := f.Interface.(caddyhttp.LoggableHTTPRequest); ok && f.Type == zapcore.ObjectMarshalerType {
			fields = slices.Clone(fields)
			fields[i] = zap.Object(f.Key, credentialsRedacted{req.Request})
		}
	}
	return fields
}

// credentialsRedacted logs a request as caddyhttp.LoggableHTTPRequest
// does, its credential headers REDACTED whatever log_credentials says:
// they are the gateway's upstream keys.
type credentialsRedacted struct{ r *http.Request }

func (c credentialsRedacted) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	r := *c.r
	r.Header = c.r.Header.Clone()
	for _, name := range credentialHeaders {
		if _, ok := r.Header[name]; ok {
			r.Header[name] = []string{"REDACTED"}
		}
	}
	return caddyhttp.LoggableHTTPRequest{Request: &r}.MarshalLogObject(enc)
}
