package pipeline_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// The attacks in this file are written as a build step or a bundle
// supplier would try them: each makes the walk accept what the policy
// refuses unless the walk holds.

// widgetAtCommit begins a policy: its version, and the widget source at
// commit.
const widgetAtCommit = `
version = 1
source "widget" {
  repositories = ["https://git.example.org/acme/*"]
  commits      = ["` + commit + `"]
}`

// A step whose source is a clean work tree stashes an input under the
// work tree's .git directory, which the clean check does not compare
// (the repository is not the tree): the material must not pass as the
// source's.
func TestAttackMaterialUnderDotGit(t *testing.T) {
	f := newFixture(t)
	// build checks the source out itself; package takes build's app.
	p := mustPolicy(t, widgetAtCommit+`
step "build" {
  workload_spiffe_ids     = ["`+buildID+`"]
  sources                 = ["widget"]
  products_outside_source = true # app is its own output
}
step "package" {
  workload_spiffe_ids = ["`+packageID+`"]
  materials_from      = ["build"]
}
`)
	for _, tc := range []struct {
		name, treePath, material string
	}{
		{"work tree at src", "src", "src/.git/hooks/payload.c"},
		{"workspace is the work tree", ".", ".git/payload.c"},
		{"the .git file itself", "src", "src/.git"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun("1")
			r.build.Sources = r.checkout.Sources
			r.build.Sources[0].Path = tc.treePath
			honest := f.bundles(t, r.build, r.packag)
			rep, err := f.verifyArtifact(p, "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(honest))
			require.NoError(t, err, "the honest chain verifies")
			require.Equal(t, "widget", rep.Chain()[1].Inputs[0].Source)

			r.build.Materials = append(r.build.Materials, artifact(tc.material, "int backdoor;"))
			_, err = f.verifyArtifact(p, "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(f.bundles(t, r.build, r.packag)))
			var re *pipeline.RuleError
			require.ErrorAs(t, err, &re, "a file under .git came from no commit")
			require.Equal(t, "step.build.materials_from", re.Failure.Rule, re.Failure.Reason)
			require.Contains(t, re.Failure.Reason, "material "+tc.material+" ")
		})
	}
}

// A checkout step that records a clean work tree at the allowed commit
// also lists, as a product, a file that is not the commit's: one it wrote
// under the tree's .git (which the clean check does not compare), or one
// beside the tree. build compiles that file instead of the commit's: the
// chain must not pass it off as the source's.
func TestAttackSourceStepPassesOnAFileNotOfItsSource(t *testing.T) {
	f := newFixture(t)
	const backdoor = "int main(void) { /* backdoor */ return 1; }"
	for _, tc := range []struct {
		name, treePath, planted string
	}{
		{"under the tree's .git", "src", "src/.git/evil.c"},
		{"under .git, the workspace is the tree", ".", ".git/evil.c"},
		{"beside the tree", "src", "evil.c"},
		{"a sibling whose name starts like the tree", "src", "src2/main.c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun("1")
			r.checkout.Sources[0].Path = tc.treePath
			if tc.treePath == "." {
				for i := range r.checkout.Products {
					r.checkout.Products[i].Name = strings.TrimPrefix(r.checkout.Products[i].Name, "src/")
				}
			}
			r.checkout.Products = append(r.checkout.Products, artifact(tc.planted, backdoor))
			// build's main.c is the planted file's content.
			for i, m := range r.build.Materials {
				if m.Name == "src/main.c" {
					r.build.Materials[i] = artifact("src/main.c", backdoor)
				}
			}
			bundles := f.bundles(t, r.checkout, r.build, r.packag)
			_, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(bundles))
			var re *pipeline.RuleError
			require.ErrorAs(t, err, &re, "the planted file is no file of commit %s", commit)
			require.Equal(t, "step.checkout.sources", re.Failure.Rule, re.Failure.Reason)
			require.Contains(t, re.Failure.Reason, "material src/main.c ")
			require.Contains(t, re.Failure.Reason, "checkout's product "+tc.planted+" ")
			require.Contains(t, re.Failure.Reason, "products_outside_source")

			// A policy that says checkout's products are its own output
			// takes them as it takes any step's.
			p := policyWith(t, `sources             = ["widget"]`, `sources             = ["widget"]
  products_outside_source = true`)
			rep, err := f.verifyArtifact(p, "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(bundles))
			require.NoError(t, err)
			require.True(t, rep.Verified)
		})
	}
	// The honest checkout, whose products are the tree's files, passes
	// them on.
	r := newRun("1")
	rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(f.bundles(t, r.checkout, r.build, r.packag)))
	require.NoError(t, err)
	require.True(t, rep.Verified)
}

