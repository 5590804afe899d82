package attest_test

import (
	"bytes"
	"crypto"
	"errors"
	"io"
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
)

// countingSigner counts the signatures it makes.
type countingSigner struct {
	crypto.Signer
	n int
}

func (s *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.n++
	return s.Signer.Sign(r, digest, opts)
}

// A bundle over MaxBundleSize is refused with its size and the limit,
// before the key signs anything; one at the limit is signed, and its
// size is what the refusal would have said.
func TestSignWithMaxBundleSize(t *testing.T) {
	pki := newTestPKI(t)
	step := testStep()
	signer := &countingSigner{Signer: pki.signer}
	bundle, err := attest.SignWith(step, signer, pki.leaf, attest.SignOptions{})
	require.NoError(t, err)
	require.Equal(t, 1, signer.n)

	// The refusal's size is the bundle's, the signature's length (70-72
	// bytes in DER) taken at its longest.
	_, err = attest.SignWith(step, signer, pki.leaf, attest.SignOptions{MaxBundleSize: 100})
	var se *attest.SizeError
	require.True(t, errors.As(err, &se), "%v", err)
	require.Equal(t, 100, se.Limit)
	require.InDelta(t, len(bundle), se.Size, 4)
	require.GreaterOrEqual(t, se.Size, len(bundle))
	require.ErrorContains(t, err, "more than the 100 allowed")
	require.Equal(t, 1, signer.n, "nothing signed for a refused bundle")

	for _, limit := range []int{se.Size, se.Size + 1, 1 << 20} {
		out, err := attest.SignWith(step, signer, pki.leaf, attest.SignOptions{MaxBundleSize: limit})
		require.NoError(t, err, "limit %d", limit)
		require.LessOrEqual(t, len(out), limit)
	}
	_, err = attest.SignWith(step, signer, pki.leaf, attest.SignOptions{MaxBundleSize: se.Size - 1})
	require.ErrorAs(t, err, &se)
}

// With Timestamp, the bundle carries what it returns for the signature as
// its one RFC 3161 timestamp, byte for byte what protojson writes for that
// bundle; a failing or oversized timestamp fails SignWith, and the size
// refusal counts MaxTimestampSize.
func TestSignWithTimestamp(t *testing.T) {
	pki := newTestPKI(t)
	step := testStep()
	var gotSig []byte
	ts := bytes.Repeat([]byte{0x30, 0x82}, 600)
	out, err := attest.SignWith(step, pki.signer, pki.leaf, attest.SignOptions{
		Timestamp:        func(sig []byte) ([]byte, error) { gotSig = bytes.Clone(sig); return ts, nil },
		MaxTimestampSize: 16 << 10,
	})
	require.NoError(t, err)
	b, err := attest.ParseBundle(out)
	require.NoError(t, err)
	require.Equal(t, gotSig, b.GetDsseEnvelope().GetSignatures()[0].GetSig(), "the timestamp is asked for the envelope's signature")
	want, err := attest.NewBundle(b.GetDsseEnvelope(), pki.leaf)
	require.NoError(t, err)
	want.VerificationMaterial.TimestampVerificationData = &bundlepb.TimestampVerificationData{
		Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: ts}},
	}
	wantJSON, err := attest.MarshalBundle(want)
	require.NoError(t, err)
	require.Equal(t, string(wantJSON), string(out))

	_, err = attest.SignWith(step, pki.signer, pki.leaf, attest.SignOptions{
		Timestamp: func([]byte) ([]byte, error) { return nil, errors.New("no authority answered") }, MaxTimestampSize: 16 << 10,
	})
	require.ErrorContains(t, err, "attest: timestamp: no authority answered")
	_, err = attest.SignWith(step, pki.signer, pki.leaf, attest.SignOptions{
		Timestamp: func([]byte) ([]byte, error) { return ts, nil }, MaxTimestampSize: 100,
	})
	require.ErrorContains(t, err, "timestamp is 1200 bytes, want 1 to 100")

	// The size refusal leaves room for the largest timestamp.
	plain, err := attest.SignWith(step, pki.signer, pki.leaf, attest.SignOptions{})
	require.NoError(t, err)
	_, err = attest.SignWith(step, pki.signer, pki.leaf, attest.SignOptions{
		MaxBundleSize: len(plain) + 100, Timestamp: func([]byte) ([]byte, error) { return ts, nil }, MaxTimestampSize: 16 << 10,
	})
	var se *attest.SizeError
	require.ErrorAs(t, err, &se)
	require.Greater(t, se.Size, len(plain)+(16<<10))
}
