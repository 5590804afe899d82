package e2e

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// doctor runs `hallmark doctor` against the shared stack with extra flags
// overriding the defaults, returning its output and exit code.
func doctor(t *testing.T, override ...string) (string, int) {
	t.Helper()
	args := []string{"doctor",
		"--spire-socket", stack.SPIRE.WorkloadAPIAddr(),
		"--agent-health-addr", stack.Agent.HealthAddr,
		"--socket", stack.Agent.Socket,
	}
	args = append(args, override...) // later flags win
	out, err := exec.Command(stack.Bins.CLI, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	require.NoError(t, err, "output: %s", out)
	return string(out), 0
}

func failedChecks(out string) []string {
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "FAIL" {
			names = append(names, f[1])
		}
	}
	return names
}

// Must show: on a working node every link is OK, and each broken link is
// named with its fix.
func TestDoctor(t *testing.T) {
	t.Parallel()
	t.Run("healthy", func(t *testing.T) {
		out, code := doctor(t)
		t.Log("\n" + out)
		require.Equal(t, 0, code, out)
		require.Empty(t, failedChecks(out), out)
		for _, name := range []string{"spire", "agent", "agent-svid", "server", "signing-cert", "policy", "socket", "whoami", "delegation"} {
			require.Regexp(t, `(?m)^(OK|WARN)\s+`+name+`\s`, out)
		}
		require.Contains(t, out, builderID, "SPIRE and the agent both know the CLI as the builder:\n%s", out)
		require.Contains(t, out, `rule "builders"`)
	})
	t.Run("wrong socket", func(t *testing.T) {
		out, code := doctor(t, "--socket", filepath.Join(stack.Dir, "nope.sock"))
		require.Equal(t, 1, code, out)
		require.Equal(t, []string{"socket"}, failedChecks(out), out)
		require.Regexp(t, `(?m)^SKIP\s+whoami\s`, out, "WhoAmI needs the socket")
		require.Contains(t, out, "fix: start hallmark-agent, or pass its socket_path as --socket")
	})
	t.Run("wrong health address", func(t *testing.T) {
		out, code := doctor(t, "--agent-health-addr", "127.0.0.1:1")
		require.Equal(t, 1, code, out)
		require.Equal(t, []string{"agent"}, failedChecks(out), out)
		require.Regexp(t, `(?m)^SKIP\s+signing-cert\s`, out, "the status checks need /status")
		require.Contains(t, out, "--agent-health-addr")
	})
}
