package limits

// Set is the limits of one scope as configured: an identity's defaults,
// a key's overrides, or a model's. A zero field means no such limit.
type Set struct {
	// Requests limits requests per window.
	Requests Rate
	// Tokens limits prompt plus completion tokens per window.
	Tokens Rate
	// Concurrent limits requests in flight.
	Concurrent int64
	// Quota limits tokens per calendar period.
	Quota Quota
	// Budget limits cost per calendar period.
	Budget Budget
}

// Override returns s with every limit o sets replaced by o's.
func (s Set) Override(o Set) Set {
	if o.Requests.N > 0 {
		s.Requests = o.Requests
	}
	if o.Tokens.N > 0 {
		s.Tokens = o.Tokens
	}
	if o.Concurrent > 0 {
		s.Concurrent = o.Concurrent
	}
	if o.Quota.N > 0 {
		s.Quota = o.Quota
	}
	if o.Budget.Micros > 0 {
		s.Budget = o.Budget
	}
	return s
}

// Dimensions appends the dimensions of s on scope to dims.
func (s Set) Dimensions(dims []Dimension, scope string) []Dimension {
	if s.Requests.N > 0 {
		dims = append(dims, RequestsPer(scope, s.Requests))
	}
	if s.Tokens.N > 0 {
		dims = append(dims, TokensPer(scope, s.Tokens))
	}
	if s.Concurrent > 0 {
		dims = append(dims, ConcurrentMax(scope, s.Concurrent))
	}
	if s.Quota.N > 0 {
		dims = append(dims, QuotaOf(scope, s.Quota))
	}
	if s.Budget.Micros > 0 {
		dims = append(dims, BudgetOf(scope, s.Budget))
	}
	return dims
}

// CapTokens returns tokens capped at the smallest tokens-per-window
// limit in dims, so that a lone request can always pass those; a quota
// does not cap it.
func CapTokens(dims []Dimension, tokens int64) int64 {
	for _, d := range dims {
		if d.Kind == KindTokens {
			tokens = min(tokens, d.Limit)
		}
	}
	return tokens
}
