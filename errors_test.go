package chatgateway

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/chatgateway/caddy-chat-gateway/internal/anthropic"
	"github.com/chatgateway/caddy-chat-gateway/internal/openai"
)

// Every error the gateway can send is in the errors table
// (docs/errors.md, which the README links), with the status and type it
// is sent with, so a user who sees one can look it up.
func TestErrorCodesDocumented(t *testing.T) {
	readme, err := os.ReadFile("docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Errors\n")
	if !ok {
		t.Fatal("docs/errors.md has no Errors section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows [][]string // situation, status, type, code
	for line := range strings.Lines(section) {
		cells := strings.Split(strings.TrimSpace(line), "|")
		if len(cells) != 6 || strings.HasPrefix(cells[1], "---") || strings.TrimSpace(cells[2]) == "status" {
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells[1:5])
	}
	if len(rows) < 20 {
		t.Fatalf("found %d rows in the errors table: it no longer reads as situation | status | type | code", len(rows))
	}
	for _, k := range openai.Catalogue() {
		found := false
		for _, row := range rows {
			if !strings.Contains(row[3], "`"+k.Code+"`") {
				continue
			}
			found = true
			switch status := row[1]; {
			case strings.HasPrefix(status, strconv.Itoa(k.Status)):
			case status == "error event" && k.Class.BackendFault(): // a stream's failure after it started
			default:
				t.Errorf("%s: docs/errors.md says status %q, the gateway sends %d", k.Code, status, k.Status)
			}
			if k.Class == openai.ClassCancelled {
				continue // never sent
			}
			if !strings.Contains(row[2], "`"+k.Type+"`") && !strings.Contains(row[2], "`"+anthropic.ErrorType(k.Status)+"`") {
				t.Errorf("%s: docs/errors.md says type %q, the gateway sends %s (%s on the Messages route)", k.Code, row[2], k.Type, anthropic.ErrorType(k.Status))
			}
		}
		if !found {
			t.Errorf("error code %q is not in the errors table", k.Code)
		}
	}

	// And the table names no code the gateway does not send: each is in
	// the catalogue or answered by the shipped Caddyfile.
	known := map[string]bool{}
	for _, k := range openai.Catalogue() {
		known[k.Code] = true
	}
	caddyfile, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	params := regexp.MustCompile("\\(param `[^`]*`( or `[^`]*`)?\\)|\\(with `param`\\)")
	for _, row := range rows {
		for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(params.ReplaceAllString(row[3], ""), -1) {
			if code := m[1]; !known[code] && !strings.Contains(string(caddyfile), `"code":"`+code+`"`) {
				t.Errorf("the errors table lists code %q, which the gateway never sends", code)
			}
		}
	}
}
