package chatgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The request path tested without Caddy's server or a socket: a
// backend's reverse_proxy is replaced by a script that writes its reply
// to the writer the gateway hands its proxy, as reverse_proxy would
// (its headers, its body in pieces; a cut after the headers is
// reverse_proxy's panic(http.ErrAbortHandler); a failure before them,
// the error reverse_proxy returns), and requests go straight to
// Handler.ServeHTTP. The tests that need a real proxy (transport, TCP
// resets, health checks) load a real Caddy.

func init() { caddy.RegisterModule(new(scriptProxy)) }

// script plays a backend's part: what reverse_proxy would write to the
// gateway for the request r, or the error it would return.
type script func(w http.ResponseWriter, r *http.Request) error

// scripts are the scripts of the tests running, by name.
var scripts sync.Map

// scriptProxy is the stand-in for a backend's reverse_proxy handler.
type scriptProxy struct {
	// Name is the script's name in scripts.
	Name string `json:"name"`
	// Transport is what the gateway adds to a proxy's config (its
	// upstream idle timeout); a script has none.
	Transport json.RawMessage `json:"transport,omitempty"`

	run script
	mu  sync.Mutex
	got []recorded
}

func (*scriptProxy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.test_script", New: func() caddy.Module { return new(scriptProxy) }}
}

func (p *scriptProxy) Provision(caddy.Context) error {
	s, ok := scripts.Load(p.Name)
	if !ok {
		return fmt.Errorf("no script %q", p.Name)
	}
	p.run = s.(script)
	return nil
}

func (p *scriptProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	body, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	p.got = append(p.got, recorded{r.Method, r.URL.Path, r.Header.Clone(), string(body)})
	p.mu.Unlock()
	return p.run(w, r.WithContext(context.WithValue(r.Context(), bodyKey{}, string(body))))
}

// requests returns what the script was asked.
func (p *scriptProxy) requests() []recorded {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]recorded(nil), p.got...)
}

// scripted is a Handler set up from a chat_gateway Caddyfile block, each
// of whose backends has the next script in place of its reverse_proxy,
// and its module log observed.
type scripted struct {
	*Handler
	proxies []*scriptProxy
	logs    *observer.ObservedLogs
}

func newScripted(t testing.TB, config string, run ...script) *scripted {
	t.Helper()
	tokens, err := caddyfile.Tokenize([]byte(config), "Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		t.Fatal(err)
	}
	if len(run) != len(h.Backends) {
		t.Fatalf("%d scripts for %d backends", len(run), len(h.Backends))
	}
	for i, b := range h.Backends {
		name := fmt.Sprintf("%s/%d", t.Name(), i)
		scripts.Store(name, run[i])
		t.Cleanup(func() { scripts.Delete(name) })
		b.ProxyRaw = json.RawMessage(fmt.Sprintf(`{"handler":"test_script","name":%q}`, name))
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	s := &scripted{Handler: h, logs: logs}
	for _, b := range h.Backends {
		s.proxies = append(s.proxies, b.proxy.(*scriptProxy))
	}
	return s
}

// post sends a POST of body to path with the given header name/value
// pairs, and returns the response with the request's placeholders.
func (s *scripted) post(t testing.TB, path, body string, header ...string) (*httptest.ResponseRecorder, *caddy.Replacer) {
	t.Helper()
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return serve(t, s.Handler, req)
}

// placeholder reads a {http.chat_gateway.*} value.
func placeholder(repl *caddy.Replacer, name string) string {
	v, _ := repl.GetString("http.chat_gateway." + name)
	return v
}

// scriptStream starts an event stream, as reverse_proxy relays one.
func scriptStream(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
}

// scriptEvent writes one data event.
func scriptEvent(w http.ResponseWriter, data string) {
	_, _ = io.WriteString(w, "data: "+data+"\n\n")
}

// scriptJSON writes a JSON reply with status.
func scriptJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// errorOf decodes an OpenAI error body, failing on any other shape.
func errorOf(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	return apiError(t, w.Body.String())
}
