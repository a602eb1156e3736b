package chatgateway

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
)

// TestUsageReport: the admin API's usage report has each identity's
// requests, tokens and cost by model and what is left of each budget,
// and `caddy chat-gateway usage` prints them.
func TestUsageReport(t *testing.T) {
	awayFromMidnight(t)
	be, _ := priced(t, nil)
	const bobKey = "sk-cg-bob-0123456789abcdefghijklmnopq"
	// The memory store outlives a config: ids of this run's own.
	alice, bob := "ur-alice-"+strconv.FormatInt(time.Now().UnixNano(), 36), "ur-bob-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
	backend %s {
		models m
		alias cheap m-mini
	}
	price m input 1000 output 1000
	price m-mini input 100 output 100
	auth {
		key %s {
			id %s
			budget 0.5/day
		}
		key %s {
			id %s
		}
	}
	limits {
		budget 2/month
	}
}`, be.URL, keys.Hash(aliceKey), alice, keys.Hash(bobKey), bob))
	asAlice, asBob := []string{"Authorization", "Bearer " + aliceKey}, []string{"Authorization", "Bearer " + bobKey}
	for _, r := range []struct {
		who   []string
		model string
	}{{asAlice, "m"}, {asAlice, "m"}, {asAlice, "cheap"}, {asBob, "m"}} {
		if resp, body := g.post(t, strings.Replace(budgetRequest, `"model":"m"`, `"model":"`+r.model+`"`, 1), r.who...); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	// Each request used 5 + 5 tokens: $0.01 at m's price, $0.001 at
	// m-mini's, the price of the model an alias names (its row is the
	// name the client asked for, as the model's limits count it). A
	// request is recorded as its handler ends, which may be just after
	// its reply reached the client. Other tests' identities share the
	// store: only this run's are compared.
	want := map[string]string{alice + " cheap": "1 5 5 0.0010", alice + " m": "2 10 10 0.0200", bob + " m": "1 5 5 0.0100"}
	var report usageReport
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, body := do(t, mustRequest("GET", fmt.Sprintf("http://localhost:%d/chat-gateway/usage?period=day", adminPort)))
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &report) != nil {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		got := map[string]string{}
		for _, r := range report.Rows {
			if r.Identity == alice || r.Identity == bob {
				got[r.Identity+" "+r.Model] = fmt.Sprintf("%d %d %d %.4f", r.Requests, r.Prompt, r.Completion, r.CostUSD)
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) && report.Period == "day" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rows %v, want %v", got, want)
		}
	}
	budgets := map[string]budgetState{}
	for _, b := range report.Budgets {
		budgets[b.Scope] = b
	}
	if a := budgets[alice]; a.Period != "day" || a.LimitUSD != 0.5 || math.Abs(a.UsedUSD-0.021) > 1e-9 || math.Abs(a.LeftUSD-0.479) > 1e-9 {
		t.Errorf("ur-alice's budget: %+v, want $0.021 of $0.50 a day used", a)
	}
	if b := budgets[bob]; b.Period != "month" || b.LimitUSD != 2 || math.Abs(b.UsedUSD-0.01) > 1e-9 {
		t.Errorf("ur-bob's budget: %+v, want $0.01 of the default $2 a month", b)
	}
	var out strings.Builder
	if err := printUsage(&out, fmt.Sprintf("localhost:%d", adminPort), "day", false); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(out.String()) {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	for _, line := range []string{alice + " cheap 1 5 5 0.001000", alice + " day 0.500000 0.021000 0.479000 " + budgets[alice].Resets.Format(time.RFC3339)} {
		if !slices.Contains(lines, line) {
			t.Errorf("the table has no line %q:\n%s", line, out.String())
		}
	}
	if resp, body := do(t, mustRequest("GET", fmt.Sprintf("http://localhost:%d/chat-gateway/usage?period=year", adminPort))); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "want day, week or month") {
		t.Errorf("period=year: %d %s, want 400", resp.StatusCode, body)
	}
}
