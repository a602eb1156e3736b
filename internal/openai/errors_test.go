package openai

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// The catalogue is consistent: a code once, each class with the statuses
// and types it implies, and retries only for the backend's failures.
func TestCatalogue(t *testing.T) {
	code := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	seen := map[string]bool{}
	for _, k := range Catalogue() {
		if !code.MatchString(k.Code) || seen[k.Code] {
			t.Errorf("%q: a code is snake_case and in the catalogue once", k.Code)
		}
		seen[k.Code] = true
		if k.Type == "" {
			t.Errorf("%s: no type", k.Code)
		}
		if k.Retryable && !k.Class.BackendFault() {
			t.Errorf("%s: only a backend's failure may be retried", k.Code)
		}
		if (k.Class == ClassTimeout) != (k.Type == TypeTimeout) || k.Class == ClassTimeout && k.Status != http.StatusGatewayTimeout {
			t.Errorf("%s: a timeout, and only a timeout, is a 504 %s", k.Code, TypeTimeout)
		}
		if (k.Class == ClassCancelled) != (k.Status == StatusClientClosedRequest) {
			t.Errorf("%s: a cancelled request, and only that, is a %d", k.Code, StatusClientClosedRequest)
		}
		switch k.Class {
		case ClassClient:
			if k.Status < 400 || k.Status >= 500 {
				t.Errorf("%s: a client error with status %d, want 4xx", k.Code, k.Status)
			}
		case ClassRejected:
			if k.Status != http.StatusTooManyRequests && k.Status != http.StatusServiceUnavailable {
				t.Errorf("%s: a rejection with status %d, want 429 or 503", k.Code, k.Status)
			}
		case ClassUpstream, ClassTruncated:
			if k.Status != http.StatusBadGateway && k.Status != http.StatusServiceUnavailable || k.Type != TypeUpstream {
				t.Errorf("%s: a backend failure sent as %d %s, want 502 or 503 %s", k.Code, k.Status, k.Type, TypeUpstream)
			}
		case ClassTimeout, ClassCancelled:
		default:
			t.Errorf("%s: no class", k.Code)
		}
	}
	if len(seen) < 30 {
		t.Errorf("the catalogue has %d errors, want at least 30", len(seen))
	}
}

// Every kind has a constructor, and what it makes is sent as its kind says.
func TestCatalogueConstructors(t *testing.T) {
	made := []*Error{
		InvalidJSON("The request body is empty."), InvalidType("p", "'p' must be a string."), InvalidValue("p", "'p' is wrong."),
		MissingRequiredParameter("p", "Missing 'p'."), EmptyArray("p", "'p' is empty."), EmptyString("p", "'p' is empty."),
		DuplicateKey("p"), UnknownParameter("Model", "model"), PreviousResponseNotFound("resp_1"), OwnersUnavailable(), UnknownURL("GET", "/v1/nope"), UnsupportedParameter("p", "Not here."), BodyReadError(), InvalidAPIKey("No key."),
		ModelNotFound("m"), MethodNotAllowed("GET", "/v1/chat/completions", "POST"), RequestTimeout(), RequestTooLarge("1MiB"),
		UnsupportedMediaType(), TooManyConcurrentRequests("Busy."), RateLimitExceeded("Slow down."),
		InsufficientQuota("Spent."), RateLimitsUnavailable(), UpstreamError(500), UpstreamUnavailable(),
		NoUpstreamAvailable(), NoHealthyUpstream(), InvalidUpstreamResponse("Bad."), UpstreamReplyTooLarge(),
		UpstreamReplyIncomplete("reply"), EventTooLarge(), ToolCallTooLarge(8), CountTokensUnsupported(),
		StreamTruncated(), FirstTokenTimeout(), IdleTimeout(), DialTimeout(), UpstreamTimeout(), Timeout(),
		ClientClosedRequest(),
	}
	byCode := map[string]*Error{}
	for _, e := range made {
		k, ok := e.Kind()
		switch {
		case !ok:
			t.Errorf("%s: made without its kind", e.Code)
		case e.Status != k.Status || e.Type != k.Type || e.Code != k.Code || e.Class() != k.Class || e.Retryable() != k.Retryable:
			t.Errorf("%s: sent as %d %s, its kind says %d %s", e.Code, e.Status, e.Type, k.Status, k.Type)
		case !strings.HasSuffix(e.Message, "."):
			t.Errorf("%s: message %q is not a sentence", e.Code, e.Message)
		}
		byCode[e.Code] = e
	}
	for _, k := range Catalogue() {
		if byCode[k.Code] == nil {
			t.Errorf("%s: no constructor", k.Code)
		}
	}
	if e := ModelNotFound("m"); e.Param != "model" {
		t.Errorf("model_not_found names param %q, want model", e.Param)
	}
}

