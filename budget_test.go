package chatgateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

// priced is a backend whose every reply used 5 prompt and 5 completion
// tokens: $0.01 at the tests' price of $1,000 per million tokens. A
// stream waits for hold, when set, before its end.
func priced(t *testing.T, hold <-chan struct{}) (*backend, *atomic.Int64) {
	var calls atomic.Int64
	be := newFakeBackend(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if !strings.Contains(upstreamBody(r), `"stream":true`) {
			writeJSON(w, 200, `{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}`)
			return
		}
		startSSE(w)
		sseEvent(w, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}`)
		if hold != nil {
			<-hold
		}
		sseEvent(w, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`)
		sseEvent(w, `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}`)
		sseEvent(w, "[DONE]")
	})
	return be, &calls
}

// awayFromMidnight waits out the last 30 s of a UTC day: a budget's
// period (a day, or a month, which ends at midnight too) must not end
// during a test that counts on it.
func awayFromMidnight(t *testing.T) {
	now := time.Now().UTC()
	if left := now.Truncate(24 * time.Hour).Add(24 * time.Hour).Sub(now); left < 30*time.Second {
		t.Logf("waiting %s for the day to end", left)
		time.Sleep(left + time.Second)
	}
}

// budgetRequest asks for at most 5 completion tokens: with its prompt
// estimate it reserves about $0.01.
const budgetRequest = `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"What is two plus two?"}]}`

// TestBudgetPerKey: a key with a budget for about 3 requests gets 3 and
// then 429 insufficient_quota until the day ends, in OpenAI's words and
// Anthropic's on the Messages route, the backend never seeing the
// refused ones; another key is not touched, and a model's budget counts
// every caller.
func TestBudgetPerKey(t *testing.T) {
	awayFromMidnight(t)
	be, calls := priced(t, nil)
	const bobKey = "sk-cg-bob-0123456789abcdefghijklmnopq"
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
	backend %s
	price m input 1000 output 1000
	auth {
		key %s {
			id alice
			budget 0.035/day
		}
		key %s {
			id bob
		}
	}
	limits {
		requests 1000/1m
	}
}`, be.URL, keys.Hash(aliceKey), keys.Hash(bobKey)))
	alice := []string{"Authorization", "Bearer " + aliceKey}
	for i := range 3 {
		if resp, body := g.post(t, budgetRequest, alice...); resp.StatusCode != 200 {
			t.Fatalf("request %d of a budget for 3: %d %s", i+1, resp.StatusCode, body)
		}
	}
	resp, body := g.post(t, budgetRequest, alice...)
	e := apiError(t, body)
	_, end := time.Now().UTC(), time.Now().UTC().Truncate(24*time.Hour).Add(24*time.Hour)
	retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != 429 || e["code"] != "insufficient_quota" || !strings.Contains(e["message"].(string), "budget for alice: Limit $0.035 per day, Used $0.03") || resp.Header.Get("X-Should-Retry") != "false" ||
		float64(retry) < time.Until(end).Seconds()-60 || float64(retry) > time.Until(end).Seconds()+60 {
		t.Fatalf("the 4th request: %d, Retry-After %q, %v: want 429 insufficient_quota until midnight UTC (%s)", resp.StatusCode, resp.Header.Get("Retry-After"), e, time.Until(end))
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("the backend saw %d requests, want the 3 admitted", n)
	}
	req, _ := http.NewRequest("POST", g.URL+"/v1/messages", strings.NewReader(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Api-Key", aliceKey)
	req.Header.Set("Anthropic-Version", "2023-06-01")
	resp, body = do(t, req)
	if resp.StatusCode != 429 || !strings.Contains(body, `"type":"error"`) || !strings.Contains(body, "budget for alice") {
		t.Fatalf("Messages over the budget: %d %s, want a 429 in Anthropic's shape", resp.StatusCode, body)
	}
	if resp, body := g.post(t, budgetRequest, "Authorization", "Bearer "+bobKey); resp.StatusCode != 200 {
		t.Fatalf("bob, with no budget: %d %s", resp.StatusCode, body)
	}
	if n := calls.Load(); n != 4 {
		t.Fatalf("the backend saw %d requests, want 4", n)
	}
}

// TestBudgetPerModel: a model's budget counts every caller's spend; a
// request whose largest cost is over the whole budget is refused as too
// large, at once.
func TestBudgetPerModel(t *testing.T) {
	awayFromMidnight(t)
	be, calls := priced(t, nil)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
	backend %s
	price m input 1000 output 1000
	limits {
		per {http.request.header.X-User}
		model m {
			budget 0.025/month
		}
	}
}`, be.URL))
	for i, user := range []string{"ann", "ben"} {
		if resp, body := g.post(t, budgetRequest, "X-User", user); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i+1, resp.StatusCode, body)
		}
	}
	if resp, body := g.post(t, budgetRequest, "X-User", "cat"); resp.StatusCode != 429 || apiError(t, body)["code"] != "insufficient_quota" {
		t.Fatalf("a third caller past the model's budget: %d %s", resp.StatusCode, body)
	}
	huge := strings.Replace(budgetRequest, `"max_tokens":5`, `"max_tokens":100000`, 1)
	if resp, body := g.post(t, huge, "X-User", "dan"); resp.StatusCode != 429 || !strings.Contains(body, "could cost up to $") || resp.Header.Get("x-should-retry") != "false" {
		t.Fatalf("a request that could cost more than the whole budget: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("the backend saw %d requests, want 2", n)
	}
}

