package openai

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"

	"github.com/chatgateway/caddy-chat-gateway/internal/jsonwalk"
)

// embeddingsEndpoint is /v1/embeddings. Its replies can be tens of
// megabytes of vectors: they are forwarded as the backend sent them,
// with only usage and model filled in where missing.
type embeddingsEndpoint struct{}

func (embeddingsEndpoint) Name() string { return "embeddings" }

// Parse validates an embeddings request: input (a string, strings,
// token ids or arrays of them) is required and not empty;
// encoding_format, when set, is float or base64.
func (embeddingsEndpoint) Parse(body []byte) (*Request, *Error) {
	p := requestParser{body: body, req: &ChatRequest{}}
	var input []byte
	size, b64 := 0, false
	e := p.parse(func(key []byte, at int) (int, error) {
		p.once(key)
		switch {
		case jsonwalk.KeyIs(key, "input"):
			end, n, err := p.textsOrTokens("input", at, false)
			if err == nil {
				input, size = body[at:end], n
			}
			return end, err
		case jsonwalk.KeyIs(key, "encoding_format"):
			end, err := scanValue(body, at, 1)
			switch v := string(body[at:end]); {
			case err != nil, v == "null", v == `"float"`:
			case v == `"base64"`:
				b64 = true
			default:
				p.fail(InvalidValue("encoding_format", "'encoding_format' must be float or base64."))
			}
			return end, err
		}
		return p.common(key, at)
	})
	if e != nil {
		return nil, e
	}
	if jsonwalk.IsNull(input) {
		return nil, MissingRequiredParameter("input", "Missing required parameter: 'input'.")
	}
	req := p.request(size, input)
	req.Stream, req.IncludeUsage, req.base64 = false, false, b64 // embeddings do not stream
	return req, nil
}

// ErrInvalidEmbeddings is returned for a backend reply that is not a
// JSON object with a data array.
var ErrInvalidEmbeddings = errors.New("backend reply is not an embeddings list")

// Normalize fills in usage.prompt_tokens, usage.total_tokens and model
// where the backend left them out, and keeps every other byte as sent.
// The reply's members are validated, except the vectors in data, which
// are only checked to be well nested: reading 40 MB of numbers would
// cost more than forwarding them. With a nil dst, body is edited in
// place (it grows only if the edit does not fit its capacity).
func (embeddingsEndpoint) Normalize(dst, body []byte, m Meta) ([]byte, Reply, error) {
	var rep Reply
	var usage, model []byte
	usageAt, modelAt := -1, -1
	hasData := false
	i := jsonwalk.SkipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return dst, rep, ErrInvalidEmbeddings
	}
	end, err := scanObject(body, i, 1, func(key []byte, at int) (int, error) {
		if jsonwalk.KeyIs(key, "data") && body[at] == '[' {
			hasData = true
			return skipBulk(body, at)
		}
		end, err := scanValue(body, at, 1)
		switch {
		case jsonwalk.KeyIs(key, "usage"):
			usage, usageAt = body[at:end], at
		case jsonwalk.KeyIs(key, "model"):
			model, modelAt = body[at:end], at
		}
		return end, err
	})
	if err != nil || !hasData || jsonwalk.SkipSpace(body, end) != len(body) {
		return dst, rep, ErrInvalidEmbeddings
	}
	closing := end - 1 // the object's '}'

	var prompt, total int64
	hasPrompt, hasTotal := false, false
	members(usage, func(k, v []byte) {
		n, ok := parseCount(v)
		switch {
		case !ok:
		case jsonwalk.KeyIs(k, "prompt_tokens"):
			prompt, hasPrompt = n, true
		case jsonwalk.KeyIs(k, "total_tokens"):
			total, hasTotal = n, true
		}
	})
	switch {
	case hasPrompt && !hasTotal:
		total = prompt
	case hasTotal && !hasPrompt:
		prompt = total
	case !hasPrompt:
		prompt = EstimateTokens(m.PromptBytes)
		total = prompt
		rep.Usage.Estimated = true
	}
	rep.Usage.PromptTokens = prompt

	// The edits, from the last to the first, so offsets stay true.
	var add []byte // members added before the closing brace
	modelOK := len(model) > 2 && model[0] == '"'
	if !modelOK && modelAt < 0 {
		add = appendString(append(add, `,"model":`...), m.Model)
	}
	usageOK := hasPrompt && hasTotal
	var fixedUsage []byte
	if !usageOK {
		if rep.Usage.Estimated || usage[0] != '{' {
			fixedUsage = strconv.AppendInt(append(fixedUsage, `{"prompt_tokens":`...), prompt, 10)
			fixedUsage = strconv.AppendInt(append(fixedUsage, `,"total_tokens":`...), total, 10)
			fixedUsage = append(fixedUsage, '}')
		} else {
			var o object
			o.open(nil)
			members(usage, o.member)
			if !hasPrompt {
				o.int("prompt_tokens", prompt)
			}
			if !hasTotal {
				o.int("total_tokens", total)
			}
			fixedUsage = o.close()
		}
		if usageAt < 0 {
			add = append(append(add, `,"usage":`...), fixedUsage...)
		}
	}
	if dst != nil {
		shift := len(dst)
		body = append(dst, body...)
		closing += shift
		if usageAt >= 0 {
			usageAt += shift
		}
		if modelAt >= 0 {
			modelAt += shift
		}
	}
	if len(add) > 0 {
		body = slices.Insert(body, closing, add...)
	}
	replaceModel := func() {
		if !modelOK && modelAt >= 0 {
			body = slices.Replace(body, modelAt, modelAt+len(model), appendString(nil, m.Model)...)
		}
	}
	replaceUsage := func() {
		if !usageOK && usageAt >= 0 {
			body = slices.Replace(body, usageAt, usageAt+len(usage), fixedUsage...)
		}
	}
	if usageAt > modelAt {
		replaceUsage()
		replaceModel()
	} else {
		replaceModel()
		replaceUsage()
	}
	return body, rep, nil
}

