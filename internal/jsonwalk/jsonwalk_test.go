package jsonwalk

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestKeyIs(t *testing.T) {
	for _, tt := range []struct {
		key, name string
		want      bool
	}{
		{`"model"`, "model", true},
		{`"mod\u0065l"`, "model", true},
		{`"\u006dodel"`, "model", true},
		{`"models"`, "model", false},
		{`"mode"`, "model", false},
		{`"mod\u0065"`, "model", false},
		{`""`, "model", false},
		{`"`, "model", false},
	} {
		if got := KeyIs([]byte(tt.key), tt.name); got != tt.want {
			t.Errorf("KeyIs(%s, %q) = %v, want %v", tt.key, tt.name, got, tt.want)
		}
	}
}

func TestSkip(t *testing.T) {
	b := []byte(` {"a":"x\"]}","b":[1,{"c":null}],"d":-1.5e3} rest`)
	i := SkipSpace(b, 0)
	if i != 1 {
		t.Fatalf("SkipSpace: %d, want 1", i)
	}
	if end := SkipValue(b, i); string(b[end:]) != " rest" {
		t.Fatalf("SkipValue stopped at %q, want \" rest\"", b[end:])
	}
	if !IsNull(nil) || !IsNull([]byte("null")) || IsNull([]byte(`"null"`)) {
		t.Fatal(`IsNull: want true for nil and null, false for "null"`)
	}
}

// On any valid JSON value, SkipValue ends where encoding/json does.
func FuzzSkipValue(f *testing.F) {
	f.Add([]byte(`{"a":[1,"]",{"b":"\\\""}],"c":true}`))
	f.Add([]byte(`"\u005c"`))
	f.Add([]byte(`-0.5e-7`))
	f.Fuzz(func(t *testing.T, b []byte) {
		start := SkipSpace(b, 0)
		if start >= len(b) || !json.Valid(b) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return
		}
		want := int(dec.InputOffset())
		if got := SkipValue(b, start); got != want {
			t.Fatalf("%q: SkipValue ends at %d, encoding/json at %d", b, got, want)
		}
	})
}

// TestPlainRun checks the eight-bytes-at-a-time scan against a byte at a
// time, for every byte at every position of a block and past it, behind
// every byte that could make the test of a lower one wrong.
func TestPlainRun(t *testing.T) {
	naive := func(b []byte, i int) int {
		for i < len(b) && b[i] >= 0x20 && b[i] != '"' && b[i] != '\\' {
			i++
		}
		return i
	}
	buf := make([]byte, 19)
	for before := range 256 {
		for c := range 256 {
			for at := range len(buf) {
				for k := range buf {
					buf[k] = 'a'
				}
				if at > 0 {
					buf[at-1] = byte(before)
				}
				buf[at] = byte(c)
				for from := range 3 {
					if got, want := PlainRun(buf, from), naive(buf, from); got != want {
						t.Fatalf("PlainRun(%q, %d) = %d, want %d", buf, from, got, want)
					}
				}
			}
		}
	}
}
