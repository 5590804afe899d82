package tsa

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/tsa/tsatest"
)

// authorities are a plain authority for s's certificate and one that
// skips the signature check of responses s issued.
func authorities(t testing.TB, s *Signer) (plain, skipping *Authority) {
	t.Helper()
	plain, err := NewAuthority(s.Chain()[0], pool(s.Chain()[1]), nil)
	require.NoError(t, err)
	skipping, err = plain.SkipSignatureCheckOfIssued(s)
	require.NoError(t, err)
	return plain, skipping
}

// TestIssuedMemoryTakesOnlyWhatItIssued: an authority trusting its
// signer's responses accepts them as a plain authority does, and refuses
// everything a plain authority refuses: the memory of issued responses
// replaces only the signature check, and only for bytes the signer wrote.
func TestIssuedMemoryTakesOnlyWhatItIssued(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	s := newSigner(t, t0.Add(-time.Hour))
	plain, trusting := authorities(t, s)

	sig := []byte("the agent's DSSE signature")
	resp, err := s.Timestamp(sig, t0)
	require.NoError(t, err)

	// An attacker holding the authority's certificate (it is public) but
	// not its key signs a token of the signer's very shape.
	forger := &Signer{key: newSigner(t, t0.Add(-time.Hour)).key, chain: s.Chain(), signingCert: s.signingCert}
	forged, err := forger.Timestamp(sig, t0.Add(-30*time.Minute))
	require.NoError(t, err)

	flipped := append([]byte(nil), resp...)
	flipped[len(flipped)-1] ^= 1 // the last byte of the CMS signature

	early, err := s.Timestamp(sig, t0.Add(-2*time.Hour)) // the signer's clock before its certificate
	require.NoError(t, err)

	for _, tc := range []struct {
		name     string
		resp     []byte
		sig      []byte
		accepted bool
	}{
		{"issued, for its signature", resp, sig, true},
		{"issued, for another signature", resp, []byte("another signature"), false},
		{"issued, one bit of its signature flipped", flipped, sig, false},
		{"signed by another key with the authority's certificate", forged, sig, false},
		{"issued at a time the certificate is not valid", early, sig, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, wantErr := plain.Verify(tc.resp, tc.sig)
			got, err := trusting.Verify(tc.resp, tc.sig)
			if !tc.accepted {
				require.Error(t, wantErr, "a plain authority must refuse it too")
				require.Error(t, err)
				return
			}
			require.NoError(t, wantErr)
			require.NoError(t, err)
			require.True(t, got.Equal(want), "trusting %s, plain %s", got, want)
		})
	}
}

// TestIssuedMemorySkipsOnlyTheSignatureOfRecentResponses shows what the
// memory does, with a signer whose key writes invalid signatures: the
// trusting authority accepts such a response only while the signer
// remembers issuing it, then checks its signature and refuses it. (A real
// signer's signature always verifies; the faulty one makes the skipped
// check visible.)
func TestIssuedMemorySkipsOnlyTheSignatureOfRecentResponses(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	good := newSigner(t, t0.Add(-time.Hour))
	s := &Signer{key: tsatest.FaultyKey{Key: good.key}, chain: good.Chain(), signingCert: good.signingCert, issued: issued{limit: 4}}
	plain, trusting := authorities(t, s)

	sig := []byte("sig")
	resp, err := s.Timestamp(sig, t0)
	require.NoError(t, err)
	_, err = plain.Verify(resp, sig)
	require.Error(t, err, "the corrupted signature must not verify")
	_, err = trusting.Verify(resp, sig)
	require.NoError(t, err, "a response the signer remembers issuing is taken as signed")
	require.Equal(t, uint64(1), s.Recognized())

	for i := range 4 {
		_, err := s.Timestamp([]byte{byte(i)}, t0)
		require.NoError(t, err)
	}
	_, err = trusting.Verify(resp, sig)
	require.Error(t, err, "a response the signer no longer remembers is checked in full")
	require.Equal(t, uint64(1), s.Recognized(), "only skipped checks are counted")
}

func TestIssuedMemoryRefusesAnotherAuthoritysSigner(t *testing.T) {
	at := time.Now().Add(-time.Hour)
	s, other := newSigner(t, at), newSigner(t, at)
	a, err := NewAuthority(s.Chain()[0], pool(s.Chain()[1]), nil)
	require.NoError(t, err)
	_, err = a.SkipSignatureCheckOfIssued(other)
	require.ErrorContains(t, err, "does not hold this authority's certificate")
	_, err = a.SkipSignatureCheckOfIssued(&Signer{}) // not made by NewSigner
	require.ErrorContains(t, err, "does not hold this authority's certificate")
}

// TestIssuedMemoryIsBounded: however many responses a Signer issues, it
// remembers at most limit of them, and always the latest limit/2.
func TestIssuedMemoryIsBounded(t *testing.T) {
	const limit = 64
	m := issued{limit: limit}
	for i := range 10 * limit {
		m.add([]byte{byte(i), byte(i >> 8)})
		require.LessOrEqual(t, len(m.cur)+len(m.prev), limit)
	}
	for i := 10*limit - limit/2; i < 10*limit; i++ {
		require.True(t, m.has([]byte{byte(i), byte(i >> 8)}), "response %d of the latest %d", i, limit/2)
	}
	require.False(t, m.has([]byte{0, 0}), "the first response, long forgotten")
}
