package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/harness"
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
		cmd := exec.Command(stack.Bins.CLI, "verify", artifact, "--bundle", out, "--trusted-root", rootFile, "--builder-id-prefix", harness.AgentID.String())
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

// hallmark search finds a logged attestation by digest and rebuilds a
// bundle that verifies.
func TestSearchByDigest(t *testing.T) {
	t.Parallel()
	ws := workspace(t, map[string]string{"lib.so": "library " + t.Name()})
	attestCmd := exec.Command(stack.Bins.CLI, "attest", "--socket", stack.Agent.Socket, "--step", "test", "--wait-log",
		"--product", "lib.so", "--out", filepath.Join(ws, "orig.json"))
	attestCmd.Dir = ws
	output, err := attestCmd.CombinedOutput()
	require.NoError(t, err, "output: %s", output)
	sum := sha256sum(t, ws, "lib.so")[0] // "lib.so HEX"
	digest := "sha256:" + sum[len("lib.so "):]

	found := filepath.Join(ws, "found")
	searchAndVerify(t, ws, digest, "lib.so", found)

	none := exec.Command(stack.Bins.CLI, "search", "--server", "http://"+stack.Server.HealthAddr, "--digest", "sha256:"+strings.Repeat("0", 64), "--out-dir", found)
	output, err = none.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "output: %s", output)
	require.Equal(t, 1, ee.ExitCode())

	// By builder: the agent's attestation, or none for another builder.
	for builder, want := range map[string]int{harness.AgentID.String(): 0, "spiffe://" + harness.TrustDomain + "/hallmark/agent/elsewhere": 1} {
		by := exec.Command(stack.Bins.CLI, "search", "--server", "http://"+stack.Server.HealthAddr, "--digest", digest,
			"--out-dir", filepath.Join(ws, "by"), "--builder-id-prefix", builder)
		output, err = by.CombinedOutput()
		code := 0
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		require.Equal(t, want, code, "builder %s: %s", builder, output)
	}
	bad := exec.Command(stack.Bins.CLI, "search", "--server", "http://"+stack.Server.HealthAddr, "--digest", digest, "--builder-id-prefix", "runner-1")
	output, err = bad.CombinedOutput()
	require.ErrorAs(t, err, &ee, "output: %s", output)
	require.Equal(t, 2, ee.ExitCode())
	require.Contains(t, string(output), "want a SPIFFE ID")
}

// Nothing lost: a step attested whose bundle cannot be written (here a
// file size limit, `ulimit -f`, as a full disk would) fails, leaves the
// previous bundle untouched and nothing beside it, and says where the
// attestation is: the `hallmark search` it names fetches it from the
// real server's log, and the bundle it rebuilds verifies.
func TestBundleNotWrittenIsFoundInTheLog(t *testing.T) {
	t.Parallel()
	ws := workspace(t, map[string]string{"app.bin": "app " + t.Name()})
	out := filepath.Join(ws, "build.hallmark.json")
	require.NoError(t, os.WriteFile(out, []byte("previous"), 0o644))
	// 2 blocks: 1 KiB in dash's blocks of 512 bytes, 2 KiB in bash's;
	// a bundle is several.
	step := exec.Command("sh", "-c", `ulimit -f 2 && exec "$@"`, "sh", stack.Bins.Attest, "--socket", stack.Agent.Socket,
		"--step", "build", "--wait-log", "--product", "app.bin", "--out", out, "--", "true")
	step.Dir = ws
	output, err := step.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "output: %s", output)
	require.Equal(t, 1, ee.ExitCode(), "output: %s", output)
	require.Contains(t, string(output), "hallmark-attest: attested (invocation ")
	require.Contains(t, string(output), ", logged) but the bundle was not written: write "+out+": file too large")
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "previous", string(got))
	beside, err := filepath.Glob(filepath.Join(ws, ".*"))
	require.NoError(t, err)
	require.Empty(t, beside)

	_, hint, ok := strings.Cut(string(output), "`hallmark search --digest ")
	require.True(t, ok, "output: %s", output)
	digest, _, ok := strings.Cut(hint, "`")
	require.True(t, ok, "output: %s", output)
	sum := sha256sum(t, ws, "app.bin")[0] // "app.bin HEX"
	require.Equal(t, "sha256:"+sum[len("app.bin "):], digest)
	searchAndVerify(t, ws, digest, "app.bin", filepath.Join(ws, "found"), "--builder-id-prefix", harness.AgentID.String())
}

// searchAndVerify runs `hallmark search` for digest (with flags), which
// must write one bundle into found, and `hallmark verify` of artifact in
// ws against it and the server's trusted root, which must pass.
func searchAndVerify(t *testing.T, ws, digest, artifact, found string, flags ...string) {
	t.Helper()
	search := exec.Command(stack.Bins.CLI, append([]string{"search", "--server", "http://" + stack.Server.HealthAddr,
		"--digest", digest, "--out-dir", found}, flags...)...)
	output, err := search.CombinedOutput()
	require.NoError(t, err, "output: %s", output)
	matches, err := filepath.Glob(filepath.Join(found, "*.hallmark.json"))
	require.NoError(t, err)
	require.Len(t, matches, 1, "output: %s", output)

	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootFile := filepath.Join(ws, "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, root, 0o644))
	verify := exec.Command(stack.Bins.CLI, "verify", filepath.Join(ws, artifact), "--bundle", matches[0], "--trusted-root", rootFile,
		"--builder-id-prefix", harness.AgentID.String())
	output, err = verify.CombinedOutput()
	require.NoError(t, err, "verify: %s", output)
}
