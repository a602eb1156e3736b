package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
	"github.com/chatgateway/caddy-chat-gateway/internal/redistest"
)

func skipStream(name string) bool { return name == "stream" || name == "stream_options" }

// Requests that differ in what a backend reads alike (member order,
// whitespace, escapes, number spellings, skipped members) share a
// canonical form; requests that differ in anything else do not.
func TestCanonical(t *testing.T) {
	same := []string{
		`{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}`,
		`{ "messages" : [ { "content" : "hi", "role" : "user" } ], "temperature" : 0.0, "model" : "m" }`,
		`{"model":"m","temperature":-0,"messages":[{"role":"user","content":"\u0068i"}],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","temperature":0e5,"messages":[{"role":"user","content":"h\u0069"}]}`,
	}
	want, err := canonicalOf([]byte(same[0]), skipStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range same[1:] {
		if got, err := canonicalOf([]byte(s), skipStream); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %s, %v, want %s", s, got, err, want)
		}
	}
	for _, s := range []string{
		`{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}]}`,
		`{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"seed":1}`,
		`{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"},{"role":"user","content":"hi"}]}`,
		`{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi","name":"a"}]}`,
	} {
		if got, _ := canonicalOf([]byte(s), skipStream); bytes.Equal(got, want) {
			t.Errorf("%s has the canonical form of %s", s, same[0])
		}
	}
	// Integers keep their literal: two seeds past float64's precision
	// stay apart.
	a, _ := canonicalOf([]byte(`{"seed":18446744073709551617}`), nil)
	b, _ := canonicalOf([]byte(`{"seed":18446744073709551618}`), nil)
	if bytes.Equal(a, b) {
		t.Errorf("two large seeds share the canonical form %s", a)
	}
	// A lone surrogate, which decoders read differently, keeps its
	// escape; a pair is its character, escaped or not.
	lone, _ := canonicalOf([]byte(`{"a":"\uD800"}`), nil)
	replacement, _ := canonicalOf([]byte(`{"a":"\ufffd"}`), nil)
	pair, _ := canonicalOf([]byte(`{"a":"\ud83d\uDE00"}`), nil)
	if string(lone) != `{"a":"\ud800"}` || bytes.Equal(lone, replacement) || string(pair) != `{"a":"😀"}` {
		t.Errorf("lone surrogate %s, U+FFFD %s, a pair %s", lone, replacement, pair)
	}
	// Names that differ only in case keep their order: Go's decoders match
	// either to one field and keep the last.
	for _, pair := range [][2]string{{`{"top_k":1,"Top_k":50}`, `{"Top_k":50,"top_k":1}`}, {`{"k":1,"\u212a":2}`, `{"\u212a":2,"k":1}`}} {
		a, _ := canonicalOf([]byte(pair[0]), nil)
		b, _ := canonicalOf([]byte(pair[1]), nil)
		if bytes.Equal(a, b) {
			t.Errorf("%s and %s share the canonical form %s", pair[0], pair[1], a)
		}
	}
	// Objects out of order at every level: each written in order once.
	nested := strings.Repeat(`{"z":0,"a":`, 100) + `"y"` + strings.Repeat("}", 100)
	if got, err := canonicalOf([]byte(nested), nil); err != nil || string(got) != strings.Repeat(`{"a":`, 100)+`"y"`+strings.Repeat(`,"z":0}`, 100) {
		t.Errorf("100 levels out of order: %.80s..., %v", got, err)
	}
	// Names a decoder reads as U+FFFD keep their order too.
	if a, _ := canonicalOf([]byte(`{"\ud800":1,"\ufffd":2}`), nil); bytes.Equal(a, must(canonicalOf([]byte(`{"\ufffd":2,"\ud800":1}`), nil))) {
		t.Errorf("a lone surrogate and U+FFFD as names, swapped, share the canonical form %s", a)
	}
	deep := strings.Repeat(`{"a":`, maxDepth) + "1" + strings.Repeat("}", maxDepth)
	if _, err := canonicalOf([]byte(deep), nil); err != nil {
		t.Errorf("%d levels: %v, want a canonical form", maxDepth, err)
	}
	if _, err := canonicalOf([]byte(`{"a":`+deep+`}`), nil); !errors.Is(err, errTooDeep) {
		t.Errorf("%d levels: %v, want %v", maxDepth+1, err, errTooDeep)
	}
	for _, bad := range []string{`[1]`, `null`, `{"a":`, `"s"`, `{"a":1e400}`, `{"a":01}`, `{"a":1.}`, `{"a":"\x"}`, `{"a":[1,]}`, `{"a":1,}`, `{"a" 1}`, `{"a":tru}`, `{} {}`} {
		if _, err := canonicalOf([]byte(bad), nil); err == nil {
			t.Errorf("%s: no error, want one: only an object has a canonical form", bad)
		}
	}
}

