package openai

import "bytes"

// bulkNext finds the quotes and brackets of a chunk with bytes.IndexByte:
// it keeps, for each byte of bulkBytes, the index of its next occurrence
// in the chunk being scanned (len for none); an index before the scan's
// position is stale. It is skip where there is no assembly for it.
type bulkNext [len(bulkBytes)]int

// reset forgets what was found: a new chunk.
func (n *bulkNext) reset() {
	for k := range n {
		n[k] = -1
	}
}

// skip returns the index of the first byte of bulkBytes in b from i, or
// len(b). Each one's next occurrence is searched for once, when the last
// one has been passed: every byte of b is read at most once per byte of
// bulkBytes.
func (n *bulkNext) skip(b []byte, i int) int {
	first := len(b)
	for k := range n {
		if n[k] < i {
			n[k] = len(b)
			if j := bytes.IndexByte(b[i:], bulkBytes[k]); j >= 0 {
				n[k] = i + j
			}
		}
		first = min(first, n[k])
	}
	return first
}

// isBulk reports whether c is one of bulkBytes.
func isBulk(c byte) bool {
	return c == '"' || c == '[' || c == ']' || c == '{' || c == '}'
}
