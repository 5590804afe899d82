package verify_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/attest/tsa/tsatest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

// TestIssuedMemoryOnlyForItsAuthority: in a trusted root listing
// several timestamp authorities, SkipTimestampSignatureCheckIfIssuedBy(s)
// applies the memory of s's responses to the authority whose leaf s
// holds and to no other, and a root that does not list s at all is
// prepared as without it. The signer's key writes invalid signatures, so
// that the skipped check is visible: a remembered response is admitted
// only by the root made with the option. (How long s remembers is
// TestIssuedMemorySkipsOnlyTheSignatureOfRecentResponses, package tsa.)
func TestIssuedMemoryOnlyForItsAuthority(t *testing.T) {
	f := newFixture(t)
	now := t0.Add(2 * time.Minute)
	e := admitEntry(t, f.agent, step(f.agent.ID))
	sig := e.Envelope.GetSignatures()[0].GetSig()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	chain, err := tsa.NewChain(key, "the log's own authority", t0.Add(-time.Hour))
	require.NoError(t, err)
	own, err := tsa.NewSigner(tsatest.FaultyKey{Key: key}, chain)
	require.NoError(t, err)

	// The fixture's authority first, the log's own second.
	st := f.h.State()
	st.TSAs = append(st.TSAs, trust.TSA{Chain: own.Chain(), URI: verifytest.LogBaseURL, ValidFor: trust.Range{Start: t0.Add(-time.Hour)}})
	plain, err := verify.NewTrustedRootFromState(st)
	require.NoError(t, err)
	trusting, err := verify.NewTrustedRootFromState(st, verify.SkipTimestampSignatureCheckIfIssuedBy(own))
	require.NoError(t, err, "a root listing other authorities besides the signer's")

	e.Timestamp, err = own.Timestamp(sig, now)
	require.NoError(t, err)
	_, err = plain.Admit(e, now)
	requireCheck(t, err, verify.CheckTimestamp)
	a, err := trusting.Admit(e, now)
	require.NoError(t, err, "a response its signer remembers is taken as signed")
	require.True(t, a.Timestamped)
	require.Equal(t, now, a.Time.UTC())

	// The fixture's authority's tokens are verified as always.
	e.Timestamp, err = f.h.TSA.Signer.Timestamp(sig, now)
	require.NoError(t, err)
	_, err = trusting.Admit(e, now)
	require.NoError(t, err)

	// A root that does not list the signer's authority trusts nothing
	// more for the option.
	other, err := verify.NewTrustedRootFromState(f.h.State(), verify.SkipTimestampSignatureCheckIfIssuedBy(own))
	require.NoError(t, err)
	e.Timestamp, err = own.Timestamp(sig, now)
	require.NoError(t, err)
	_, err = other.Admit(e, now)
	requireCheck(t, err, verify.CheckTimestamp)

	// A Signer not made by tsa.NewSigner (no chain) holds no authority.
	_, err = verify.NewTrustedRootFromState(st, verify.SkipTimestampSignatureCheckIfIssuedBy(&tsa.Signer{}))
	require.NoError(t, err)
}
