package main

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// benchKey is the client key of the keyed echo configurations; the
// Caddyfile holds only its hash.
const benchKey = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"

// Names of the configurations behind keys and limits.
const (
	keyLimitMemory = "echo key+limit 200"
	keyLimitRedis  = "echo key+limit redis 200"
	keyLimitBudget = "echo key+limit+budget 200"
)

// startRefusals starts echo behind client keys and limits: one that
// admits (a good key, limits never reached) with the memory store and,
// where redis-server is installed, one with the Redis store; one
// answering 401 (a bad key) and one answering 429 (one request an hour).
// A configuration this build of the gateway rejects, or that lacks what
// it needs, is skipped, with the reason printed and recorded.
func (h *harness) startRefusals(ctx context.Context, dir string) error {
	sum := sha256.Sum256([]byte(benchKey))
	auth := "auth {\n\t\t\tkey sha256:" + hex.EncodeToString(sum[:]) + "\n\t\t}"
	bearer := func(key string) http.Header { return http.Header{"Authorization": {"Bearer " + key}} }
	limits := "\n\t\tlimits {\n\t\t\trequests 1000000000/1h\n\t\t}"
	type config struct {
		name, block string
		header      http.Header
		status      int
	}
	budget := "\n\t\tprice m input 0.15 output 0.60\n\t\tlimits {\n\t\t\trequests 1000000000/1h\n\t\t\tbudget 1000000/day\n\t\t}"
	configs := []config{
		{keyLimitMemory, auth + limits, bearer(benchKey), http.StatusOK},
		{keyLimitBudget, auth + budget, bearer(benchKey), http.StatusOK},
		{"echo 401 bad key", auth, bearer("sk-bench-wrong-key-0123456789abcdefghijklmnopq"), http.StatusUnauthorized},
		{"echo 429 over limit", "limits {\n\t\t\trequests 1/1h\n\t\t}", nil, http.StatusTooManyRequests},
	}
	if addr, reason, err := h.startRedis(ctx); err != nil {
		return err
	} else if reason != "" {
		log.Printf("skipping %q: %s", keyLimitRedis, reason)
		h.results.skip(keyLimitRedis, reason)
	} else {
		redis := "\n\t\tlimits {\n\t\t\tstore redis " + addr + "\n\t\t\trequests 1000000000/1h\n\t\t}"
		configs = slices.Insert(configs, 1, config{keyLimitRedis, auth + redis, bearer(benchKey), http.StatusOK})
	}
	for _, c := range configs {
		site := "chat_gateway {\n\t\t" + c.block + "\n\t}"
		name := strings.ReplaceAll(c.name, " ", "_")
		file, _, _, err := writeCaddyfile(dir, name, site)
		if err != nil {
			return err
		}
		out, err := exec.CommandContext(ctx, h.caddyBin, "validate", "--config", file, "--adapter", "caddyfile").CombinedOutput()
		if err != nil {
			reason := "this build rejects its config: " + caddyError(string(out))
			log.Printf("skipping %q: %s", c.name, reason)
			h.results.skip(c.name, reason)
			continue
		}
		t, err := h.startCaddy(ctx, h.caddyBin, dir, name, site)
		if err != nil {
			return err
		}
		t.name, t.header, t.status = c.name, c.header, c.status
		h.refusals = append(h.refusals, t)
	}
	return ctx.Err()
}

// startRedis starts redis-server on a free port of 127.0.0.1, without
// persistence, and returns its address; or a reason to skip the Redis
// configuration where redis-server is not installed.
func (h *harness) startRedis(ctx context.Context) (addr, skip string, err error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return "", "redis-server is not installed (not in PATH)", nil
	}
	port := freePort()
	addr = "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.CommandContext(ctx, "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		return "", "", fmt.Errorf("starting redis-server: %w", err)
	}
	h.track(cmd)
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, "", nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", "", fmt.Errorf("redis-server did not listen on %s", addr)
}

// caddyError is Caddy's error in its output: the message of its last
// log line, without the temporary file's position.
func caddyError(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	var entry struct {
		Msg string `json:"msg"`
	}
	if json.Unmarshal([]byte(last), &entry) == nil && entry.Msg != "" {
		last = entry.Msg
	}
	if i := strings.LastIndex(last, ", at "); i > 0 {
		last = last[:i]
	}
	return last
}

