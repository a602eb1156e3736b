package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// Inputs splits the input of an embeddings request into the inputs of
// its vectors, each in canonical JSON: a string, or an array of token
// ids, is one; an array of strings or of token arrays is each of them.
// single reports an input that is not a list of inputs.
func Inputs(input []byte) (items [][]byte, single bool, err error) {
	if !utf8.Valid(input) {
		return nil, false, errNotUTF8
	}
	i := jsonwalk.SkipSpace(input, 0)
	if i < len(input) && input[i] == '[' {
		if j := jsonwalk.SkipSpace(input, i+1); j < len(input) && input[j] != '-' && (input[j] < '0' || input[j] > '9') {
			return inputList(input, i)
		}
	}
	item, err := canonicalJSON(input)
	if err != nil {
		return nil, false, err
	}
	return [][]byte{item}, true, nil
}

// inputList is each element of the array at input[i] in canonical JSON.
func inputList(input []byte, i int) (items [][]byte, single bool, err error) {
	c := canonicalizer{in: input}
	i = jsonwalk.SkipSpace(input, i+1)
	for i < len(input) && input[i] != ']' {
		mark := len(c.out)
		if i, err = c.value(i, 1); err != nil {
			return nil, false, err
		}
		items = append(items, c.out[mark:len(c.out):len(c.out)])
		switch i = jsonwalk.SkipSpace(input, i); {
		case i < len(input) && input[i] == ',':
			if i = jsonwalk.SkipSpace(input, i+1); i < len(input) && input[i] == ']' {
				return nil, false, errSyntax // a trailing comma
			}
		case i < len(input) && input[i] == ']':
		default:
			return nil, false, errSyntax
		}
	}
	if i >= len(input) || jsonwalk.SkipSpace(input, i+1) != len(input) {
		return nil, false, errSyntax
	}
	return items, false, nil
}

// ErrBadEmbeddings is Merge's error for a backend reply that does not
// answer the inputs it was sent, one vector each.
var ErrBadEmbeddings = errors.New("cache: the embeddings reply does not have one vector per input sent")

// embeddingsReply is what Merge reads of a backend's embeddings reply.
type embeddingsReply struct {
	Data []struct {
		Index     *int            `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Model json.RawMessage `json:"model"`
	Usage json.RawMessage `json:"usage"`
}

// Merge builds the reply to a request of len(cached) inputs: input i's
// vector is cached[i] when not nil, else the next of the backend's reply
// (nil when every vector is cached), which answers the other inputs in
// order. It returns the reply, with the backend's model and usage (or
// model and zero usage when there is no backend reply), and the vectors
// the backend computed, by input (nil for those cached).
func Merge(backend []byte, cached [][]byte, model string) (reply []byte, fresh [][]byte, err error) {
	missing := 0
	for _, v := range cached {
		if v == nil {
			missing++
		}
	}
	var up embeddingsReply
	if backend != nil {
		if err := json.Unmarshal(backend, &up); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadEmbeddings, err)
		}
	}
	if len(up.Data) != missing {
		return nil, nil, ErrBadEmbeddings
	}
	computed := make([][]byte, missing)
	for _, d := range up.Data {
		if d.Index == nil || *d.Index < 0 || *d.Index >= missing || computed[*d.Index] != nil || len(d.Embedding) == 0 || bytes.Equal(d.Embedding, []byte("null")) {
			return nil, nil, ErrBadEmbeddings
		}
		computed[*d.Index] = d.Embedding
	}
	fresh = make([][]byte, len(cached))
	size := 64 + len(up.Model) + len(up.Usage)
	for _, v := range cached {
		size += len(v) + 40
	}
	for _, v := range computed {
		size += len(v) + 40
	}
	out := make([]byte, 0, size)
	out = append(out, `{"object":"list","data":[`...)
	next := 0
	for i, v := range cached {
		if v == nil {
			v, fresh[i] = computed[next], computed[next]
			next++
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"object":"embedding","index":`...)
		out = strconv.AppendInt(out, int64(i), 10)
		out = append(out, `,"embedding":`...)
		out = append(out, v...)
		out = append(out, '}')
	}
	out = append(out, `],"model":`...)
	if len(up.Model) > 0 && !bytes.Equal(up.Model, []byte("null")) {
		out = append(out, up.Model...)
	} else {
		m, _ := json.Marshal(model)
		out = append(out, m...)
	}
	out = append(out, `,"usage":`...)
	if len(up.Usage) > 0 && !bytes.Equal(up.Usage, []byte("null")) {
		out = append(out, up.Usage...)
	} else {
		out = append(out, `{"prompt_tokens":0,"total_tokens":0}`...)
	}
	return append(out, '}'), fresh, nil
}
