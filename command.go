package chatgateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "chat-gateway",
		Usage: "new-key [--id <name>] | hash-key | usage [--period day|week|month] [--address <admin>] [--json]",
		Short: "Makes and hashes chat_gateway client keys; prints what each key spent",
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

usage asks the running Caddy's admin API (--address; else the admin
address of --config; else localhost:2019) for the current
month's (--period) requests, tokens and cost per identity and model,
and what is left of each budget, and prints them as tables (--json:
the admin API's reply as it is).
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
			usage := &cobra.Command{
				Use:   "usage [--period day|week|month] [--address <admin>] [--json]",
				Short: "Prints what each identity used and spent, and its budgets left",
				Args:  cobra.NoArgs,
				RunE: func(c *cobra.Command, _ []string) error {
					period, _ := c.Flags().GetString("period")
					address, _ := c.Flags().GetString("address")
					config, _ := c.Flags().GetString("config")
					adapter, _ := c.Flags().GetString("adapter")
					raw, _ := c.Flags().GetBool("json")
					addr, err := caddycmd.DetermineAdminAPIAddress(address, nil, config, adapter)
					if err != nil {
						return err
					}
					return printUsage(c.OutOrStdout(), addr, period, raw)
				},
			}
			usage.Flags().String("period", "month", "day, week or month: the current UTC one")
			usage.Flags().String("address", "", "The admin API's address (default: --config's, else localhost:2019)")
			usage.Flags().String("config", "", "A config file to read the admin address from")
			usage.Flags().String("adapter", "", "The adapter of --config")
			usage.Flags().Bool("json", false, "Print the admin API's JSON reply")
			cmd.AddCommand(newKey, hashKey, usage)
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

// printUsage prints the usage report of the Caddy whose admin API is at
// addr.
func printUsage(w io.Writer, addr, period string, raw bool) error {
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, usagePath+"?period="+url.QueryEscape(period), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if raw {
		_, err = w.Write(body)
		return err
	}
	var report usageReport
	if err := json.Unmarshal(body, &report); err != nil {
		return fmt.Errorf("the admin API's reply is not a usage report: %w", err)
	}
	return writeUsageTables(w, &report)
}

// writeUsageTables writes report as two tables: use by identity and
// model, then budgets.
func writeUsageTables(w io.Writer, report *usageReport) error {
	fmt.Fprintf(w, "This %s, from %s to %s (UTC):\n\n", report.Period, report.Start.Format(time.DateOnly), report.End.Format(time.DateOnly))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "IDENTITY\tMODEL\tREQUESTS\tPROMPT TOKENS\tCOMPLETION TOKENS\tCOST USD\n")
	var total float64
	for _, r := range report.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.6f\n", r.Identity, r.Model, r.Requests, r.Prompt, r.Completion, r.CostUSD)
		total += r.CostUSD
	}
	fmt.Fprintf(tw, "total\t\t\t\t\t%.6f\n", total)
	if err := tw.Flush(); err != nil || len(report.Budgets) == 0 {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "BUDGET\tPERIOD\tLIMIT USD\tUSED USD\tLEFT USD\tRESETS\n")
	for _, b := range report.Budgets {
		fmt.Fprintf(tw, "%s\t%s\t%.6f\t%.6f\t%.6f\t%s\n", b.Scope, b.Period, b.LimitUSD, b.UsedUSD, b.LeftUSD, b.Resets.Format(time.RFC3339))
	}
	return tw.Flush()
}