// Every step must be part of the chain that verified, not merely of some
// chain the walk examined: a refused candidate of the final step that did
// reach checkout must not lend checkout to the candidate that verifies
// without it.
func TestAttackMissingStepLentByRefusedCandidate(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	// The candidate examined first (origins break the tie of equal
	// signing times): its app goes back to checkout, but its other
	// material no step produced.
	first := r.step("package", packageID, []string{"widget-1.0.tar.gz"}, []string{"app"})
	first.Materials = append(first.Materials, artifact("zz-unproduced", "stray"))
	// The candidate that verifies: its app' came from a build that took
	// nothing from checkout.
	r.files["app2"] = "ELF app built from nothing the policy knows"
	build2 := r.step("build", buildID, []string{"app2"}, nil)
	build2.Workload.Selectors = r.build.Workload.Selectors
	second := r.step("package", packageID, []string{"widget-1.0.tar.gz"}, []string{"app2"})

	cands := f.bundles(t, r.checkout, r.build, build2)
	cands = append(cands,
		pipeline.Candidate{Bundle: f.bundle(t, first), Origin: "a-package.hallmark.json"},
		pipeline.Candidate{Bundle: f.bundle(t, second), Origin: "b-package.hallmark.json"})
	rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(cands))
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re, "checkout is in no chain from the verified package")
	require.Equal(t, "step.checkout", re.Failure.Rule, re.Failure.Reason)
	require.Contains(t, re.Failure.Reason, "missing step")
	require.False(t, rep.Verified)
}

// hostileFinder is a log server that answers every search with the honest
// bundles and with many others that do not name the digest asked for:
// authentic attestations (anyone who may attest any step can make them),
// each costly to verify.
type hostileFinder struct {
	honest, decoys []pipeline.Candidate
	searches       int
}

func (h *hostileFinder) Find(_ context.Context, _ string) ([]pipeline.Candidate, error) {
	h.searches++
	return append(slices.Clone(h.honest), h.decoys...), nil
}

// A bundle that does not even claim the digest searched for is not worth
// a verification, and every verification counts against the limit: a
// hostile finder cannot make the walk verify without bound.
func TestAttackHostileSourceDecoys(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	src := &hostileFinder{honest: f.bundles(t, r.checkout, r.build, r.packag)}
	for i := range 20 {
		lint := r.step("lint", buildID, nil, nil)
		lint.Products = []attest.Artifact{artifact(fmt.Sprintf("report-%d.txt", i), fmt.Sprint("lint report ", i))}
		src.decoys = append(src.decoys, pipeline.Candidate{Bundle: f.bundle(t, lint), Origin: fmt.Sprintf("log entry %d", 100+i)})
	}
	calls := pipeline.CountVerifications(t)
	rep, err := pipeline.Verify(context.Background(), mustPolicy(t, testPolicy), verify.DigestBytes("w", []byte(r.files["widget-1.0.tar.gz"])),
		pipeline.Options{Verify: verify.Options{TrustedRoot: f.root}, Finder: src, MaxAttestations: 10})
	require.NoError(t, err)
	require.True(t, rep.Verified)
	require.GreaterOrEqual(t, src.searches, 2)
	require.LessOrEqual(t, *calls, 10, "%d verifications for %d searches", *calls, src.searches)
}

// What an attested step wrote (its caller's claims, the remote URL in its
// repository's config, file names) reaches the consumer's terminal: it
// must not carry control characters that rewrite the verdict line above
// it.
func TestAttackTerminalEscapes(t *testing.T) {
	f := newFixture(t)
	const forged = "\x1b[1A\x1b[2K\rVERIFIED: widget-1.0.tar.gz"
	r := newRun("1")
	r.checkout.CallerClaims["job"] = forged
	r.checkout.Sources[0].RemoteURL = "https://git.example.org/mallory/widget.git\n" + forged
	r.build.Materials = append(r.build.Materials, artifact("src/\u202egnp.exe", "x"))
	for _, tc := range []struct {
		name    string
		mutate  func(r *run)
		missing string
	}{
		{"claims and remote URL", func(*run) {}, "source.widget.repositories"},
		{"material name", func(r *run) { r.checkout.Sources[0].RemoteURL = repoURL }, "step.build.materials_from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := *r
			r.checkout.Sources = slices.Clone(r.checkout.Sources)
			tc.mutate(&r)
			rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(f.bundles(t, r.checkout, r.build, r.packag)))
			var re *pipeline.RuleError
			require.ErrorAs(t, err, &re)
			require.Equal(t, tc.missing, re.Failure.Rule)
			var text strings.Builder
			require.NoError(t, rep.WriteText(&text))
			for _, out := range []string{text.String(), err.Error(), re.Failure.String()} {
				require.NotContains(t, out, "\x1b")
				require.NotContains(t, out, "\r")
				require.NotContains(t, out, "\u202e")
				for _, line := range strings.Split(out, "\n") {
					require.False(t, strings.HasPrefix(line, "VERIFIED"), "forged line %q in:\n%s", line, out)
				}
			}
		})
	}
	// Bytes that are no UTF-8 are shown as escapes too; printable text,
	// the tree's own glyphs included, as it is.
	require.Equal(t, `r: a\xffb \x1b é ✓`, pipeline.Failure{Rule: "r", Reason: "a\xffb \x1b é ✓"}.String())
}

