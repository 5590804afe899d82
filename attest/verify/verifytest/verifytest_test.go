package verifytest

import (
	"fmt"
	"testing"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/compact"

	"github.com/hallmark-dev/hallmark/attest/tlog"
)

// TestLogProofs checks the log's roots against merkle's compact ranges and
// every inclusion proof against tlog.VerifyInclusion, for every index of
// every tree size up to 33, and the signed checkpoint of each.
func TestLogProofs(t *testing.T) {
	l, err := NewLog(LogBaseURL)
	require.NoError(t, err)
	rf := compact.RangeFactory{Hash: tlog.Hasher.HashChildren}
	tree := rf.NewEmptyRange(0)
	for size := uint64(1); size <= 33; size++ {
		env := &dssepb.Envelope{Payload: fmt.Appendf(nil, "%d", size), Signatures: []*dssepb.Signature{{Sig: []byte("s")}}}
		body, err := tlog.NewBody(env, []byte("cert"))
		require.NoError(t, err)
		require.Equal(t, size-1, l.Append(body))
		require.NoError(t, tree.Append(tlog.LeafHash(body), nil))
		root, err := tree.GetRootHash(nil)
		require.NoError(t, err)
		for idx := range size {
			e, err := l.Entry(idx, size)
			require.NoError(t, err)
			p := e.GetInclusionProof()
			require.Equal(t, root, p.GetRootHash(), "size %d", size)
			require.NoError(t, tlog.VerifyInclusion(idx, size, tlog.LeafHash(e.GetCanonicalizedBody()), p.GetHashes(), root), "index %d size %d", idx, size)
			cp, err := tlog.OpenCheckpoint([]byte(p.GetCheckpoint().GetEnvelope()), l.Origin, l.PublicKey())
			require.NoError(t, err)
			require.Equal(t, size, cp.Size)
			require.Equal(t, tlog.EntryKind, e.GetKindVersion().GetKind())
		}
	}
	_, err = l.Entry(33, 33)
	require.Error(t, err)
	_, err = l.Entry(0, 34)
	require.Error(t, err)
}
