package main

import (
	"encoding/json"
	"testing"
	"time"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

func TestFaultFromModel(t *testing.T) {
	fault := fb.Header(fb.Fault{Tokens: 50, TokenDelay: 20 * time.Millisecond})
	got, ok := faultFromModel(chatBody(300, true, fault))
	if !ok || got != fault {
		t.Fatalf("faultFromModel(chatBody(..., %s)) = %q, %v; want %q, true", fault, got, ok, fault)
	}
	var f fb.Fault
	if err := json.Unmarshal([]byte(got), &f); err != nil || f.Tokens != 50 || f.TokenDelay != 20*time.Millisecond {
		t.Fatalf("decoded %+v, %v; want 50 tokens, 20ms apart", f, err)
	}
	for _, body := range []string{
		string(chatBody(100, false, "")), // model "m"
		`{"model":"fault:{\"tokens\":"}`, // not JSON
		`{"model":"fault:{}`,             // unterminated
		`{"model":"fault:`,
		`{"messages":[]}`,
	} {
		if got, ok := faultFromModel([]byte(body)); ok {
			t.Errorf("faultFromModel(%s) = %q, want none", body, got)
		}
	}
}

func FuzzFaultFromModel(f *testing.F) {
	f.Add(chatBody(100, true, fb.Header(fb.Fault{Tokens: 3})))
	f.Add([]byte(`{"model":"fault:{\"mode\":\"cut\"}","stream":true}`))
	f.Add([]byte(`{"model":"fault:\u007b}"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, ok := faultFromModel(body)
		if ok && !json.Valid([]byte(got)) {
			t.Fatalf("faultFromModel(%q) = %q, not JSON", body, got)
		}
		if !ok && got != "" {
			t.Fatalf("faultFromModel(%q) = %q with false, want \"\"", body, got)
		}
	})
}
