package chatgateway

// What a limited request is told: OpenAI's x-ratelimit-* headers (and the
// route's own, such as the Messages routes' anthropic-ratelimit-*), and
// the 429 of a refused request in OpenAI's words.

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// setRateLimitHeaders sets OpenAI's x-ratelimit-* headers from the
// statuses of a decision: for requests and for tokens, the dimension
// with the least remaining; and the route's own, if it has any.
func (x *exchange) setRateLimitHeaders(status []limits.Status) {
	h := x.w.Header()
	own, _ := x.ep.(openai.LimitHeaders)
	for _, names := range rateLimitHeaders {
		best := -1
		for i, st := range status {
			if st.Dimension.Kind == names.kind && (best < 0 || st.Remaining < status[best].Remaining) {
				best = i
			}
		}
		if best < 0 {
			continue
		}
		st := status[best]
		vals := []string{strconv.FormatInt(st.Dimension.Limit, 10), strconv.FormatInt(st.Remaining, 10), ceilMillis(st.Reset).String()}
		h[names.limit], h[names.remaining], h[names.reset] = vals[0:1:1], vals[1:2:2], vals[2:3:3]
		if own != nil {
			own.SetLimitHeaders(h, openai.LimitState{Kind: names.kind.String(), Limit: vals[0], Remaining: vals[1], Reset: x.start.Add(st.Reset)})
		}
	}
}

// rateLimitHeaders are the names of the headers of the kinds of limit
// that have them.
var rateLimitHeaders = [...]struct {
	kind                    limits.Kind
	limit, remaining, reset string
}{
	{limits.KindRequests, "X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"},
	{limits.KindTokens, "X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"},
}

// ceilMillis rounds d up to a millisecond.
func ceilMillis(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// denialError is the 429 for a refused request, in OpenAI's words; it
// sets the Retry-After headers the request may retry after.
func denialError(h http.Header, den *limits.Denial) *openai.Error {
	d := den.Dimension
	who := strings.TrimPrefix(d.Scope, identityScopePrefix)
	if m, ok := strings.CutPrefix(d.Scope, modelScopePrefix); ok {
		who = "model " + m
	}
	switch {
	case den.TooLarge && d.Kind == limits.KindBudget:
		return openai.RequestOverLimit(fmt.Sprintf("Request too large for the budget of %s: it could cost up to %s, more than the whole budget of %s per %s. Lower max_tokens (or max_completion_tokens) so that it can run.",
			who, usd(den.Requested), usd(d.Limit), d.Period))
	case den.TooLarge:
		return openai.RequestOverLimit(fmt.Sprintf("Request too large for %s on %s: Limit %d, Requested %d. The input or output tokens must be reduced in order to run successfully.",
			who, perWhat(d), d.Limit, den.Requested))
	}
	wait := ceilMillis(den.RetryAfter)
	h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(wait.Seconds())), 10))
	h.Set("Retry-After-Ms", strconv.FormatInt(wait.Milliseconds(), 10))
	switch d.Kind {
	case limits.KindConcurrent:
		return openai.TooManyConcurrentRequests(fmt.Sprintf("Too many concurrent requests for %s: Limit %d, In flight %d. Please try again in %s.", who, d.Limit, den.Used, wait))
	case limits.KindQuota:
		return openai.InsufficientQuota(fmt.Sprintf("You exceeded your current quota for %s on %s: Limit %d, Used %d, Requested %d. It resets in %s.",
			who, perWhat(d), d.Limit, den.Used, den.Requested, wait))
	case limits.KindBudget:
		return openai.InsufficientQuota(fmt.Sprintf("You exceeded your current budget for %s: Limit %s per %s, Used %s, Requested up to %s. It resets in %s.",
			who, usd(d.Limit), d.Period, usd(den.Used), usd(den.Requested), wait))
	}
	return openai.RateLimitExceeded(fmt.Sprintf("Rate limit reached for %s on %s: Limit %d, Used %d, Requested %d. Please try again in %s.",
		who, perWhat(d), d.Limit, den.Used, den.Requested, wait))
}

// perWhat names what a dimension counts over what: "tokens per 1m",
// "requests per 10s", "tokens per day".
func perWhat(d limits.Dimension) string {
	if d.Kind == limits.KindQuota {
		return "tokens per " + d.Period.String()
	}
	_, window, _ := strings.Cut(limits.Rate{N: d.Limit, Window: d.Window}.String(), "/")
	return d.Kind.String() + " per " + window
}

// usd formats an amount of millionths of a dollar: "$2.5", "$0.000182".
func usd(micros int64) string {
	return "$" + strconv.FormatFloat(float64(micros)/1e6, 'f', -1, 64)
}