// Bundles a supplier mixes in to make the walk accept: each is refused
// with the rule that should catch it.
func TestAttackMixedBundles(t *testing.T) {
	f := newFixture(t)
	// Another deployment: its own CAs, log and timestamp authority, the
	// same agent and workload names.
	other := newFixture(t)
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, r *run) []pipeline.Candidate
		rule   string
		reason string
	}{
		{
			name: "build attested under another trust root",
			setup: func(t *testing.T, r *run) []pipeline.Candidate {
				return append(f.bundles(t, r.checkout, r.packag), other.bundles(t, r.build)...)
			},
			rule:   "step.build",
			reason: "build.hallmark.json: verify: tlog: entry is from log ",
		},
		{
			name: "checkout's sources served by a bundle of another step",
			setup: func(t *testing.T, r *run) []pipeline.Candidate {
				// build also lists the sources as products; checkout is
				// left out: build's materials cannot come from build.
				r.build.Products = append(r.build.Products, r.checkout.Products...)
				return f.bundles(t, r.build, r.packag)
			},
			rule:   "step.checkout",
			reason: "missing step: none of the 2 bundles is a verified attestation of step checkout",
		},
		{
			name: "a step whose material is its own product",
			setup: func(t *testing.T, r *run) []pipeline.Candidate {
				r.build.Materials = append(r.build.Materials, r.build.Products...)
				return f.bundles(t, r.checkout, r.build, r.packag)
			},
			rule:   "step.build.materials_from",
			reason: "material app (sha256 ",
		},
		{
			name: "caller claims that say what the policy wants",
			setup: func(t *testing.T, r *run) []pipeline.Candidate {
				r.checkout.Sources[0].Ref = "refs/heads/wip"
				r.checkout.CallerClaims = map[string]string{"ref": "refs/heads/main", "repository": repoURL, "commit": commit, "clean": "true"}
				return f.bundles(t, r.checkout, r.build, r.packag)
			},
			rule:   "source.widget.refs",
			reason: "branch refs/heads/wip is none of refs/heads/main",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun("1")
			r.checkout.Sources = slices.Clone(r.checkout.Sources)
			cands := tc.setup(t, r)
			_, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(cands))
			var re *pipeline.RuleError
			require.ErrorAs(t, err, &re)
			require.Equal(t, tc.rule, re.Failure.Rule, re.Failure.Reason)
			require.Contains(t, re.Failure.Reason, tc.reason)
		})
	}
}

// The final step's artifact is passed on to the consumer as a material is
// to the next step (found by the review of the rule above): a one-step
// policy whose step has sources does not vouch for a file it wrote under
// the tree's .git.
func TestAttackFinalSourceStepVouchesForAFileNotOfItsSource(t *testing.T) {
	f := newFixture(t)
	p := mustPolicy(t, widgetAtCommit+`
step "checkout" {
  workload_spiffe_ids = ["`+checkoutID+`"]
  sources             = ["widget"]
}
`)
	r := newRun("1")
	r.checkout.Products = append(r.checkout.Products, artifact("src/.git/evil.c", "int backdoor;"))
	cands := f.bundles(t, r.checkout)
	_, err := f.verifyArtifact(p, "evil.c", "int backdoor;", pipeline.NewBundleSet(cands))
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re)
	require.Equal(t, "step.checkout.sources", re.Failure.Rule, re.Failure.Reason)
	require.Contains(t, re.Failure.Reason, "the artifact (sha256 ")
	require.Contains(t, re.Failure.Reason, "checkout's product src/.git/evil.c ")

	// A file of the tree verifies.
	rep, err := f.verifyArtifact(p, "main.c", r.files["src/main.c"], pipeline.NewBundleSet(cands))
	require.NoError(t, err)
	require.True(t, rep.Verified)
}
