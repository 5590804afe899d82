package pipeline_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// The provenance reader sees what the agent wrote: git sources, caller
// claims and file materials, apart.
func TestReadProvenance(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	r.checkout.Materials = []attest.Artifact{artifact("seed.txt", "seed")}
	b := f.bundles(t, r.checkout)[0].Bundle
	parsed, err := attest.ParseBundle(b)
	require.NoError(t, err)
	unsigned, err := bundleWithPayload(parsed.GetDsseEnvelope().GetPayload(), f.agent.Cert.Raw)
	require.NoError(t, err)
	p, err := pipeline.ReadProvenanceForTest(unsigned)
	require.NoError(t, err)
	require.Equal(t, []pipeline.GitSource{{Path: "src", Commit: commit, Tree: tree, Clean: true, Ref: "refs/heads/main", RemoteURL: repoURL}}, p.Sources)
	require.Equal(t, []pipeline.Material{{Name: "seed.txt", SHA256: artifact("seed.txt", "seed").SHA256}}, p.Materials)
	require.Equal(t, map[string]string{"ci": "test", "job": "checkout", "run_id": "1"}, p.Claims)
}