// skipBulk returns the index past the array at b[i], checking only that
// brackets match and strings are valid: eight bytes at a time where
// there are neither, as between the numbers of a vector.
func skipBulk(b []byte, i int) (int, error) {
	start := i
	var stackBuf [16]byte
	open := stackBuf[:0]
	for i < len(b) {
		for i+8 <= len(b) && bulkWord(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		if i >= len(b) {
			break
		}
		switch c := b[i]; c {
		case '"':
			end, err := scanString(b, i)
			if err != nil {
				return end, err
			}
			i = end
			continue
		case '[', '{':
			if len(open) >= maxDepth {
				return i, errDepth
			}
			open = append(open, c+2) // ']' and '}' follow '[' and '{' by 2
		case ']', '}':
			if len(open) == 0 || open[len(open)-1] != c {
				return i, errAt("mismatched "+string(c), i)
			}
			if open = open[:len(open)-1]; len(open) == 0 {
				return i + 1, nil
			}
		}
		i++
	}
	return i, errAt("unexpected end of input", start)
}

// bulkWord reports whether none of the 8 bytes of v is a quote or a
// bracket. OR-ing 0x20 folds '[' and ']' onto '{' and '}'.
func bulkWord(v uint64) bool {
	w := v | ones*0x20
	quote := w ^ (ones * '"')
	curly := w ^ (ones * '{')
	close := w ^ (ones * '}')
	return ((quote-ones)&^quote|(curly-ones)&^curly|(close-ones)&^close)&highs == 0
}

// echoDimensions is the size of echo mode's vectors.
const echoDimensions = 256

func (embeddingsEndpoint) Echo(dst []byte, req *Request, m Meta) ([]byte, Reply) {
	var inputs [][]byte
	if req.echo[0] == '[' {
		elements(req.echo, func(_ int, el []byte) {
			if el[0] == '"' || el[0] == '[' {
				inputs = append(inputs, el)
			}
		})
	}
	if len(inputs) == 0 { // one string or one array of token ids
		inputs = append(inputs, req.echo)
	}
	var o object
	o.open(dst)
	o.str("object", "list")
	o.key("data")
	o.buf = append(o.buf, '[')
	var vec [echoDimensions]float32
	var raw [4 * echoDimensions]byte
	for i, in := range inputs {
		if i > 0 {
			o.buf = append(o.buf, ',')
		}
		echoVector(&vec, in)
		var e object
		e.open(o.buf)
		e.str("object", "embedding")
		e.int("index", int64(i))
		e.key("embedding")
		if req.base64 {
			for j, x := range vec {
				binary.LittleEndian.PutUint32(raw[4*j:], math.Float32bits(x))
			}
			e.buf = append(e.buf, '"')
			e.buf = base64.StdEncoding.AppendEncode(e.buf, raw[:])
			e.buf = append(e.buf, '"')
		} else {
			e.buf = append(e.buf, '[')
			for j, x := range vec {
				if j > 0 {
					e.buf = append(e.buf, ',')
				}
				e.buf = strconv.AppendFloat(e.buf, float64(x), 'g', -1, 32)
			}
			e.buf = append(e.buf, ']')
		}
		o.buf = e.close()
	}
	o.buf = append(o.buf, ']')
	o.str("model", m.Model)
	rep := Reply{Usage: Usage{PromptTokens: EstimateTokens(req.PromptBytes), Estimated: true}}
	o.key("usage")
	o.buf = strconv.AppendInt(append(o.buf, `{"prompt_tokens":`...), rep.Usage.PromptTokens, 10)
	o.buf = strconv.AppendInt(append(o.buf, `,"total_tokens":`...), rep.Usage.PromptTokens, 10)
	o.buf = append(o.buf, '}')
	return o.close(), rep
}

// echoVector fills vec with a unit vector derived from a hash of the
// input (a string's text, or token ids as sent): equal inputs give
// equal vectors. It is a stand-in for tests, with no meaning.
func echoVector(vec *[echoDimensions]float32, input []byte) {
	text := input
	if input[0] == '"' {
		text = []byte(unquote(input))
	}
	sum := sha256.Sum256(text)
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(sum[:8]), binary.LittleEndian.Uint64(sum[8:16])))
	var x [echoDimensions]float64
	var norm float64
	for i := range x {
		x[i] = rng.NormFloat64()
		norm += x[i] * x[i]
	}
	norm = math.Sqrt(norm)
	for i := range vec {
		vec[i] = float32(x[i] / norm)
	}
}

// errNoStream is EchoStream's answer for an endpoint without streams.
var errNoStream = errors.New("the endpoint does not stream")

// NewStream returns nil: embeddings do not stream.
func (embeddingsEndpoint) NewStream(Meta) EventStream { return nil }

func (embeddingsEndpoint) AsksStreamUsage() bool { return false }

// EchoStream fails: embeddings do not stream, and Parse never asks to.
func (embeddingsEndpoint) EchoStream(*Request, Meta, Emit) (Reply, error) {
	return Reply{}, errNoStream
}
