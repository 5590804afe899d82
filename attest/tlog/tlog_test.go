package tlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

func TestBodyRoundTrip(t *testing.T) {
	env := &dssepb.Envelope{Payload: []byte("{}"), PayloadType: "application/vnd.in-toto+json", Signatures: []*dssepb.Signature{{Sig: []byte("sig")}}}
	cert := []byte("cert")
	b, err := NewBody(env, cert, time.Unix(1700000000, 0))
	require.NoError(t, err)
	body, err := ParseBody(b)
	require.NoError(t, err)
	require.NoError(t, body.Matches(env, cert))
	require.Equal(t, int64(1700000000), body.IntegratedTime)

	tampered := &dssepb.Envelope{Payload: []byte("{ }"), PayloadType: env.PayloadType, Signatures: env.Signatures}
	require.ErrorContains(t, body.Matches(tampered, cert), "another payload")
	require.ErrorContains(t, body.Matches(env, []byte("other")), "another certificate")
	_, err = ParseBody([]byte(`{"kind":"x","version":"0.1.0"}`))
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
