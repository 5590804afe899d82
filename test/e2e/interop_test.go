package e2e

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

// Interop, end to end: a bundle the real agent and server made verifies
// with sigstore-go (github.com/sigstore/sigstore-go/pkg/verify) against
// the trusted root the server exports, with no Hallmark code in the
// verification path: the log entry as a Rekor v2 dsse entry with its
// inclusion proof and signed checkpoint, the RFC 3161 timestamp as the
// time of signing, the certificate chain, the artifact digest and the
// builder's SPIFFE ID.
func TestSigstoreGoVerifiesRealBundle(t *testing.T) {
	t.Parallel()
	ws := workspace(t, map[string]string{"src.c": "int main(void) { return 2; }"})
	out := filepath.Join(ws, "build.hallmark.json")
	cmd := exec.Command(stack.Bins.CLI, "attest", "--socket", stack.Agent.Socket, "--step", "build", "--wait-log",
		"--product", "app", "--out", out, "--", "cp", "src.c", "app")
	cmd.Dir = ws
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "output: %s", output)

	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	bundle, err := os.ReadFile(out)
	require.NoError(t, err)
	app, err := os.ReadFile(filepath.Join(ws, "app"))
	require.NoError(t, err)
	digest := sha256.Sum256(app)

	res, err := sigstorego.Verify(bundle, root, digest[:], harness.AgentID.String())
	require.NoError(t, err)
	require.Equal(t, harness.AgentID.String(), res.SAN)
	require.False(t, res.SignedAt.IsZero())

	// sigstore-go refuses what it should: another artifact, another builder.
	other := sha256.Sum256([]byte("not the product"))
	_, err = sigstorego.Verify(bundle, root, other[:], harness.AgentID.String())
	require.Error(t, err)
	_, err = sigstorego.Verify(bundle, root, digest[:], "spiffe://example.org/hallmark/agent/node-2")
	require.Error(t, err)
}
