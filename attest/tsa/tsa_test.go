package tsa

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"math/big"
	"testing"
	"time"

	"github.com/digitorus/pkcs7"
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

	// An RSA key is refused: Signer writes ecdsa-with-SHA256 (token.go).
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	rsaChain, err := NewChain(rsaKey, "rsa tsa", time.Now())
	require.NoError(t, err)
	_, err = NewSigner(rsaKey, rsaChain)
	require.ErrorContains(t, err, "want an ECDSA key")
}

// TestTimestampOtherCurves: a TSA key on P-384 or P-521 (server/tsakey.go
// reads any ECDSA key) issues tokens both parsers verify, as it did
// through digitorus.
func TestTimestampOtherCurves(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, curve := range []elliptic.Curve{elliptic.P384(), elliptic.P521()} {
		key, err := ecdsa.GenerateKey(curve, rand.Reader)
		require.NoError(t, err)
		chain, err := NewChain(key, "tsa", t0.Add(-time.Hour))
		require.NoError(t, err)
		s, err := NewSigner(key, chain)
		require.NoError(t, err)
		a, err := NewAuthority(chain[0], pool(chain[1]), nil)
		require.NoError(t, err)
		resp, err := s.Timestamp([]byte("sig"), t0)
		require.NoError(t, err)
		fast, err := a.verifyStrict(resp, []byte("sig"))
		require.NoError(t, err, "%s", curve.Params().Name)
		general, err := a.verifyGeneral(resp, []byte("sig"))
		require.NoError(t, err, "%s", curve.Params().Name)
		require.True(t, fast.Equal(t0) && general.Equal(t0))
	}
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

// garbageRSA signs as an RSA key nobody holds: its signatures are noise.
type garbageRSA struct{ pub *rsa.PublicKey }

func (g garbageRSA) Public() crypto.PublicKey { return g.pub }
func (g garbageRSA) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	b := make([]byte, (g.pub.N.BitLen()+7)/8)
	_, err := rand.Read(b[1:])
	return b, err
}

// Must show, as an attacker submits it to the log: a token that embeds a
// certificate other than the authority's, for an RSA key of 16,384 bits
// and exponent 2^31-1 (checking a signature with it costs milliseconds;
// at 48,000 bits, 86), signed with noise, is refused for its certificate
// before any signature is checked: the error names the certificate, where
// before it came from the failed RSA check.
func TestForeignCertificateRefusedBeforeItsSignature(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := newSigner(t, t0.Add(-time.Hour))
	leaf, root := s.Chain()[0], s.Chain()[1]

	n := new(big.Int).Lsh(big.NewInt(1), 16383)
	n.SetBit(n, 0, 1)
	pub := &rsa.PublicKey{N: n, E: 1<<31 - 1}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now() // pkcs7 checks the signing time (now) against the certificate before its signature
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "anyone"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "not the TSA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}, ca, pub, caKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	sd, err := pkcs7.NewSignedData([]byte("anything"))
	require.NoError(t, err)
	require.NoError(t, sd.AddSigner(cert, garbageRSA{pub}, pkcs7.SignerInfoConfig{}))
	token, err := sd.Finish()
	require.NoError(t, err)
	resp, err := asn1.Marshal(struct {
		Status struct{ Status int }
		Token  asn1.RawValue
	}{Token: asn1.RawValue{FullBytes: token}})
	require.NoError(t, err)

	start := time.Now()
	_, err = verify(resp, []byte("a DSSE signature"), leaf, pool(root), nil)
	require.ErrorContains(t, err, "not signed by the trusted timestamp authority's certificate")
	t.Logf("refused in %s: %v", time.Since(start), err)
}
