package pipeline_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

// Must show, as an attacker would do it: an agent that no rule trusts
// (its SVID stolen from a runner the verifier's builder prefix leaves
// out) signs and logs 1,001 valid attestations naming another's artifact,
// more than the walk verifies and than a log search reads (1,000 each).
// They are passed over uncounted, among bundles given and in the log, and
// the genuine chain still verifies. Before, the log search failed
// ("more than 1000 entries name sha256:..."), and the walk hit its limit
// among bundles given.
func TestFloodByAnUntrustedBuilderHidesNothing(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	const rogueID = "spiffe://example.org/hallmark/rogue/node-9"
	rogue, err := f.h.CAs[0].NewAgent(rogueID, f.now.Add(-time.Hour), f.now.Add(time.Hour))
	require.NoError(t, err)
	genuine := f.bundles(t, r.checkout, r.build, r.packag)
	all := append([]pipeline.Candidate(nil), genuine...)
	for i := range 1001 {
		s := verifytest.Step("package", rogueID, nil)
		s.Workload.SPIFFEIDs = []string{packageID}
		s.Products = r.packag.Products
		s.Materials = r.packag.Materials
		s.CallerClaims = map[string]string{"flood": strconv.Itoa(i)}
		b := f.bundleBy(t, rogue, s)
		all = append(all, pipeline.Candidate{Bundle: b, Origin: "flood " + strconv.Itoa(i)})
	}
	p := mustPolicy(t, testPolicy)
	opts := func(finder pipeline.Finder) pipeline.Options {
		return pipeline.Options{Verify: verify.Options{TrustedRoot: f.root}, Finder: finder,
			BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent"}}
	}
	artifact := verify.DigestBytes("widget-1.0.tar.gz", []byte(r.files["widget-1.0.tar.gz"]))

	rep, err := pipeline.Verify(context.Background(), p, artifact, opts(pipeline.NewBundleSet(all)))
	require.NoError(t, err, "bundles given")
	require.True(t, rep.Verified)

	srv := logServer(t, all)
	search := &pipeline.LogSearch{BaseURL: srv.URL, Builder: func(id string) bool { return p.MayBuild(id, opts(nil).BuilderIDPrefixes) }}
	rep, err = pipeline.Verify(context.Background(), p, artifact, opts(search))
	require.NoError(t, err, "from the log")
	require.True(t, rep.Verified)

	// Passing over has its own bound, with its own error.
	capped := &pipeline.LogSearch{BaseURL: srv.URL, MaxSkipped: 10, Builder: search.Builder}
	_, err = pipeline.Verify(context.Background(), p, artifact, opts(capped))
	require.ErrorContains(t, err, "more than 10 entries naming sha256:")
	require.ErrorContains(t, err, "are by builders no rule allows ("+rogueID+" among them)")

	// The rogue builder is what the verifier leaves out: with it
	// allowed, its attestations are read and counted, and the search
	// refuses to read more than it may.
	_, err = pipeline.Verify(context.Background(), p, artifact, pipeline.Options{Verify: verify.Options{TrustedRoot: f.root},
		Finder: &pipeline.LogSearch{BaseURL: srv.URL, Builder: func(id string) bool { return p.MayBuild(id, nil) }}})
	require.ErrorContains(t, err, "more than 1000 entries name sha256:")
}
