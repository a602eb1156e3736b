package anthropic

import (
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
	"github.com/chatgateway/caddy-chat-gateway/internal/sse"
)

// benchChunk is the chunk the root package's BenchmarkRelay relays.
var benchChunk = []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}`)

// BenchmarkChatEvent is the chat relay's work per event outside the
// writer: normalize the chunk and frame it. The baseline for
// BenchmarkStreamEvent, which must cost at most twice as much.
func BenchmarkChatEvent(b *testing.B) {
	s := &openai.Stream{Meta: openai.Meta{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11", Model: "m"}}
	var chunk, out []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if chunk, err = s.AppendChunk(chunk[:0], benchChunk); err != nil {
			b.Fatal(err)
		}
		out = sse.AppendEvent(out[:0], "", chunk)
	}
}

// BenchmarkStreamEvent is the translation of a text chunk into its
// content_block_delta event, framed.
func BenchmarkStreamEvent(b *testing.B) {
	s := &Stream{ReplyOptions: ReplyOptions{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11", Model: "m"}}
	out, _ := s.Chunk(nil, benchChunk) // message_start and the block's start
	b.ReportAllocs()
	for b.Loop() {
		var e *openai.Error
		if out, e = s.Chunk(out[:0], benchChunk); e != nil {
			b.Fatal(e)
		}
	}
}

// BenchmarkStreamToolEvent is the translation of a piece of tool call
// arguments, which is held until the end of the stream.
func BenchmarkStreamToolEvent(b *testing.B) {
	chunk := []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"path\": \"/tmp"}}]},"logprobs":null,"finish_reason":null}]}`)
	s := &Stream{ReplyOptions: ReplyOptions{ID: "0b6c2e9e-2d51-4a43-9b0a-4a6f3b9d9c11", Model: "m"}, MaxToolBytes: 1 << 62}
	out, _ := s.Chunk(nil, []byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"read","arguments":"{"}}]}}]}`))
	b.ReportAllocs()
	for b.Loop() {
		var e *openai.Error
		if out, e = s.Chunk(out[:0], chunk); e != nil {
			b.Fatal(e)
		}
		if len(s.tools[0].args) > 1<<20 {
			s.tools[0].args = s.tools[0].args[:1]
		}
	}
}
