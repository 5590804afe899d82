package verify_test

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

// t0 is the timestamp of the fixture's bundle.
var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

const (
	productName    = "dist/widget.tar.gz"
	productContent = "tarball"
	workloadID     = "spiffe://example.org/ci/runner/widget"
)

// fixture is a deployment, an agent, and one attested step logged at t0
// among other entries, with its proof against the whole log.
type fixture struct {
	h      *verifytest.Hallmark
	agent  *verifytest.Agent
	root   *verify.TrustedRoot
	bundle *bundlepb.Bundle
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	h, err := verifytest.New(t0)
	require.NoError(tb, err)
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(9*time.Minute))
	require.NoError(tb, err)
	f := &fixture{h: h, agent: agent}
	for i := range 5 { // entries before ours, so its proof is not trivial
		_, err := h.Attest(agent, verifytest.Step("other", agent.ID, map[string]string{"o": strings.Repeat("x", i)}), t0)
		require.NoError(tb, err)
	}
	f.bundle = f.attest(tb, agent, step(agent.ID), t0)
	idx := uint64(f.bundle.GetVerificationMaterial().GetTlogEntries()[0].GetLogIndex())
	for range 3 { // and after it
		_, err := h.Attest(agent, verifytest.Step("later", agent.ID, map[string]string{"l": "l"}), t0)
		require.NoError(tb, err)
	}
	entry, err := h.Log.Entry(idx, h.Log.Size())
	require.NoError(tb, err)
	f.bundle.VerificationMaterial.TlogEntries[0] = entry
	f.root = f.trustedRoot(tb)
	return f
}

func (f *fixture) trustedRoot(tb testing.TB) *verify.TrustedRoot {
	tb.Helper()
	data, err := f.h.TrustedRootJSON()
	require.NoError(tb, err)
	root, err := verify.ParseTrustedRoot(data)
	require.NoError(tb, err)
	return root
}

func (f *fixture) attest(tb testing.TB, agent *verifytest.Agent, s attest.Step, t time.Time) *bundlepb.Bundle {
	tb.Helper()
	b, err := f.h.Attest(agent, s, t)
	require.NoError(tb, err)
	return b
}

func (f *fixture) attestPayload(tb testing.TB, payload []byte) *bundlepb.Bundle {
	tb.Helper()
	b, err := f.h.AttestPayload(f.agent, payload, t0)
	require.NoError(tb, err)
	return b
}

func step(builderID string) attest.Step {
	return verifytest.Step("build", builderID, map[string]string{productName: productContent, "dist/SHA256SUMS": "sums"})
}

func marshal(tb testing.TB, b *bundlepb.Bundle) []byte {
	tb.Helper()
	data, err := protojson.Marshal(b)
	require.NoError(tb, err)
	return data
}

// tampered returns a copy of the fixture's bundle changed by fn.
func (f *fixture) tampered(tb testing.TB, fn func(b *bundlepb.Bundle)) []byte {
	tb.Helper()
	b := proto.Clone(f.bundle).(*bundlepb.Bundle)
	fn(b)
	return marshal(tb, b)
}

func entryOf(b *bundlepb.Bundle) *rekorpb.TransparencyLogEntry {
	return b.GetVerificationMaterial().GetTlogEntries()[0]
}

func product() verify.Digest { return verify.DigestBytes(productName, []byte(productContent)) }

func productSHA256() string {
	d := product()
	return hex.EncodeToString(d.SHA256[:])
}

func statementJSON(tb testing.TB, s attest.Step) []byte {
	tb.Helper()
	st, err := attest.NewStatement(s)
	require.NoError(tb, err)
	payload, err := attest.MarshalStatement(st)
	require.NoError(tb, err)
	return payload
}

