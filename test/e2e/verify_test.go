package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// End to end: a step attested with --wait-log verifies offline against the
// server's exported trusted root with `hallmark verify`; a tampered
// artifact does not, and the failing check is named.
func TestVerifyLoggedBundle(t *testing.T) {
	t.Parallel()
	ws := workspace(t, map[string]string{"src.c": "int main(void) { return 0; }"})
	out := filepath.Join(ws, "build.hallmark.json")
	attestCmd := exec.Command(stack.Bins.CLI, "attest", "--socket", stack.Agent.Socket, "--step", "build", "--wait-log",
		"--material", "src.c", "--product", "app", "--out", out, "--", "cp", "src.c", "app")
	attestCmd.Dir = ws
	output, err := attestCmd.CombinedOutput()
	require.NoError(t, err, "output: %s", output)
	require.Contains(t, string(output), ", logged)")

	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootFile := filepath.Join(ws, "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, root, 0o644))

	verify := func(artifact string) (string, int) {
		cmd := exec.Command(stack.Bins.CLI, "verify", artifact, "--bundle", out, "--trusted-root", rootFile)
		cmd.Dir = ws
		b, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(b), ee.ExitCode()
		}
		require.NoError(t, err)
		return string(b), 0
	}
	text, code := verify("app")
	require.Equal(t, 0, code, "verify: %s", text)

	require.NoError(t, os.WriteFile(filepath.Join(ws, "app.tampered"), []byte("int main(void) { return 1; }"), 0o644))
	text, code = verify("app.tampered")
	require.Equal(t, 1, code, "verify: %s", text)
	require.Contains(t, text, "subject")
}
