package chatgateway

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// errorCodes matches where the gateway's code names the error code of a
// reply it sends: an Error's Code, Invalid's and timeoutError's code.
var errorCodes = regexp.MustCompile(`Code:\s*"([a-z_]+)"|Invalid\([^\n]*?, "([a-z_]+)", "|timeoutError\("([a-z_]+)"`)

// Every error code the gateway can send is in the README's Errors
// section (or the Messages route's documentation), so a user who sees
// one can look it up.
func TestErrorCodesDocumented(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	docs := string(readme)
	if extra, err := os.ReadFile("docs/anthropic.md"); err == nil {
		docs += string(extra)
	}
	found := 0
	for _, dir := range []string{".", "internal/openai", "internal/anthropic", "internal/limits", "internal/keys"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range errorCodes.FindAllStringSubmatch(string(src), -1) {
				code := m[1] + m[2] + m[3]
				found++
				if !strings.Contains(docs, "`"+code+"`") {
					t.Errorf("%s: error code %q is not in the README", file, code)
				}
			}
		}
	}
	if found < 20 {
		t.Fatalf("found %d error codes in the source: the pattern no longer matches how errors are built", found)
	}
}