// TestBudgetConcurrentStreams: 50 streams at once against a budget for
// about 10 at their reservation: no more are admitted than it covers,
// and the refused ones never reach the backend.
func TestBudgetConcurrentStreams(t *testing.T) {
	awayFromMidnight(t)
	hold := make(chan struct{})
	be, calls := priced(t, hold)
	g := newGateway(t, fmt.Sprintf(`chat_gateway {
	backend %s
	price m input 1000 output 1000
	limits {
		budget 1/day
	}
}`, be.URL))
	// Each reserves its prompt estimate and 100 completion tokens: more
	// than $0.10 and at most $0.11, so $1 covers 9 (each settles at $0.01
	// only once its stream ends, after all are in).
	stream := `{"model":"m","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	admitted, refused := streamBurst(t, 50, func() *http.Request { return g.request(stream) }, hold)
	if admitted != 9 || admitted+refused != 50 || calls.Load() != int64(admitted) {
		t.Fatalf("%d admitted, %d refused, the backend saw %d: want 9 admitted of 50 (each reserves $0.101 to $0.110 of $1), all the others refused before the backend", admitted, refused, calls.Load())
	}
}

// TestBudgetCluster: three gateway processes on one redis-server enforce
// one budget: together they admit what it covers, one more at most; and
// each one's usage report counts the requests all three served.
func TestBudgetCluster(t *testing.T) {
	awayFromMidnight(t)
	srv := redistest.Start(t)
	be, calls := priced(t, nil)
	var gws []*gateway
	var admins []string
	for range 3 {
		g, admin := startProcess(t, fmt.Sprintf(`chat_gateway {
	backend %s
	price m input 1000 output 1000
	auth {
		key %s {
			id alice
			budget 0.105/day
		}
	}
	limits {
		store redis %s {
			timeout 1s
		}
	}
}`, be.URL, keys.Hash(aliceKey), srv.Addr))
		gws, admins = append(gws, g), append(admins, admin)
	}
	// $0.105 covers 10 requests of $0.01 and a reservation of ~$0.01:
	// 10 admitted, or 11 when the last reservation fits.
	admitted := 0
	for i := range 30 {
		resp, body := gws[i%3].post(t, budgetRequest, "Authorization", "Bearer "+aliceKey)
		switch resp.StatusCode {
		case 200:
			admitted++
		case 429:
		default:
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if admitted < 10 || admitted > 11 || calls.Load() != int64(admitted) {
		t.Fatalf("three gateways admitted %d, the backend saw %d: want 10 or 11, one budget of $0.105 at $0.01 each", admitted, calls.Load())
	}
	// Settlements run after each reply, off its path: the last may land
	// a little after it.
	for _, admin := range admins {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var out strings.Builder
			if err := printUsage(&out, admin, "day", true); err != nil {
				t.Fatal(err)
			}
			var report usageReport
			err := json.Unmarshal([]byte(out.String()), &report)
			if err == nil && len(report.Rows) == 1 && report.Rows[0].Requests == int64(admitted) &&
				len(report.Budgets) == 1 && report.Budgets[0].UsedUSD >= float64(admitted)*0.01-1e-9 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the usage report of the gateway with admin %s: %s, %v; want alice's %d requests and her budget", admin, out.String(), err, admitted)
			}
		}
	}
}

// A budget with no price to count it in, or a prices_file that is not a
// price list, fails the config at load: it would limit nothing.
func TestBudgetNeedsPrices(t *testing.T) {
	dir := t.TempDir()
	notPrices, keysFile := filepath.Join(dir, "prices.json"), filepath.Join(dir, "keys.json")
	if err := os.WriteFile(notPrices, []byte(`{"gpt-4o":{"mode":"chat"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keysFile, []byte(`{"keys":[{"key":"`+keys.Hash(aliceKey)+`","id":"a","budget":"1/day"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for config, want := range map[string]string{
		"limits {\n budget 5/day\n }":                                     "a budget needs prices",
		"limits {\n model m {\n budget 5/day\n }\n }":                     "a budget needs prices",
		"auth {\n key " + aliceKey + " {\n budget 1/day\n }\n }\n limits": "a budget needs prices",
		"auth {\n keys_file " + keysFile + "\n }\n limits":                "auth: key 1: a budget needs prices",
		"prices_file " + notPrices:                                        "not LiteLLM's price list",
		"prices_file " + dir + "/missing.json":                            "prices_file: open",
	} {
		if err := provisionError(t, config); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", config, err, want)
		}
	}
}
