package openai

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestBulkSkip checks skip (assembly on amd64) and bulkNext.skip against
// bytes.IndexAny, from every offset of buffers of random bytes with
// quotes, brackets and the bytes that look like them.
func TestBulkSkip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("0123456789.,-e \x02\x1b\x1d\x5a\x5c\x7a\x7c\xff\"[]{}")
	for n := range 200 {
		b := make([]byte, n)
		for i := range b {
			b[i] = '1'
			if rng.IntN(8) == 0 {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		var s bulkScan
		s.next.reset()
		var next bulkNext
		next.reset()
		for i := 0; i <= n; i++ {
			want := len(b)
			if j := bytes.IndexAny(b[i:], bulkBytes); j >= 0 {
				want = i + j
			}
			if got := s.skip(b, i); got != want {
				t.Fatalf("skip(%q, %d) = %d, want %d", b, i, got, want)
			}
			if got := next.skip(b, i); got != want {
				t.Fatalf("bulkNext.skip(%q, %d) = %d, want %d", b, i, got, want)
			}
		}
	}
}

// BenchmarkBulkSkip scans a 32 KiB read of a vector's numbers, in cache
// as a read just made is: skip (assembly on amd64) and bulkNext.skip.
func BenchmarkBulkSkip(b *testing.B) {
	chunk := embeddingsReply(2, 4096, false)[:32<<10]
	chunk = chunk[bytes.IndexByte(chunk, '[')+1:]
	chunk = chunk[bytes.IndexByte(chunk, '[')+1:] // the first vector's numbers
	b.Run("skip", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		var s bulkScan
		for b.Loop() {
			s.next.reset()
			if s.skip(chunk, 0) != len(chunk) {
				b.Fatal("a quote or bracket in the numbers")
			}
		}
	})
	b.Run("IndexByte", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		var n bulkNext
		for b.Loop() {
			n.reset()
			if n.skip(chunk, 0) != len(chunk) {
				b.Fatal("a quote or bracket in the numbers")
			}
		}
	})
}