func TestVerifyHappyPath(t *testing.T) {
	f := newFixture(t)
	policy := &verify.Policy{
		BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent"},
		Steps:             []string{"build"},
		WorkloadSPIFFEIDs: []string{workloadID},
	}
	res, err := verify.Verify(marshal(t, f.bundle), []verify.Digest{product()}, verify.Options{TrustedRoot: f.root, Policy: policy})
	require.NoError(t, err)
	require.Equal(t, verifytest.AgentID, res.BuilderID)
	require.Equal(t, "build", res.Step)
	require.Equal(t, t0, res.SignedAt)
	require.Equal(t, int64(5), res.LogIndex)
	require.Equal(t, []string{workloadID}, res.Workload.SPIFFEIDs)
	require.Equal(t, int64(4242), res.Workload.PID)
	require.Equal(t, int64(1001), res.Workload.UID)
	require.Len(t, res.Subjects, 2)
	require.Equal(t, []verify.Subject{{Name: productName, SHA256: productSHA256()}}, res.Artifacts)
	require.Contains(t, res.Issuer, "hallmark test signing CA")

	// The compact form attest.MarshalBundle writes verifies too.
	compact, err := attest.MarshalBundle(f.bundle)
	require.NoError(t, err)
	_, err = verify.Verify(compact, []verify.Digest{product()}, verify.Options{TrustedRoot: f.root})
	require.NoError(t, err)
}

