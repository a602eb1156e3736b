package sse

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

type got struct {
	Type, Data, ID string
	Retry          int64
}

func parseAll(t testing.TB, p *Parser, chunks ...string) ([]got, error) {
	t.Helper()
	var out []got
	for _, c := range chunks {
		err := p.Feed([]byte(c), func(e Event) error {
			out = append(out, got{string(e.Type), string(e.Data), string(e.ID), e.Retry})
			return nil
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func TestParser(t *testing.T) {
	msg := func(data string) got { return got{Data: data, Retry: -1} }
	tests := []struct {
		name    string
		in      string
		want    []got
		pending bool
	}{
		{"lf", "data: a\n\ndata: b\n\n", []got{msg("a"), msg("b")}, false},
		{"crlf", "data: a\r\n\r\ndata: b\r\n\r\n", []got{msg("a"), msg("b")}, false},
		{"cr", "data: a\r\rdata: b\r\r", []got{msg("a"), msg("b")}, false},
		{"mixed endings", "data: a\r\n\rdata: b\n\r\n", []got{msg("a"), msg("b")}, false},
		{"no space", "data:a\n\n", []got{msg("a")}, false},
		{"two spaces keep one", "data:  a\n\n", []got{msg(" a")}, false},
		{"multi-line data", "data: a\ndata: b\ndata\n\n", []got{msg("a\nb\n")}, false},
		{"comment ignored", ": ping\n\n: keep-alive\ndata: x\n\n", []got{msg("x")}, false},
		{"empty data dispatches", "data\n\n", []got{msg("")}, false},
		{"no data, no event", "event: error\n\n", nil, false},
		{"event type", "event: error\ndata: {}\n\n", []got{{Type: "error", Data: "{}", Retry: -1}}, false},
		{"type reset after dispatch", "event: error\ndata: 1\n\ndata: 2\n\n", []got{{Type: "error", Data: "1", Retry: -1}, msg("2")}, false},
		{"id persists", "id: 7\ndata: a\n\ndata: b\n\n", []got{{Data: "a", ID: "7", Retry: -1}, {Data: "b", ID: "7", Retry: -1}}, false},
		{"id with NUL ignored", "id: a\x00b\ndata: a\n\n", []got{msg("a")}, false},
		{"retry", "retry: 1500\ndata: a\n\n", []got{{Data: "a", Retry: 1500}}, false},
		{"bad retry ignored", "retry: 15x\ndata: a\n\n", []got{msg("a")}, false},
		{"unknown field ignored", "foo: bar\ndata: a\n\n", []got{msg("a")}, false},
		{"bom", "\xef\xbb\xbfdata: a\n\n", []got{msg("a")}, false},
		{"cut mid event", "data: a\n\ndata: b\n", []got{msg("a")}, true},
		{"cut mid line", "data: a\n\ndata: b", []got{msg("a")}, true},
		{"invalid utf-8 passes through", "data: \xff\xfe\n\n", []got{msg("\xff\xfe")}, false},
		{"done", "data: [DONE]\n\n", []got{msg("[DONE]")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Whole, then split at every position, then byte by byte: all
			// must give the same events.
			splits := [][]string{{tt.in}}
			for i := 1; i < len(tt.in); i++ {
				splits = append(splits, []string{tt.in[:i], tt.in[i:]})
			}
			var bytewise []string
			for i := range len(tt.in) {
				bytewise = append(bytewise, tt.in[i:i+1])
			}
			splits = append(splits, bytewise)
			for _, chunks := range splits {
				var p Parser
				out, err := parseAll(t, &p, chunks...)
				if err != nil {
					t.Fatalf("%q: %v", chunks, err)
				}
				if fmt.Sprint(out) != fmt.Sprint(tt.want) {
					t.Fatalf("%q: got %+v, want %+v", chunks, out, tt.want)
				}
				if p.Pending() != tt.pending {
					t.Fatalf("%q: Pending() = %v, want %v", chunks, p.Pending(), tt.pending)
				}
			}
		})
	}
}

func TestParserLongLines(t *testing.T) {
	big := strings.Repeat("x", 5<<20) // past bufio.Scanner's 64 KiB, as a base64 image is
	var p Parser
	out, err := parseAll(t, &p, "data: "+big[:3<<20], big[3<<20:]+"\n\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Data != big {
		t.Fatalf("long event lost: %d events, want 1 holding the whole line", len(out))
	}

	p = Parser{MaxLineSize: 16}
	_, err = parseAll(t, &p, "data: 0123456789", "0123456789\n\n")
	if !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("err = %v, want ErrLineTooLong", err)
	}
	p = Parser{MaxLineSize: 16}
	if _, err := parseAll(t, &p, "data: 0123456789\n\n"); err != nil {
		t.Fatalf("line at the limit refused: %v", err)
	}
}

func TestParserCallbackError(t *testing.T) {
	stop := errors.New("stop")
	var p Parser
	n := 0
	err := p.Feed([]byte("data: a\n\ndata: b\n\n"), func(Event) error { n++; return stop })
	if err != stop || n != 1 {
		t.Fatalf("err = %v after %d events, want stop after 1", err, n)
	}
}

func TestAppendEventRoundTrip(t *testing.T) {
	for _, data := range []string{"", "x", `{"a":1}`, "a\nb", "a\r\nb\rc\n", "[DONE]"} {
		b := AppendEvent(nil, "error", []byte(data))
		var p Parser
		out, err := parseAll(t, &p, string(b))
		if err != nil {
			t.Fatal(err)
		}
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(data)
		if len(out) != 1 || out[0].Data != want || out[0].Type != "error" {
			t.Fatalf("AppendEvent(%q) read back as %+v, want one error event with data %q", data, out, want)
		}
	}
}

func FuzzParser(f *testing.F) {
	for _, s := range []string{"data: a\n\n", "data:a\r\n\r\n", ": ping\r\revent: error\rdata: x\r\r", "\xef\xbb\xbfdata\n\n", "id: 1\nretry: 10\ndata: [DONE]\n\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		// The same input fed whole and in pieces must give the same events.
		collect := func(chunk int) (string, error) {
			var sb strings.Builder
			p := Parser{MaxLineSize: 1 << 16}
			for b := in; len(b) > 0; {
				n := min(chunk, len(b))
				err := p.Feed(b[:n], func(e Event) error {
					fmt.Fprintf(&sb, "%q %q %q %d|", e.Type, e.Data, e.ID, e.Retry)
					if bytes.ContainsAny(e.Type, "\r\n") {
						t.Fatalf("event type holds a line break: %q", e.Type)
					}
					return nil
				})
				if err != nil {
					return sb.String(), err
				}
				b = b[n:]
			}
			return sb.String(), nil
		}
		whole, err1 := collect(len(in) + 1)
		parts, err2 := collect(int(split%16) + 1)
		if (err1 == nil) != (err2 == nil) || (err1 == nil && whole != parts) {
			t.Fatalf("whole %q (%v) != split %q (%v)", whole, err1, parts, err2)
		}
	})
}

func BenchmarkParser(b *testing.B) {
	var stream []byte
	for range 100 {
		stream = AppendEvent(stream, "", []byte(`{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":null}]}`))
	}
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	var p Parser
	n := 0
	for b.Loop() {
		for s := stream; len(s) > 0; {
			k := min(512, len(s))
			_ = p.Feed(s[:k], func(Event) error { n++; return nil })
			s = s[k:]
		}
	}
}
