package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

// newCLI registers the forwarded signals for `hallmark
// attest` alone: every other command keeps SIGHUP and SIGQUIT at their
// defaults, and is cancelled on SIGINT and SIGTERM through its context.
func TestNewCLISignals(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		attest bool
	}{
		{[]string{"attest", "--step", "b", "--product", "p", "--", "true"}, true},
		{[]string{"attest"}, true},
		{[]string{"verify", "x"}, false},
		{[]string{"help", "attest"}, false},
		{[]string{"status"}, false},
		{nil, false},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			c := newCLI(tc.args)
			defer c.stop()
			require.Equal(t, tc.attest, c.attestSignals != nil)
			require.Equal(t, tc.attest, c.ctx.Done() == nil, "only the others run in a context their signals cancel")
		})
	}
}

// newCLI registers the forwarded signals exactly when cobra runs `hallmark
// attest`: its guess is checked against the command cobra runs, however
// the command line is written.
func TestNewCLIFindsWhatCobraRuns(t *testing.T) {
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
