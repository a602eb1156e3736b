package chatgateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	dto "github.com/prometheus/client_model/go"
)

// adminPort is the in-process Caddy's admin port: a free one, so test
// runs side by side on one machine never load each other's configs.
var adminPort int

func TestMain(m *testing.M) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	adminPort = l.Addr().(*net.TCPAddr).Port
	l.Close()
	caddytest.Default.AdminPort = adminPort
	// Caddy writes its config and data under $HOME unless told otherwise.
	dir, err := os.MkdirTemp("", "chat-gateway-test")
	if err != nil {
		panic(err)
	}
	testDir = dir
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	// A request that hangs fails its test, not the whole run at go
	// test's timeout.
	http.DefaultClient.Timeout = time.Minute
	code := m.Run()
	_ = caddy.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testDir is the test run's own directory, removed when it ends.
var testDir string

// builtCaddy is cmd/caddy, built once for the tests that run it as a
// process of its own.
var builtCaddy = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(testDir, "caddy")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/caddy").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
})

// runCaddy runs the built Caddy on the Caddyfile at file, with env
// added to the test's environment, until the test ends, and waits until
// it answers /healthz at url.
func runCaddy(t *testing.T, file, url string, env ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs Caddy as a process")
	}
	bin, err := builtCaddy()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir), env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("caddy run %s exited (%v), want it serving %s:\n%s", file, err, url, out.String())
		default:
		}
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer within 30s, want caddy run %s serving it", url, file)
		}
	}
}

// gateway is Caddy, running in this process, serving a site whose only
// handlers are a chat_gateway block and, after it, a "next" responder.
type gateway struct {
	URL     string
	logFile string
}

// newGateway loads a Caddyfile site around config (a chat_gateway
// directive) into the in-process Caddy, replacing the previous config.
func newGateway(t testing.TB, config string) *gateway {
	t.Helper()
	return loadGateway(t, freePort(t), "1ns", config)
}

// globalOptions is the global options block of every Caddyfile a test
// loads into the in-process Caddy: its admin endpoint, nothing
// persisted, no grace for the requests of the config it replaces unless
// lines says otherwise; lines go inside the block.
func globalOptions(lines ...string) string {
	grace := "\tgrace_period 1ns\n"
	for _, l := range lines {
		if strings.HasPrefix(l, "grace_period ") {
			grace = ""
		}
	}
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n\tskip_install_trust\n%s%s}\n", adminPort, grace, indent(lines))
}

// indent is lines, each on its own line, indented once.
func indent(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString("\t" + strings.ReplaceAll(l, "\n", "\n\t") + "\n")
	}
	return b.String()
}

// loadGateway is newGateway on a given port, with a given grace period
// for the requests of the config it replaces.
func loadGateway(t testing.TB, port int, grace, config string) *gateway {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	caddyfileText := globalOptions(fmt.Sprintf("http_port %d", port), "grace_period "+grace,
		fmt.Sprintf("log {\n\toutput file %s\n\tformat json\n\tlevel DEBUG\n}", logFile)) + fmt.Sprintf(`http://127.0.0.1:%d {
	log {
		output file %s
		format json
	}
	route {
		%s
		respond "next" 404
	}
}
`, port, logFile, config)
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, _, err := adapter.Adapt([]byte(caddyfileText), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting %s: %v", config, err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading %s: %v", config, err)
	}
	waitListeners(t, port)
	// Keep-alive connections to the replaced config's server are closed
	// by it: start afresh.
	http.DefaultClient.CloseIdleConnections()
	return &gateway{URL: fmt.Sprintf("http://127.0.0.1:%d", port), logFile: logFile}
}

// waitListeners waits until one socket listens on port. Caddy binds
// each config's listener with SO_REUSEPORT and closes the replaced one
// just after caddy.Load returns; a connection the kernel queued on that
// one is reset. Linux only: elsewhere it returns at once.
func waitListeners(t testing.TB, port int) {
	t.Helper()
	suffix := fmt.Sprintf(":%04X", port)
	count := func() int {
		n := 0
		for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			raw, err := os.ReadFile(table)
			if err != nil {
				return 1
			}
			for _, line := range strings.Split(string(raw), "\n")[1:] {
				// sl local_address rem_address st ...; st 0A is LISTEN.
				if f := strings.Fields(line); len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], suffix) {
					n++
				}
			}
		}
		return n
	}
	for deadline := time.Now().Add(5 * time.Second); count() > 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the replaced config still listens on port %d", port)
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// logs returns Caddy's log lines so far (module and access logs) as
// decoded JSON objects, and the raw text.
func (g *gateway) logs(t *testing.T) ([]map[string]any, string) {
	t.Helper()
	raw, err := os.ReadFile(g.logFile)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out, string(raw)
}

