package main

import (
	"encoding/json"
	"fmt"
	"log"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Stat summarises the rounds of one measurement.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

// Figure is one table: rows (a size, a concurrency...) by target.
type Figure struct {
	Name    string                     `json:"name"`
	Title   string                     `json:"title"`
	Unit    string                     `json:"unit"`
	Rows    []string                   `json:"rows"`
	Targets []string                   `json:"targets"`
	Values  map[string]map[string]Stat `json:"values"` // row -> target
	// Failed says why a target has no figure here, by target.
	Failed map[string]string `json:"failed,omitempty"`
}

// Peer is another gateway measured in the run.
type Peer struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Command string `json:"command"`           // {port} and {upstream} are the harness's
	Headers string `json:"headers,omitempty"` // sent with each of its requests
}

// Target is one of the goals, checked against the run's figures.
type Target struct {
	Goal   string   `json:"goal"`
	Value  *float64 `json:"value"` // null when not measured
	Limit  string   `json:"limit"`
	Met    bool     `json:"met"`
	Detail string   `json:"detail"`
}

// Results is everything a run measured.
type Results struct {
	Date     string            `json:"date"`
	Command  string            `json:"command"`
	Machine  map[string]string `json:"machine"`
	Rounds   int               `json:"rounds"`
	Round    string            `json:"round"`
	Duration string            `json:"duration"`
	Figures  []*Figure         `json:"figures"`
	Targets  []Target          `json:"targets"`
	Peers    []Peer            `json:"peers,omitempty"`
	// Skipped says why a configuration was not measured, by name.
	Skipped map[string]string `json:"skipped,omitempty"`
	// partial is set when -only chose the figures: the goals of the
	// others are left out rather than shown as not met.
	partial bool
}

// skip records that the configuration name was not measured, and why.
func (r *Results) skip(name, reason string) {
	if r.Skipped == nil {
		r.Skipped = map[string]string{}
	}
	r.Skipped[name] = reason
}

// fail records that target has no value in the figure name, and why.
func (r *Results) fail(name, target, reason string) {
	f := r.get(name)
	if f.Failed == nil {
		f.Failed = map[string]string{}
	}
	f.Failed[target] = reason
	if !slices.Contains(f.Targets, target) {
		f.Targets = append(f.Targets, target)
	}
}

func newResults(h *harness) *Results {
	caddyVersion, _ := exec.Command(h.caddyBin, "version").Output()
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return &Results{
		Date:    time.Now().UTC().Format(time.RFC3339),
		Command: "go run ./bench " + strings.Join(os.Args[1:], " "),
		Machine: map[string]string{
			"cpus": fmt.Sprint(runtime.NumCPU()), "cpu": cpu, "os": runtime.GOOS + "/" + runtime.GOARCH,
			"kernel": strings.TrimSpace(string(kernel)), "go": runtime.Version(), "caddy": strings.TrimSpace(string(caddyVersion)),
		},
		Rounds:  h.rounds,
		Round:   h.round.String(),
		partial: h.only != nil,
	}
}

func (r *Results) figure(name, title, unit string) *Figure {
	f := &Figure{Name: name, Title: title, Unit: unit, Values: map[string]map[string]Stat{}}
	r.Figures = append(r.Figures, f)
	return f
}

