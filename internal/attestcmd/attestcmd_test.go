package attestcmd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Must show: help goes to stdout with the synopsis of the command as
// invoked and every flag, as `hallmark attest --help` did under cobra; a
// usage error is one line on stderr (exit 2), not the error and the whole
// help twice over; a command that cannot start is reported under the
// command's own name.
func TestUsageAndHelp(t *testing.T) {
	dir, err := os.MkdirTemp("", "hm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })

	for _, tc := range []struct {
		command string
		args    []string
		code    int
		stdout  []string // each in stdout
		stderr  string   // exactly
	}{
		{"hallmark-attest", []string{"--help"}, 0, []string{"Usage: hallmark-attest --step NAME [--material PATH]...", "-product", "-wait-log-timeout", "HALLMARK_AGENT_SOCKET"}, ""},
		{"hallmark-attest", []string{"-h"}, 0, []string{"Usage: hallmark-attest --step NAME"}, ""},
		{"hallmark attest", []string{"--help"}, 0, []string{"Usage: hallmark attest --step NAME", "-claim KEY=VALUE"}, ""},
		{"hallmark-attest", []string{"--step", "b", "--bogus"}, 2, nil, "hallmark-attest: flag provided but not defined: -bogus (see hallmark-attest --help)\n"},
		{"hallmark attest", []string{"--product", "p"}, 2, nil, "hallmark: --step is required\n"},
		{"hallmark attest", []string{"--step", "b", "--progress", "sometimes", "--product", "p"}, 2, nil,
			"hallmark: invalid value \"sometimes\" for flag -progress: \"sometimes\" is not auto, always or never (see hallmark attest --help)\n"},
		{"hallmark-attest", []string{"--step=b", "--product=p", "--socket=" + socket, "--", filepath.Join(dir, "no-such-command")}, 127, nil,
			"hallmark-attest: fork/exec " + filepath.Join(dir, "no-such-command") + ": no such file or directory\n" +
				"hallmark-attest: " + filepath.Join(dir, "no-such-command") + " exited with status 127; step b not attested\n"},
	} {
		t.Run(tc.command+" "+tc.args[len(tc.args)-1], func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			env := Env{Stdin: nil, Stdout: &stdout, Stderr: &stderr, LookupEnv: func(string) (string, bool) { return "", false }}
			require.Equal(t, tc.code, Run(context.Background(), tc.command, tc.args, env), "stderr: %s", stderr.String())
			require.Equal(t, tc.stderr, stderr.String())
			for _, s := range tc.stdout {
				require.Contains(t, stdout.String(), s)
			}
			if tc.stdout == nil {
				require.Empty(t, stdout.String())
			}
		})
	}
}
