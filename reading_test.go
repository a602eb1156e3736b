package chatgateway

import (
	"bytes"
	"encoding/json"
	"testing"
)

// readingRoutes are the paths of every route that reads a request body.
var readingRoutes = []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
	"/v1/messages", "/v1/messages/count_tokens"}

// budgetNames are the members a route reads an output budget from:
// none where it generates nothing.
func budgetNames(path string) []string {
	switch path {
	case "/v1/messages":
		return []string{"max_tokens"}
	case "/v1/embeddings", "/v1/messages/count_tokens":
		return nil
	}
	return []string{"max_tokens", "max_completion_tokens", "max_output_tokens"}
}

// streams reports whether a route's replies may stream: the others
// answer JSON, whatever the request says.
func streams(path string) bool {
	return path != "/v1/embeddings" && path != "/v1/messages/count_tokens"
}

// reading is what a JSON library makes of a request's model, stream
// flag and output budget (the largest of the budget members it reads).
type reading struct {
	model  *string
	stream bool
	budget int64
}

// exactReading reads body's top-level members by exact name, the first
// or the last of a name given twice (as a backend's decoder might):
// false if body is not a JSON object.
func exactReading(body []byte, budgets []string, last bool) (reading, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return reading{}, false
	}
	raw := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return reading{}, false
		}
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return reading{}, false
		}
		name := tok.(string)
		if _, seen := raw[name]; !seen || last {
			raw[name] = v
		}
	}
	var r reading
	var model string
	if json.Unmarshal(raw["model"], &model) == nil && raw["model"] != nil {
		r.model = &model
	}
	_ = json.Unmarshal(raw["stream"], &r.stream)
	for _, name := range budgets {
		var n int64
		if json.Unmarshal(raw[name], &n) == nil {
			r.budget = max(r.budget, n)
		}
	}
	return r, true
}

// foldedReading reads body as encoding/json does: member names matched
// whatever their case, the last one winning.
func foldedReading(body []byte, budgets []string) reading {
	var v struct {
		Model               *string
		Stream              *bool
		MaxTokens           *int64 `json:"max_tokens"`
		MaxCompletionTokens *int64 `json:"max_completion_tokens"`
		MaxOutputTokens     *int64 `json:"max_output_tokens"`
	}
	_ = json.Unmarshal(body, &v)
	r := reading{model: v.Model, stream: v.Stream != nil && *v.Stream}
	for _, name := range budgets {
		p := map[string]*int64{"max_tokens": v.MaxTokens, "max_completion_tokens": v.MaxCompletionTokens, "max_output_tokens": v.MaxOutputTokens}[name]
		if p != nil {
			r.budget = max(r.budget, *p)
		}
	}
	return r
}

// FuzzRequestReading checks that every route reads a request's model,
// stream flag and output budget as a backend would, whichever of the
// common readings its JSON library makes (exact names with the first or
// the last of a duplicate, or names whatever their case), or refuses it.
func FuzzRequestReading(f *testing.F) {
	const msgs = `"messages":[{"role":"user","content":"x"}]`
	for _, seed := range []string{
		`{"model":"m","max_tokens":10,` + msgs + `}`,
		`{"model":"secret","Model":"pub","max_tokens":1,` + msgs + `}`,
		`{"model":"m","max_tokens":4000,"MAX_TOKENS":1,` + msgs + `}`,
		`{"model":"a","mod\u0065l":"b","max_tokens":1,` + msgs + `}`,
		`{"model":"m","max_tokens":1,"stream":false,"stream":true,` + msgs + `}`,
		`{"model":"m","max_tokens":1,"max_completion_tokens":2000,` + msgs + `}`,
		"{\"model\":\"m\",\"\u017ftream\":true,\"max_tokens\":1," + msgs + `}`,
		`{"prompt":"x","model":"m","max_tokens":5}`,
		`{"input":"x","model":"m","max_output_tokens":7,"stream":true}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range readingRoutes {
			req, e := endpointFor(path).Parse(body)
			if e != nil {
				continue
			}
			budgets := budgetNames(path)
			first, ok := exactReading(body, budgets, false)
			if !ok {
				t.Fatalf("%s accepted %q, which is not a JSON object", path, body)
			}
			last, _ := exactReading(body, budgets, true)
			for name, r := range map[string]reading{"first-wins": first, "last-wins": last, "encoding/json": foldedReading(body, budgets)} {
				r.stream = r.stream && streams(path)
				if r.model != nil && *r.model != req.Model || r.stream != req.Stream || r.budget != req.MaxOutputTokens {
					model := "<none>"
					if r.model != nil {
						model = *r.model
					}
					t.Fatalf("%s %q: the gateway read model %q stream %v budget %d; a %s reading gives %q %v %d",
						path, body, req.Model, req.Stream, req.MaxOutputTokens, name, model, r.stream, r.budget)
				}
			}
		}
	})
}