func TestVerifyRefuses(t *testing.T) {
	f := newFixture(t)
	other := func(t *testing.T) *verifytest.Hallmark { // another deployment, same log URL
		h, err := verifytest.New(t0)
		require.NoError(t, err)
		return h
	}

	tests := []struct {
		name string
		// bundle returns the bundle to verify (default: the fixture's).
		bundle    func(t *testing.T) []byte
		artifacts []verify.Digest // default: the product
		policy    *verify.Policy
		root      func(t *testing.T) *verify.TrustedRoot // default: the fixture's
		check     string
		msg       string
	}{
		// bundle
		{name: "not JSON", bundle: func(t *testing.T) []byte { return []byte("{") }, check: verify.CheckBundle},
		{name: "media type v0.2", check: verify.CheckBundle, msg: "media type", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { b.MediaType = "application/vnd.dev.sigstore.bundle.v0.2+json" })
		}},
		{name: "signature removed from a bundle of v0.2", check: verify.CheckBundle, msg: "media type", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				b.MediaType = "application/vnd.dev.sigstore.bundle.v0.2+json"
				b.GetDsseEnvelope().Signatures = nil
			})
		}},
		{name: "self-signed chain embedded", check: verify.CheckBundle, msg: "certificate chain", bundle: func(t *testing.T) []byte {
			rogue, err := verifytest.NewCA("rogue", t0.Add(-time.Hour), t0.Add(time.Hour))
			require.NoError(t, err)
			return f.tampered(t, func(b *bundlepb.Bundle) {
				b.VerificationMaterial.Content = &bundlepb.VerificationMaterial_X509CertificateChain{
					X509CertificateChain: &protocommon.X509CertificateChain{Certificates: []*protocommon.X509Certificate{
						{RawBytes: f.agent.Cert.Raw}, {RawBytes: rogue.Cert.Raw},
					}},
				}
			})
		}},

		// signature
		{name: "signature removed", check: verify.CheckSignature, msg: "0 signatures", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { b.GetDsseEnvelope().Signatures = nil })
		}},
		{name: "signature duplicated", check: verify.CheckSignature, msg: "2 signatures", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				env := b.GetDsseEnvelope()
				env.Signatures = append(env.Signatures, env.Signatures[0])
			})
		}},
		{name: "payload changed", check: verify.CheckSignature, bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				env := b.GetDsseEnvelope()
				env.Payload = bytes.Replace(env.Payload, []byte(`"step":"build"`), []byte(`"step":"deploy"`), 1)
				require.NotEqual(t, f.bundle.GetDsseEnvelope().GetPayload(), env.Payload)
			})
		}},
		{name: "keyid added (cosign refuses it)", check: verify.CheckBundle, msg: `keyid "anything"`, bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { b.GetDsseEnvelope().GetSignatures()[0].Keyid = "anything" })
		}},
		{name: "signature changed", check: verify.CheckSignature, bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				sig := b.GetDsseEnvelope().GetSignatures()[0]
				sig.Sig = bytes.Clone(sig.Sig)
				sig.Sig[len(sig.Sig)-1] ^= 1
			})
		}},
		{name: "signature by another key", check: verify.CheckSignature, bundle: func(t *testing.T) []byte {
			ag, err := f.h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(time.Minute))
			require.NoError(t, err)
			return f.tampered(t, func(b *bundlepb.Bundle) {
				b.GetVerificationMaterial().GetCertificate().RawBytes = ag.Cert.Raw
			})
		}},

		// tlog
		{name: "no tlog entry", check: verify.CheckTlog, msg: "0 transparency log entries, want exactly 1 (a step's bundle written before its entry was logged: attest with --wait-log", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { b.VerificationMaterial.TlogEntries = nil })
		}},
		{name: "two tlog entries", check: verify.CheckTlog, msg: "2 transparency log entries", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				b.VerificationMaterial.TlogEntries = append(b.VerificationMaterial.TlogEntries, entryOf(b))
			})
		}},
		{name: "integratedTime added (cosign and sigstore-go check it)", check: verify.CheckTlog, msg: "entry has integratedTime 1", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).IntegratedTime = 1 })
		}},
		{name: "inclusionPromise added (Sigstore's verifiers check it)", check: verify.CheckTlog, msg: "entry has an inclusionPromise", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				entryOf(b).InclusionPromise = &rekorpb.InclusionPromise{SignedEntryTimestamp: []byte("garbage")}
			})
		}},
		{name: "unknown entry kind", check: verify.CheckTlog, msg: "kind", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).KindVersion.Kind = "intoto" })
		}},
		{name: "entry from an unknown log", check: verify.CheckTlog, msg: "does not list", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).LogId.KeyId = other(t).Log.ID() })
		}},
		{name: "body of another envelope", check: verify.CheckTlog, msg: "another payload", bundle: func(t *testing.T) []byte {
			o := f.attest(t, f.agent, verifytest.Step("build", f.agent.ID, map[string]string{"x": "y"}), t0)
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).CanonicalizedBody = entryOf(o).CanonicalizedBody })
		}},
		{name: "body naming another certificate", check: verify.CheckTlog, msg: "another certificate", bundle: func(t *testing.T) []byte {
			ag, err := f.h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(time.Minute))
			require.NoError(t, err)
			body, err := tlog.NewBody(f.bundle.GetDsseEnvelope(), ag.Cert.Raw)
			require.NoError(t, err)
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).CanonicalizedBody = body })
		}},
		{name: "inclusion proof hash altered", check: verify.CheckTlog, msg: "inclusion proof", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				h := entryOf(b).InclusionProof.Hashes
				h[0] = bytes.Clone(h[0])
				h[0][0] ^= 1
			})
		}},
		{name: "inclusion proof hash dropped", check: verify.CheckTlog, msg: "inclusion proof", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				p := entryOf(b).InclusionProof
				p.Hashes = p.Hashes[:len(p.Hashes)-1]
			})
		}},
		{name: "inclusion proof for another index", check: verify.CheckTlog, bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				entryOf(b).LogIndex++
				entryOf(b).InclusionProof.LogIndex++
			})
		}},
		{name: "inclusion proof index mismatch", check: verify.CheckTlog, msg: "inclusion proof is for index", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).LogIndex++ })
		}},
		{name: "no inclusion proof", check: verify.CheckTlog, msg: "no inclusion proof", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).InclusionProof = nil })
		}},
		{name: "checkpoint signed by another key", check: verify.CheckTlog, msg: "checkpoint signature", bundle: func(t *testing.T) []byte {
			p := entryOf(f.bundle).GetInclusionProof()
			signed, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: f.h.Log.Origin, Size: uint64(p.GetTreeSize()), Root: p.GetRootHash()}, other(t).Log.Key)
			require.NoError(t, err)
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).InclusionProof.Checkpoint.Envelope = string(signed) })
		}},
		{name: "checkpoint of another origin", check: verify.CheckTlog, msg: "checkpoint", bundle: func(t *testing.T) []byte {
			p := entryOf(f.bundle).GetInclusionProof()
			signed, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: "other.example/log", Size: uint64(p.GetTreeSize()), Root: p.GetRootHash()}, f.h.Log.Key)
			require.NoError(t, err)
			return f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).InclusionProof.Checkpoint.Envelope = string(signed) })
		}},
		{name: "checkpoint of another tree", check: verify.CheckTlog, msg: "checkpoint is for a tree", bundle: func(t *testing.T) []byte {
			o := f.attest(t, f.agent, verifytest.Step("x", f.agent.ID, map[string]string{"x": "x"}), t0)
			return f.tampered(t, func(b *bundlepb.Bundle) {
				entryOf(b).InclusionProof.Checkpoint = entryOf(o).InclusionProof.Checkpoint
			})
		}},
		{name: "log key not yet valid", check: verify.CheckTlog, msg: "log key is trusted for", root: func(t *testing.T) *verify.TrustedRoot {
			was := f.h.Log.ValidFrom
			f.h.Log.ValidFrom = t0.Add(time.Hour)
			defer func() { f.h.Log.ValidFrom = was }()
			return f.trustedRoot(t)
		}},

		// timestamp
		{name: "timestamp removed", check: verify.CheckTimestamp, msg: "0 RFC 3161 timestamps", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) { b.VerificationMaterial.TimestampVerificationData = nil })
		}},
		{name: "timestamp duplicated", check: verify.CheckTimestamp, msg: "2 RFC 3161 timestamps", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				ts := b.VerificationMaterial.TimestampVerificationData
				ts.Rfc3161Timestamps = append(ts.Rfc3161Timestamps, ts.Rfc3161Timestamps[0])
			})
		}},
		{name: "timestamp of another signature", check: verify.CheckTimestamp, msg: "other data", bundle: func(t *testing.T) []byte {
			o := f.attest(t, f.agent, verifytest.Step("x", f.agent.ID, map[string]string{"x": "x"}), t0)
			return f.tampered(t, func(b *bundlepb.Bundle) {
				b.VerificationMaterial.TimestampVerificationData = o.VerificationMaterial.TimestampVerificationData
			})
		}},
		{name: "timestamp by an unknown authority", check: verify.CheckTimestamp, msg: "no timestamp authority", bundle: func(t *testing.T) []byte {
			rogue, err := verifytest.NewTSA("hallmark test timestamp authority", t0.Add(-48*time.Hour))
			require.NoError(t, err)
			ts, err := rogue.Signer.Timestamp(f.bundle.GetDsseEnvelope().GetSignatures()[0].GetSig(), t0)
			require.NoError(t, err)
			return f.tampered(t, func(b *bundlepb.Bundle) {
				b.VerificationMaterial.TimestampVerificationData.Rfc3161Timestamps[0].SignedTimestamp = ts
			})
		}},
		{name: "timestamp altered", check: verify.CheckTimestamp, msg: "does not parse", bundle: func(t *testing.T) []byte {
			return f.tampered(t, func(b *bundlepb.Bundle) {
				ts := b.VerificationMaterial.TimestampVerificationData.Rfc3161Timestamps[0]
				ts.SignedTimestamp = bytes.Clone(ts.SignedTimestamp)
				ts.SignedTimestamp[len(ts.SignedTimestamp)-20] ^= 1
			})
		}},
		{name: "timestamp authority not trusted at the time", check: verify.CheckTimestamp, msg: "is trusted for", root: func(t *testing.T) *verify.TrustedRoot {
			f.h.TSA.ValidUntil = t0.Add(-time.Minute)
			defer func() { f.h.TSA.ValidUntil = time.Time{} }()
			return f.trustedRoot(t)
		}},

		// validity
		{name: "certificate expired at the timestamp", check: verify.CheckValidity, bundle: func(t *testing.T) []byte {
			ag, err := f.h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-10*time.Minute), t0.Add(-5*time.Minute))
			require.NoError(t, err)
			return marshal(t, f.attest(t, ag, step(ag.ID), t0))
		}},
		{name: "certificate not yet valid at the timestamp", check: verify.CheckValidity, bundle: func(t *testing.T) []byte {
			ag, err := f.h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(time.Second), t0.Add(5*time.Minute))
			require.NoError(t, err)
			return marshal(t, f.attest(t, ag, step(ag.ID), t0))
		}},
		// RFC 5280 section 4.1.2.5: notBefore through notAfter, inclusive;
		// a certificate expiring at the timestamp still verifies.
		{name: "certificate expired just before the timestamp", check: verify.CheckValidity, bundle: func(t *testing.T) []byte {
			ag, err := f.h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-5*time.Minute), t0.Add(-time.Second))
			require.NoError(t, err)
			return marshal(t, f.attest(t, ag, step(ag.ID), t0))
		}},

		// chain
		{name: "chain to an unknown root", check: verify.CheckChain, msg: "chains to no certificate authority", bundle: func(t *testing.T) []byte {
			rogue, err := verifytest.NewCA("hallmark test signing CA", t0.Add(-time.Hour), t0.Add(time.Hour))
			require.NoError(t, err)
			ag, err := rogue.NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(time.Minute))
			require.NoError(t, err)
			return marshal(t, f.attest(t, ag, step(ag.ID), t0))
		}},
		{name: "certificate without code-signing EKU", check: verify.CheckChain, msg: "usage", bundle: func(t *testing.T) []byte {
			leaf := *f.agent.Cert
			tmpl := &x509.Certificate{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, URIs: leaf.URIs,
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			ag, err := f.h.CAs[0].NewAgentFromTemplate(verifytest.AgentID, tmpl)
			require.NoError(t, err)
			return marshal(t, f.attest(t, ag, step(ag.ID), t0))
		}},
		{name: "signing certificate is a CA", check: verify.CheckChain, msg: "is a CA certificate", bundle: func(t *testing.T) []byte {
			leaf := *f.agent.Cert
			tmpl := &x509.Certificate{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, URIs: leaf.URIs,
				KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
				BasicConstraintsValid: true, IsCA: true}
			ag, err := f.h.CAs[0].NewAgentFromTemplate(verifytest.AgentID, tmpl)
			require.NoError(t, err)
			return marshal(t, f.attest(t, ag, step(ag.ID), t0))
		}},
		{name: "CA trusted only before the timestamp", check: verify.CheckChain, msg: "trusts for", root: func(t *testing.T) *verify.TrustedRoot {
			ca := f.h.CAs[0]
			saved := ca.ValidUntil
			ca.ValidUntil = t0.Add(-time.Second)
			defer func() { ca.ValidUntil = saved }()
			return f.trustedRoot(t)
		}},

		// statement
		{name: "payload not a statement", check: verify.CheckStatement, bundle: func(t *testing.T) []byte {
			return marshal(t, f.attestPayload(t, []byte(`{"hello":"world"}`)))
		}},
		{name: "statement of another _type", check: verify.CheckStatement, msg: "_type", bundle: func(t *testing.T) []byte {
			p := bytes.Replace(statementJSON(t, step(f.agent.ID)), []byte("https://in-toto.io/Statement/v1"), []byte("https://in-toto.io/Statement/v0.1"), 1)
			return marshal(t, f.attestPayload(t, p))
		}},

		// subject
		{name: "wrong artifact", check: verify.CheckSubject, msg: "not a subject",
			artifacts: []verify.Digest{verify.DigestBytes("dist/widget.tar.gz", []byte("evil"))}},
		{name: "one of two artifacts wrong", check: verify.CheckSubject,
			artifacts: []verify.Digest{product(), verify.DigestBytes("x", []byte("evil"))}},

		// predicate
		{name: "wrong predicateType", check: verify.CheckPredicate, msg: "predicateType", bundle: func(t *testing.T) []byte {
			p := bytes.Replace(statementJSON(t, step(f.agent.ID)), []byte(attest.PredicateType), []byte("https://slsa.dev/provenance/v0.2"), 1)
			return marshal(t, f.attestPayload(t, p))
		}},
		{name: "unknown buildType", check: verify.CheckPredicate, msg: "buildType", bundle: func(t *testing.T) []byte {
			p := bytes.Replace(statementJSON(t, step(f.agent.ID)), []byte(attest.BuildType), []byte("https://hallmark.dev/buildtypes/step/v3"), 1)
			return marshal(t, f.attestPayload(t, p))
		}},
		{name: "step missing", check: verify.CheckPredicate, msg: "externalParameters.step", bundle: func(t *testing.T) []byte {
			p := bytes.Replace(statementJSON(t, step(f.agent.ID)), []byte(`"step":"build"`), []byte(`"stage":"build"`), 1)
			return marshal(t, f.attestPayload(t, p))
		}},
		{name: "builder.id is not the certificate's", check: verify.CheckPredicate, msg: "not the certificate's", bundle: func(t *testing.T) []byte {
			return marshal(t, f.attest(t, f.agent, step("spiffe://example.org/hallmark/agent/node-2"), t0))
		}},

		// policy
		{name: "builder outside policy", check: verify.CheckPolicy, msg: "builder",
			policy: &verify.Policy{BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent/node-1x", "spiffe://other.org"}}},
		{name: "builder prefix is not a path prefix", check: verify.CheckPolicy, msg: "builder",
			policy: &verify.Policy{BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent/node"}}},
		{name: "step outside policy", check: verify.CheckPolicy, msg: "step",
			policy: &verify.Policy{Steps: []string{"test", "deploy"}}},
		{name: "workload outside policy", check: verify.CheckPolicy, msg: "workload",
			policy: &verify.Policy{WorkloadSPIFFEIDs: []string{"spiffe://example.org/ci/runner/gadget"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := marshal(t, f.bundle)
			if tc.bundle != nil {
				data = tc.bundle(t)
			}
			artifacts := []verify.Digest{product()}
			if tc.artifacts != nil {
				artifacts = tc.artifacts
			}
			root := f.root
			if tc.root != nil {
				root = tc.root(t)
			}
			res, err := verify.Verify(data, artifacts, verify.Options{TrustedRoot: root, Policy: tc.policy})
			require.Nil(t, res)
			t.Log(err)
			var ce *verify.CheckError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.check, ce.Check, "error: %v", err)
			require.ErrorIs(t, err, verify.ErrNotVerified)
			if tc.msg != "" {
				require.ErrorContains(t, err, tc.msg)
			}
		})
	}
}

// TestRotation: the trusted root keeps a rotated-out CA with the window it
// was trusted for, so what it certified then still verifies, and nothing
// it certifies later does.
func TestRotation(t *testing.T) {
	rotation := t0.Add(-time.Hour)
	h, err := verifytest.New(t0)
	require.NoError(t, err)
	old := h.CAs[0]
	old.ValidFrom, old.ValidUntil = t0.Add(-48*time.Hour), rotation
	next, err := verifytest.NewCA("hallmark test signing CA 2", rotation.Add(-time.Hour), t0.Add(48*time.Hour))
	require.NoError(t, err)
	next.ValidFrom, next.ValidUntil = rotation, time.Time{}
	inter, err := next.NewIntermediate("hallmark test issuing CA 2", rotation.Add(-time.Hour), t0.Add(48*time.Hour))
	require.NoError(t, err)
	h.CAs = append(h.CAs, inter) // the new CA issues through an intermediate
	f := &fixture{h: h}
	root := f.trustedRoot(t)
	opts := verify.Options{TrustedRoot: root}

	oldAgent, err := old.NewAgent(verifytest.AgentID, rotation.Add(-3*time.Hour), t0.Add(time.Hour))
	require.NoError(t, err)
	newAgent, err := inter.NewAgent(verifytest.AgentID, rotation.Add(-time.Minute), t0.Add(time.Hour))
	require.NoError(t, err)

	tests := []struct {
		name   string
		agent  *verifytest.Agent
		at     time.Time
		issuer string // empty: refused by the chain check
	}{
		{"old CA before rotation", oldAgent, rotation.Add(-2 * time.Hour), "hallmark test signing CA,"},
		{"old CA at the rotation instant (validFor is inclusive)", oldAgent, rotation, "hallmark test signing CA,"},
		{"old CA after rotation", oldAgent, rotation.Add(time.Second), ""},
		{"new CA after rotation", newAgent, t0, "hallmark test signing CA 2"},
		{"new CA before its window", newAgent, rotation.Add(-time.Second), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := h.Attest(tc.agent, step(tc.agent.ID), tc.at)
			require.NoError(t, err)
			res, err := verify.Verify(marshal(t, b), []verify.Digest{product()}, opts)
			if tc.issuer == "" {
				var ce *verify.CheckError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, verify.CheckChain, ce.Check, "error: %v", err)
				return
			}
			require.NoError(t, err)
			require.Contains(t, res.Issuer+",", tc.issuer)
			require.Equal(t, tc.at, res.SignedAt)
		})
	}
}

// TestRevokedBetweenSeconds: a signature made after a revocation verifies
// not even when the revocation falls between two whole seconds and the
// timestamp authority rounds the signature's time down to before it (as
// the log's authority does, to the millisecond): the trust rule
// (trust.SigningCA) ends the window at the whole second. What was signed
// before that second still verifies.
func TestRevokedBetweenSeconds(t *testing.T) {
	h, err := verifytest.New(t0)
	require.NoError(t, err)
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(time.Minute))
	require.NoError(t, err)
	revokedAt := t0.Add(500 * time.Microsecond) // revoke --at t0+0.0005s
	ca, err := trust.SigningCA(h.CAs[0].Chain, time.Time{}, revokedAt)
	require.NoError(t, err)
	h.CAs[0].ValidUntil = ca.ValidFor.End // as the server exports it
	root := (&fixture{h: h}).trustedRoot(t)

	tests := []struct {
		name     string
		signedAt time.Time
		verifies bool
	}{
		{"after the revocation, timestamped before it", revokedAt.Add(300 * time.Microsecond), false},
		{"in the revocation's second, before it", t0.Add(100 * time.Microsecond), false},
		{"at the revocation", revokedAt, false},
		{"the second before", t0.Add(-time.Millisecond), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := h.Attest(agent, step(agent.ID), tc.signedAt)
			require.NoError(t, err)
			res, err := verify.Verify(marshal(t, b), []verify.Digest{product()}, verify.Options{TrustedRoot: root})
			if tc.verifies {
				require.NoError(t, err)
				require.True(t, res.SignedAt.Before(t0))
				return
			}
			var ce *verify.CheckError
			require.ErrorAs(t, err, &ce, "signed at %s, revoked at %s", tc.signedAt.Format(time.RFC3339Nano), revokedAt.Format(time.RFC3339Nano))
			require.Equal(t, verify.CheckChain, ce.Check, "error: %v", err)
		})
	}
}