// peerFlags are the -peer flags: name=command.
type peerFlags []peerSpec

// peerSpec is a gateway to measure beside chat_gateway.
type peerSpec struct {
	name, command string
	header        http.Header // how requests reach the mock through it
	version       string
}

func (p *peerFlags) String() string { return fmt.Sprint(len(*p), " peers") }

// Set parses name=command; the command must use {port}.
func (p *peerFlags) Set(v string) error {
	name, command, ok := strings.Cut(v, "=")
	if !ok || name == "" || !strings.Contains(command, "{port}") {
		return fmt.Errorf("want name=<command with {port} and {upstream}>, got %q", v)
	}
	*p = append(*p, peerSpec{name: name, command: command})
	return nil
}

// portkeyShim is preloaded into Node for Portkey (node --require): see
// the file for what it changes and why.
//
//go:embed portkey-shim.cjs
var portkeyShim []byte

// portkeySpec installs Portkey's gateway with npm into dir and returns
// how to run it, or a reason to skip it when Node or npm is missing.
func portkeySpec(ctx context.Context, dir, version string) (peerSpec, string, error) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			return peerSpec{}, tool + " is not installed (not in PATH): Portkey's gateway needs Node and npm", nil
		}
	}
	pkg := "@portkey-ai/gateway@" + version
	dir = filepath.Join(dir, "portkey")
	log.Printf("installing %s with npm into %s", pkg, dir)
	install := exec.CommandContext(ctx, "npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "--loglevel", "error", pkg)
	install.Stdout, install.Stderr = os.Stderr, os.Stderr
	if err := install.Run(); err != nil {
		return peerSpec{}, "", fmt.Errorf("npm install %s: %w", pkg, err)
	}
	shim := filepath.Join(dir, "portkey-shim.cjs")
	if err := os.WriteFile(shim, portkeyShim, 0o644); err != nil {
		return peerSpec{}, "", err
	}
	nodeVersion, err := exec.CommandContext(ctx, "node", "--version").Output()
	if err != nil {
		return peerSpec{}, "", fmt.Errorf("node --version: %w", err)
	}
	server := filepath.Join(dir, "node_modules", "@portkey-ai", "gateway", "build", "start-server.js")
	return peerSpec{
		name:    "portkey",
		command: fmt.Sprintf("node --require %s %s --port={port} --headless", shim, server),
		version: fmt.Sprintf("@portkey-ai/gateway %s, Node %s", version, strings.TrimSpace(string(nodeVersion))),
		// The mock is a custom host of its OpenAI provider.
		header: http.Header{"X-Portkey-Config": {`{"provider":"openai","api_key":"sk-bench","custom_host":"{upstream}/v1"}`}},
	}, "", nil
}

// startPeers starts Portkey (with -peers) and the -peer gateways, each
// forwarding to the mock.
func (h *harness) startPeers(ctx context.Context, dir string) error {
	specs := h.peerSpecs
	if h.portkey != "" {
		spec, skip, err := portkeySpec(ctx, dir, h.portkey)
		if err != nil {
			return err
		}
		if skip != "" {
			log.Printf("skipping portkey: %s", skip)
			h.results.skip("portkey", skip)
		} else {
			specs = append(peerFlags{spec}, specs...)
		}
	}
	for _, p := range specs {
		port := freePort()
		expand := strings.NewReplacer("{port}", strconv.Itoa(port), "{upstream}", h.mock.url).Replace
		t := &target{name: p.name, url: fmt.Sprintf("http://127.0.0.1:%d", port), header: http.Header{}}
		for k, v := range p.header {
			t.header[k] = []string{expand(v[0])}
		}
		command := expand(p.command)
		cmd := exec.CommandContext(ctx, "sh", "-c", "exec "+command)
		if err := h.start(dir, t, cmd, port); err != nil {
			return err
		}
		h.peers = append(h.peers, t)
		h.results.Peers = append(h.results.Peers, Peer{Name: p.name, Version: p.version, Command: p.command, Headers: headerJSON(p.header)})
	}
	return ctx.Err()
}

// headerJSON shows the headers a peer's requests carry, for the report.
func headerJSON(h http.Header) string {
	if len(h) == 0 {
		return ""
	}
	b, _ := json.Marshal(h)
	return string(b)
}
