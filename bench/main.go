// Command bench measures what chat_gateway costs compared with Caddy's
// plain reverse_proxy, on this machine, in one run:
//
//	go run ./bench              # every figure, about 15 minutes on 2 cores
//	go run ./bench -peers       # and Portkey's gateway (Node) side by side
//	go run ./bench -peer 'name=<command with {port} and {upstream}>'
//	go run ./bench -quick       # fewer and shorter rounds, a smoke test: into a temporary directory
//	go run ./bench -routing     # lb_policy prefix_affinity against round_robin and least_conn
//
// bench/README.md says what each figure measures and how peers run.
//
// It builds ./cmd/caddy, starts a mock OpenAI backend (this program, in
// another process) and Caddy processes on 127.0.0.1: plain
// reverse_proxy to the mock, chat_gateway forwarding to the mock,
// chat_gateway in echo mode, and echo behind client keys and limits
// where this build has them. It loads each in turn with a Go load
// generator, reads each process's CPU time (utime+stime) and memory
// from /proc, and writes results.json, results.md and the charts to
// -out (bench/results, the published figures; a temporary directory for
// -quick), and says where. Every process it starts is stopped at the end.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	mock := flag.Bool("mock", false, "run as the mock backend (used by the harness itself)")
	out := flag.String("out", "", "directory for results.json, results.md and the charts (default bench/results; with -quick, a new temporary directory)")
	quick := flag.Bool("quick", false, "fewer, shorter rounds: a smoke test, not figures to publish")
	rounds := flag.Int("rounds", 5, "rounds per configuration and figure")
	withPortkey := flag.Bool("peers", false, "also measure Portkey's gateway (installed with npm into a temp folder, run with Node)")
	portkeyVersion := flag.String("portkey-version", "1.15.2", "the @portkey-ai/gateway version -peers installs")
	routing := flag.Bool("routing", false, "measure lb_policy prefix_affinity against round_robin and least_conn on a simulated fleet, and on real llama.cpp servers when LLAMA_SERVER names llama-server (see bench/README.md)")
	only := flag.String("only", "", "comma-separated `figures` to measure, of "+strings.Join(figureNames, ", ")+"; with -routing, workloads of "+strings.Join(routingWorkloadNames, ", ")+" (default all)")
	var peers peerFlags
	flag.Var(&peers, "peer", "`name=command` of another gateway to measure: the command, run with sh, serves /v1/chat/completions on 127.0.0.1:{port} forwarding to {upstream} (repeatable)")
	flag.Parse()
	if *mock {
		runMock()
		return
	}
	log.SetFlags(log.Ltime)
	raiseFileLimit()

	h := &harness{rounds: *rounds, round: 1500 * time.Millisecond, timed: 100, streams: []int{1000, 10000}, paced: 3 * time.Second, distinct: 1_000_000, peerSpecs: peers}
	if *only != "" {
		names := figureNames
		if *routing {
			names = routingWorkloadNames
		}
		h.only = map[string]bool{}
		for name := range strings.SplitSeq(*only, ",") {
			if !slices.Contains(names, name) {
				log.Fatalf("-only: no figure %q (figures: %s)", name, strings.Join(names, ", "))
			}
			h.only[name] = true
		}
	}
	if *quick {
		h.rounds, h.round, h.timed, h.streams, h.paced, h.distinct = 2, 400*time.Millisecond, 20, []int{200}, time.Second, 20_000
	}
	switch {
	case *out != "":
	case *quick: // a smoke test's figures are not to replace the published ones
		dir, err := os.MkdirTemp("", "chat-gateway-bench-")
		if err != nil {
			log.Fatal(err)
		}
		*out = dir
	default:
		*out = "bench/results"
	}
	if *withPortkey {
		h.portkey = *portkeyVersion
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run := h.run
	if *routing {
		run = func(ctx context.Context, out string) error { return h.runRouting(ctx, out, *quick, h.only) }
	}
	if err := run(ctx, *out); err != nil {
		h.stopAll()
		log.Fatal(err)
	}
	h.stopAll()
}

// target is a server under load: the mock directly, a Caddy process or
// a peer gateway.
type target struct {
	name   string
	url    string
	admin  string      // Caddy's admin endpoint, for go_goroutines
	header http.Header // sent with every request: a peer's routing, a client key
	status int         // the status it answers when working as measured; 0 means 200
	path   string      // where requests go; "" means /v1/chat/completions
	pid    int
}

// figureNames name the figures for -only, in the order they run.
var figureNames = []string{"size", "concurrency", "rate", "streaming", "paced", "endpoints", "refusals", "peers", "memory", "cache"}

type harness struct {
	caddyBin   string
	rounds     int
	round      time.Duration
	timed      int           // streams timed one by one per round, for time to first token
	streams    []int         // idle streams held, for memory
	distinct   int           // distinct requests of the cache's memory figure
	paced      time.Duration // measured window of a round of paced streams
	portkey    string        // the Portkey version to install, or "" for none
	peerSpecs  peerFlags
	only       map[string]bool // the figures -only names; nil for all
	procs      []*proc
	mock       *target
	caddies    []*target // proxy, gateway, echo
	refusals   []*target // echo behind keys and limits: 200, 401, 429
	peers      []*target // other gateways
	cached     []*target // chat_gateway with a cache, echo its backend: memory, Redis store
	cacheRedis string    // the cache's redis-server, or ""
	cacheFloor *target   // Caddy answering a fixed event stream: the floor of a first byte
	results    *Results
}