func (r *Results) get(name string) *Figure {
	for _, f := range r.Figures {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// add records one round's value; a value that could not be read (NaN)
// is left out, and said.
func (f *Figure) add(row, target string, v float64) {
	if math.IsNaN(v) {
		log.Printf("%s: %s, %s: no value", f.Name, row, target)
		return
	}
	if !slices.Contains(f.Rows, row) {
		f.Rows = append(f.Rows, row)
	}
	if !slices.Contains(f.Targets, target) {
		f.Targets = append(f.Targets, target)
	}
	if f.Values[row] == nil {
		f.Values[row] = map[string]Stat{}
	}
	s := f.Values[row][target]
	s.Values = append(s.Values, v)
	sorted := slices.Clone(s.Values)
	slices.Sort(sorted)
	s.Min, s.Max, s.Median = sorted[0], sorted[len(sorted)-1], sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		s.Median = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	f.Values[row][target] = s
}

// median is the median of target in row; NaN when it was not measured,
// so that a goal on it is not met.
func (f *Figure) median(row, target string) float64 {
	if f == nil {
		return math.NaN()
	}
	s, ok := f.Values[row][target]
	if !ok {
		return math.NaN()
	}
	return s.Median
}

// checkTargets compares the run's figures with the goals.
func (r *Results) checkTargets() {
	ratio := func(fig, row string) float64 {
		f := r.get(fig)
		return f.median(row, "chat_gateway") / f.median(row, "reverse_proxy")
	}
	add := func(goal string, v float64, limit string, met bool, detail string) {
		if r.partial && math.IsNaN(v) {
			return
		}
		t := Target{Goal: goal, Limit: limit, Met: met, Detail: detail}
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			t.Value = new(round(v))
		}
		r.Targets = append(r.Targets, t)
	}
	v := ratio("cpu_per_request", "100 B")
	add("CPU per small request, chat_gateway / reverse_proxy", v, "≤ 1.15", v <= 1.15, "100 B, 8 concurrent")
	fr := r.get("fixed_rate_p50")
	v = fr.median("latency", "chat_gateway") - fr.median("latency", "reverse_proxy")
	add("Added p50 latency at a fixed rate over reverse_proxy (ms)", v, "< 0.2", v < 0.2, "200 req/s, 100 B")
	v = ratio("cpu_per_request", "1 MiB")
	add("CPU per 1 MiB request, chat_gateway / reverse_proxy", v, "≤ 2", v <= 2, "")
	for _, n := range []int{20, 100} {
		v = ratio("cpu_per_event", fmt.Sprintf("%d-event replies", streamEvents(n)))
		add("CPU per streamed event, chat_gateway / reverse_proxy", v, "≤ 1.3", v <= 1.3, fmt.Sprintf("%d-event replies, in a burst", streamEvents(n)))
	}
	v = ratio("embeddings_cpu", embeddingsRow)
	add("CPU per embeddings reply, chat_gateway / reverse_proxy", v, "≤ 1.5", v <= 1.5, embeddingsRow)
	v = r.get("embeddings_copies").median(embeddingsRow, "chat_gateway")
	add("Copies of each embeddings reply in flight chat_gateway holds beyond reverse_proxy", v, "≤ 1", v <= 1, "peak RSS difference / bytes in flight")
	v = ratio("responses_cpu_per_event", responsesRow)
	add("CPU per streamed Responses event, chat_gateway / reverse_proxy", v, "≤ 1.5", v <= 1.5, responsesRow)
	v = ratio("paced_cpu_per_event", pacedStreamsRow)
	add("CPU per event of paced streams, chat_gateway / reverse_proxy", v, "≤ 1.15", v <= 1.15, pacedStreamsRow)
	if f := r.get("cpu_by_status"); f != nil {
		echo := f.median("per request", "echo")
		for _, t := range f.Targets[1:] {
			v = f.median("per request", t) / echo
			switch t {
			case keyLimitMemory:
				add("CPU per request with a key and memory limits, / echo without", v, "≤ 1.05", v <= 1.05, "100 B, 8 concurrent")
				continue
			case keyLimitBudget:
				b := f.median("per request", t) / f.median("per request", keyLimitMemory)
				add("CPU per request with prices and a budget, / with the same key and limits without", b, "≤ 1.05", b <= 1.05, "100 B, 8 concurrent, memory store")
				continue
			case keyLimitRedis:
				add("CPU per request with a key and Redis limits, / echo without", v, "published", !math.IsNaN(v), "100 B, 8 concurrent")
				added := f.median(refusalP50, t) - f.median(refusalP50, "echo")
				add("Added latency p50 of a key and Redis limits over echo (µs)", added, "published", !math.IsNaN(added), fmt.Sprintf("%d req/s", refusalRate))
				continue
			}
			add("CPU per request, "+t+" / echo 200", v, "< 1", v < 1, "100 B, 8 concurrent")
		}
	}
	tt := r.get("ttft")
	v = tt.median(pooledP99, "chat_gateway") - tt.median(pooledP99, "reverse_proxy")
	add("Added time to first token p99 over reverse_proxy (ms)", v, "≤ 1", v <= 1, "streams of every round")
	if m := r.get("memory_per_stream"); m != nil && len(m.Rows) > 0 {
		row := m.Rows[len(m.Rows)-1]
		g, p := m.median(row, "chat_gateway"), m.median(row, "reverse_proxy")
		add("Memory per idle stream, chat_gateway / reverse_proxy", g/p, "≤ 1.1", g/p <= 1.1, row)
		add("Memory per idle stream, chat_gateway (KiB)", g, "< 64", g < 64, row)
	}
	r.cacheTargets(add)
	t := r.get("throughput")
	row := "32 clients"
	v = t.median(row, "echo") / t.median(row, "reverse_proxy")
	add("Echo throughput / reverse_proxy throughput", v, "≥ 1", v >= 1, row+", 100 B")
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }

func (r *Results) write(dir string) error {
	r.checkTargets()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	if r.get("cpu_per_request") != nil { // not with -only
		if err := os.WriteFile(filepath.Join(dir, "cpu-per-request.svg"), []byte(r.chart()), 0o644); err != nil {
			return err
		}
	}
	if f := r.get("peers"); f != nil {
		return os.WriteFile(filepath.Join(dir, "peers.svg"), []byte(r.peerChart(f)), 0o644)
	}
	return nil
}

func (r *Results) markdown() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# chat_gateway benchmark\n\n`%s` on %s CPUs (%s), %s, Go %s, Caddy %s; %s.\n",
		r.Command, r.Machine["cpus"], r.Machine["cpu"], r.Machine["kernel"], strings.TrimPrefix(r.Machine["go"], "go"), firstWord(r.Machine["caddy"]), r.Date)
	fmt.Fprintf(&sb, "%d rounds of %s per cell, configurations alternating; each cell is the median (min–max). Run took %s.\n\n", r.Rounds, r.Round, r.Duration)
	sb.WriteString("## Targets\n\n| goal | on | measured | target | met |\n|---|---|---|---|---|\n")
	for _, t := range r.Targets {
		met := "yes"
		if !t.Met {
			met = "**no**"
		}
		value := math.NaN()
		if t.Value != nil {
			value = *t.Value
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s |\n", t.Goal, t.Detail, fmtNum(value), t.Limit, met)
	}
	if len(r.Peers) > 0 {
		sb.WriteString("\n## Peers\n\n| gateway | version | command (`{port}`, `{upstream}`: the harness's) | request headers |\n|---|---|---|---|\n")
		for _, p := range r.Peers {
			fmt.Fprintf(&sb, "| %s | %s | `%s` | `%s` |\n", p.Name, p.Version, p.Command, p.Headers)
		}
	}
	if len(r.Skipped) > 0 {
		sb.WriteString("\n## Not measured\n\n")
		for _, name := range slices.Sorted(maps.Keys(r.Skipped)) {
			fmt.Fprintf(&sb, "- %s: %s\n", name, r.Skipped[name])
		}
	}
	for _, f := range r.Figures {
		fmt.Fprintf(&sb, "\n## %s", f.Title)
		if f.Unit != "" {
			fmt.Fprintf(&sb, " (%s)", f.Unit)
		}
		sb.WriteString("\n\n| | " + strings.Join(f.Targets, " | ") + " |\n|---" + strings.Repeat("|---", len(f.Targets)) + "|\n")
		for _, row := range f.Rows {
			sb.WriteString("| " + row)
			for _, t := range f.Targets {
				s, ok := f.Values[row][t]
				if !ok {
					if _, failed := f.Failed[t]; failed {
						sb.WriteString(" | fails")
					} else {
						sb.WriteString(" | ")
					}
					continue
				}
				fmt.Fprintf(&sb, " | %s (%s–%s)", fmtNum(s.Median), fmtNum(s.Min), fmtNum(s.Max))
			}
			sb.WriteString(" |\n")
		}
		for _, t := range slices.Sorted(maps.Keys(f.Failed)) {
			fmt.Fprintf(&sb, "\n%s fails: %s\n", t, f.Failed[t])
		}
	}
	return sb.String()
}

