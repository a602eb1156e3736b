// Package openai holds the OpenAI API as the gateway needs it: one
// Endpoint description per route (chat completions, completions,
// embeddings, responses) with its request validation, the normalization
// of its replies and stream events, and its echo replies; the error
// envelope; usage. It has no Caddy imports.
package openai

import (
	"encoding/json"
	"net/http"

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
)

// Error is an OpenAI-style error with the HTTP status it is sent with.
type Error struct {
	Status  int
	Message string
	Type    string
	Param   string // empty is sent as null
	Code    string // empty is sent as null
}

func (e *Error) Error() string { return e.Message }

// Invalid returns a 400 invalid_request_error naming param.
func Invalid(param, code, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Message: msg, Type: TypeInvalidRequest, Param: param, Code: code}
}

// JSON returns the error as {"error":{"message","type","param","code"}}.
func (e *Error) JSON() []byte {
	type body struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}
	b := body{Message: e.Message, Type: e.Type}
	if e.Param != "" {
		b.Param = &e.Param
	}
	if e.Code != "" {
		b.Code = &e.Code
	}
	out, _ := json.Marshal(struct {
		Error body `json:"error"`
	}{b})
	return out
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
