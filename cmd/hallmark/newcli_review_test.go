package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Review: newCLI's guess of the subcommand must be the command cobra runs.
func TestReviewNewCLIFindMatchesExecute(t *testing.T) {
	errStop := errors.New("stop")
	for _, args := range [][]string{
		{"attest", "--step", "b", "--product", "p", "--", "true"},
		{"attest", "--help"},
		{"attest", "-h"},
		{"help", "attest"},
		{"-h", "attest"},
		{"-h", "attest", "--step", "b", "--product", "p", "--", "true"},
		{"--help", "attest", "--step", "b", "--product", "p", "--", "true"},
		{"--help=false", "attest", "--step", "b", "--product", "p", "--", "true"},
		{"-h=false", "attest", "--step", "b"},
		{"--", "attest"},
		{"att"},
		{"__complete", "attest", ""},
		{"completion", "bash"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			c := newCLI(args)
			defer c.stop()
			ran := "(none)"
			c.root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { ran = cmd.Name(); return errStop }
			c.root.SetArgs(args)
			c.root.SetOut(new(strings.Builder))
			c.root.SetErr(new(strings.Builder))
			err := c.root.ExecuteContext(c.ctx)
			t.Logf("newCLI attest=%v; cobra ran %q (err %v)", c.attestSignals != nil, ran, err)
			if (ran == "attest") != (c.attestSignals != nil) {
				t.Errorf("newCLI registered attest signals=%v but cobra ran %q", c.attestSignals != nil, ran)
			}
		})
	}
}
