// Command bench measures what chat_gateway costs compared with Caddy's
// plain reverse_proxy, on this machine, in one run:
//
//	go run ./bench              # every figure, about 7 minutes on 2 cores
//	go run ./bench -quick       # fewer and shorter rounds, for a smoke test
//
// It builds ./cmd/caddy, starts a mock OpenAI backend (this program, in
// another process) and three Caddy processes on 127.0.0.1: plain
// reverse_proxy to the mock, chat_gateway forwarding to the mock, and
// chat_gateway in echo mode. It loads each in turn with a Go load
// generator, reads the Caddy process's CPU time (utime+stime) and memory
// from /proc, and writes results.json, results.md and
// cpu-per-request.svg to -out. Every process it starts is stopped at
// the end.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

func main() {
	mock := flag.Bool("mock", false, "run as the mock backend (used by the harness itself)")
	out := flag.String("out", "bench/results", "directory for results.json, results.md and the chart")
	quick := flag.Bool("quick", false, "fewer, shorter rounds: a smoke test, not figures to publish")
	rounds := flag.Int("rounds", 5, "rounds per configuration and figure")
	flag.Parse()
	if *mock {
		runMock()
		return
	}
	log.SetFlags(log.Ltime)
	raiseFileLimit()

	h := &harness{rounds: *rounds, round: 1500 * time.Millisecond, timed: 100, streams: []int{1000, 10000}}
	if *quick {
		h.rounds, h.round, h.timed, h.streams = 2, 400*time.Millisecond, 20, []int{200}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := h.run(ctx, *out); err != nil {
		h.stopAll()
		log.Fatal(err)
	}
	h.stopAll()
}

// runMock serves the fault backend (behaving normally unless a request's
// X-Fault header says otherwise) and prints its URL.
func runMock() {
	s := fb.New()
	s.Discard = true
	fmt.Println(s.URL)
	select {}
}

// target is a server under load: the mock directly, or a Caddy process.
type target struct {
	name  string
	url   string
	admin string // Caddy's admin endpoint, for go_goroutines
	cmd   *exec.Cmd
	pid   int
}

type harness struct {
	caddyBin string
	rounds   int
	round    time.Duration
	timed    int   // streams timed one by one per round, for time to first token
	streams  []int // idle streams held, for memory
	procs    []*exec.Cmd
	mock     *target
	caddies  []*target // proxy, gateway, echo
	results  *Results
}

func (h *harness) run(ctx context.Context, out string) error {
	dir, err := os.MkdirTemp("", "chat-gateway-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	log.Print("building ./cmd/caddy")
	bin := filepath.Join(dir, "caddy")
	h.caddyBin = bin
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building caddy: %w", err)
	}
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
	start := time.Now()
	for _, fig := range []func(context.Context) error{h.cpuBySize, h.concurrency, h.fixedRate, h.streaming, h.memory} {
		if err := fig(ctx); err != nil {
			return err
		}
	}
	h.results.Duration = time.Since(start).Round(time.Second).String()
	return h.results.write(out)
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
	h.procs = append(h.procs, cmd)
	url, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("mock: %w", err)
	}
	return &target{name: "mock", url: strings.TrimSpace(url), cmd: cmd, pid: cmd.Process.Pid}, nil
}

func (h *harness) startCaddy(ctx context.Context, bin, dir, name, site string) (*target, error) {
	port, admin := freePort(), freePort()
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
	file := filepath.Join(dir, name+".Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h.procs = append(h.procs, cmd)
	t := &target{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), admin: fmt.Sprintf("http://127.0.0.1:%d", admin), cmd: cmd, pid: cmd.Process.Pid}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not start; see %s", name, logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Printf("started %s (pid %d) on %s", name, t.pid, t.url)
	return t, nil
}

func (h *harness) stopAll() {
	for _, c := range h.procs {
		if c.Process != nil {
			c.Process.Signal(os.Interrupt)
		}
	}
	for _, c := range h.procs {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			c.Process.Kill()
		}
	}
	h.procs = nil
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