func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// chart draws CPU per request against message size, log-log, as SVG.
func (r *Results) chart() string {
	f := r.get("cpu_per_request")
	const w, h, left, bottom, top, right = 720, 420, 70, 50, 40, 160
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, row := range f.Rows {
		for _, t := range f.Targets {
			if v := f.median(row, t); v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	x := func(i int) float64 { return left + float64(i)*float64(w-left-right)/float64(len(f.Rows)-1) }
	y := func(v float64) float64 {
		return top + (1-(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo)))*float64(h-top-bottom)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&sb, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&sb, `<text x="%d" y="22" font-size="15">CPU time per request against message size (median, µs, log scale)</text>`+"\n", left)
	for v := lo; v <= hi*1.0001; v *= 10 {
		fmt.Fprintf(&sb, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			left, w-right, y(v), y(v), left-6, y(v)+4, fmtNum(v))
	}
	for i, row := range f.Rows {
		fmt.Fprintf(&sb, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(i), h-bottom+20, row)
	}
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}
	for k, t := range f.Targets {
		var pts []string
		for i, row := range f.Rows {
			if v := f.median(row, t); v > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(i), y(v)))
				fmt.Fprintf(&sb, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(i), y(v), colors[k%len(colors)])
			}
		}
		fmt.Fprintf(&sb, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", colors[k%len(colors)], strings.Join(pts, " "))
		fmt.Fprintf(&sb, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", w-right+12, top+20+k*18, colors[k%len(colors)], t)
	}
	fmt.Fprintf(&sb, `<text x="%d" y="%d" fill="#555">%s CPUs, Go %s, %s</text>`+"\n", left, h-8, r.Machine["cpus"], strings.TrimPrefix(r.Machine["go"], "go"), firstWord(r.Machine["caddy"]))
	sb.WriteString("</svg>\n")
	return sb.String()
}

