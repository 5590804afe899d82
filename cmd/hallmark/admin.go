package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// adminCmd is `hallmark admin`: trust-root rotation and the state of the
// trust roots, for security teams.
func adminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Rotate trust roots and show their state (security teams)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(rotateCmd(), adminStatusCmd())
	return cmd
}

// rotations are the trust roots `hallmark admin rotate` drives, one
// subcommand each, defined in admin_<root>.go.
var rotations = []func() *cobra.Command{
	rotateSPIRECmd,
	rotateSigningCmd,
}

func rotateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate a trust root step by step: prepare, activate, taint, revoke",
		Long: `Rotate a trust root step by step. Each step prints the state it leaves,
and refuses, saying why and what to run instead, when the state does not
allow it. The runbook is docs/rotation.md.`,
		Args: cobra.NoArgs,
	}
	for _, c := range rotations {
		cmd.AddCommand(c())
	}
	return cmd
}

// statusSection is one part of `hallmark admin status`. bind registers the
// section's flags on the command and returns what collects its report once
// they are parsed.
type statusSection struct {
	name string // the key in --json output
	bind func(cmd *cobra.Command) func(ctx context.Context) (statusReport, error)
}

// statusReport is a section's findings: printed as text, or marshalled
// under the section's name with --json.
type statusReport interface {
	Print(w io.Writer)
}

// statusSections are printed by `hallmark admin status`, in this order.
var statusSections = []statusSection{
	{name: "spire", bind: bindSPIREStatus},
	{name: "signing", bind: bindSigningStatus},
}

func adminStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the state of every trust root (SPIRE authorities, signing CAs)",
		Args:  cobra.NoArgs,
	}
	collect := make([]func(context.Context) (statusReport, error), len(statusSections))
	for i, s := range statusSections {
		collect[i] = s.bind(cmd)
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runAdminStatus(cmd.Context(), cmd.OutOrStdout(), asJSON, collect)
	}
	return cmd
}

// runAdminStatus collects every section, even after one fails, and prints
// them; a failed section shows its error in its place. The command fails
// only when every section failed: a host need not run every trust root's
// server (SPIRE alone, say) for the others to be useful.
func runAdminStatus(ctx context.Context, w io.Writer, asJSON bool, collect []func(context.Context) (statusReport, error)) error {
	var errs []error
	out := map[string]any{}
	for i, c := range collect {
		name := statusSections[i].name
		rep, err := c(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			if asJSON {
				out[name] = map[string]string{"error": err.Error()}
			} else {
				fmt.Fprintf(w, "%s: ERROR %v\n\n", name, err)
			}
			continue
		}
		if asJSON {
			out[name] = rep
		} else {
			rep.Print(w)
			fmt.Fprintln(w)
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	}
	if len(errs) < len(collect) {
		return nil
	}
	return errors.Join(errs...)
}