// A backend's error passed on is no kind of the gateway's, whatever its
// code: its status and type class it, and say whether to retry.
func TestBackendErrors(t *testing.T) {
	tests := []struct {
		status    int
		body      string
		class     Class
		retryable bool
		typ, msg  string
	}{
		{400, `{"error":{"message":"no","code":"timeout"}}`, ClassClient, false, TypeInvalidRequest, "no"},
		{401, `not json`, ClassClient, false, TypeAuthentication, "The backend refused the request (status 401)."},
		{429, `{"error":{"message":"slow","type":"requests","code":"rate_limit_exceeded"}}`, ClassClient, true, "requests", "slow"},
		{408, `{"error":{"type":"timeout_error"}}`, ClassTimeout, false, TypeTimeout, "The backend reported an error."},
		{503, `{"error":{"message":"down"}}`, ClassUpstream, true, TypeUpstream, "The backend failed to answer (status 503)."},
	}
	for _, tt := range tests {
		e := BackendError(tt.status, []byte(tt.body))
		if e.Class() != tt.class || e.Retryable() != tt.retryable || e.Type != tt.typ || e.Message != tt.msg {
			t.Errorf("%d %s: class %d retryable %v type %q message %q, want class %d retryable %v type %q message %q", tt.status, tt.body, e.Class(), e.Retryable(), e.Type, e.Message, tt.class, tt.retryable, tt.typ, tt.msg)
		}
		if _, ok := e.Kind(); ok != (tt.status >= 500) {
			t.Errorf("%d %s: only a 5xx becomes the gateway's own error", tt.status, tt.body)
		}
	}
	// An error event in a stream has no status of its own.
	e, _ := ParseError([]byte(`{"error":{"message":"overloaded"}}`))
	if e.FillDefaults(http.StatusBadGateway); e.Status != http.StatusBadGateway || e.Type != TypeUpstream || !e.Retryable() {
		t.Errorf("stream error event: %+v, want 502 %s, retryable", e, TypeUpstream)
	}
}

func TestTypeForStatus(t *testing.T) {
	for status, want := range map[int]string{400: TypeInvalidRequest, 401: TypeAuthentication, 403: TypeAuthentication,
		404: TypeInvalidRequest, 429: TypeRateLimit, 500: TypeUpstream, 529: TypeUpstream} {
		if got := TypeForStatus(status); got != want {
			t.Errorf("TypeForStatus(%d) = %s, want %s", status, got, want)
		}
	}
}

// Final errors are those a retry of the same request cannot fix; the
// SDKs are told not to retry them, and only them.
func TestFinal(t *testing.T) {
	final := []*Error{
		InvalidJSON("Bad."), DuplicateKey("model"), UnknownParameter("Model", "model"), InvalidAPIKey("No key."),
		ModelNotFound("m"), MethodNotAllowed("GET", "/v1/chat/completions", "POST"), RequestTooLarge("1MiB"),
		UnsupportedMediaType(), InsufficientQuota("Spent."), RequestOverLimit("Request too large."),
		BackendError(403, []byte(`{"error":{"message":"no"}}`)), BackendError(422, nil),
		BackendError(429, []byte(`{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}`)),
	}
	retry := []*Error{
		RequestTimeout(), RateLimitExceeded("Slow down."), TooManyConcurrentRequests("Busy."), RateLimitsUnavailable(),
		UpstreamError(500), UpstreamUnavailable(), NoUpstreamAvailable(), FirstTokenTimeout(), Timeout(),
		BackendError(429, []byte(`{"error":{"message":"slow down","type":"rate_limit_error"}}`)), BackendError(409, nil),
	}
	for _, e := range final {
		if !e.Final() {
			t.Errorf("%d %s %q: a retry could fix it, says Final", e.Status, e.Code, e.Message)
		}
	}
	for _, e := range retry {
		if e.Final() {
			t.Errorf("%d %s %q: Final, but a retry may succeed", e.Status, e.Code, e.Message)
		}
	}
}