// waitLog waits for a log line with the given message and request id.
func (g *gateway) waitLog(t *testing.T, msg, requestID string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines, _ := g.logs(t)
		for _, l := range lines {
			if l["msg"] == msg && l["request_id"] == requestID {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log %q for request %s", msg, requestID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// post sends a chat request and returns the response with its body read.
func (g *gateway) post(t *testing.T, body string, header ...string) (*http.Response, string) {
	t.Helper()
	return do(t, g.request(body, header...))
}

// request builds a chat request with the given header name/value pairs.
func (g *gateway) request(body string, header ...string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return req
}

// open sends a chat request and returns the response unread, for tests
// that read a stream as it comes; its body is closed when the test ends.
func (g *gateway) open(t *testing.T, body string) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(g.request(body))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// apiError decodes an OpenAI error body, failing on any other shape.
func apiError(t *testing.T, body string) map[string]any {
	t.Helper()
	var env map[string]map[string]any
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	e := env["error"]
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e[k]; !ok {
			t.Fatalf("error body %s lacks %q", body, k)
		}
	}
	return e
}

// events reads a Server-Sent Events body into its data fields.
func events(body string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

// backend is a fake OpenAI-compatible server that records what it got.
type backend struct {
	*httptest.Server
	mu        sync.Mutex
	requests  []recorded
	cancelled chan struct{} // closed when a request's context ends early
	once      sync.Once
}

type recorded struct {
	Method, Path string
	Header       http.Header
	Body         string
}

func newFakeBackend(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) *backend {
	t.Helper()
	b := &backend{cancelled: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.requests = append(b.requests, recorded{r.Method, r.URL.Path, r.Header.Clone(), string(body)})
		b.mu.Unlock()
		handle(w, r.WithContext(context.WithValue(r.Context(), bodyKey{}, string(body))))
		if r.Context().Err() != nil {
			b.once.Do(func() { close(b.cancelled) })
		}
	}))
	// Close waits for every handler: cut the connections first, so a
	// test that failed early does not hang on a handler still waiting.
	t.Cleanup(func() {
		b.CloseClientConnections()
		b.Close()
	})
	return b
}

// waitCancelled fails t unless a request's context ends within 5s.
func (b *backend) waitCancelled(t *testing.T) {
	t.Helper()
	select {
	case <-b.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request was not cancelled")
	}
}

func (b *backend) last(t *testing.T) recorded {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.requests) == 0 {
		t.Fatal("the backend got no request")
	}
	return b.requests[len(b.requests)-1]
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.requests)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// sseEvent writes and flushes one event.
func sseEvent(w http.ResponseWriter, data string) {
	_, _ = io.WriteString(w, "data: "+data+"\n\n")
	w.(http.Flusher).Flush()
}

func startSSE(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
}

// upstreamBody returns what the backend recorded as the request body; the
// fake backend reads it before its handler runs.
func upstreamBody(r *http.Request) string {
	body, _ := r.Context().Value(bodyKey{}).(string)
	return body
}

type bodyKey struct{}

// inFlight reads the in-flight requests gauge.
func inFlight() float64 {
	var m dto.Metric
	_ = gatewayMetrics.inFlight.Write(&m)
	return m.GetGauge().GetValue()
}

// streamBurst sends n requests at once, waits until each has its status
// (200 admitted, 429 refused: anything else fails the test), closes
// release to let the backend end the streams, reads them to their end
// and returns the counts.
func streamBurst(t *testing.T, n int, req func() *http.Request, release chan struct{}) (admitted, refused int) {
	var wg sync.WaitGroup
	var ok, no atomic.Int32
	started := make(chan struct{}, n)
	for range n {
		wg.Go(func() {
			resp, err := http.DefaultClient.Do(req())
			if err != nil {
				t.Error(err)
				started <- struct{}{}
				return
			}
			defer resp.Body.Close()
			switch resp.StatusCode {
			case 200:
				ok.Add(1)
			case 429:
				no.Add(1)
			default:
				t.Errorf("status %d, want 200 or 429", resp.StatusCode)
			}
			started <- struct{}{}
			_, _ = io.Copy(io.Discard, resp.Body)
		})
	}
	for range n {
		<-started // every request answered or streaming: all reserved at once
	}
	close(release)
	wg.Wait()
	return int(ok.Load()), int(no.Load())
}

// startProcess runs the built Caddy until the test ends, handler the
// handler of its one site on a free port of 127.0.0.1, its admin
// endpoint on another; it returns the gateway and the admin address.
func startProcess(t *testing.T, handler string) (*gateway, string) {
	t.Helper()
	port, admin := freePort(t), freePort(t)
	file := filepath.Join(t.TempDir(), "Caddyfile")
	cfg := fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n\thttp_port %d\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", admin, port, port, handler)
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &gateway{URL: fmt.Sprintf("http://127.0.0.1:%d", port)}
	runCaddy(t, file, g.URL)
	return g, fmt.Sprintf("localhost:%d", admin)
}

// provisionError reads the lines of a chat_gateway block, provisions the
// Handler outside a server, cleans it up and returns Provision's error.
func provisionError(t *testing.T, block string) error {
	t.Helper()
	h, err := parse(t, "chat_gateway {\n"+block+"\n}")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err = h.Provision(ctx)
	_ = h.Cleanup()
	return err
}
