package pipeline_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	vsa1 "github.com/in-toto/attestation/go/predicates/vsa/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// parseVSA decodes a VSA with in-toto's Go bindings, strictly (unknown
// fields refused), and validates the statement.
func parseVSA(t *testing.T, statement []byte) *vsa1.VerificationSummary {
	t.Helper()
	var st ita1.Statement
	require.NoError(t, protojson.Unmarshal(statement, &st))
	require.NoError(t, st.Validate())
	require.Equal(t, ita1.StatementTypeUri, st.GetType())
	require.Equal(t, "https://slsa.dev/verification_summary/v1", st.GetPredicateType())
	pj, err := protojson.Marshal(st.GetPredicate())
	require.NoError(t, err)
	var vsa vsa1.VerificationSummary
	require.NoError(t, protojson.Unmarshal(pj, &vsa))
	return &vsa
}

func TestVSA(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	bundles := f.bundles(t, r.checkout, r.build, r.packag)
	rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "widget-1.0.tar.gz", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(bundles))
	require.NoError(t, err)
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	statement, err := rep.VSA(pipeline.VSAOptions{ResourceURI: "file:widget-1.0.tar.gz", PolicyURI: "file:pipeline.hcl", Time: when})
	require.NoError(t, err)

	vsa := parseVSA(t, statement)
	require.Equal(t, pipeline.DefaultVerifierID, vsa.GetVerifier().GetId())
	require.Equal(t, when, vsa.GetTimeVerified().AsTime())
	require.Equal(t, "file:widget-1.0.tar.gz", vsa.GetResourceUri())
	policyDigest := sha256.Sum256([]byte(testPolicy))
	require.Equal(t, map[string]string{"sha256": hex.EncodeToString(policyDigest[:])}, vsa.GetPolicy().GetDigest())
	require.Equal(t, "file:pipeline.hcl", vsa.GetPolicy().GetUri())
	require.Equal(t, "PASSED", vsa.GetVerificationResult())
	require.Equal(t, []string{"SLSA_BUILD_LEVEL_2"}, vsa.GetVerifiedLevels())
	require.Equal(t, "1.0", vsa.GetSlsaVersion())
	// Every bundle of the chain, by the SHA-256 of its bytes.
	want := map[string]string{}
	for _, b := range bundles {
		sum := sha256.Sum256(b.Bundle)
		want[b.URI] = hex.EncodeToString(sum[:])
	}
	got := map[string]string{}
	for _, in := range vsa.GetInputAttestations() {
		got[in.GetUri()] = in.GetDigest()["sha256"]
	}
	require.Equal(t, want, got)
	var st ita1.Statement
	require.NoError(t, protojson.Unmarshal(statement, &st))
	require.Equal(t, "widget-1.0.tar.gz", st.GetSubject()[0].GetName())
	require.Equal(t, rep.Artifact.SHA256, st.GetSubject()[0].GetDigest()["sha256"])

	// Signed in DSSE: go-securesystemslib verifies it with the public key.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	signed, err := pipeline.SignVSA(statement, key)
	require.NoError(t, err)
	var env dsse.Envelope
	require.NoError(t, json.Unmarshal(signed, &env))
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	keyID, err := pipeline.KeyID(key.Public())
	require.NoError(t, err)
	sv, err := signerverifier.NewECDSASignerVerifierFromSSLibKey(&signerverifier.SSLibKey{
		KeyID: keyID, KeyType: signerverifier.ECDSAKeyType, Scheme: signerverifier.ECDSAKeyScheme,
		KeyVal: signerverifier.KeyVal{Public: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
	})
	require.NoError(t, err)
	ev, err := dsse.NewEnvelopeVerifier(sv)
	require.NoError(t, err)
	accepted, err := ev.Verify(context.Background(), &env)
	require.NoError(t, err)
	require.Len(t, accepted, 1)
	require.Equal(t, keyID, accepted[0].KeyID)
	payload, err := env.DecodeB64Payload()
	require.NoError(t, err)
	require.Equal(t, statement, payload)
	require.Equal(t, "application/vnd.in-toto+json", env.PayloadType)

	// Another key's verifier refuses it.
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	otherDER, err := x509.MarshalPKIXPublicKey(other.Public())
	require.NoError(t, err)
	osv, err := signerverifier.NewECDSASignerVerifierFromSSLibKey(&signerverifier.SSLibKey{
		KeyType: signerverifier.ECDSAKeyType, Scheme: signerverifier.ECDSAKeyScheme,
		KeyVal: signerverifier.KeyVal{Public: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: otherDER}))},
	})
	require.NoError(t, err)
	oev, err := dsse.NewEnvelopeVerifier(osv)
	require.NoError(t, err)
	_, err = oev.Verify(context.Background(), &env)
	require.Error(t, err)
}

// A refused chain's VSA says FAILED and lists what was examined.
func TestVSAFailed(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	r.build.Workload.SPIFFEIDs = []string{checkoutID}
	rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], pipeline.NewBundleSet(f.bundles(t, r.checkout, r.build, r.packag)))
	require.Error(t, err)
	statement, err := rep.VSA(pipeline.VSAOptions{ResourceURI: "file:w", Time: time.Now()})
	require.NoError(t, err)
	vsa := parseVSA(t, statement)
	require.Equal(t, "FAILED", vsa.GetVerificationResult())
	require.Equal(t, []string{"FAILED"}, vsa.GetVerifiedLevels())
	require.Len(t, vsa.GetInputAttestations(), 2) // package and the refused build

	_, err = rep.VSA(pipeline.VSAOptions{Time: time.Now()})
	require.ErrorContains(t, err, "ResourceURI")
}