// FuzzCanonical: the canonical form is valid JSON, its own canonical
// form, and decodes to what the body does, numbers as float64s, skipped
// members aside; RequestKey, whose canonicalizers are reused from one
// body to the next, digests it.
func FuzzCanonical(f *testing.F) {
	f.Add(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`)
	f.Add(`{"a":1.50,"b":[1e2,-0,{"c":"\u00e9\ud83d\ude00"}],"d":null,"e":true}`)
	f.Fuzz(func(t *testing.T, body string) {
		c, err := canonicalOf([]byte(body), skipStream)
		if err != nil {
			var v map[string]any
			if json.Unmarshal([]byte(body), &v) == nil && !errors.Is(err, errTooDeep) && !errors.Is(err, errNotUTF8) {
				t.Fatalf("%s decodes to %v, yet has no canonical form: %v", body, v, err)
			}
			return
		}
		again, err := canonicalOf(c, skipStream)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("canonical %s, again %s, %v: want the same", c, again, err)
		}
		if key, err := RequestKey([]byte(body), skipStream, []byte("scope")); err != nil || key != Key([]byte("scope"), c) {
			t.Fatalf("RequestKey of %s: %s, %v; want the digest of %s", body, key, err, c)
		}
		var orig, canon map[string]any
		if json.Unmarshal([]byte(body), &orig) != nil || json.Unmarshal(c, &canon) != nil {
			t.Fatalf("%s or its canonical form %s does not decode", body, c)
		}
		delete(orig, "stream")
		delete(orig, "stream_options")
		if !reflect.DeepEqual(orig, canon) {
			t.Fatalf("%s decodes to %v, its canonical form %s to %v", body, orig, c, canon)
		}
	})
}

func TestKey(t *testing.T) {
	if Key([]byte("ab"), []byte("c")) == Key([]byte("a"), []byte("bc")) {
		t.Fatal("fields cut elsewhere share a key")
	}
	if k := Key([]byte("scope"), []byte("x")); k != Key([]byte("scope"), []byte("x")) || len(k) != 64 {
		t.Fatalf("key %q: want 64 hex digits, the same each time", k)
	}
}

func TestParseControl(t *testing.T) {
	for header, want := range map[string]Control{
		"":                                {},
		"no-cache":                        {NoCache: true},
		"No-Store, max-age=60":            {NoStore: true, MaxAge: 60, HasMaxAge: true},
		`max-age="30", max-age=10`:        {MaxAge: 10, HasMaxAge: true},
		"max-age=0":                       {HasMaxAge: true},
		"max-age=soon, private, no-cache": {NoCache: true},
		"max-age=-5":                      {},
	} {
		if got := ParseControl([]string{header}); got != want {
			t.Errorf("%q: %+v, want %+v", header, got, want)
		}
	}
}

// The memory store keeps to its capacity in bytes, forgetting the least
// recently used first, serves no expired entry, and finds the first of
// several keys.
func TestMemory(t *testing.T) {
	m := NewMemory(10_000)
	now := time.Unix(1_000_000, 0)
	m.now = func() time.Time { return now }
	entry := func(size int) Entry {
		return Entry{ContentType: "application/json", Body: bytes.Repeat([]byte("x"), size), Stored: now, Expires: now.Add(time.Minute)}
	}
	ctx := context.Background()
	for i := range 100 {
		if err := m.Set(ctx, Item{fmt.Sprint("k", i), entry(500)}); err != nil {
			t.Fatal(err)
		}
		if got, _ := m.Get(ctx, "k0"); got[0] == nil { // used each time: kept
			t.Fatalf("k0, used after each entry, gone after entry %d", i)
		}
	}
	size, entries, evictions := m.Stats()
	if size > 10_000 || entries == 0 || evictions == 0 {
		t.Fatalf("%d bytes in %d entries, %d evicted, want at most 10,000 bytes and evictions", size, entries, evictions)
	}
	if got, _ := m.Get(ctx, "k1", "k99"); got[0] != nil || got[1] == nil {
		t.Fatalf("k1 (least recent) and k99 (latest): %v, want only k99", got)
	}
	if size+int64(len("k100"))+500+500/16+16+entryOverhead <= 10_000 {
		t.Fatalf("%d bytes held: room for another entry was left unused", size)
	}
	m.Set(ctx, Item{"huge", entry(5_000)})
	if got, _ := m.Get(ctx, "huge", "k99"); got[0] != nil || got[1] == nil {
		t.Fatalf("an entry of half the capacity: %v, want it left out and k99 kept", got)
	}
	now = now.Add(2 * time.Minute)
	if got, _ := m.Get(ctx, "k99"); got[0] != nil {
		t.Fatal("an expired entry was served")
	}
}

// The Redis store keeps an entry until it expires and finds the first
// of several keys in one call; an entry it did not write is an error.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := limits.NewRedisClient(limits.RedisOptions{Address: srv.Addr, Timeout: time.Second})
	r := NewRedis(client, "test:cache:", 1<<20)
	defer r.Destruct()
	ctx := context.Background()
	now := time.Now().Truncate(time.Millisecond)
	e := Entry{ContentType: "text/event-stream", Body: []byte("data: {}\n\ndata: [DONE]\n\n"), Stored: now, Expires: now.Add(time.Minute)}
	if err := r.Set(ctx, Item{"b", e}, Item{"big", Entry{Body: make([]byte, 2<<20), Expires: now.Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	got, err := r.Get(ctx, "a", "b", "big")
	if err != nil || got[0] != nil || got[2] != nil || got[1] == nil {
		t.Fatalf("%v, %v: want b only (big is past maxEntry)", got, err)
	}
	if b := got[1]; b.ContentType != e.ContentType || !bytes.Equal(b.Body, e.Body) || !b.Stored.Equal(e.Stored) || !b.Expires.Equal(e.Expires) {
		t.Fatalf("%+v, want %+v", b, e)
	}
	if err := r.Set(ctx, Item{"short", Entry{Body: []byte("x"), Expires: time.Now().Add(200 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if got, _ := r.Get(ctx, "short"); got[0] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an entry outlived its expiry in Redis")
		}
	}
	client.Set(ctx, "test:cache:alien", "not ours", time.Minute)
	if _, err := r.Get(ctx, "alien"); err == nil || !strings.Contains(err.Error(), "did not write") {
		t.Fatalf("a value another program wrote: %v, want an error", err)
	}
}

// BenchmarkMemoryDistinct stores b.N distinct replies of 600 bytes in a
// 32 MiB memory store, as distinct requests do, and reports the bytes
// it counts and the heap in use after a collection, beyond what was in
// use before: run with -benchtime 1000000x for the 1,000,000
// distinct requests.
func BenchmarkMemoryDistinct(b *testing.B) {
	const capacity = 32 << 20
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := NewMemory(capacity)
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), 600)
	expires := time.Now().Add(time.Hour)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		key := Key([]byte("scope"), strconv.AppendInt(nil, int64(n), 10))
		n++
		if err := m.Set(ctx, Item{key, Entry{ContentType: "application/json", Body: bytes.Clone(body), Stored: expires, Expires: expires}}); err != nil {
			b.Fatal(err)
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	held, entries, _ := m.Stats()
	if held > capacity {
		b.Fatalf("%d bytes held, past the capacity of %d", held, capacity)
	}
	b.ReportMetric(float64(held)/(1<<20), "held-MiB")
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/(1<<20), "heap-MiB")
	b.ReportMetric(float64(entries), "entries")
	runtime.KeepAlive(m)
}

// must is v, or a panic for a test's own setup.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// BenchmarkCanonicalCostly: a request out of order at 100 levels around
// a large string, and an object of many names sharing a long prefix:
// the canonical form costs about as much as reading them.
func BenchmarkCanonicalCostly(b *testing.B) {
	nested := []byte(strings.Repeat(`{"z":0,"a":`, 100) + `"` + strings.Repeat("y", 1<<20) + `"` + strings.Repeat("}", 100))
	var names strings.Builder
	names.WriteString("{")
	for i := range 4000 {
		if i > 0 {
			names.WriteString(",")
		}
		fmt.Fprintf(&names, `"k%s%d":0`, strings.Repeat("k", 1000), 4000-i)
	}
	names.WriteString("}")
	for _, tc := range []struct {
		name string
		body []byte
	}{{"nested", nested}, {"names", []byte(names.String())}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.body)))
			for b.Loop() {
				if _, err := canonicalOf(tc.body, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The key of an ASCII name, read fast, is the key the Unicode path
// gives: the least rune of each letter's folding orbit.
func TestFoldKeyASCII(t *testing.T) {
	for c := rune(0x20); c < 0x7f; c++ {
		if c == '\\' || c == '"' {
			continue
		}
		least := c
		for f := unicode.SimpleFold(c); f != c; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		if got := appendFoldKey(nil, []byte(string(c))); string(got) != string(least) {
			t.Errorf("%q: key %q, want %q", c, got, least)
		}
	}
	if a, b := appendFoldKey(nil, []byte("K")), appendFoldKey(nil, []byte("\u212a")); !bytes.Equal(a, b) { // the Kelvin sign
		t.Errorf("K and the Kelvin sign: keys %q and %q, want one", a, b)
	}
}

// BenchmarkRequestKey is the key of a chat request: one 4 KiB message
// (the bench's cache figures), and a conversation of 20 turns.
func BenchmarkRequestKey(b *testing.B) {
	lorem := strings.Repeat("lorem ipsum dolor sit amet ", 150)
	var turns strings.Builder
	for i := range 20 {
		role := []string{"user", "assistant"}[i%2]
		fmt.Fprintf(&turns, `,{"role":%q,"content":"%d %s"}`, role, i, lorem[:800])
	}
	for _, tc := range []struct{ name, body string }{
		{"4KiB", `{"model":"m","temperature":0,"stream":false,"messages":[{"role":"user","content":"` + lorem[:4000] + `"}]}`},
		{"20turns", `{"model":"m","temperature":0,"messages":[{"role":"system","content":"You answer."}` + turns.String() + `],"max_tokens":200}`},
	} {
		body := []byte(tc.body)
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := RequestKey(body, skipStream, []byte("scope"), []byte("chat_completions")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// canonicalOf is body's canonical form, as RequestKey digests it:
// through a canonicalizer of the pool, as the last test left it.
func canonicalOf(body []byte, skip func(name string) bool) ([]byte, error) {
	c := canonicalizers.Get().(*canonicalizer)
	defer c.release()
	out, err := c.canonical(body, skip)
	return bytes.Clone(out), err
}
