package anthropic

import (
	"encoding/json"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// FuzzJSONStrings checks appendString against encoding/json (the same
// text comes back) and appendUnquoted against encoding/json's decoding.
func FuzzJSONStrings(f *testing.F) {
	for _, s := range []string{"", "plain", "quote \" backslash \\ nl \n tab \t ctl \x01", "é 😀 \u2028 \u2029 <&>", "bad \xff utf8", `\ud83d\ude00 \ud83d x \u00e9 \/`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := appendString(nil, s)
		var back string
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("appendString(%q) = %s: %v", s, enc, err)
		}
		want, _ := json.Marshal(s) // the same text, however escaped
		var wantBack string
		_ = json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Fatalf("appendString(%q) reads back %q, want %q", s, back, wantBack)
		}
		// s itself as the inside of a JSON string literal.
		lit := []byte(`"` + s + `"`)
		var dec string
		if json.Unmarshal(lit, &dec) == nil {
			if got := string(appendUnquoted(nil, lit)); got != dec {
				t.Fatalf("appendUnquoted(%s) = %q, want %q", lit, got, dec)
			}
		}
		if got := string(appendUnquoted(nil, enc)); got != back {
			t.Fatalf("appendUnquoted(%s) = %q, want %q", enc, got, back)
		}
	})
}

func TestWalk(t *testing.T) {
	v := []byte(` { "a" : [1, {"b":"}"}, "x\"]"] , "\u0063" :null,"d":{} } `)
	it, ok := walk(v, '{')
	if !ok {
		t.Fatal("walked as not an object, want an object")
	}
	var keys, vals []string
	for k, val, ok := it.next(); ok; k, val, ok = it.next() {
		keys, vals = append(keys, string(k)), append(vals, string(val))
	}
	if len(keys) != 3 || vals[0] != `[1, {"b":"}"}, "x\"]"]` || !jsonwalk.KeyIs([]byte(keys[1]), "c") || vals[1] != "null" || vals[2] != "{}" {
		t.Fatalf("keys %q vals %q, want a (the array), c (null), d ({})", keys, vals)
	}
	arr, _ := walk([]byte(vals[0]), '[')
	n := 0
	for _, _, ok := arr.next(); ok; _, _, ok = arr.next() {
		n++
	}
	if n != 3 {
		t.Fatalf("%d elements, want 3", n)
	}
	if _, ok := walk([]byte(`[]`), '{'); ok {
		t.Fatal("an array walked as an object")
	}
}
