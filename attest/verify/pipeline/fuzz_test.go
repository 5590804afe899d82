package pipeline_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// FuzzParsePolicy: any input is refused with an error or yields a policy
// that keeps the format's promises; nothing panics.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(testPolicy))
	f.Add([]byte(`{"version": 1, "source": {"s": {"repositories": ["x"]}}, "step": [{"a": {"workload_selectors": ["u:1"], "sources": ["s"]}}, {"b": {"workload_selectors": ["u:1"], "materials_from": ["a"], "products": ["*"]}}]}`))
	f.Add([]byte("version = 1\nstep \"a\" {\n workload_spiffe_ids = [\"spiffe://td/x\"]\n}\n"))
	f.Add([]byte("version = 1\nstep \"a\" {\n workload_spiffe_ids = [\"spiffe://td/x\"]\n materials_from = [\"a\"]\n}\n"))
	f.Add([]byte(`version = "1"`))
	f.Add([]byte(`{"version": 1, "step": {"a": {"workload_selectors": [1]}}}`))
	f.Add([]byte("version = 1\nsource \"s\" {\n repositories = [\"[\"]\n}\n"))
	f.Add([]byte("version = -1\nstep \"a\" {\n workload_selectors = [\"u:1\"][0]\n}\n"))
	f.Add([]byte("version = 1\nstep \"a\" {\n workload_selectors = [\"${x}\", \"%{if a}\"]\n}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := pipeline.ParsePolicy("fuzz.hcl", src)
		if err != nil {
			if p != nil {
				t.Fatal("a policy with an error")
			}
			return
		}
		if !pipeline.IsPolicy(src) {
			t.Fatal("a parsed policy is not recognized as one")
		}
		if len(p.Steps) == 0 {
			t.Fatal("a policy without steps")
		}
		for i, s := range p.Steps {
			if len(s.WorkloadSPIFFEIDs) == 0 && len(s.WorkloadSelectors) == 0 {
				t.Fatalf("step %s: nobody named to run it", s.Name)
			}
			for _, from := range s.MaterialsFrom {
				if !slices.ContainsFunc(p.Steps[:i], func(e pipeline.StepRule) bool { return e.Name == from }) {
					t.Fatalf("step %s takes materials from %s, not an earlier step", s.Name, from)
				}
			}
			for _, name := range s.Sources {
				if _, ok := p.Source(name); !ok {
					t.Fatalf("step %s names an undefined source %s", s.Name, name)
				}
			}
			if len(s.Products) > 0 && i != len(p.Steps)-1 {
				t.Fatalf("products on step %s, not the final step", s.Name)
			}
		}
	})
}

// FuzzChainWalk gives the walk untrusted bundles (valid ones of a run as
// seeds, mutated by the fuzzer; run it with -fuzzminimizetime 0, since
// minimizing a 6 KB bundle takes the fuzzer's default minute, during
// which nothing else runs): it must end without panicking, and it
// verifies a chain only if every node passed the full verification and
// the chain ends in the artifact.
func FuzzChainWalk(f *testing.F) {
	fx := newFixture(f)
	p := mustPolicy(f, testPolicy)
	r1, r2 := newRun("1"), newRun("2")
	good := fx.bundles(f, r1.checkout, r1.build, r1.packag)
	other := fx.bundles(f, r2.build)
	f.Add(good[0].Bundle, good[1].Bundle, good[2].Bundle, uint8(0))
	f.Add(good[0].Bundle, other[0].Bundle, good[2].Bundle, uint8(0))
	f.Add(good[2].Bundle, good[2].Bundle, good[2].Bundle, uint8(1))
	f.Add([]byte(`{}`), []byte(`not json`), good[2].Bundle, uint8(2))
	f.Add(good[0].Bundle, []byte(strings.Replace(string(good[1].Bundle), `"sig":"M`, `"sig":"N`, 1)), good[2].Bundle, uint8(0))
	artifacts := []string{r1.files["widget-1.0.tar.gz"], r1.files["app"], "nothing"}
	f.Fuzz(func(t *testing.T, a, b, c []byte, which uint8) {
		content := artifacts[int(which)%len(artifacts)]
		cands := []pipeline.Candidate{{Bundle: a, Origin: "a"}, {Bundle: b, Origin: "b"}, {Bundle: c, Origin: "c"}}
		set := pipeline.NewBundleSet(cands)
		d := verify.DigestBytes("artifact", []byte(content))
		rep, err := pipeline.Verify(context.Background(), p, d, pipeline.Options{Verify: verify.Options{TrustedRoot: fx.root}, Finder: set, MaxAttestations: 8})
		if err != nil {
			if rep == nil || rep.Verified || rep.Failure == nil {
				t.Fatalf("refused without a report and failure: %v", err)
			}
			return
		}
		chain := rep.Chain()
		if len(chain) != len(p.Steps) || chain[0].Step != "package" {
			t.Fatalf("verified a chain of %d nodes starting at %s", len(chain), chain[0].Step)
		}
		if !slices.ContainsFunc(chain[0].Attestation.Subjects, func(s verify.Subject) bool { return s.SHA256 == rep.Artifact.SHA256 }) {
			t.Fatal("verified a chain that does not end in the artifact")
		}
		for _, n := range chain {
			if n.Verdict != pipeline.VerdictVerified || n.Attestation == nil {
				t.Fatalf("node %s in a verified chain: %s", n.Step, n.Verdict)
			}
			// Only bundles the deployment signed verify: what passes is
			// one of the seeds, byte for byte or re-encoded.
			if _, err := verify.Verify(cands[originIndex(n.Origin)].Bundle, []verify.Digest{d0(n)}, verify.Options{TrustedRoot: fx.root}); err != nil {
				t.Fatalf("node %s passed the walk but not verify.Verify: %v", n.Step, err)
			}
		}
	})
}

