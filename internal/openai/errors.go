// Package openai holds the OpenAI API as the gateway needs it: one
// Endpoint description per route (chat completions, completions,
// embeddings, responses) with its request validation, the normalization
// of its replies and stream events, and its echo replies; the error
// envelope and the catalogue of the errors the gateway sends; usage. It
// has no Caddy imports.
package openai

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// Error types, as OpenAI names them, plus the gateway's own for faults
// between the gateway and its backends.
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeAuthentication = "authentication_error"
	TypeRateLimit      = "rate_limit_error"
	TypeServer         = "server_error"
	TypeUpstream       = "upstream_error"
	TypeTimeout        = "timeout_error"
	TypeQuota          = "insufficient_quota"
)

// StatusClientClosedRequest is the status of a request whose client
// went away before its answer (nginx's 499, as reverse_proxy uses it).
// It is logged, never sent.
const StatusClientClosedRequest = 499

// Error is an OpenAI-style error with the HTTP status it is sent with.
// The gateway's own errors come from the constructors below, each of a
// Kind in the catalogue; a backend's error passed on has no Kind.
type Error struct {
	Status  int
	Message string
	Type    string
	Param   string // empty is sent as null
	Code    string // empty is sent as null

	kind *Kind // nil for a backend's error
	// overLimit marks a 429 for a request larger than a whole limit:
	// waiting does not help it.
	overLimit bool
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Class is what an error says about who failed, for the outcome of a
// request in logs and metrics.
type Class uint8

// The classes of errors.
const (
	ClassClient    Class = iota + 1 // the request is invalid or not allowed
	ClassRejected                   // refused by the gateway's concurrency or rate limits
	ClassUpstream                   // the backend failed or could not be reached
	ClassTimeout                    // the backend did not answer in time
	ClassTruncated                  // the backend's stream ended before it was complete
	ClassCancelled                  // the client went away
)

// BackendFault reports whether c is a failure of the backend's:
// ClassUpstream, ClassTimeout or ClassTruncated.
func (c Class) BackendFault() bool {
	return c == ClassUpstream || c == ClassTimeout || c == ClassTruncated
}

// A Kind is one error the gateway sends itself: its code, the status and
// type it is always sent with, its class, and whether another attempt
// (on the same backend or another) may succeed.
type Kind struct {
	Code      string
	Status    int
	Type      string
	Class     Class
	Retryable bool
}

// catalogue is every Kind, in the order declared below.
var catalogue []*Kind

// kind adds k to the catalogue.
func kind(k Kind) *Kind {
	p := &k
	catalogue = append(catalogue, p)
	return p
}

// Catalogue returns every error the gateway sends itself; the README's
// errors table lists them all.
func Catalogue() []Kind {
	out := make([]Kind, len(catalogue))
	for i, k := range catalogue {
		out[i] = *k
	}
	return out
}

// The catalogue. Every error the gateway sends itself is made by one of
// the constructors below, from one of these.
var (
	kindInvalidJSON              = kind(Kind{Code: "invalid_json", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindInvalidType              = kind(Kind{Code: "invalid_type", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindInvalidValue             = kind(Kind{Code: "invalid_value", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindMissingRequiredParameter = kind(Kind{Code: "missing_required_parameter", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindEmptyArray               = kind(Kind{Code: "empty_array", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindEmptyString              = kind(Kind{Code: "empty_string", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindDuplicateKey             = kind(Kind{Code: "duplicate_key", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindUnknownParameter         = kind(Kind{Code: "unknown_parameter", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindUnsupportedParameter     = kind(Kind{Code: "unsupported_parameter", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindBodyReadError            = kind(Kind{Code: "body_read_error", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindInvalidAPIKey            = kind(Kind{Code: "invalid_api_key", Status: http.StatusUnauthorized, Type: TypeInvalidRequest, Class: ClassClient})
	kindPreviousResponseNotFound = kind(Kind{Code: "previous_response_not_found", Status: http.StatusBadRequest, Type: TypeInvalidRequest, Class: ClassClient})
	kindModelNotFound            = kind(Kind{Code: "model_not_found", Status: http.StatusNotFound, Type: TypeInvalidRequest, Class: ClassClient})
	kindUnknownURL               = kind(Kind{Code: "unknown_url", Status: http.StatusNotFound, Type: TypeInvalidRequest, Class: ClassClient})
	kindMethodNotAllowed         = kind(Kind{Code: "method_not_allowed", Status: http.StatusMethodNotAllowed, Type: TypeInvalidRequest, Class: ClassClient})
	kindRequestTimeout           = kind(Kind{Code: "request_timeout", Status: http.StatusRequestTimeout, Type: TypeInvalidRequest, Class: ClassClient})
	kindRequestTooLarge          = kind(Kind{Code: "request_too_large", Status: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest, Class: ClassClient})
	kindUnsupportedMediaType     = kind(Kind{Code: "unsupported_media_type", Status: http.StatusUnsupportedMediaType, Type: TypeInvalidRequest, Class: ClassClient})

	kindTooManyConcurrentRequests = kind(Kind{Code: "too_many_concurrent_requests", Status: http.StatusTooManyRequests, Type: TypeRateLimit, Class: ClassRejected})
	kindRateLimitExceeded         = kind(Kind{Code: "rate_limit_exceeded", Status: http.StatusTooManyRequests, Type: TypeRateLimit, Class: ClassRejected})
	kindInsufficientQuota         = kind(Kind{Code: "insufficient_quota", Status: http.StatusTooManyRequests, Type: TypeQuota, Class: ClassRejected})
	kindRateLimitsUnavailable     = kind(Kind{Code: "rate_limits_unavailable", Status: http.StatusServiceUnavailable, Type: TypeServer, Class: ClassRejected})
	kindOwnersUnavailable         = kind(Kind{Code: "owners_unavailable", Status: http.StatusServiceUnavailable, Type: TypeServer, Class: ClassRejected})

	kindUpstreamError           = kind(Kind{Code: "upstream_error", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindUpstreamUnavailable     = kind(Kind{Code: "upstream_unavailable", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindNoUpstreamAvailable     = kind(Kind{Code: "no_upstream_available", Status: http.StatusServiceUnavailable, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindNoHealthyUpstream       = kind(Kind{Code: "no_healthy_upstream", Status: http.StatusServiceUnavailable, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindInvalidUpstreamResponse = kind(Kind{Code: "invalid_upstream_response", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindUpstreamReplyTooLarge   = kind(Kind{Code: "upstream_reply_too_large", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindUpstreamReplyIncomplete = kind(Kind{Code: "upstream_reply_incomplete", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindEventTooLarge           = kind(Kind{Code: "event_too_large", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindToolCallTooLarge        = kind(Kind{Code: "tool_call_too_large", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindCountTokensUnsupported  = kind(Kind{Code: "count_tokens_unsupported", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassUpstream, Retryable: true})
	kindStreamTruncated         = kind(Kind{Code: "stream_truncated", Status: http.StatusBadGateway, Type: TypeUpstream, Class: ClassTruncated, Retryable: true})

	kindFirstTokenTimeout = kind(Kind{Code: "first_token_timeout", Status: http.StatusGatewayTimeout, Type: TypeTimeout, Class: ClassTimeout, Retryable: true})
	kindIdleTimeout       = kind(Kind{Code: "idle_timeout", Status: http.StatusGatewayTimeout, Type: TypeTimeout, Class: ClassTimeout, Retryable: true})
	kindDialTimeout       = kind(Kind{Code: "dial_timeout", Status: http.StatusGatewayTimeout, Type: TypeTimeout, Class: ClassTimeout, Retryable: true})
	kindUpstreamTimeout   = kind(Kind{Code: "upstream_timeout", Status: http.StatusGatewayTimeout, Type: TypeTimeout, Class: ClassTimeout, Retryable: true})
	// The request's own deadline: another attempt would start after it.
	kindTimeout = kind(Kind{Code: "timeout", Status: http.StatusGatewayTimeout, Type: TypeTimeout, Class: ClassTimeout})

	kindClientClosedRequest = kind(Kind{Code: "client_closed_request", Status: StatusClientClosedRequest, Type: TypeInvalidRequest, Class: ClassCancelled})
)

// new returns an error of kind k.
func (k *Kind) new(param, msg string) *Error {
	return &Error{Status: k.Status, Type: k.Type, Code: k.Code, Param: param, Message: msg, kind: k}
}

// InvalidJSON is the error for a request body that is not a JSON
// document; msg says why.
func InvalidJSON(msg string) *Error { return kindInvalidJSON.new("", msg) }

// InvalidType is the error for a parameter (or the body, param "") of
// the wrong JSON type.
func InvalidType(param, msg string) *Error { return kindInvalidType.new(param, msg) }

// InvalidValue is the error for a parameter with a value it may not have.
func InvalidValue(param, msg string) *Error { return kindInvalidValue.new(param, msg) }

// MissingRequiredParameter is the error for an absent required parameter.
func MissingRequiredParameter(param, msg string) *Error {
	return kindMissingRequiredParameter.new(param, msg)
}

// EmptyArray is the error for an array parameter that must not be empty.
func EmptyArray(param, msg string) *Error { return kindEmptyArray.new(param, msg) }

// EmptyString is the error for a string parameter that must not be empty.
func EmptyString(param, msg string) *Error { return kindEmptyString.new(param, msg) }

// DuplicateKey is the error for a body that names param more than once.
func DuplicateKey(param string) *Error {
	return kindDuplicateKey.new(param, "The request body names '"+param+"' more than once.")
}

// UnknownParameter is the error for a member named param that spells
// known, a name the gateway reads, in another case: backends whose JSON
// library ignores case would read it as known, the gateway does not.
func UnknownParameter(param, known string) *Error {
	return kindUnknownParameter.new(param, "Unknown parameter: '"+param+"'. Parameter names are case-sensitive: the gateway reads '"+known+"'.")
}

// UnsupportedParameter is the error for a parameter the backend serving
// the request cannot honour.
func UnsupportedParameter(param, msg string) *Error { return kindUnsupportedParameter.new(param, msg) }

// BodyReadError is the error for a request body whose reading failed.
func BodyReadError() *Error {
	return kindBodyReadError.new("", "The request body could not be read.")
}

// InvalidAPIKey is the 401 for a missing or refused client key.
func InvalidAPIKey(msg string) *Error { return kindInvalidAPIKey.new("", msg) }

// ModelNotFound is the error for a model no backend serves, and for one
// the client's key may not use: the same, so it does not tell which.
func ModelNotFound(model string) *Error {
	return kindModelNotFound.new("model", "The model '"+model+"' does not exist or is not served by this gateway.")
}

// PreviousResponseNotFound is the error for a previous_response_id the
// caller did not make through this gateway: one that never existed,
// expired, or is another client's, alike. It is OpenAI's error for an
// unknown previous response, status and all: clients such as Codex
// start the conversation afresh on it.
func PreviousResponseNotFound(id string) *Error {
	if len(id) > 128 { // it is the client's own text: no need to send it all back
		id = strings.ToValidUTF8(id[:128], "") + "..."
	}
	return kindPreviousResponseNotFound.new("previous_response_id", "Previous response with id '"+id+"' not found.")
}

// UnknownURL is the error for a path under /v1/ the gateway has no
// route for.
func UnknownURL(method, path string) *Error {
	if len(path) > 256 { // the client's own text: no need to send it all back
		path = strings.ToValidUTF8(path[:256], "") + "..."
	}
	return kindUnknownURL.new("", "Unknown request URL: "+method+" "+path+". This gateway serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages and /v1/models.")
}

// MethodNotAllowed is the error for a request with method on path,
// which takes allow.
func MethodNotAllowed(method, path, allow string) *Error {
	return kindMethodNotAllowed.new("", "Method "+method+" is not allowed on "+path+"; use "+allow+".")
}

// RequestTimeout is the error for a request body that did not arrive
// within read_body_timeout.
func RequestTimeout() *Error {
	return kindRequestTimeout.new("", "The request body did not arrive within read_body_timeout.")
}

// RequestTooLarge is the error for a request body over limit, written as
// the Caddyfile takes it (e.g. 16MiB).
func RequestTooLarge(limit string) *Error {
	return kindRequestTooLarge.new("", "The request body is larger than the gateway accepts ("+limit+").")
}

// UnsupportedMediaType is the error for a body that is not declared JSON.
func UnsupportedMediaType() *Error {
	return kindUnsupportedMediaType.new("", "Content-Type must be application/json.")
}

// TooManyConcurrentRequests is the 429 for a request over a concurrency
// limit; msg names the limit.
func TooManyConcurrentRequests(msg string) *Error { return kindTooManyConcurrentRequests.new("", msg) }

// RateLimitExceeded is the 429 for a request over a rate limit; msg
// names the limit in OpenAI's words.
func RateLimitExceeded(msg string) *Error { return kindRateLimitExceeded.new("", msg) }

// RequestOverLimit is the 429 for a request that needs more than a whole
// limit ("Request too large ..." in OpenAI's words): it can never pass.
func RequestOverLimit(msg string) *Error {
	e := kindRateLimitExceeded.new("", msg)
	e.overLimit = true
	return e
}

// InsufficientQuota is the 429 for a request over a spent quota.
func InsufficientQuota(msg string) *Error { return kindInsufficientQuota.new("", msg) }

// RateLimitsUnavailable is the 503 for a request that cannot be admitted
// because the limits store failed (on_store_error deny).
func RateLimitsUnavailable() *Error {
	return kindRateLimitsUnavailable.new("", "The gateway cannot check its rate limits right now; please try again shortly.")
}

// OwnersUnavailable is the 503 for a request naming a previous response
// whose owner the gateway cannot check: its store failed.
func OwnersUnavailable() *Error {
	return kindOwnersUnavailable.new("", "The gateway cannot check who made 'previous_response_id' right now; please try again shortly.")
}

// UpstreamError is the error for a backend's 5xx reply with status.
func UpstreamError(status int) *Error {
	return kindUpstreamError.new("", fmt.Sprintf("The backend failed to answer (status %d).", status))
}

// UpstreamUnavailable is the error for a backend that could not be
// reached.
func UpstreamUnavailable() *Error {
	return kindUpstreamUnavailable.new("", "The backend could not be reached.")
}

// NoUpstreamAvailable is the error for a backend none of whose
// upstreams may be selected (down or cooling).
func NoUpstreamAvailable() *Error {
	return kindNoUpstreamAvailable.new("", "No backend is available to serve the request.")
}

// NoHealthyUpstream is /readyz's answer while a backend has no healthy
// upstream.
func NoHealthyUpstream() *Error {
	return kindNoHealthyUpstream.new("", "A backend has no healthy upstream left; the gateway is not ready.")
}

// InvalidUpstreamResponse is the error for a backend reply or stream
// event the route cannot read; msg says what.
func InvalidUpstreamResponse(msg string) *Error { return kindInvalidUpstreamResponse.new("", msg) }

// UpstreamReplyTooLarge is the error for a backend reply over the
// gateway's buffer.
func UpstreamReplyTooLarge() *Error {
	return kindUpstreamReplyTooLarge.new("", "The backend's reply is larger than the gateway accepts.")
}

// UpstreamReplyIncomplete is the error for a backend reply cut short;
// what names it ("reply", "model list").
func UpstreamReplyIncomplete(what string) *Error {
	return kindUpstreamReplyIncomplete.new("", "The backend's "+what+" was cut short.")
}

// EventTooLarge is the error for a backend stream line over 8 MiB.
func EventTooLarge() *Error {
	return kindEventTooLarge.new("", "The backend sent a stream line longer than the gateway accepts (8 MiB).")
}

// ToolCallTooLarge is the error for a streamed tool call whose
// arguments exceed limit bytes.
func ToolCallTooLarge(limit int) *Error {
	return kindToolCallTooLarge.new("", "The backend's tool call arguments exceed what the gateway holds ("+strconv.Itoa(limit)+" bytes).")
}

// CountTokensUnsupported is the error for a count_tokens request that
// reached a backend which cannot count tokens.
func CountTokensUnsupported() *Error {
	return kindCountTokensUnsupported.new("", "The backend serving this model does not count tokens.")
}

// StreamTruncated is the error for a backend stream that ended before
// it was complete.
func StreamTruncated() *Error {
	return kindStreamTruncated.new("", "The backend ended the stream before it was complete.")
}

// FirstTokenTimeout is the error for a backend that did not start
// answering within first_token_timeout, streamed or not.
func FirstTokenTimeout() *Error {
	return kindFirstTokenTimeout.new("", "The backend did not start answering within first_token_timeout.")
}

// IdleTimeout is the error for a backend stream, or a reply streamed
// through, silent for longer than idle_timeout.
func IdleTimeout() *Error {
	return kindIdleTimeout.new("", "The backend sent nothing for longer than idle_timeout; the reply was cut short.")
}

// DialTimeout is the error for a backend not connected to within
// dial_timeout.
func DialTimeout() *Error {
	return kindDialTimeout.new("", "The backend could not be connected to within dial_timeout.")
}

// UpstreamTimeout is the error for another transport timeout (such as
// response_header_timeout).
func UpstreamTimeout() *Error {
	return kindUpstreamTimeout.new("", "The backend did not answer in time.")
}

// Timeout is the error for a non-streamed request over its timeout.
func Timeout() *Error {
	return kindTimeout.new("", "The backend did not answer within the request timeout.")
}

// ClientClosedRequest is the error of a request whose client went away:
// for the log and metrics, never sent.
func ClientClosedRequest() *Error {
	return kindClientClosedRequest.new("", "The client closed the request.")
}

// Kind returns the catalogue's entry for e, and false for a backend's
// error passed on.
func (e *Error) Kind() (Kind, bool) {
	if e.kind == nil {
		return Kind{}, false
	}
	return *e.kind, true
}

// Class is e's Kind's class. A backend's error passed on is classed by
// its type and status: ClassTimeout for a timeout_error, ClassUpstream
// for an upstream_error or from status 500 up, else ClassClient.
func (e *Error) Class() Class {
	switch {
	case e.kind != nil:
		return e.kind.Class
	case e.Type == TypeTimeout:
		return ClassTimeout
	case e.Type == TypeUpstream || e.Status >= 500:
		return ClassUpstream
	}
	return ClassClient
}

// Retryable reports whether another attempt, on the same backend or
// another, may succeed: as e's Kind says, and for a backend's error
// passed on, when it is a 429 or a 5xx.
func (e *Error) Retryable() bool {
	if e.kind != nil {
		return e.kind.Retryable
	}
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// Final reports whether sending the same request again cannot succeed:
// it is malformed, unauthorized, not found or not allowed (400, 401,
// 403, 404, 405, 413, 415, 422), over a spent quota, or larger than a
// whole limit. Such errors carry "x-should-retry: false", which the
// OpenAI and Anthropic SDKs obey instead of retrying with backoff; they
// retry the others (408, 409, 429, 5xx) as they would anyway.
func (e *Error) Final() bool {
	switch e.Status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound,
		http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType,
		http.StatusUnprocessableEntity:
		return true
	case http.StatusTooManyRequests:
		return e.overLimit || e.Code == TypeQuota || e.Type == TypeQuota
	}
	return false
}

// TypeForStatus is the type OpenAI sends with an error status, for a
// backend's error that names none.
func TypeForStatus(status int) string {
	switch {
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return TypeAuthentication
	case status == http.StatusTooManyRequests:
		return TypeRateLimit
	case status >= 500:
		return TypeUpstream
	}
	return TypeInvalidRequest
}

// BackendError is the error for a backend's reply with a non-2xx
// status: a 5xx is the gateway's UpstreamError; a 4xx passes on with
// its status and what the backend said, completed by FillDefaults.
func BackendError(status int, body []byte) *Error {
	if status >= 500 {
		return UpstreamError(status)
	}
	e, ok := ParseError(body)
	if !ok {
		e = &Error{Message: fmt.Sprintf("The backend refused the request (status %d).", status)}
	}
	e.Status = status
	return e.FillDefaults(status)
}

// FillDefaults fills what a backend's error left out: status when it
// has none, a message, and the type by its status (TypeForStatus). It
// returns e.
func (e *Error) FillDefaults(status int) *Error {
	if e.Status == 0 {
		e.Status = status
	}
	if e.Message == "" {
		e.Message = "The backend reported an error."
	}
	if e.Type == "" {
		e.Type = TypeForStatus(e.Status)
	}
	return e
}

// JSON returns the error as {"error":{"message","type","param","code"}},
// an empty param or code as null. It is appended by hand: a 401 or 429
// flood is all errors, and encoding/json's reflection cost 1.7 µs each.
func (e *Error) JSON() []byte {
	b := make([]byte, 0, len(`{"error":{"message":,"type":,"param":,"code":}}`)+len(e.Message)+len(e.Type)+len(e.Param)+len(e.Code)+16)
	b = appendString(append(b, `{"error":{"message":`...), e.Message)
	b = appendString(append(b, `,"type":`...), e.Type)
	b = appendOptional(append(b, `,"param":`...), e.Param)
	b = appendOptional(append(b, `,"code":`...), e.Code)
	return append(b, "}}"...)
}

// appendOptional appends s as a JSON string, or null when it is empty.
func appendOptional(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, "null"...)
	}
	return appendString(dst, s)
}

// ParseError reads an error body a backend sent. It reports false when
// the body is not an OpenAI-shaped error; missing fields stay empty.
func ParseError(body []byte) (*Error, bool) {
	var env struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &env) != nil || jsonwalk.IsNull(env.Error) {
		return nil, false
	}
	var e struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Param   json.RawMessage `json:"param"`
		Code    json.RawMessage `json:"code"`
	}
	if json.Unmarshal(env.Error, &e) != nil {
		// Some servers send "error":"text".
		var msg string
		if json.Unmarshal(env.Error, &msg) != nil {
			return nil, false
		}
		return &Error{Message: msg}, true
	}
	return &Error{Message: e.Message, Type: e.Type, Param: scalar(e.Param), Code: scalar(e.Code)}, true
}

// scalar renders a JSON string or number as text; null and others as "".
func scalar(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(v, &n) == nil {
		return n.String()
	}
	return ""
}
