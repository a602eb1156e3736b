package chatgateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "chat-gateway",
		Usage: "new-key [--id <name>] | hash-key",
		Short: "Makes and hashes chat_gateway client keys",
		Long: `
new-key prints a new random client key (sk-cg- and 43 base62
characters: 256 random bits), then the block to paste into the
chat_gateway auth block, which holds the key's SHA-256 only:

	key sha256:<hex> {
		id <name>
	}

--id names the key in logs and metrics (default: the first 8 hex
digits of its hash).

hash-key reads a key on stdin (a trailing newline is not part of it)
and prints its sha256:<hex> form, for keys made elsewhere.
`,
		CobraFunc: func(cmd *cobra.Command) {
			newKey := &cobra.Command{
				Use:   "new-key [--id <name>]",
				Short: "Prints a new client key and its auth block",
				Args:  cobra.NoArgs,
				RunE: func(c *cobra.Command, _ []string) error {
					id, _ := c.Flags().GetString("id")
					return printNewKey(c.OutOrStdout(), id)
				},
			}
			newKey.Flags().String("id", "", "The key's id in logs and metrics")
			hashKey := &cobra.Command{
				Use:   "hash-key",
				Short: "Prints the sha256:<hex> form of a key read on stdin",
				Args:  cobra.NoArgs,
				RunE: func(c *cobra.Command, _ []string) error {
					return printKeyHash(c.InOrStdin(), c.OutOrStdout())
				},
			}
			cmd.AddCommand(newKey, hashKey)
		},
	})
}

// printNewKey writes a new key, a blank line and its auth block entry.
func printNewKey(w io.Writer, id string) error {
	if err := validKeyID(id); err != nil {
		return err
	}
	key := keys.New()
	if id == "" {
		id = keys.DefaultID(key)
	}
	_, err := fmt.Fprintf(w, "%s\n\nkey %s {\n\tid %s\n}\n", key, keys.Hash(key), id)
	return err
}

// validKeyID refuses ids that would not survive as one Caddyfile token.
func validKeyID(id string) error {
	for _, c := range id {
		if c <= ' ' || c == '"' || c == '{' || c == '}' || c == '#' || c == '`' || c == 0x7f {
			return fmt.Errorf("--id %q: use letters, digits and punctuation other than quotes, braces and #", id)
		}
	}
	return nil
}

// printKeyHash reads one key from r, without its line ending, and
// writes its sha256:<hex> form.
func printKeyHash(r io.Reader, w io.Writer) error {
	line, err := bufio.NewReader(r).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if trimmed, ok := bytes.CutSuffix(line, []byte("\n")); ok {
		line = bytes.TrimSuffix(trimmed, []byte("\r"))
	}
	if len(line) == 0 {
		return errors.New("no key on stdin")
	}
	_, err = fmt.Fprintln(w, keys.Hash(string(line)))
	return err
}
