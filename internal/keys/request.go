package keys

import (
	"net/http"
	"strings"
)

// The request headers a client may carry its key in, as the OpenAI,
// Anthropic and Azure OpenAI SDKs send it.
const (
	headerAuthorization = "Authorization" // Bearer <key>
	headerXAPIKey       = "X-Api-Key"
	headerAPIKey        = "Api-Key"
)

// Presented returns the key a request carries: the token of
// "Authorization: Bearer <key>", else the value of x-api-key, else of
// api-key, without surrounding blanks. It reports false when there is
// none (an Authorization header of another scheme, such as Basic, is
// none).
func Presented(h http.Header) (string, bool) {
	if v := h[headerAuthorization]; len(v) > 0 {
		if scheme, token, ok := strings.Cut(strings.TrimSpace(v[0]), " "); ok && strings.EqualFold(scheme, "Bearer") {
			if token = strings.TrimSpace(token); token != "" {
				return token, true
			}
		}
	}
	for _, name := range [...]string{headerXAPIKey, headerAPIKey} {
		if v := h[name]; len(v) > 0 {
			if key := strings.TrimSpace(v[0]); key != "" {
				return key, true
			}
		}
	}
	return "", false
}

// Hint shows a presented key as OpenAI's error messages do: its first
// and last 4 characters around stars, or stars alone for a key too short
// to show 8 characters of safely.
func Hint(key string) string {
	if len(key) < MinPlainLength {
		return "****"
	}
	return key[:4] + "****" + key[len(key)-4:]
}
