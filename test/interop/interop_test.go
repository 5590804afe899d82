// Package interop checks that Hallmark's bundles and trusted roots are
// what Sigstore's own verifier (github.com/sigstore/sigstore-go) accepts,
// with no Hallmark code in the verification path. The end-to-end version,
// on bundles made by a real agent and server, is in test/e2e.
package interop

import (
	"crypto/sha256"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

func TestSigstoreGoVerifiesHallmarkBundles(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	h, err := verifytest.New(now)
	require.NoError(t, err)
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, now.Add(-time.Minute), now.Add(5*time.Minute))
	require.NoError(t, err)
	product := []byte("the product")
	b, err := h.Attest(agent, verifytest.Step("build", agent.ID, map[string]string{"dist/p": string(product)}), now)
	require.NoError(t, err)
	bundleJSON, err := protojson.Marshal(b)
	require.NoError(t, err)
	rootJSON, err := h.TrustedRootJSON()
	require.NoError(t, err)
	digest := sha256.Sum256(product)

	res, err := sigstorego.Verify(bundleJSON, rootJSON, digest[:], agent.ID)
	require.NoError(t, err)
	require.Equal(t, now.UTC(), res.SignedAt.UTC())

	// And the same refusals as Hallmark's own verifier.
	other := sha256.Sum256([]byte("another product"))
	_, err = sigstorego.Verify(bundleJSON, rootJSON, other[:], agent.ID)
	require.Error(t, err, "wrong artifact")
	_, err = sigstorego.Verify(bundleJSON, rootJSON, digest[:], "spiffe://example.org/hallmark/agent/other")
	require.Error(t, err, "another builder")
	_, err = verify.Verify(bundleJSON, []verify.Digest{verify.DigestBytes("dist/p", product)}, verify.Options{TrustedRoot: mustRoot(t, rootJSON)})
	require.NoError(t, err, "Hallmark's verifier agrees")
}

func mustRoot(t *testing.T, data []byte) *verify.TrustedRoot {
	t.Helper()
	r, err := verify.ParseTrustedRoot(data)
	require.NoError(t, err)
	return r
}
