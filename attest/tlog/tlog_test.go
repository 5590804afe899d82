package tlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

func TestBodyRoundTrip(t *testing.T) {
	env := &dssepb.Envelope{Payload: []byte("{}"), PayloadType: "application/vnd.in-toto+json", Signatures: []*dssepb.Signature{{Sig: []byte("sig")}}}
	cert := []byte("cert")
	b, err := NewBody(env, cert)
	require.NoError(t, err)
	require.Equal(t, `{"apiVersion":"0.0.2","kind":"dsse","spec":{"dsseV002":{"payloadHash":{"algorithm":"SHA2_256",`+
		`"digest":"RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="},"signatures":[{"content":"c2ln","verifier":`+
		`{"keyDetails":"PKIX_ECDSA_P256_SHA_256","x509Certificate":{"rawBytes":"Y2VydA=="}}}]}}}`, string(b))
	body, err := ParseBody(b)
	require.NoError(t, err)
	require.NoError(t, body.Matches(env, cert))

	tampered := &dssepb.Envelope{Payload: []byte("{ }"), PayloadType: env.PayloadType, Signatures: env.Signatures}
	require.ErrorContains(t, body.Matches(tampered, cert), "another payload")
	require.ErrorContains(t, body.Matches(env, []byte("other")), "another certificate")
	require.ErrorContains(t, body.Matches(env2sig(env, "other"), cert), "another signature")
	_, err = ParseBody([]byte(`{"kind":"x","apiVersion":"0.0.2"}`))
	require.Error(t, err)
	_, err = ParseBody(append(b[:len(b)-1], []byte(`,"extra":1}`)...))
	require.Error(t, err)
}

func TestCheckpointSignAndOpen(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	root := make([]byte, 32)
	cp := Checkpoint{Origin: "hallmark.example/log", Size: 42, Root: root}
	signed, err := SignCheckpoint(cp, priv)
	require.NoError(t, err)
	got, err := OpenCheckpoint(signed, cp.Origin, pub)
	require.NoError(t, err)
	require.Equal(t, cp, got)

	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	_, err = OpenCheckpoint(signed, cp.Origin, otherPub)
	require.Error(t, err, "another key")
	_, err = OpenCheckpoint(signed, "other.example/log", pub)
	require.Error(t, err, "another origin")
}

func TestInclusionAndConsistency(t *testing.T) {
	var leaves [][]byte
	rf := compact.RangeFactory{Hash: Hasher.HashChildren}
	tree := rf.NewEmptyRange(0)
	for i := range 13 {
		leaves = append(leaves, LeafHash([]byte{byte(i)}))
		require.NoError(t, tree.Append(leaves[i], nil))
	}
	root, err := tree.GetRootHash(nil)
	require.NoError(t, err)
	nodes, err := proof.Inclusion(5, 13)
	require.NoError(t, err)
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		hashes[i] = subtree(t, leaves, id)
	}
	hashes, err = nodes.Rehash(hashes, Hasher.HashChildren)
	require.NoError(t, err)
	require.NoError(t, VerifyInclusion(5, 13, leaves[5], hashes, root))
	require.Error(t, VerifyInclusion(6, 13, leaves[5], hashes, root))
}

func env2sig(env *dssepb.Envelope, sig string) *dssepb.Envelope {
	return &dssepb.Envelope{Payload: env.Payload, PayloadType: env.PayloadType, Signatures: []*dssepb.Signature{{Sig: []byte(sig)}}}
}

// subtree computes the hash of the perfect subtree id from leaves.
func subtree(t *testing.T, leaves [][]byte, id compact.NodeID) []byte {
	t.Helper()
	begin, end := id.Coverage()
	var mth func(l [][]byte) []byte
	mth = func(l [][]byte) []byte {
		if len(l) == 1 {
			return l[0]
		}
		return Hasher.HashChildren(mth(l[:len(l)/2]), mth(l[len(l)/2:]))
	}
	return mth(leaves[begin:end])
}

// FuzzParseBody: entry bodies come from bundles and from the store; a
// body that parses round-trips through Matches without panicking, and
// NewBody's output always parses.
func FuzzParseBody(f *testing.F) {
	env := &dssepb.Envelope{Payload: []byte("{}"), PayloadType: "application/vnd.in-toto+json", Signatures: []*dssepb.Signature{{Sig: []byte("sig")}}}
	good, err := NewBody(env, []byte("cert"))
	require.NoError(f, err)
	f.Add(good)
	f.Add([]byte(`{"apiVersion":"0.0.2","kind":"dsse","spec":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBody(data)
		if err != nil {
			return
		}
		_ = b.Matches(env, []byte("cert"))
	})
}

// FuzzCheckpoint: checkpoints arrive in bundles and over HTTP.
func FuzzCheckpoint(f *testing.F) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(f, err)
	signed, err := SignCheckpoint(Checkpoint{Origin: "hallmark.example.org", Size: 3, Root: make([]byte, 32)}, priv)
	require.NoError(f, err)
	f.Add(signed)
	f.Fuzz(func(t *testing.T, data []byte) {
		if cp, err := OpenCheckpoint(data, "hallmark.example.org", pub); err == nil && len(cp.Root) != 32 {
			t.Fatalf("accepted a root of %d bytes", len(cp.Root))
		}
		ParseCheckpoint(string(data)) //nolint:errcheck // must not panic
	})
}
