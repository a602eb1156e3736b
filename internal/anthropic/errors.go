// Package anthropic holds the Anthropic Messages API as the gateway
// needs it: request validation, the translation of a Messages request
// into a chat-completions request and of the chat reply or stream back
// into a Messages reply or event stream, Anthropic's error shape, and
// echo replies. It has no Caddy imports.
package anthropic

import (
	"encoding/json"
	"net/http"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Error types, as Anthropic names them.
const (
	TypeInvalidRequest  = "invalid_request_error"
	TypeAuthentication  = "authentication_error"
	TypeBilling         = "billing_error"
	TypePermission      = "permission_error"
	TypeNotFound        = "not_found_error"
	TypeRequestTooLarge = "request_too_large"
	TypeRateLimit       = "rate_limit_error"
	TypeAPI             = "api_error"
	TypeTimeout         = "timeout_error"
	TypeOverloaded      = "overloaded_error"
)

// StatusOverloaded is the status Anthropic sends with overloaded_error.
const StatusOverloaded = 529

// ErrorType is the Anthropic error type for an HTTP status: the one the
// Anthropic API sends with it, invalid_request_error for other 4xx and
// api_error for anything else.
func ErrorType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return TypeInvalidRequest
	case http.StatusUnauthorized:
		return TypeAuthentication
	case http.StatusPaymentRequired:
		return TypeBilling
	case http.StatusForbidden:
		return TypePermission
	case http.StatusNotFound:
		return TypeNotFound
	case http.StatusRequestEntityTooLarge:
		return TypeRequestTooLarge
	case http.StatusTooManyRequests:
		return TypeRateLimit
	case http.StatusGatewayTimeout:
		return TypeTimeout
	case http.StatusServiceUnavailable, StatusOverloaded:
		return TypeOverloaded
	}
	if status >= 400 && status < 500 {
		return TypeInvalidRequest
	}
	return TypeAPI
}

// ErrorStatus is the HTTP status an error of e's is sent with: its own,
// or 500 when it has none.
func ErrorStatus(e *openai.Error) int {
	if e.Status == 0 {
		return http.StatusInternalServerError
	}
	return e.Status
}

// AppendError appends e in Anthropic's shape:
// {"type":"error","error":{"type":...,"message":...}}, its type chosen
// by ErrorStatus(e). e's message is sent as it is: the gateway's
// messages never hold keys or prompt text.
func AppendError(dst []byte, e *openai.Error) []byte {
	typ := ErrorType(ErrorStatus(e))
	msg := e.Message
	if msg == "" {
		msg = defaultMessage(typ)
	}
	dst = append(dst, `{"type":"error","error":{"type":`...)
	dst = appendString(dst, typ)
	dst = append(dst, `,"message":`...)
	dst = appendString(dst, msg)
	return append(dst, "}}"...)
}

// ErrorJSON returns e as an Anthropic error body; see AppendError.
func ErrorJSON(e *openai.Error) []byte { return AppendError(nil, e) }

// AppendErrorEvent appends e as an SSE "error" event, which is how an
// Anthropic stream ends when it fails after it started.
func AppendErrorEvent(dst []byte, e *openai.Error) []byte {
	dst = append(dst, "event: error\ndata: "...)
	dst = AppendError(dst, e)
	return append(dst, '\n', '\n')
}

// ParseError reads an error body in Anthropic's shape, as a backend that
// serves Messages natively sends it, into the gateway's error, with the
// status given. It reports false when body is not in that shape.
func ParseError(body []byte, status int) (*openai.Error, bool) {
	var env struct {
		Type  string `json:"type"`
		Error *struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) != nil || env.Type != "error" || env.Error == nil {
		return nil, false
	}
	return &openai.Error{Status: status, Type: env.Error.Type, Message: env.Error.Message}, true
}

func defaultMessage(typ string) string {
	switch typ {
	case TypeInvalidRequest:
		return "The request is invalid."
	case TypeAuthentication:
		return "Invalid authentication."
	case TypeBilling:
		return "Billing problem."
	case TypePermission:
		return "Permission denied."
	case TypeNotFound:
		return "Not found."
	case TypeRequestTooLarge:
		return "The request is too large."
	case TypeRateLimit:
		return "Rate limited."
	case TypeTimeout:
		return "The request timed out."
	case TypeOverloaded:
		return "Overloaded."
	}
	return "Internal server error."
}

// StatusOf is the status Anthropic sends an error type with, the
// inverse of ErrorType; 502 for a type it does not name.
func StatusOf(typ string) int {
	for _, status := range [...]int{400, 401, 402, 403, 404, 413, 429, 500, 504, StatusOverloaded} {
		if ErrorType(status) == typ {
			return status
		}
	}
	return http.StatusBadGateway
}
