package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

func TestVerifyChain(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	p := mustPolicy(t, testPolicy)
	set := pipeline.NewBundleSet(f.bundles(t, r.packag, r.checkout, r.build))

	rep, err := f.verifyArtifact(p, "widget-1.0.tar.gz", r.files["widget-1.0.tar.gz"], set)
	require.NoError(t, err)
	require.True(t, rep.Verified)
	require.Nil(t, rep.Failure)
	chain := rep.Chain()
	require.Len(t, chain, 3)
	require.Equal(t, []string{"package", "build", "checkout"}, []string{chain[0].Step, chain[1].Step, chain[2].Step})
	for _, n := range chain {
		require.Equal(t, pipeline.VerdictVerified, n.Verdict)
		require.Equal(t, attest.BuildType, n.BuildType)
	}
	// package <- app <- build <- src/* <- checkout <- source widget
	require.Equal(t, []string{"app"}, chain[0].Inputs[0].Materials)
	require.Equal(t, "build", chain[0].Inputs[0].Step)
	require.Equal(t, []string{"src/Makefile", "src/main.c"}, chain[1].Inputs[0].Materials)
	require.Equal(t, pipeline.GitSource{Path: "src", Commit: commit, Tree: tree, Clean: true, Ref: "refs/heads/main", RemoteURL: repoURL}, chain[2].Sources[0])
	require.Equal(t, "1", chain[2].CallerClaims["run_id"])

	var text bytes.Buffer
	require.NoError(t, rep.WriteText(&text))
	out := text.String()
	require.Contains(t, out, "VERIFIED: widget-1.0.tar.gz")
	require.Contains(t, out, "✓ package: verified")
	require.Contains(t, out, "✓ checkout: verified")
	require.Contains(t, out, "source src: commit "+commit+" (refs/heads/main, clean)")
	require.Contains(t, out, "caller claims (not verified): ci=test job=checkout run_id=1")

	// JSON for machines: the report round-trips and names the nodes.
	js, err := json.Marshal(rep)
	require.NoError(t, err)
	var back pipeline.Report
	require.NoError(t, json.Unmarshal(js, &back))
	require.True(t, back.Verified)
	require.Len(t, back.Nodes, 3)
}

