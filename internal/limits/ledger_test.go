package limits

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Each store's ledger adds up requests, tokens and cost by identity and
// model over the days asked for, and leaves out the days outside.
func TestLedger(t *testing.T) {
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			ledger := sc.open(t).(Ledger)
			ctx := context.Background()
			day1 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			day2 := day1.Add(24 * time.Hour)
			for _, r := range []struct {
				at time.Time
				u  Use
			}{
				{day1, Use{"alice", "gpt", 10, 5, 100}},
				{day2, Use{"alice", "gpt", 20, 7, 250}},
				{day2, Use{"alice", "claude", 1, 1, 3}},
				{day2, Use{"bob", "gpt", 4, 0, 0}},
				{day2.Add(24 * time.Hour), Use{"bob", "gpt", 1000, 1000, 1000}}, // the next day: outside
			} {
				ledger.Record(r.at, r.u)
			}
			rows, err := ledger.Usage(ctx, day1.Truncate(24*time.Hour), day2.Truncate(24*time.Hour).Add(24*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			want := []UsageRow{{"alice", "claude", 1, 1, 1, 3}, {"alice", "gpt", 2, 30, 12, 350}, {"bob", "gpt", 1, 4, 0, 0}}
			if fmt.Sprint(rows) != fmt.Sprint(want) {
				t.Fatalf("%+v, want %+v", rows, want)
			}
			if rows, _ := ledger.Usage(ctx, day2.Truncate(24*time.Hour), day2.Truncate(24*time.Hour).Add(24*time.Hour)); len(rows) != 3 || rows[1].Requests != 1 {
				t.Fatalf("day 2 alone: %+v, want alice's claude and gpt (1 request) and bob's", rows)
			}
		})
	}
}

// Past MaxLedgerRows pairs in a day, each store counts new pairs as the
// overflow pair, new identities and new models alike: memory is bounded,
// the totals kept.
func TestLedgerBounded(t *testing.T) {
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			ledger := sc.open(t).(Ledger)
			ctx := context.Background()
			for i := range MaxLedgerRows + 50 {
				u := Use{Identity: fmt.Sprint("ip-", i), Model: "m", Prompt: 1}
				if i%2 == 1 {
					u.Identity, u.Model = "alice", fmt.Sprint("model-", i) // new models count too
				}
				ledger.Record(t0, u)
			}
			rows, err := ledger.Usage(ctx, t0.Truncate(24*time.Hour), t0.Add(time.Hour))
			var total, over int64
			for _, r := range rows {
				total += r.Requests
				if r.Identity == LedgerOverflow && r.Model == LedgerOverflow {
					over = r.Requests
				}
			}
			if err != nil || len(rows) != MaxLedgerRows+1 || total != MaxLedgerRows+50 || over != 50 {
				t.Fatalf("%d rows, %d requests, %d over the cap, %v: want %d rows, every request counted, 50 over the cap", len(rows), total, over, err, MaxLedgerRows+1)
			}
		})
	}
}

// Levels reports a budget's state without reserving from it.
func TestLevels(t *testing.T) {
	eachStore(t, t0, func(t *testing.T, l *Limiter, _ *fakeClock) {
		ctx := context.Background()
		dims := []Dimension{BudgetOf("key:a", Budget{Micros: 1_000_000, Period: Day})}
		if _, err := l.Reserve(ctx, dims, Amount{Micros: 300_000}); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			st, err := l.Levels(ctx, dims)
			if err != nil || len(st) != 1 || st[0].Remaining != 700_000 {
				t.Fatalf("%+v, %v: want $0.70 left, each time", st, err)
			}
		}
		if _, err := l.Levels(ctx, []Dimension{RequestsPer("key:a", Rate{N: 1, Window: time.Second})}); err == nil {
			t.Fatal("the level of a bucket: no error")
		}
	})
}