func TestVerifyMisuse(t *testing.T) {
	f := newFixture(t)
	data := marshal(t, f.bundle)
	_, err := verify.Verify(data, []verify.Digest{product()}, verify.Options{})
	require.ErrorContains(t, err, "TrustedRoot")
	require.False(t, errors.Is(err, verify.ErrNotVerified))
	_, err = verify.Verify(data, nil, verify.Options{TrustedRoot: f.root})
	require.ErrorContains(t, err, "no artifact")
	require.False(t, errors.Is(err, verify.ErrNotVerified))
}

func TestVerifyMany(t *testing.T) {
	f := newFixture(t)
	good := marshal(t, f.bundle)
	bad := f.tampered(t, func(b *bundlepb.Bundle) { entryOf(b).InclusionProof.Hashes = nil })
	var reqs []verify.Request
	for i := range 64 {
		data := good
		if i%7 == 3 {
			data = bad
		}
		reqs = append(reqs, verify.Request{Bundle: data, Artifacts: []verify.Digest{product()}})
	}
	for _, workers := range []int{0, 1, 3, 100} {
		out := verify.VerifyMany(reqs, verify.Options{TrustedRoot: f.root, Workers: workers})
		require.Len(t, out, len(reqs))
		for i, o := range out {
			if i%7 == 3 {
				var ce *verify.CheckError
				require.ErrorAs(t, o.Err, &ce)
				require.Equal(t, verify.CheckTlog, ce.Check)
				require.Nil(t, o.Result)
				continue
			}
			require.NoError(t, o.Err)
			require.Equal(t, "build", o.Result.Step)
		}
	}
	require.Empty(t, verify.VerifyMany(nil, verify.Options{TrustedRoot: f.root}))
}

// The verified-chain cache never outlives what it cached: a second bundle
// by the same certificate, timestamped after its CA's trust ended, fails
// the chain check although the first one put the chain in the cache.
func TestChainCacheRechecksTime(t *testing.T) {
	h, err := verifytest.New(t0)
	require.NoError(t, err)
	ca := h.CAs[0]
	ca.ValidUntil = t0.Add(time.Minute)
	agent, err := ca.NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(10*time.Minute))
	require.NoError(t, err)
	data, err := h.TrustedRootJSON()
	require.NoError(t, err)
	root, err := verify.ParseTrustedRoot(data)
	require.NoError(t, err)
	opts := verify.Options{TrustedRoot: root}
	artifacts := []verify.Digest{product()}

	early, err := h.Attest(agent, step(agent.ID), t0)
	require.NoError(t, err)
	_, err = verify.Verify(marshal(t, early), artifacts, opts)
	require.NoError(t, err)

	late, err := h.Attest(agent, step(agent.ID), t0.Add(2*time.Minute))
	require.NoError(t, err)
	_, err = verify.Verify(marshal(t, late), artifacts, opts)
	var ce *verify.CheckError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, verify.CheckChain, ce.Check)
}