// Each way a supply chain can go wrong is refused with the rule that
// caught it.
func TestVerifyChainRefusals(t *testing.T) {
	f := newFixture(t)
	type setup struct {
		policy  *pipeline.Policy
		bundles []pipeline.Candidate
		// artifact's content (default: run's tarball)
		artifact string
	}
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T) setup
		rule     string
		reason   string
		wantStep string
	}{
		{
			name: "build output replaced before package",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				// package consumed an app that is not what build produced.
				r.files["app"] = "ELF app, trojaned"
				r.packag = r.step("package", packageID, []string{"widget-1.0.tar.gz"}, []string{"app"})
				return setup{bundles: f.bundles(t, r.checkout, newRun("1").build, r.packag)}
			},
			rule:   "step.package.materials_from",
			reason: "material app (sha256 ",
		},
		{
			name: "missing step",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				return setup{bundles: f.bundles(t, r.checkout, r.packag)}
			},
			rule:   "step.build",
			reason: "missing step: none of the 2 bundles is a verified attestation of step build",
		},
		{
			name: "workload not allowed for the step",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.build.Workload.SPIFFEIDs = []string{packageID}
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "step.build.workload_spiffe_ids",
			reason: "workload with " + packageID + ", none of the allowed " + buildID,
		},
		{
			name: "workload without a required selector",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.build.Workload.Selectors = []string{"unix:uid:0"}
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "step.build.workload_selectors",
			reason: "did not have selector unix:uid:1001",
		},
		{
			name: "builder outside the allowed prefix",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag),
					policy: policyWith(t, `"spiffe://example.org/hallmark/agent"`, `"spiffe://example.org/hallmark/trusted-agents"`)}
			},
			rule:   "step.checkout.builder_id_prefixes",
			reason: "builder spiffe://example.org/hallmark/agent/node-1 is under none of",
		},
		{
			name: "material no earlier step produced",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.build.Materials = append(r.build.Materials, artifact("patches/evil.patch", "--- a/main.c"))
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "step.build.materials_from",
			reason: "material patches/evil.patch (sha256 ",
		},
		{
			name: "source at a commit the policy does not allow",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.checkout.Sources[0].Commit = strings.Repeat("e", 40)
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "source.widget.commits",
			reason: "commit " + strings.Repeat("e", 40) + " is none of the allowed",
		},
		{
			name: "source from a repository the policy does not allow",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.checkout.Sources[0].RemoteURL = "https://git.example.org/mallory/widget.git"
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "source.widget.repositories",
			reason: "remote https://git.example.org/mallory/widget.git is none of",
		},
		{
			name: "source on a branch the policy does not allow",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.checkout.Sources[0].Ref = "refs/heads/wip"
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "source.widget.refs",
			reason: "branch refs/heads/wip is none of refs/heads/main",
		},
		{
			name: "dirty work tree",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.checkout.Sources[0].Clean = false
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "source.widget.require_clean",
			reason: "was not clean at commit " + commit,
		},
		{
			name: "checkout that recorded no source",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.checkout.Sources = nil
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "step.checkout.sources",
			reason: "records no git source",
		},
		{
			name: "build bundle of another run",
			setup: func(t *testing.T) setup {
				r1, r2 := newRun("1"), newRun("2")
				return setup{bundles: f.bundles(t, r1.checkout, r2.build, r1.packag)}
			},
			rule:   "step.package.materials_from",
			reason: "the attestation of build from build.hallmark.json has app with sha256 ",
		},
		{
			name: "final step without a required product",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag),
					policy: policyWith(t, `products            = ["widget-*.tar.gz"]`, `products            = ["widget-*.tar.gz", "SHA256SUMS"]`)}
			},
			rule:   "step.package.products",
			reason: `no product matches "SHA256SUMS" (products: widget-1.0.tar.gz)`,
		},
		{
			name: "artifact that is no product of the final step",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag), artifact: r.files["app"]}
			},
			rule:   "step.package",
			reason: "no verified attestation of step package has the artifact",
		},
		{
			name: "final step attested under another step name",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				r.packag.Name = "publish"
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag)}
			},
			rule:   "step.package",
			reason: "missing step: none of the 3 bundles is a verified attestation of step package",
		},
		{
			name: "tampered bundle",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				bs := f.bundles(t, r.checkout, r.build, r.packag)
				// The signature no longer matches: the envelope's payload
				// gains a space inside its base64.
				bs[1].Bundle = bytes.Replace(bs[1].Bundle, []byte(`"sig":"M`), []byte(`"sig":"N`), 1)
				return setup{bundles: bs}
			},
			rule:   "step.build",
			reason: "1 bundle(s) did not verify: build.hallmark.json: verify: signature",
		},
		{
			name: "a step no material came from",
			setup: func(t *testing.T) setup {
				r := newRun("1")
				// build used its own clean checkout of the source, not
				// checkout's products.
				r.build.Sources = r.checkout.Sources
				return setup{bundles: f.bundles(t, r.checkout, r.build, r.packag),
					policy: policyWith(t, `materials_from      = ["checkout"]`, `materials_from      = ["checkout"]
  sources             = ["widget"]
  products_outside_source = true`)}
			},
			rule:   "step.checkout",
			reason: "missing step: no material of the chain came from an attestation of checkout",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.setup(t)
			if s.policy == nil {
				s.policy = mustPolicy(t, testPolicy)
			}
			content := s.artifact
			if content == "" {
				content = newRun("1").files["widget-1.0.tar.gz"]
			}
			rep, err := f.verifyArtifact(s.policy, "widget-1.0.tar.gz", content, pipeline.NewBundleSet(s.bundles))
			var re *pipeline.RuleError
			require.ErrorAs(t, err, &re)
			require.ErrorIs(t, err, pipeline.ErrNotVerified)
			require.Equal(t, tc.rule, re.Failure.Rule, "reason: %s", re.Failure.Reason)
			require.Contains(t, re.Failure.Reason, tc.reason)
			require.NotNil(t, rep)
			require.False(t, rep.Verified)
			require.Equal(t, re.Failure, *rep.Failure)
			var text bytes.Buffer
			require.NoError(t, rep.WriteText(&text))
			require.Contains(t, text.String(), "NOT VERIFIED")
			require.Contains(t, text.String(), "rule:   "+tc.rule)
		})
	}
}

