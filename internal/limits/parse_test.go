package limits

import (
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Rate
	}{
		{"600/1m", Rate{600, time.Minute}},
		{"600/m", Rate{600, time.Minute}},
		{"10/s", Rate{10, time.Second}},
		{"5000/30s", Rate{5000, 30 * time.Second}},
		{"100/2h", Rate{100, 2 * time.Hour}},
		{"1000/d", Rate{1000, 24 * time.Hour}},
		{"1/366d", Rate{1, 366 * 24 * time.Hour}},
	} {
		got, err := ParseRate(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "600", "600/", "/1m", "0/1m", "-1/1m", "1.5/1m", "600/1x", "600/0m",
		"600/1.5m", "600/-1m", "600/1m30s", "600/367d", "99999999999999999999/1m", "600/ 1m", "+5/1m"} {
		if r, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", in, r)
		} else if !strings.HasPrefix(err.Error(), "limits: rate ") {
			t.Errorf("ParseRate(%q) error %q does not say what it parsed", in, err)
		}
	}
}

func TestParseBudget(t *testing.T) {
	for in, want := range map[string]Budget{
		"25/month":     {25_000_000, Month},
		"2.50/day":     {2_500_000, Day},
		"$100/week":    {100_000_000, Week},
		"0.000001/day": {1, Day},
		".5/day":       {500_000, Day},
	} {
		got, err := ParseBudget(in)
		if err != nil || got != want {
			t.Errorf("ParseBudget(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "25", "0/day", "-1/day", "1.2345678/day", "1e3/day", "x/day", "5/year", "5/Day", "1,000/day", "/day", "./day", "1125899906.9/day"} {
		if b, err := ParseBudget(in); err == nil {
			t.Errorf("ParseBudget(%q) = %v, want an error", in, b)
		}
	}
	if s := (Budget{2_500_000, Day}).String(); s != "2.5/day" {
		t.Errorf("String() = %q, want 2.5/day", s)
	}
}

func TestParseQuota(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Quota
	}{
		{"1000/day", Quota{1000, Day}},
		{"5/week", Quota{5, Week}},
		{"1000000/month", Quota{1000000, Month}},
	} {
		got, err := ParseQuota(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseQuota(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "1000", "1000/d", "1000/year", "0/day", "x/day", "1000/Day"} {
		if q, err := ParseQuota(in); err == nil {
			t.Errorf("ParseQuota(%q) = %v, want an error", in, q)
		}
	}
}

func TestParseCount(t *testing.T) {
	if n, err := ParseCount("8"); err != nil || n != 8 {
		t.Errorf("ParseCount(8) = %d, %v; want 8", n, err)
	}
	for _, in := range []string{"", "0", "-2", "two", "8/1m"} {
		if _, err := ParseCount(in); err == nil {
			t.Errorf("ParseCount(%q) succeeded", in)
		}
	}
}

func TestPeriodBounds(t *testing.T) {
	at := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		p          Period
		t          string
		start, end string
	}{
		{Day, "2026-11-26T23:59:59Z", "2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"},
		{Day, "2026-11-27T01:00:00+02:00", "2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"},
		{Week, "2026-11-26T12:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"}, // Thursday
		{Week, "2026-11-29T23:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"}, // Sunday
		{Week, "2026-11-30T00:00:00Z", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"}, // Monday
		{Month, "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{Month, "2028-02-29T10:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
	} {
		s, e := c.p.Bounds(at(c.t))
		if !s.Equal(at(c.start)) || !e.Equal(at(c.end)) {
			t.Errorf("%s.Bounds(%s) = %s, %s; want %s, %s", c.p, c.t, s, e, c.start, c.end)
		}
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"600/1m", "10/s", "1/366d", "0/1m", "5/30s", "1/1x", "//", "9/99999999999999999d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			return
		}
		if r.N < 1 || r.N > maxAmount || r.Window < time.Second || r.Window > maxWindow {
			t.Fatalf("ParseRate(%q) = %+v out of range", s, r)
		}
		if back, err := ParseRate(r.String()); err != nil || back != r {
			t.Fatalf("ParseRate(%q) = %v, but %q parses as %v, %v", s, r, r.String(), back, err)
		}
		if err := RequestsPer("s", r).validate(); err != nil {
			t.Fatalf("ParseRate(%q) = %v, which the limiter refuses: %v", s, r, err)
		}
	})
}

func FuzzParseQuota(f *testing.F) {
	for _, s := range []string{"1000/day", "1/week", "7/month", "0/day", "1/year", "1/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuota(s)
		if err != nil {
			return
		}
		if q.N < 1 || q.N > maxAmount || q.Period < Day || q.Period > Month {
			t.Fatalf("ParseQuota(%q) = %+v out of range", s, q)
		}
		if back, err := ParseQuota(q.String()); err != nil || back != q {
			t.Fatalf("ParseQuota(%q) = %v, but %q parses as %v, %v", s, q, q.String(), back, err)
		}
	})
}

// FuzzParseBudget: a budget parsed is positive, in range, and reads back
// the same from its own text.
func FuzzParseBudget(f *testing.F) {
	for _, s := range []string{"25/month", "2.50/day", "$100/week", "0.000001/day", ".5/day", "1e3/day", "-1/day"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBudget(s)
		if err != nil {
			return
		}
		if b.Micros <= 0 || b.Micros > maxAmount || b.Period < Day || b.Period > Month {
			t.Fatalf("%q: %+v out of range", s, b)
		}
		again, err := ParseBudget(b.String())
		if err != nil || again != b {
			t.Fatalf("%q: %+v reads back from %q as %+v, %v", s, b, b.String(), again, err)
		}
	})
}
