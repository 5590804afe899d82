package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/verify"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

func marshalBundle(t *testing.T, b *bundlepb.Bundle) []byte {
	t.Helper()
	out, err := protojson.Marshal(b)
	require.NoError(t, err)
	return out
}

// TestLoggedBundleVerifiesOffline closes the loop with package
// attest/verify: a bundle completed with the entry SubmitEntries returned
// verifies against the trusted root the server serves, and the baseUrl
// rule gives back the log's origin.
func TestLoggedBundleVerifiesOffline(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	inter := root.intermediate(t, "issuing CA")
	km := chainKeyManager(t, root, inter)
	ls := newLogServer(t, km)
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}

	origin, err := trust.CheckpointOrigin(trust.Log{Origin: ls.tl.Origin()}.BaseURL())
	require.NoError(t, err)
	require.Equal(t, ls.tl.Origin(), origin)

	key := newP256(t)
	issued, err := svc.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: makeCSR(t, key, nil)})
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(issued.GetCertificateChain()[0])
	require.NoError(t, err)

	product := []byte("the product")
	sum := sha256.Sum256(product)
	now := time.Now()
	b, env := signStep(t, key, leaf, product, now)

	resp, err := svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{{Envelope: env, Certificate: leaf.Raw}}})
	require.NoError(t, err)
	require.Empty(t, resp.GetResults()[0].GetError())
	var te rekorpb.TransparencyLogEntry
	require.NoError(t, protojson.Unmarshal(resp.GetResults()[0].GetTlogEntry(), &te))
	logged := completeBundle(t, b, &te, resp.GetResults()[0].GetSignedTimestamp())

	mux := http.NewServeMux()
	ls.tl.registerHTTP(mux, zap.NewNop())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_, _, trJSON := httpGet(t, srv.URL+"/trust/trusted_root.json")
	tr, err := verify.ParseTrustedRoot(trJSON)
	require.NoError(t, err)

	res, err := verify.Verify(logged, []verify.Digest{verify.DigestBytes("app", product)}, verify.Options{TrustedRoot: tr})
	require.NoError(t, err)
	require.Equal(t, agentID.String(), res.BuilderID)
	require.Equal(t, te.GetLogIndex(), res.LogIndex)
	require.WithinDuration(t, now, res.SignedAt, 2*time.Second)

	// Sigstore's own verifier agrees, from the served trusted root alone.
	sg, err := sigstorego.Verify(logged, trJSON, sum[:], agentID.String())
	require.NoError(t, err)
	require.Equal(t, res.SignedAt, sg.SignedAt.UTC())

	// A bundle without the entry, or without the timestamp, does not
	// verify.
	noTimestamp := proto.Clone(b).(*bundlepb.Bundle)
	noTimestamp.VerificationMaterial.TimestampVerificationData = nil
	_, err = verify.Verify(marshalBundle(t, noTimestamp), []verify.Digest{verify.DigestBytes("app", product)}, verify.Options{TrustedRoot: tr})
	require.ErrorIs(t, err, verify.ErrNotVerified)
	b.VerificationMaterial.TlogEntries = nil
	unlogged, err := protojson.Marshal(b)
	require.NoError(t, err)
	_, err = verify.Verify(unlogged, []verify.Digest{verify.DigestBytes("app", product)}, verify.Options{TrustedRoot: tr})
	require.Error(t, err)
}
