package main

import (
	"strings"
	"testing"
)

func TestPeerFlags(t *testing.T) {
	var p peerFlags
	if err := p.Set("other=/usr/bin/gw --listen 127.0.0.1:{port} --upstream {upstream}/v1"); err != nil {
		t.Fatal(err)
	}
	if len(p) != 1 || p[0].name != "other" || p[0].command != "/usr/bin/gw --listen 127.0.0.1:{port} --upstream {upstream}/v1" {
		t.Fatalf("parsed %+v, want one peer, other, with its command", p)
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

func TestPortkeySkipsWithoutNode(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	spec, skip, err := portkeySpec(t.Context(), t.TempDir(), "1.15.2")
	if err != nil || spec.command != "" || !strings.Contains(skip, "node is not installed") {
		t.Fatalf("portkeySpec without node = %+v, %q, %v; want a reason to skip", spec, skip, err)
	}
}

func TestCaddyError(t *testing.T) {
	out := `{"level":"info","msg":"using config from file"}
{"level":"error","ts":1.5,"msg":"adapting config using caddyfile: parsing caddyfile tokens for 'chat_gateway': unrecognized chat_gateway option 'auth', at /tmp/x/echo.Caddyfile:13"}
`
	want := "adapting config using caddyfile: parsing caddyfile tokens for 'chat_gateway': unrecognized chat_gateway option 'auth'"
	if got := caddyError(out); got != want {
		t.Fatalf("caddyError = %q, want %q", got, want)
	}
	if got := caddyError("Error: plain text\n"); got != "Error: plain text" {
		t.Fatalf("caddyError of plain text = %q, want \"Error: plain text\"", got)
	}
}
