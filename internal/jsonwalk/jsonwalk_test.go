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
