package cache

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestInputs(t *testing.T) {
	for in, want := range map[string]string{
		`"hello"`:            `["\"hello\""] single`,
		`["a","b\u0063"]`:    `["\"a\"" "\"bc\""]`,
		`[1, 2, 3]`:          `["[1,2,3]"] single`,
		`[[1,2],[3]]`:        `["[1,2]" "[3]"]`,
		`[]`:                 `[]`,
		`[ "a" , 1.0e0 ]`:    `["\"a\"" "1"]`,
		`{"not":"an input"}`: `["{\"not\":\"an input\"}"] single`,
	} {
		items, single, err := Inputs([]byte(in))
		var got []string
		for _, it := range items {
			got = append(got, string(it))
		}
		s := fmt.Sprintf("%q", got)
		if got == nil {
			s = "[]"
		}
		if single {
			s += " single"
		}
		if err != nil || s != want {
			t.Errorf("%s: %s, %v, want %s", in, s, err, want)
		}
	}
	if _, _, err := Inputs([]byte(`["a",`)); err == nil {
		t.Error("a truncated input: no error")
	}
}

// Merge puts stored and computed vectors in the request's order, keeps
// the backend's model and usage, and refuses a reply that does not
// answer each input sent once.
func TestMerge(t *testing.T) {
	cached := [][]byte{[]byte("[1]"), nil, []byte("[3]"), nil}
	backend := `{"object":"list","data":[{"index":1,"embedding":[4]},{"index":0,"embedding":[2]}],"model":"e-1","usage":{"prompt_tokens":7,"total_tokens":7}}`
	out, fresh, err := Merge([]byte(backend), cached, "e")
	want := `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1]},{"object":"embedding","index":1,"embedding":[2]},{"object":"embedding","index":2,"embedding":[3]},{"object":"embedding","index":3,"embedding":[4]}],"model":"e-1","usage":{"prompt_tokens":7,"total_tokens":7}}`
	if err != nil || string(out) != want || string(fresh[1]) != "[2]" || string(fresh[3]) != "[4]" || fresh[0] != nil {
		t.Fatalf("%s, fresh %q, %v; want %s", out, fresh, err, want)
	}
	out, _, err = Merge(nil, [][]byte{[]byte(`"AAAA"`)}, "e")
	if err != nil || string(out) != `{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAA"}],"model":"e","usage":{"prompt_tokens":0,"total_tokens":0}}` {
		t.Fatalf("all cached: %s, %v", out, err)
	}
	for _, bad := range []string{
		`{"data":[{"index":0,"embedding":[2]}]}`,                             // one of two
		`{"data":[{"index":0,"embedding":[2]},{"index":0,"embedding":[4]}]}`, // twice
		`{"data":[{"index":0,"embedding":[2]},{"index":5,"embedding":[4]}]}`, // out of range
		`{"data":[{"embedding":[2]},{"index":1,"embedding":[4]}]}`,           // no index
		`{"data":[{"index":0,"embedding":[2]},{"index":1}]}`,                 // no vector
		`not json`,
	} {
		if _, _, err := Merge([]byte(bad), cached, "e"); err == nil {
			t.Errorf("%s: merged, want an error", bad)
		}
	}
}

// FuzzMerge: whatever the backend sends, Merge either refuses it or
// returns valid JSON with one vector per input, in order.
func FuzzMerge(f *testing.F) {
	f.Add(`{"data":[{"index":0,"embedding":[0.5]}],"model":"m","usage":{"prompt_tokens":1}}`, uint8(0b101))
	f.Add(`{"data":[]}`, uint8(0))
	f.Fuzz(func(t *testing.T, backend string, mask uint8) {
		cached := make([][]byte, 4)
		for i := range cached {
			if mask&(1<<i) != 0 {
				cached[i] = []byte(fmt.Sprintf("[%d]", i))
			}
		}
		out, _, err := Merge([]byte(backend), cached, "m")
		if err != nil {
			return
		}
		var reply struct {
			Data []struct {
				Index     int             `json:"index"`
				Embedding json.RawMessage `json:"embedding"`
			} `json:"data"`
		}
		if err := json.Unmarshal(out, &reply); err != nil || len(reply.Data) != len(cached) {
			t.Fatalf("merged %s: %v, want valid JSON with %d vectors", out, err, len(cached))
		}
		for i, d := range reply.Data {
			if d.Index != i || cached[i] != nil && string(d.Embedding) != string(cached[i]) || strings.TrimSpace(string(d.Embedding)) == "" {
				t.Fatalf("vector %d of %s is not input %d's", i, out, i)
			}
		}
	})
}

// FuzzInputs: only valid JSON splits, into inputs that are each valid
// JSON in canonical form (their own canonical form).
func FuzzInputs(f *testing.F) {
	f.Add(`["a","b"]`)
	f.Add(`[[1,2],[3.0]]`)
	f.Add(`[ "a" , 1.0e0 ]`)
	f.Fuzz(func(t *testing.T, input string) {
		items, _, err := Inputs([]byte(input))
		if err != nil {
			return
		}
		if !json.Valid([]byte(input)) {
			t.Fatalf("%s is not valid JSON, yet it split into %q", input, items)
		}
		for _, it := range items {
			again, err := canonicalJSON(it)
			if err != nil || !json.Valid(it) || string(again) != string(it) {
				t.Fatalf("input %s of %s is not in canonical form: %s, %v", it, input, again, err)
			}
		}
	})
}