func originIndex(o string) int { return int(o[0] - 'a') }

// d0 is a digest of the node's first subject.
func d0(n *pipeline.Node) verify.Digest {
	var d verify.Digest
	s := n.Attestation.Subjects[0].SHA256
	for i := range d.SHA256 {
		d.SHA256[i] = unhex(s[2*i])<<4 | unhex(s[2*i+1])
	}
	return d
}

func unhex(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// FuzzReadProvenance fuzzes what the walk reads from a statement beyond
// verify.Verify (materials, git sources, caller claims) and the
// unverified subject index of a bundle set: both parse payloads of
// bundles nobody has vouched for yet (the index) or that only the
// signature vouches for (the provenance). Fast, unlike FuzzChainWalk,
// whose every execution verifies signatures and certificate chains.
func FuzzReadProvenance(f *testing.F) {
	fx := newFixture(f)
	r := newRun("1")
	for _, b := range fx.bundles(f, r.checkout, r.build) {
		parsed, err := attest.ParseBundle(b.Bundle)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(parsed.GetDsseEnvelope().GetPayload())
	}
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"a","digest":{"sha256":"00"}}],"predicateType":"x","predicate":{"buildDefinition":{"buildType":"https://hallmark.dev/buildtypes/step/v2","externalParameters":{"caller_claims":{"a":1}},"resolvedDependencies":[{"name":".","digest":{"gitCommit":"x"},"annotations":{"clean":"yes"}}]}}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := bundleWithPayload(payload, fx.agent.Cert.Raw)
		if err != nil {
			return
		}
		prov, err := pipeline.ReadProvenanceForTest(b)
		if err != nil {
			return
		}
		for _, g := range prov.Sources {
			if len(g.Commit) != 40 || len(g.Tree) != 40 {
				t.Fatalf("git source with commit %q tree %q", g.Commit, g.Tree)
			}
		}
		for _, m := range prov.Materials {
			if len(m.SHA256) != 64 {
				t.Fatalf("material with sha256 %q", m.SHA256)
			}
		}
		pipeline.NewBundleSet([]pipeline.Candidate{{Bundle: b}})
	})
}

// bundleWithPayload wraps payload in a bundle of the right shape with a
// bad signature (the readers under test never check it).
func bundleWithPayload(payload, certDER []byte) ([]byte, error) {
	b := &bundlepb.Bundle{
		MediaType: attest.BundleMediaType,
		VerificationMaterial: &bundlepb.VerificationMaterial{
			Content: &bundlepb.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: certDER}},
		},
		Content: &bundlepb.Bundle_DsseEnvelope{DsseEnvelope: &dssepb.Envelope{
			Payload: payload, PayloadType: attest.PayloadType, Signatures: []*dssepb.Signature{{Sig: []byte{1}}},
		}},
	}
	return protojson.Marshal(b)
}
