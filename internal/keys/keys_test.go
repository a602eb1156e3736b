package keys

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

const plain = "sk-cg-plain-test-key-0123456789"

func TestBuildAndLookup(t *testing.T) {
	other := New()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	s, err := Build([]Entry{
		{Key: plain, ID: "alice", Models: []string{"gpt-4o*", "llama"}},
		{Key: Hash(other)},
		{Key: Hash("sk-cg-expired-key-0123456789"), ID: "old", Expires: now.Add(-time.Second)},
		{Key: Hash("sk-cg-disabled-key-0123456789"), ID: "off", Disabled: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 4 {
		t.Fatalf("%d keys, want 4", s.Len())
	}
	k, ok := s.Lookup(plain)
	if !ok || k.ID != "alice" || !k.Valid(now) {
		t.Fatalf("plain key: %+v %v, want alice, found, valid", k, ok)
	}
	for model, want := range map[string]bool{"gpt-4o": true, "gpt-4o-mini": true, "llama": true, "llama-2": false, "gpt-3.5": false, "": false} {
		if k.Allowed(model) != want {
			t.Errorf("Allowed(%q) = %v, want %v", model, !want, want)
		}
	}
	k, ok = s.Lookup(other)
	if !ok || k.ID != Hash(other)[len(hashPrefix):len(hashPrefix)+8] || !k.Allowed("anything") {
		t.Fatalf("hashed key: %+v %v, want found, id %s, any model allowed", k, ok, Hash(other)[len(hashPrefix):len(hashPrefix)+8])
	}
	if k, ok := s.Lookup("sk-cg-expired-key-0123456789"); !ok || k.Valid(now) || !k.Valid(now.Add(-time.Hour)) {
		t.Fatal("expiry: want the expired key found, invalid now, valid an hour before")
	}
	if k, ok := s.Lookup("sk-cg-disabled-key-0123456789"); !ok || k.Valid(now) {
		t.Fatal("disabled: want the disabled key found and invalid")
	}
	for _, bad := range []string{"", plain + "x", plain[:len(plain)-1], Hash(plain)} {
		if _, ok := s.Lookup(bad); ok {
			t.Errorf("Lookup(%q) found a key", bad)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		entries []Entry
		want    string
	}{
		{[]Entry{{Key: ""}}, "key 1: empty key"},
		{[]Entry{{Key: "short", ID: "bob"}}, "key 1 (bob): a plain key needs at least 16"},
		{[]Entry{{Key: "sha256:abc"}}, "64 hex digits"},
		{[]Entry{{Key: "sha256:" + strings.Repeat("zz", 32)}}, "64 hex digits"},
		// A hash pasted without its prefix, named as a 401 names a key.
		{[]Entry{{Key: "06e1" + strings.Repeat("ab", 28) + "7168", ID: "team"}}, "key 1 (team): 64 hex digits look like a key's SHA-256: did you mean sha256:06e1****7168?"},
		{[]Entry{{Key: plain}, {Key: Hash(plain)}}, "key 2: the same key is configured twice"},
		{[]Entry{{Key: plain, Models: []string{""}}}, "empty model pattern"},
	} {
		_, err := Build(tc.entries)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.entries, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), plain) {
			t.Errorf("error %v shows the key", err)
		}
	}
}

func TestModels(t *testing.T) {
	m, err := CompileModels([]string{"gpt-4o", "llama-*-8b", "*-instruct", "qwen*"})
	if err != nil {
		t.Fatal(err)
	}
	for model, want := range map[string]bool{
		"gpt-4o": true, "gpt-4o-mini": false, "llama-3.1-8b": true, "llama--8b": true, "llama-8b": false,
		"mistral-instruct": true, "-instruct": true, "qwen": true, "qwen2.5": true, "xqwen": false, "": false,
	} {
		if m.Match(model) != want {
			t.Errorf("Match(%q) = %v, want %v", model, !want, want)
		}
	}
	all, _ := CompileModels([]string{"**"})
	if !all.Match("") || !all.Match("x") {
		t.Fatal("* matches everything")
	}
}

// FuzzGlob checks globMatch against a reference: a pattern matches a
// string it was filled in to make, and the compiled form agrees with a
// backtracking matcher.
func FuzzGlob(f *testing.F) {
	f.Add("a*b*c", "axxbyyc")
	f.Add("*a*", "bab")
	f.Add("ab*ba", "aba")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if pattern == "" || strings.Count(pattern, "*") > 8 || len(s) > 64 {
			return
		}
		m, err := CompileModels([]string{pattern})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Match(s), refMatch(pattern, s); got != want {
			t.Fatalf("Match(%q, %q) = %v, want %v", pattern, s, got, want)
		}
		filled := strings.ReplaceAll(pattern, "*", s)
		if !m.Match(filled) {
			t.Fatalf("%q does not match %q", pattern, filled)
		}
	})
}

