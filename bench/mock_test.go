package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

func TestFaultFromModel(t *testing.T) {
	fault := fb.Header(fb.Fault{Tokens: 50, TokenDelay: 20 * time.Millisecond})
	got, ok := faultFromModel(chatBody(300, true, fault))
	if !ok || got != fault {
		t.Fatalf("faultFromModel(chatBody(..., %s)) = %q, %v", fault, got, ok)
	}
	var f fb.Fault
	if err := json.Unmarshal([]byte(got), &f); err != nil || f.Tokens != 50 || f.TokenDelay != 20*time.Millisecond {
		t.Fatalf("decoded %+v, %v", f, err)
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
			t.Fatalf("faultFromModel(%q) = %q with false", body, got)
		}
	})
}

func TestPeerFlags(t *testing.T) {
	var p peerFlags
	if err := p.Set("other=/usr/bin/gw --listen 127.0.0.1:{port} --upstream {upstream}/v1"); err != nil {
		t.Fatal(err)
	}
	if len(p) != 1 || p[0].name != "other" || p[0].command != "/usr/bin/gw --listen 127.0.0.1:{port} --upstream {upstream}/v1" {
		t.Fatalf("parsed %+v", p)
	}
	for _, bad := range []string{"noequals", "=cmd {port}", "name=cmd without a port"} {
		if err := p.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	if len(p) != 1 {
		t.Fatalf("a rejected flag was kept: %+v", p)
	}
}

func TestProcessTree(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	tree := processTree(os.Getpid())
	if tree[0] != os.Getpid() || !slices.Contains(tree, child.Process.Pid) {
		t.Fatalf("processTree(%d) = %v, want it and its child %d", os.Getpid(), tree, child.Process.Pid)
	}
	if slices.Contains(processTree(child.Process.Pid), os.Getpid()) {
		t.Fatal("a child's tree holds its parent")
	}
	if rssKiB(os.Getpid()) <= rssKiB(child.Process.Pid) {
		t.Fatal("the tree's RSS is not above its child's alone")
	}
}
