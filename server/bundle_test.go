package server

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"testing"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	commonpb "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
)

// signStep signs a build step with one product, "app", as agentID would
// with key and leaf at now: the bundle as the agent returns it, and its
// envelope as SubmitEntries takes it.
func signStep(t testing.TB, key *ecdsa.PrivateKey, leaf *x509.Certificate, product []byte, now time.Time) (*bundlepb.Bundle, []byte) {
	t.Helper()
	sum := sha256.Sum256(product)
	bundleJSON, err := attest.Sign(attest.Step{
		Name: "build", Workspace: "/w", Products: []attest.Artifact{{Name: "app", SHA256: hex.EncodeToString(sum[:])}},
		BuilderID: agentID.String(), StartedOn: now, FinishedOn: now,
	}, key, leaf)
	require.NoError(t, err)
	b, err := attest.ParseBundle(bundleJSON)
	require.NoError(t, err)
	env, err := protojson.Marshal(b.GetDsseEnvelope())
	require.NoError(t, err)
	return b, env
}

// completeBundle puts what logging returned, the entry and the RFC 3161
// timestamp, into b (as the agent does) and returns its JSON.
func completeBundle(t testing.TB, b *bundlepb.Bundle, te *rekorpb.TransparencyLogEntry, timestamp []byte) []byte {
	t.Helper()
	require.NotEmpty(t, timestamp, "a logged entry comes with a timestamp")
	b.VerificationMaterial.TlogEntries = []*rekorpb.TransparencyLogEntry{te}
	b.VerificationMaterial.TimestampVerificationData = &bundlepb.TimestampVerificationData{
		Rfc3161Timestamps: []*commonpb.RFC3161SignedTimestamp{{SignedTimestamp: timestamp}},
	}
	out, err := protojson.Marshal(b)
	require.NoError(t, err)
	return out
}
