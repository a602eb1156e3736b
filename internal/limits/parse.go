package limits

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// maxAmount bounds every configured amount so that the bucket arithmetic,
// done in float64 in Go and in Redis's Lua alike, stays exact.
const maxAmount = 1 << 50

// maxWindow bounds a rate window: a year is far beyond any sensible limit.
const maxWindow = 366 * 24 * time.Hour

// Rate is a limit of N units per sliding window, refilled continuously.
type Rate struct {
	// N is the bucket's capacity: the most units admitted at once.
	N int64
	// Window is the time the bucket takes to refill from empty to N.
	Window time.Duration
}

// ParseRate parses "<n>/<window>": n a positive integer and window an
// optional positive integer followed by one of s, m, h, d ("600/1m",
// "10/s", "5000/30s", "100/2h", "1000/d").
func ParseRate(s string) (Rate, error) {
	n, unit, err := splitAmount(s)
	if err != nil {
		return Rate{}, fmt.Errorf("limits: rate %q: %w (want <n>/<window> such as 600/1m)", s, err)
	}
	w, err := parseWindow(unit)
	if err != nil {
		return Rate{}, fmt.Errorf("limits: rate %q: %w (want <n>/<window> such as 600/1m)", s, err)
	}
	return Rate{N: n, Window: w}, nil
}

// String formats r as ParseRate reads it.
func (r Rate) String() string {
	return strconv.FormatInt(r.N, 10) + "/" + formatWindow(r.Window)
}

// Period is a UTC calendar period over which a quota is counted.
type Period uint8

// The quota periods. Weeks are ISO weeks, starting on Monday.
const (
	Day Period = iota + 1
	Week
	Month
)

// String returns "day", "week" or "month".
func (p Period) String() string {
	switch p {
	case Day:
		return "day"
	case Week:
		return "week"
	case Month:
		return "month"
	}
	return "period(" + strconv.Itoa(int(p)) + ")"
}

// Bounds returns the UTC start and end of the period holding t.
func (p Period) Bounds(t time.Time) (start, end time.Time) {
	t = t.UTC()
	y, m, d := t.Date()
	switch p {
	case Week:
		back := (int(t.Weekday()) + 6) % 7 // days since Monday
		start = time.Date(y, m, d-back, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 7)
	case Month:
		start = time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0)
	default:
		start = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	}
}

// Quota is a budget of N tokens per UTC calendar period. It does not
// refill: it starts afresh at each period boundary.
type Quota struct {
	// N is the number of tokens the period allows.
	N int64
	// Period is the calendar period the budget covers.
	Period Period
}

// ParseQuota parses "<n>/<day|week|month>" ("1000000/month").
func ParseQuota(s string) (Quota, error) {
	n, unit, err := splitAmount(s)
	if err != nil {
		return Quota{}, fmt.Errorf("limits: quota %q: %w (want <n>/<day|week|month> such as 1000000/month)", s, err)
	}
	p, err := ParsePeriod(unit)
	if err != nil {
		return Quota{}, fmt.Errorf("limits: quota %q: %w", s, err)
	}
	return Quota{N: n, Period: p}, nil
}

// ParsePeriod reads day, week or month.
func ParsePeriod(s string) (Period, error) {
	switch s {
	case "day":
		return Day, nil
	case "week":
		return Week, nil
	case "month":
		return Month, nil
	}
	return 0, errors.New("period must be day, week or month")
}

// String formats q as ParseQuota reads it.
func (q Quota) String() string {
	return strconv.FormatInt(q.N, 10) + "/" + q.Period.String()
}

// Budget is a budget of money per UTC calendar period, in millionths of
// a US dollar. Like a quota, it starts afresh at each period boundary.
type Budget struct {
	// Micros is what the period allows, in millionths of a dollar.
	Micros int64
	// Period is the calendar period the budget covers.
	Period Period
}