func (h *harness) run(ctx context.Context, out string) error {
	dir, err := os.MkdirTemp("", "chat-gateway-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if err := h.build(ctx, dir); err != nil {
		return err
	}
	bin := h.caddyBin
	if h.mock, err = h.startMock(ctx); err != nil {
		return err
	}
	for _, c := range []struct{ name, site string }{
		{"reverse_proxy", fmt.Sprintf(`reverse_proxy %s {
		transport http {
			keepalive_idle_conns 20000
			keepalive_idle_conns_per_host 20000
		}
	}`, h.mock.url)},
		{"chat_gateway", fmt.Sprintf(`chat_gateway {
		backend %s {
			transport http {
				keepalive_idle_conns 20000
				keepalive_idle_conns_per_host 20000
			}
		}
	}`, h.mock.url)},
		{"echo", "chat_gateway"},
	} {
		t, err := h.startCaddy(ctx, bin, dir, c.name, c.site)
		if err != nil {
			return err
		}
		h.caddies = append(h.caddies, t)
	}
	h.results = newResults(h)
	if err := h.startRefusals(ctx, dir); err != nil {
		return err
	}
	if err := h.startPeers(ctx, dir); err != nil {
		return err
	}
	if h.only == nil || h.only["cache"] {
		if err := h.startCache(ctx, dir); err != nil {
			return err
		}
	}
	start := time.Now()
	for i, fig := range []func(context.Context) error{h.cpuBySize, h.concurrency, h.fixedRate, h.streaming, h.pacedStreams, h.endpoints, h.refusalCost, h.peerComparison, h.memory, h.cacheFigures} {
		if h.only != nil && !h.only[figureNames[i]] {
			continue
		}
		if err := fig(ctx); err != nil {
			return err
		}
	}
	h.results.Duration = time.Since(start).Round(time.Second).String()
	if err := h.results.write(out); err != nil {
		return err
	}
	log.Printf("wrote results.json, results.md and the charts to %s", out)
	return nil
}

// build builds ./cmd/caddy into dir, as h.caddyBin.
func (h *harness) build(ctx context.Context, dir string) error {
	log.Print("building ./cmd/caddy")
	h.caddyBin = filepath.Join(dir, "caddy")
	build := exec.CommandContext(ctx, "go", "build", "-o", h.caddyBin, "./cmd/caddy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building caddy: %w", err)
	}
	return nil
}

func (h *harness) startMock(ctx context.Context) (*target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, "-mock")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1") // the mock shares the machine; keep it small and constant
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	url, err := bufio.NewReader(stdout).ReadString('\n')
	h.track(cmd) // after the last read from its stdout: Wait closes the pipe
	if err != nil {
		return nil, fmt.Errorf("mock: %w", err)
	}
	return &target{name: "mock", url: strings.TrimSpace(url), pid: cmd.Process.Pid}, nil
}

// startCaddy starts Caddy with site as the handler of its one site.
func (h *harness) startCaddy(ctx context.Context, bin, dir, name, site string) (*target, error) {
	file, port, admin, err := writeCaddyfile(dir, name, site)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	t := &target{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), admin: fmt.Sprintf("http://127.0.0.1:%d", admin)}
	if err := h.start(dir, t, cmd, port); err != nil {
		return nil, err
	}
	return t, nil
}

// writeCaddyfile writes the Caddyfile of a Caddy serving site on a free
// port of 127.0.0.1, with its admin endpoint on another.
func writeCaddyfile(dir, name, site string) (file string, port, admin int, err error) {
	port, admin = freePort(), freePort()
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	skip_install_trust
	auto_https off
	grace_period 1s
	servers {
		protocols h1 h2c
	}
}
http://127.0.0.1:%d {
	%s
}
`, admin, port, site)
	file = filepath.Join(dir, name+".Caddyfile")
	return file, port, admin, os.WriteFile(file, []byte(cfg), 0o600)
}

// start runs cmd as t, its output in dir, and waits until it listens
// on port of 127.0.0.1.
func (h *harness) start(dir string, t *target, cmd *exec.Cmd, port int) error {
	logf, err := os.Create(filepath.Join(dir, t.name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", t.name, err)
	}
	exited := h.track(cmd).exited
	t.pid = cmd.Process.Pid
	for deadline := time.Now().Add(time.Minute); ; {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited before listening; its output:\n%s", t.name, tail(logf.Name()))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not listen on 127.0.0.1:%d within a minute; its output:\n%s", t.name, port, tail(logf.Name()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Printf("started %s (pid %d) on %s", t.name, t.pid, t.url)
	return nil
}

// tail is the end of a log file, for an error message.
func tail(file string) string {
	b, _ := os.ReadFile(file)
	return string(b[max(0, len(b)-2000):])
}

// proc is a process the harness started.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited
}

// track reaps cmd, started, when it exits, and has stopAll stop it.
func (h *harness) track(cmd *exec.Cmd) *proc {
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	h.procs = append(h.procs, p)
	return p
}

// stopAll interrupts every process the harness started and kills those
// still running 5 s later.
func (h *harness) stopAll() {
	for _, p := range h.procs {
		p.cmd.Process.Signal(os.Interrupt)
	}
	for _, p := range h.procs {
		p.wait()
	}
	h.procs = nil
}

// stopLast stops the process the harness started last.
func (h *harness) stopLast() {
	p := h.procs[len(h.procs)-1]
	h.procs = h.procs[:len(h.procs)-1]
	p.cmd.Process.Signal(os.Interrupt)
	p.wait()
}

// wait waits for p, interrupted, to exit, and kills it after 5 s.
func (p *proc) wait() {
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// raiseFileLimit lets this process and its children hold tens of
// thousands of connections for the memory figure.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	want := uint64(200000)
	if lim.Max < want {
		lim.Max = want // works as root
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	log.Printf("open files limit %d; %d CPUs", lim.Cur, runtime.NumCPU())
}
