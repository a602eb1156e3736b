package keys

import (
	"errors"
	"strings"
)

// Models is a compiled model allow-list: exact names in a map, globs as
// their literal parts.
type Models struct {
	all   bool
	exact map[string]struct{}
	globs [][]string // each pattern split at its stars
}

// CompileModels compiles names and globs, where * stands for any run of
// characters (possibly empty).
func CompileModels(patterns []string) (*Models, error) {
	m := &Models{exact: make(map[string]struct{})}
	for _, p := range patterns {
		switch {
		case p == "":
			return nil, errors.New("empty model pattern")
		case strings.Trim(p, "*") == "":
			m.all = true
		case !strings.Contains(p, "*"):
			m.exact[p] = struct{}{}
		default:
			m.globs = append(m.globs, strings.Split(p, "*"))
		}
	}
	return m, nil
}

// Match reports whether model is allowed.
func (m *Models) Match(model string) bool {
	if m.all {
		return true
	}
	if _, ok := m.exact[model]; ok {
		return true
	}
	for _, parts := range m.globs {
		if globMatch(parts, model) {
			return true
		}
	}
	return false
}

// globMatch matches s against a pattern split at its stars: the first
// part is a prefix, the last a suffix, the others appear in order
// between them. Leftmost matching of the middle parts is enough, as a
// star absorbs anything.
func globMatch(parts []string, s string) bool {
	first, last := parts[0], parts[len(parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	s = s[len(first) : len(s)-len(last)]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return true
}
