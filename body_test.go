package chatgateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestBodyBuffers(t *testing.T) {
	for _, n := range []int{1, minPooled, minPooled + 1, 1 << 20, 100 << 20} {
		b := getBuffer(n)
		if len(b) != 0 || cap(b) < n {
			t.Fatalf("getBuffer(%d): len %d cap %d, want len 0 cap at least %d", n, len(b), cap(b), n)
		}
		putBuffer(b)
	}

	var b body
	b.buf = getBuffer(100)
	r1, r2 := b.reader([]byte("abc")), b.reader([]byte("abc"))
	if got, _ := io.ReadAll(r1); string(got) != "abc" || b.open.Load() != 1 {
		t.Fatalf("read %q, %d readers open, want \"abc\", 1", got, b.open.Load())
	}
	buf := make([]byte, 1)
	r2.Read(buf) // a transport that stopped mid-body
	if b.open.Load() != 1 {
		t.Fatal("a reader not read to the end counts as closed")
	}
	if _, ok := r2.(io.WriterTo); ok {
		t.Fatal("bodyReader has WriteTo: copies could skip Read and the end")
	}
	b.release()
	if b.buf != nil {
		t.Fatal("release kept the buffer")
	}
}

// TestSmallBodyOwnBuffer: a stream holds its body to its end, so a small
// body is kept in a buffer of its size; a large one stays in the pool's.
func TestSmallBodyOwnBuffer(t *testing.T) {
	for _, n := range []int{100, minPooled/4 - 1, minPooled / 4, 50 << 10} {
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(strings.Repeat("a", n)))
		var b body
		got, e := readBody(httptest.NewRecorder(), r, &b, 1<<20, time.Second)
		if e != nil || len(got) != n || &b.buf[0] != &got[0] {
			t.Fatalf("%d bytes: read %d, %v, want all %d in the body's buffer", n, len(got), e, n)
		}
		if small := n < minPooled/4; small != (cap(got) < minPooled) {
			t.Errorf("%d bytes: held in a buffer of %d, want under %d exactly when under %d bytes", n, cap(got), minPooled, minPooled/4)
		}
		b.release()
	}
}

func TestReplyBufferBounded(t *testing.T) {
	// 100 MB arriving 32 KiB at a time, length unknown: refused at the
	// cap, and the buffer never grows past it.
	var rb replyBuffer
	rb.WriteHeader(200)
	p := make([]byte, 32<<10)
	written := 0
	for ; written < 100<<20; written += len(p) {
		if _, err := rb.Write(p); err != nil {
			break
		}
		if cap(rb.body) > maxReplyBody {
			t.Fatalf("buffer of %d bytes for a cap of %d", cap(rb.body), maxReplyBody)
		}
	}
	if !rb.tooLarge || written > maxReplyBody {
		t.Fatalf("took %d bytes, tooLarge %v, want tooLarge at no more than the cap of %d", written, rb.tooLarge, maxReplyBody)
	}

	// A declared length over the cap: refused at the first write.
	rb = replyBuffer{}
	rb.Header().Set("Content-Length", "100000000")
	rb.WriteHeader(200)
	if _, err := rb.Write(p); err == nil || !rb.tooLarge || len(rb.body) != 0 {
		t.Fatalf("a 100 MB declared reply was taken: %v, %d bytes, want an error, tooLarge and 0 bytes", err, len(rb.body))
	}

	// A declared length within the cap is held in one buffer of its size.
	rb = replyBuffer{}
	rb.Header().Set("Content-Length", strconv.Itoa(1<<20))
	rb.WriteHeader(200)
	for range (1 << 20) / len(p) {
		if _, err := rb.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if len(rb.body) != 1<<20 || cap(rb.body) > 4<<20 {
		t.Fatalf("1 MiB reply: %d bytes in a buffer of %d, want 1048576 in at most 4 MiB", len(rb.body), cap(rb.body))
	}
}

func TestReplyBufferLimit(t *testing.T) {
	// An embeddings reply may be larger than a chat reply: its limit is
	// its own, and it is still a limit.
	rb := replyBuffer{limit: 48 << 20}
	rb.Header().Set("Content-Length", strconv.Itoa(45<<20))
	rb.WriteHeader(200)
	p := make([]byte, 1<<20)
	for range 45 {
		if _, err := rb.Write(p); err != nil {
			t.Fatalf("45 MiB under a 48 MiB limit: %v", err)
		}
	}
	if cap(rb.body) != 45<<20 {
		t.Fatalf("a reply of declared length held in %d bytes, want one buffer of its size", cap(rb.body))
	}
	if _, err := rb.Write(make([]byte, 4<<20)); err == nil || !rb.tooLarge {
		t.Fatal("past its limit, the reply was taken")
	}
}