// peerChart draws the CPU per request and per streamed event of each
// gateway in the peer comparison as horizontal bars, one panel each.
func (r *Results) peerChart(f *Figure) string {
	rows := []string{peerCPURequest, peerCPUEvent}
	const w, left, right, bar, gap, panelGap, top = 720, 130, 90, 22, 6, 44, 40
	panel := len(f.Targets)*(bar+gap) + panelGap
	h := top + len(rows)*panel + 20
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&sb, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&sb, `<text x="10" y="22" font-size="15">CPU time per request and per streamed event (median, µs; shorter is better)</text>`+"\n")
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}
	for i, row := range rows {
		y0 := top + i*panel
		hi := 0.0
		for _, t := range f.Targets {
			if v := f.median(row, t); v > hi { // NaN: a gateway that fails
				hi = v
			}
		}
		fmt.Fprintf(&sb, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y0+12, row)
		for k, t := range f.Targets {
			y := y0 + 20 + k*(bar+gap)
			fmt.Fprintf(&sb, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y+bar/2+4, t)
			v, ok := f.Values[row][t]
			if !ok || hi <= 0 {
				fmt.Fprintf(&sb, `<text x="%d" y="%d" fill="#555">fails</text>`+"\n", left+4, y+bar/2+4)
				continue
			}
			length := v.Median / hi * float64(w-left-right)
			fmt.Fprintf(&sb, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y, length, bar, colors[k%len(colors)])
			fmt.Fprintf(&sb, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(left)+length+6, y+bar/2+4, fmtNum(v.Median))
		}
	}
	fmt.Fprintf(&sb, `<text x="10" y="%d" fill="#555">%s CPUs, Go %s, %s</text>`+"\n", h-6, r.Machine["cpus"], strings.TrimPrefix(r.Machine["go"], "go"), firstWord(r.Machine["caddy"]))
	sb.WriteString("</svg>\n")
	return sb.String()
}
