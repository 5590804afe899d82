package tsa

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newSigner(t testing.TB, at time.Time) *Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	chain, err := NewChain(key, "test tsa", at)
	require.NoError(t, err)
	s, err := NewSigner(key, chain)
	require.NoError(t, err)
	return s
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestTimestampVerify(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := newSigner(t, t0.Add(-time.Hour))
	other := newSigner(t, t0.Add(-time.Hour))
	sig := []byte("a DSSE signature")
	resp, err := s.Timestamp(sig, t0)
	require.NoError(t, err)

	leaf, root := s.Chain()[0], s.Chain()[1]
	got, err := verify(resp, sig, leaf, pool(root), nil)
	require.NoError(t, err)
	require.True(t, got.Equal(t0), "granted %s", got)

	tampered := append([]byte(nil), resp...)
	tampered[len(tampered)-10] ^= 1

	for name, tc := range map[string]struct {
		resp, sig []byte
		leaf      *x509.Certificate
		roots     *x509.CertPool
		want      string
	}{
		"other signature":         {resp, []byte("another"), leaf, pool(root), "other data"},
		"other TSA's leaf":        {resp, sig, other.Chain()[0], pool(other.Chain()[1]), "not signed by the trusted"},
		"untrusted root":          {resp, sig, leaf, pool(other.Chain()[1]), "certificate"},
		"corrupted":               {tampered, sig, leaf, pool(root), "does not parse"},
		"garbage":                 {[]byte{0x30, 0x01}, sig, leaf, pool(root), "does not parse"},
		"root is no TSA leaf":     {resp, sig, root, pool(root), "not for timestamping"},
		"oversized":               {make([]byte, MaxResponseSize+1), sig, leaf, pool(root), "more than"},
		"leaf not yet valid at t": {mustStamp(t, s, sig, t0.Add(-2*time.Hour)), sig, leaf, pool(root), "certificate"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verify(tc.resp, tc.sig, tc.leaf, tc.roots, nil)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func mustStamp(t *testing.T, s *Signer, sig []byte, at time.Time) []byte {
	t.Helper()
	r, err := s.Timestamp(sig, at)
	require.NoError(t, err)
	return r
}

func TestNewSignerRefusesWrongCertificates(t *testing.T) {
	s := newSigner(t, time.Now())
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, err = NewSigner(key, s.Chain())
	require.ErrorContains(t, err, "not for this key")
	_, err = NewSigner(key, []*x509.Certificate{s.Chain()[1]})
	require.ErrorContains(t, err, "not for timestamping")
	_, err = NewSigner(key, nil)
	require.Error(t, err)
}

func FuzzVerify(f *testing.F) {
	s := newSigner(f, time.Now().Add(-time.Hour))
	sig := []byte("sig")
	resp, _ := s.Timestamp(sig, time.Now())
	f.Add(resp)
	a, err := NewAuthority(s.Chain()[0], pool(s.Chain()[1]), nil)
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, data []byte) {
		a.Verify(data, sig) //nolint:errcheck // must not panic
	})
}

// verify checks a timestamp with an Authority built for leaf, as a
// verifier holding a trusted root does.
func verify(resp, sig []byte, leaf *x509.Certificate, roots, intermediates *x509.CertPool) (time.Time, error) {
	a, err := NewAuthority(leaf, roots, intermediates)
	if err != nil {
		return time.Time{}, err
	}
	return a.Verify(resp, sig)
}
