package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/agent/agentstatus"
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

// Must show: what `hallmark status` prints of the outbox, each state an
// operator must act on named in capitals: a refusal by the log, damaged
// records, and an outbox refusing every write.
func TestPrintOutbox(t *testing.T) {
	at := time.Date(2026, 12, 8, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		ob   *agentstatus.OutboxStatus
		want []string
		not  []string
	}{
		{"none", nil, nil, []string{"outbox:"}},
		{"healthy", &agentstatus.OutboxStatus{Queued: 3}, []string{"outbox:            3 queued for the log, 0 refused by it\n"}, []string{"REFUS", "DAMAGED"}},
		{"refused by the log", &agentstatus.OutboxStatus{Refused: 1, RecentRefusals: []agentstatus.Refusal{{InvocationID: "inv-1", Reason: "the signing CA is revoked", At: at}}},
			[]string{"  REFUSED inv-1 at 2026-12-08T03:00:00Z: the signing CA is revoked\n"}, []string{"REFUSING"}},
		{"damaged", &agentstatus.OutboxStatus{Damaged: 2, DamagedDir: "/var/lib/hallmark-agent/outbox/damaged"},
			[]string{"  DAMAGED: 2 damaged outbox records moved aside, kept in /var/lib/hallmark-agent/outbox/damaged (inspect, then remove)\n"}, nil},
		{"refusing writes", &agentstatus.OutboxStatus{Queued: 5, RefusingWrites: "write outbox.log: no space left on device; cut back: input/output error"},
			[]string{"  REFUSING WRITES, so every attestation: write outbox.log: no space left on device; cut back: input/output error (restart hallmark-agent once its data_dir is writable)\n"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			printOutbox(&b, tc.ob)
			for _, w := range tc.want {
				require.Contains(t, b.String(), w)
			}
			for _, n := range tc.not {
				require.NotContains(t, b.String(), n)
			}
		})
	}
}
