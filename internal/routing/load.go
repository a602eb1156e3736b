package routing

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// LoadFormats are the inference servers whose /metrics a Loads can
// read, each by the gauges of the requests it runs and the requests it
// queues.
var LoadFormats = map[string][2]string{
	"llamacpp": {"llamacpp:requests_processing", "llamacpp:requests_deferred"},
	"vllm":     {"vllm:num_requests_running", "vllm:num_requests_waiting"},
	"sglang":   {"sglang:num_running_reqs", "sglang:num_queue_reqs"},
}

// maxMetricsBody bounds the /metrics page read from a replica.
const maxMetricsBody = 8 << 20

// Fetch gets the /metrics page of the replica at addr.
type Fetch func(ctx context.Context, addr string) (*http.Response, error)

// Loads keeps what each replica last reported of its load, polled in
// the background by Run, never on a request's path. It polls the
// replicas asked about (Reported) within the last minute. It is safe
// for concurrent use.
type Loads struct {
	gauges   [2]string
	interval time.Duration
	mu       sync.Mutex
	replicas map[string]*reported
}

// reported is a replica's last report, and when it was asked about.
type reported struct {
	load       int
	at, wanted time.Time
	err        error // of the last poll
}

// forget is how long a replica no request asked about is polled still.
const forget = time.Minute

// NewLoads returns a Loads for the servers of format, a key of
// LoadFormats, polled every interval.
func NewLoads(format string, interval time.Duration) (*Loads, error) {
	gauges, ok := LoadFormats[format]
	if !ok {
		return nil, fmt.Errorf("unknown load_metrics format '%s': want llamacpp, vllm or sglang", format)
	}
	return &Loads{gauges: gauges, interval: interval, replicas: make(map[string]*reported)}, nil
}

// Reported returns the load replica addr reported, if it did within the
// last three intervals, and has it polled from now on.
func (l *Loads) Reported(addr string, now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.replicas[addr]
	if r == nil {
		r = new(reported)
		l.replicas[addr] = r
	}
	r.wanted = now
	return r.load, r.err == nil && now.Sub(r.at) < 3*l.interval
}

// Each calls f with each replica polled, what it last reported, and
// the error of its last poll.
func (l *Loads) Each(f func(addr string, load int, err error)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for addr, r := range l.replicas {
		if !r.at.IsZero() || r.err != nil {
			f(addr, r.load, r.err)
		}
	}
}

// Run polls the replicas with fetch every interval until ctx ends.
func (l *Loads) Run(ctx context.Context, fetch Fetch) {
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var wg sync.WaitGroup
		for _, addr := range l.polled(time.Now()) {
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, l.interval)
				defer cancel()
				load, err := l.poll(pctx, fetch, addr)
				l.mu.Lock()
				defer l.mu.Unlock()
				if r := l.replicas[addr]; r != nil {
					r.err = err
					if err == nil {
						r.load, r.at = load, time.Now()
					}
				}
			})
		}
		wg.Wait()
	}
}

// polled returns the replicas to poll, forgetting those no request
// asked about for a while.
func (l *Loads) polled(now time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var addrs []string
	for addr, r := range l.replicas {
		if now.Sub(r.wanted) > forget {
			delete(l.replicas, addr)
			continue
		}
		addrs = append(addrs, addr)
	}
	return addrs
}

// poll reads the load replica addr reports.
func (l *Loads) poll(ctx context.Context, fetch Fetch, addr string) (int, error) {
	resp, err := fetch(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics answered %d", resp.StatusCode)
	}
	return ReadLoad(io.LimitReader(resp.Body, maxMetricsBody), l.gauges)
}

// ReadLoad reads a Prometheus text page for the sum of the gauges, over
// all their series: the requests a server runs and queues. A page
// without either gauge is an error: the server is of another kind, or
// runs without its metrics.
func ReadLoad(r io.Reader, gauges [2]string) (int, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return 0, fmt.Errorf("reading /metrics: %w", err)
	}
	sum, found := 0.0, false
	for _, name := range gauges {
		f := families[name]
		if f == nil {
			continue
		}
		for _, m := range f.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
				found = true
			case m.GetUntyped() != nil:
				sum += m.GetUntyped().GetValue()
				found = true
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("/metrics has neither %s nor %s", gauges[0], gauges[1])
	}
	if !(sum >= 0) { // NaN or negative
		sum = 0
	}
	return int(min(sum, 1e6) + 0.5), nil
}
