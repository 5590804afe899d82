package pipeline_test

import (
	"context"
	"strconv"
	"strings"
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
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re, "too many to read is the limits rule (exit 1), not a failed call")
	require.Equal(t, pipeline.RuleLimits, re.Failure.Rule)
	require.ErrorContains(t, err, "more than 10 entries naming sha256:")
	require.ErrorContains(t, err, "no rule allows (one by "+rogueID+")")

	// The rogue builder is what the verifier leaves out: with it
	// allowed, its attestations are read and counted, and the search
	// refuses to read more than it may.
	_, err = pipeline.Verify(context.Background(), p, artifact, pipeline.Options{Verify: verify.Options{TrustedRoot: f.root},
		Finder: &pipeline.LogSearch{BaseURL: srv.URL, Builder: func(id string) bool { return p.MayBuild(id, nil) }}})
	require.ErrorAs(t, err, &re)
	require.Equal(t, pipeline.RuleLimits, re.Failure.Rule)
	require.ErrorContains(t, err, "more than 1000 entries name sha256:")
}

// Must show, as the outside review did it: a CI tenant whose workload the
// agent lets attest some step, on an agent the verifier trusts, attests
// a copy of a released artifact 1,001 times (hallmark-attest --step test
// --product widget-1.0.tar.gz, about 40 s), as a step the pipeline does
// not have, or as one of its steps for a workload that step does not
// allow. The log is append-only: before, every later search for the
// artifact failed ("more than 1000 entries name sha256:..."), for good.
// They are passed over uncounted, and the genuine chain verifies.
func TestFloodByATenantHidesNothing(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	genuine := f.bundles(t, r.checkout, r.build, r.packag)
	// An agent the policy trusts for checkout only (the review's case:
	// a shared pool of runners).
	const sharedID = "spiffe://example.org/hallmark/shared/node-1"
	shared, err := f.h.CAs[0].NewAgent(sharedID, f.now.Add(-time.Hour), f.now.Add(time.Hour))
	require.NoError(t, err)
	p := mustPolicy(t, strings.Replace(strings.Replace(testPolicy, `builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]`,
		`builder_id_prefixes = ["spiffe://example.org/hallmark/agent", "spiffe://example.org/hallmark/shared"]`, 1),
		`materials_from      = ["build"]`, "materials_from      = [\"build\"]\n  builder_id_prefixes = [\"spiffe://example.org/hallmark/agent\"]", 1))
	for _, tc := range []struct {
		name, step, workload string
		agent                *verifytest.Agent
	}{
		{"a step the pipeline does not have", "test", "spiffe://example.org/ci/tenant", f.agent},
		{"a step of the pipeline, another workload", "package", "spiffe://example.org/ci/tenant", f.agent},
		{"a step of the pipeline, on an agent that step does not allow", "package", packageID, shared},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := append([]pipeline.Candidate(nil), genuine...)
			for i := range 1001 {
				s := r.step(tc.step, tc.workload, []string{"widget-1.0.tar.gz"}, nil)
				s.CallerClaims = map[string]string{"flood": strconv.Itoa(i)}
				s.BuilderID = tc.agent.ID
				all = append(all, pipeline.Candidate{Bundle: f.bundleBy(t, tc.agent, s), Origin: "flood " + strconv.Itoa(i)})
			}
			artifact := verify.DigestBytes("widget-1.0.tar.gz", []byte(r.files["widget-1.0.tar.gz"]))
			srv := logServer(t, all)
			search := func(step func(string, string, []string, []string) bool) pipeline.Options {
				return pipeline.Options{Verify: verify.Options{TrustedRoot: f.root}, Finder: &pipeline.LogSearch{BaseURL: srv.URL,
					Builder: func(id string) bool { return p.MayBuild(id, nil) }, Step: step}}
			}
			rep, err := pipeline.Verify(context.Background(), p, artifact, search(func(builder, step string, ids, selectors []string) bool {
				return p.MayAttest(builder, step, ids, selectors, nil)
			}))
			require.NoError(t, err)
			require.True(t, rep.Verified)

			// Without the step filter they are read, and the search
			// stops at its limit: the limits rule.
			_, err = pipeline.Verify(context.Background(), p, artifact, search(nil))
			var re *pipeline.RuleError
			require.ErrorAs(t, err, &re)
			require.Equal(t, pipeline.RuleLimits, re.Failure.Rule)
		})
	}
	agent := verifytest.AgentID
	require.True(t, p.MayAttest(agent, "package", []string{packageID}, nil, nil))
	require.False(t, p.MayAttest(agent, "package", []string{buildID}, nil, nil))
	require.False(t, p.MayAttest(sharedID, "package", []string{packageID}, nil, nil))
	require.True(t, p.MayAttest(sharedID, "checkout", []string{checkoutID}, nil, nil))
	require.False(t, p.MayAttest(sharedID, "checkout", []string{checkoutID}, nil, []string{"spiffe://example.org/hallmark/agent"}))
	require.True(t, p.MayAttest(agent, "build", []string{buildID}, []string{"unix:uid:1001", "unix:gid:0"}, nil))
	require.False(t, p.MayAttest(agent, "build", []string{buildID}, []string{"unix:uid:1002"}, nil))
	require.False(t, p.MayAttest(agent, "test", []string{packageID}, nil, nil))
}