// A dirty tree is allowed by a source that does not require a clean one,
// but then its files cannot vouch for a material.
func TestDirtyTreeAllowedWhenNotRequired(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	r.checkout.Sources[0].Clean = false
	p := policyWith(t, `refs         = ["refs/heads/main"]`, `refs         = ["refs/heads/main"]
  require_clean = false`)
	rep, err := f.verifyArtifact(p, "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(f.bundles(t, r.checkout, r.build, r.packag)))
	require.NoError(t, err)
	require.True(t, rep.Verified)
	require.False(t, rep.Chain()[2].Sources[0].Clean)

	// build also reads src/local.c, which checkout did not produce, from
	// its own dirty work tree: a dirty tree vouches for no file.
	r.build.Sources = r.checkout.Sources
	r.build.Materials = append(r.build.Materials, artifact("src/local.c", "local change"))
	p2 := mustPolicy(t, strings.Replace(strings.Replace(testPolicy, `refs         = ["refs/heads/main"]`, `refs         = ["refs/heads/main"]
  require_clean = false`, 1), `materials_from      = ["checkout"]`, `materials_from      = ["checkout"]
  sources             = ["widget"]`, 1))
	_, err = f.verifyArtifact(p2, "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(f.bundles(t, r.checkout, r.build, r.packag)))
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re)
	require.Equal(t, "step.build.materials_from", re.Failure.Rule)
	require.Contains(t, re.Failure.Reason, "lies in no clean work tree of an allowed source")
}

// Of two runs' bundles of every step, the chain through the matching ones
// verifies, whichever order they come in.
func TestVerifyPicksTheMatchingRun(t *testing.T) {
	f := newFixture(t)
	r1, r2 := newRun("1"), newRun("2")
	set := pipeline.NewBundleSet(f.bundles(t, r2.build, r1.checkout, r1.build, r2.packag, r1.packag, r2.checkout))
	rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r1.files["widget-1.0.tar.gz"], set)
	require.NoError(t, err)
	chain := rep.Chain()
	require.Len(t, chain, 3)
	require.Equal(t, "build.hallmark.json", chain[1].Origin)
	require.Equal(t, "ELF app 1", r1.files["app"])
	require.Contains(t, chain[1].Attestation.Subjects, verify.Subject{Name: "app", SHA256: artifact("app", r1.files["app"]).SHA256})
}

// The walk verifies no more bundles than allowed.
func TestVerifyLimit(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	set := pipeline.NewBundleSet(f.bundles(t, r.checkout, r.build, r.packag))
	_, err := pipeline.Verify(context.Background(), mustPolicy(t, testPolicy), verify.DigestBytes("w", []byte(r.files["widget-1.0.tar.gz"])),
		pipeline.Options{Verify: verify.Options{TrustedRoot: f.root}, Finder: set, MaxAttestations: 2})
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re)
	require.Equal(t, pipeline.RuleLimits, re.Failure.Rule)
}

func TestVerifyMisuse(t *testing.T) {
	f := newFixture(t)
	p := mustPolicy(t, testPolicy)
	d := verify.DigestBytes("w", []byte("x"))
	set := pipeline.NewBundleSet(nil)
	_, err := pipeline.Verify(context.Background(), p, d, pipeline.Options{Finder: set})
	require.ErrorContains(t, err, "TrustedRoot")
	require.False(t, errors.Is(err, pipeline.ErrNotVerified))
	_, err = pipeline.Verify(context.Background(), p, d, pipeline.Options{Verify: verify.Options{TrustedRoot: f.root, Policy: &verify.Policy{Steps: []string{"x"}}}, Finder: set})
	require.ErrorContains(t, err, "Policy must be nil")
}
