package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The CI examples' scripts (deploy/examples/scripts), run as a CI job runs
// them, with the binaries on PATH: attest-step.sh attests a step through
// hallmark-attest, verify-step.sh verifies it against the trusted root, and
// refuses the product once it changed.
func TestCIScripts(t *testing.T) {
	t.Parallel()
	scripts, err := filepath.Abs("../../deploy/examples/scripts")
	require.NoError(t, err)
	ws := workspace(t, map[string]string{"src.c": "int main(void) { return 0; }"})
	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootFile := filepath.Join(t.TempDir(), "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, root, 0o644))
	env := append(os.Environ(),
		"PATH="+stack.Bins.Dir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HALLMARK_AGENT_SOCKET="+stack.Agent.Socket,
		"HALLMARK_MATERIALS=src.c",
		"HALLMARK_BUILDER_PREFIX=spiffe://example.org/hallmark/agent",
		"HALLMARK_TRUSTED_ROOT="+rootFile,
	)
	run := func(script string, args ...string) (string, error) {
		cmd := exec.Command("bash", append([]string{filepath.Join(scripts, script)}, args...)...)
		cmd.Dir, cmd.Env = ws, env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := run("attest-step.sh", "build", "app", "--", "cp", "src.c", "app")
	require.NoError(t, err, out)
	require.Contains(t, out, "hallmark-attest: attested step build (1 products", "the light client, found on PATH")
	require.FileExists(t, filepath.Join(ws, ".hallmark", "build.hallmark.json"))

	out, err = run("verify-step.sh", "build", "app")
	require.NoError(t, err, out)

	require.NoError(t, os.WriteFile(filepath.Join(ws, "app"), []byte("tampered"), 0o644))
	out, err = run("verify-step.sh", "build", "app")
	require.Error(t, err, out)
}