// ParseBudget parses "<USD>/<day|week|month>" ("25/month", "2.50/day",
// "$100/week"): an amount of dollars with at most six decimals.
func ParseBudget(s string) (Budget, error) {
	const want = "want <USD>/<day|week|month> such as 25/month or 2.50/day"
	num, unit, ok := strings.Cut(strings.TrimPrefix(s, "$"), "/")
	if !ok {
		return Budget{}, fmt.Errorf("limits: budget %q: missing '/' (%s)", s, want)
	}
	micros, err := parseMicros(num)
	if err != nil {
		return Budget{}, fmt.Errorf("limits: budget %q: %w (%s)", s, err, want)
	}
	p, err := ParsePeriod(unit)
	if err != nil {
		return Budget{}, fmt.Errorf("limits: budget %q: %w", s, err)
	}
	return Budget{Micros: micros, Period: p}, nil
}

// String formats b as ParseBudget reads it.
func (b Budget) String() string {
	usd := strconv.FormatFloat(float64(b.Micros)/1e6, 'f', -1, 64)
	return usd + "/" + b.Period.String()
}

// parseMicros reads a positive decimal amount of dollars, at most six
// decimals, as millionths.
func parseMicros(s string) (int64, error) {
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" && frac == "" || len(frac) > 6 || strings.ContainsAny(whole+frac, "+-_ ") {
		return 0, errors.New("not an amount of dollars with at most six decimals")
	}
	n := int64(0)
	if whole != "" {
		w, err := strconv.ParseInt(whole, 10, 64)
		if err != nil || w > maxAmount/1_000_000 {
			return 0, errors.New("not an amount of dollars with at most six decimals")
		}
		n = w * 1e6
	}
	if frac != "" {
		f, err := strconv.ParseInt(frac+strings.Repeat("0", 6-len(frac)), 10, 64)
		if err != nil {
			return 0, errors.New("not an amount of dollars with at most six decimals")
		}
		n += f
	}
	if n <= 0 || n > maxAmount {
		return 0, errors.New("the amount must be more than 0 and at most 1125899906")
	}
	return n, nil
}

// ParseCount parses the positive integer of a concurrency limit.
func ParseCount(s string) (int64, error) {
	n, err := parsePositive(s)
	if err != nil {
		return 0, fmt.Errorf("limits: count %q: %w", s, err)
	}
	return n, nil
}

// splitAmount splits "<n>/<unit>" and parses n.
func splitAmount(s string) (int64, string, error) {
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return 0, "", errors.New("missing '/'")
	}
	n, err := parsePositive(num)
	if err != nil {
		return 0, "", err
	}
	return n, unit, nil
}

// parsePositive parses a decimal integer in [1, maxAmount].
func parsePositive(s string) (int64, error) {
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, errors.New("amount must be a positive integer")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > maxAmount {
		return 0, fmt.Errorf("amount must be at most %d", int64(maxAmount))
	}
	if n == 0 {
		return 0, errors.New("amount must be positive")
	}
	return n, nil
}

// windowUnits are the units a rate window accepts.
var windowUnits = map[byte]time.Duration{'s': time.Second, 'm': time.Minute, 'h': time.Hour, 'd': 24 * time.Hour}

// parseWindow parses "[k]<s|m|h|d>".
func parseWindow(s string) (time.Duration, error) {
	if s == "" {
		return 0, errors.New("missing window")
	}
	unit, ok := windowUnits[s[len(s)-1]]
	if !ok {
		return 0, errors.New("window unit must be s, m, h or d")
	}
	k := int64(1)
	if len(s) > 1 {
		var err error
		if k, err = parsePositive(s[:len(s)-1]); err != nil {
			return 0, errors.New("window must be a positive integer and a unit")
		}
	}
	if k > int64(maxWindow/unit) {
		return 0, fmt.Errorf("window must be at most %s", formatWindow(maxWindow))
	}
	return time.Duration(k) * unit, nil
}

// formatWindow writes w in the largest unit that divides it.
func formatWindow(w time.Duration) string {
	for _, u := range []struct {
		d time.Duration
		c string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}} {
		if w%u.d == 0 {
			return strconv.FormatInt(int64(w/u.d), 10) + u.c
		}
	}
	return strconv.FormatInt(int64(w/time.Second), 10) + "s"
}