func refMatch(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if refMatch(p[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	return s != "" && s[0] == p[0] && refMatch(p[1:], s[1:])
}

func TestPresented(t *testing.T) {
	for _, tc := range []struct {
		header http.Header
		want   string
	}{
		{http.Header{"Authorization": {"Bearer " + plain}}, plain},
		{http.Header{"Authorization": {"bearer  " + plain + " "}}, plain},
		{http.Header{"X-Api-Key": {plain}}, plain},
		{http.Header{"Api-Key": {plain}}, plain},
		{http.Header{"Authorization": {"Basic dXNlcjpwdw=="}, "X-Api-Key": {plain}}, plain},
		{http.Header{"Authorization": {"Bearer " + plain}, "X-Api-Key": {"other"}}, plain},
		{http.Header{"Authorization": {"Basic dXNlcjpwdw=="}}, ""},
		{http.Header{"Authorization": {"Bearer "}}, ""},
		{http.Header{"X-Api-Key": {" "}}, ""},
		{http.Header{}, ""},
	} {
		got, ok := Presented(tc.header)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%v: %q %v, want %q", tc.header, got, ok, tc.want)
		}
	}
}

func FuzzPresented(f *testing.F) {
	f.Add("Bearer abc", "", "")
	f.Add("Basic x", "key", "")
	f.Add("", "", "k")
	f.Fuzz(func(t *testing.T, auth, xAPIKey, apiKey string) {
		h := http.Header{}
		for name, v := range map[string]string{"Authorization": auth, "X-Api-Key": xAPIKey, "Api-Key": apiKey} {
			if v != "" {
				h[name] = []string{v}
			}
		}
		key, ok := Presented(h)
		if ok != (key != "") || key != strings.TrimSpace(key) {
			t.Fatalf("%q %v, want ok only for a non-empty key without outer spaces", key, ok)
		}
		if ok && !strings.Contains(auth, key) && !strings.Contains(xAPIKey, key) && !strings.Contains(apiKey, key) {
			t.Fatalf("key %q is in no header", key)
		}
	})
}

func TestHint(t *testing.T) {
	if got := Hint(plain); got != "sk-c****6789" {
		t.Fatalf("Hint = %q, want sk-c****6789", got)
	}
	if got := Hint("short-key"); got != "****" {
		t.Fatalf("Hint = %q, want ****", got)
	}
}

func TestNewAndHash(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		k := New()
		if !strings.HasPrefix(k, Prefix) || len(k) != len(Prefix)+43 || strings.Trim(k[len(Prefix):], base62) != "" || seen[k] {
			t.Fatalf("key %q, want %s and 43 base62 digits, not seen before", k, Prefix)
		}
		seen[k] = true
	}
	// echo -n abc | sha256sum
	if got := Hash("abc"); got != "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("Hash(abc) = %s, want sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", got)
	}
	s, err := Build([]Entry{{Key: Hash(plain)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup(plain); !ok {
		t.Fatal("a hashed key is not found by its plain form")
	}
}

func TestParseFile(t *testing.T) {
	entries, err := ParseFile[Entry]([]byte(`{"keys":[{"key":"` + Hash(plain) + `","id":"ci","models":["gpt-*"],"expires":"2030-01-02T03:04:05Z","disabled":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Key: Hash(plain), ID: "ci", Models: []string{"gpt-*"}, Expires: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), Disabled: true}
	if len(entries) != 1 || fmt.Sprint(entries[0]) != fmt.Sprint(want) {
		t.Fatalf("%+v, want [%+v]", entries, want)
	}
	for input, want := range map[string]string{
		`{"keys":[{"key":"x","model":["a"]}]}`:    "unknown field",
		`{"keys":[{"key":"x","expires":"soon"}]}`: "soon",
		`{"keys":[]} {}`:                          "data after",
		`[]`:                                      "want {",
	} {
		if _, err := ParseFile[Entry]([]byte(input)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", input, err, want)
		}
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add([]byte(`{"keys":[{"key":"sha256:` + strings.Repeat("ab", 32) + `","id":"a","models":["*"],"expires":"2030-01-02T03:04:05Z"}]}`))
	f.Add([]byte(`{"keys":[{"key":"` + plain + `"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParseFile[Entry](data)
		if err != nil {
			return
		}
		s, err := Build(entries)
		if err != nil {
			return
		}
		// Every entry that built is found by its hash's key form, and
		// its entry survives a JSON round trip.
		out, err := json.Marshal(struct {
			Keys []Entry `json:"keys"`
		}{entries})
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseFile[Entry](out)
		if err != nil || len(again) != len(entries) {
			t.Fatalf("round trip: %d entries, %v; want %d", len(again), err, len(entries))
		}
		if s.Len() != len(entries) {
			t.Fatalf("%d keys from %d entries, want one per entry", s.Len(), len(entries))
		}
	})
}

// BenchmarkBuild10000 builds a set of 10,000 keys, half plain, half
// hashed, as a config load does.
func BenchmarkBuild10000(b *testing.B) {
	entries := make([]Entry, 10000)
	for i := range entries {
		entries[i].Key = fmt.Sprintf("sk-cg-bench-%08d-0123456789", i)
		if i%2 == 0 {
			entries[i].Key = Hash(entries[i].Key)
		}
	}
	for b.Loop() {
		if _, err := Build(entries); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLookup looks a key up among 10,000.
func BenchmarkLookup(b *testing.B) {
	entries := make([]Entry, 10000)
	for i := range entries {
		entries[i].Key = Hash(fmt.Sprintf("sk-cg-bench-%08d-0123456789", i))
	}
	s, err := Build(entries)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := s.Lookup("sk-cg-bench-00005000-0123456789"); !ok {
			b.Fatal("not found")
		}
	}
}
