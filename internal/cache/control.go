package cache

import (
	"strconv"
	"strings"
)

// Control is what a request's Cache-Control asks of the cache.
type Control struct {
	// NoCache: answer from the backend, not the cache (and store the
	// answer, which refreshes the entry).
	NoCache bool
	// NoStore: keep the answer out of the cache.
	NoStore bool
	// MaxAge, when HasMaxAge, is the oldest entry the client takes, in
	// seconds; it also asks for the request to be cached, for at most
	// that long, where the cache would not by default.
	MaxAge    int64
	HasMaxAge bool
}

// ParseControl reads the Cache-Control header values of a request
// (RFC 9111 section 5.2.1). Directives it does not know are ignored; a
// max-age that is not a number is too.
func ParseControl(values []string) Control {
	var c Control
	for _, v := range values {
		for d := range strings.SplitSeq(v, ",") {
			name, arg, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-cache":
				c.NoCache = true
			case "no-store":
				c.NoStore = true
			case "max-age":
				n, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(arg), `"`), 10, 64)
				if err == nil && n >= 0 && (!c.HasMaxAge || n < c.MaxAge) {
					c.MaxAge, c.HasMaxAge = n, true
				}
			}
		}
	}
	return c
}
