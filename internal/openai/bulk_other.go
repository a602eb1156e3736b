//go:build !amd64 || purego

package openai

// skip returns the index of the first quote or bracket in b from i, or
// len(b).
func (s *bulkScan) skip(b []byte, i int) int { return s.next.skip(b, i) }
