//go:build amd64 && !purego

package openai

// skip returns the index of the first quote or bracket in b from i, or
// len(b): indexBulk tests 16 bytes at a time, and its candidates (the
// quotes and brackets, and the control byte 0x02) are checked here.
func (s *bulkScan) skip(b []byte, i int) int {
	for i < len(b) {
		i += indexBulk(b[i:])
		for end := min(len(b), i+16); i < end; i++ {
			if isBulk(b[i]) {
				return i
			}
		}
	}
	return len(b)
}

// indexBulk returns the index of the first byte of b that is '"', '{'
// or '}' once OR-ed with 0x20 (a quote, a bracket, or the control byte
// 0x02), looking at whole 16-byte blocks only; else the index where the
// last block ends.
//
//go:noescape
func indexBulk(b []byte) int
