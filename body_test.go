package chatgateway

import (
	"io"
	"testing"
)

func TestBodyBuffers(t *testing.T) {
	for _, n := range []int{1, minPooled, minPooled + 1, 1 << 20, 100 << 20} {
		b := getBuffer(n)
		if len(b) != 0 || cap(b) < n {
			t.Fatalf("getBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		putBuffer(b)
	}

	var b body
	b.buf = getBuffer(100)
	r1, r2 := b.reader([]byte("abc")), b.reader([]byte("abc"))
	if got, _ := io.ReadAll(r1); string(got) != "abc" || b.open.Load() != 1 {
		t.Fatalf("read %q, %d readers open", got, b.open.Load())
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
