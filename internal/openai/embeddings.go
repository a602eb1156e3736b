package openai

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
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
	p := requestParser{RequestReader: NewRequestReader(body, embeddingsNames...), req: &ChatRequest{}}
	var input []byte
	size, b64 := 0, false
	e := p.Read(func(key []byte, at int) (int, error) {
		switch {
		case jsonwalk.KeyIs(key, "input"):
			end, n, err := p.textsOrTokens("input", at, false)
			if err == nil {
				input, size = body[at:end], n
			}
			return end, err
		case jsonwalk.KeyIs(key, "encoding_format"):
			end, err := p.Value(at, 1)
			switch v := string(body[at:end]); {
			case err != nil, v == "null", v == `"float"`:
			case v == `"base64"`:
				b64 = true
			default:
				p.Fail(InvalidValue("encoding_format", "'encoding_format' must be float or base64."))
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
	// Embeddings neither stream nor generate tokens.
	req.Stream, req.IncludeUsage, req.MaxOutputTokens, req.Outputs, req.NoOutput, req.base64 = false, false, 0, 0, true, b64
	return req, nil
}

// ErrInvalidEmbeddings is returned for a backend reply that is not a
// JSON object with a data array.
var ErrInvalidEmbeddings = errors.New("backend reply is not an embeddings list")

// Normalize fills in usage.prompt_tokens, usage.total_tokens and model
// where the backend left them out, and keeps every other byte as sent:
// the reply fed whole to the normalizer of NewReplyWriter. The reply's
// members are validated, except the vectors in data, which are only
// checked to be well nested: reading 40 MB of numbers would cost more
// than forwarding them.
func (ep embeddingsEndpoint) Normalize(dst, body []byte, m Meta) ([]byte, Reply, error) {
	if dst == nil {
		dst = make([]byte, 0, len(body)+128)
	}
	out := appendWriter(dst)
	w := ep.NewReplyWriter(&out, m)
	if _, err := w.Write(body); err != nil {
		return dst, Reply{}, err
	}
	rep, err := w.Close()
	if err != nil {
		return dst, Reply{}, err
	}
	return out, rep, nil
}

// appendWriter is an io.Writer that appends to itself.
type appendWriter []byte

func (a *appendWriter) Write(p []byte) (int, error) {
	*a = append(*a, p...)
	return len(p), nil
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
