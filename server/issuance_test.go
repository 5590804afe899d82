package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

var (
	agentID   = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-1")
	otherID   = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-2")
	foreignID = spiffeid.RequireFromString("spiffe://other.org/hallmark/agent/runner-1")
)

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

func TestParseCSR(t *testing.T) {
	p256 := newP256(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)

	badSig := makeCSR(t, p256, nil)
	badSig[len(badSig)-1] ^= 0xff // last byte of the ECDSA signature's s

	csrWith := func(tmpl *x509.CertificateRequest) []byte { return makeCSR(t, p256, tmpl) }

	tests := []struct {
		name    string
		der     []byte
		wantErr string // substring; empty means success
		foreign bool   // error must wrap errForeignName
	}{
		{name: "nil", der: nil, wantErr: "csr is required"},
		{name: "empty", der: []byte{}, wantErr: "csr is required"},
		{name: "oversize", der: make([]byte, maxCSRSize+1), wantErr: "more than the 8192 allowed"},
		{name: "at the size limit, garbage", der: make([]byte, maxCSRSize), wantErr: "csr: "},
		{name: "garbage", der: []byte("-----BEGIN CERTIFICATE REQUEST-----"), wantErr: "csr: "},
		{name: "truncated", der: csrWith(nil)[:40], wantErr: "csr: "},
		{name: "bad signature", der: badSig, wantErr: "csr: signature"},
		{name: "RSA key", der: makeCSR(t, rsaKey, nil), wantErr: "key must be ECDSA P-256, the only key agents sign with; got *rsa.PublicKey"},
		// Refused for its key before any signature check, which for a
		// large modulus the caller chose costs tens of milliseconds: a
		// bad signature does not say "signature".
		{name: "huge RSA key, bad signature", der: hugeRSACSR(t, 30000), wantErr: "key must be ECDSA P-256, the only key agents sign with; got *rsa.PublicKey"},
		{name: "Ed25519 key", der: makeCSR(t, edKey, nil), wantErr: "key must be ECDSA P-256"},
		{name: "P-224 key", der: makeCSR(t, p224, nil), wantErr: "got ECDSA P-224"},
		{name: "P-256 key", der: csrWith(nil)},
		{name: "P-384 key, which agents never sign with", der: makeCSR(t, p384, nil), wantErr: "got ECDSA P-384"},
		{name: "URI naming the caller", der: csrWith(&x509.CertificateRequest{URIs: []*url.URL{agentID.URL()}})},
		{name: "URI naming the caller twice", der: csrWith(&x509.CertificateRequest{URIs: []*url.URL{agentID.URL(), agentID.URL()}})},
		{name: "subject is not a SAN", der: csrWith(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "runner-1"}})},
		{
			name:    "DNS SAN",
			der:     csrWith(&x509.CertificateRequest{DNSNames: []string{"runner-1.example.org"}}),
			wantErr: "DNS, email or IP", foreign: true,
		},
		{
			name:    "email SAN",
			der:     csrWith(&x509.CertificateRequest{EmailAddresses: []string{"ci@example.org"}}),
			wantErr: "DNS, email or IP", foreign: true,
		},
		{
			name:    "IP SAN",
			der:     csrWith(&x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}),
			wantErr: "DNS, email or IP", foreign: true,
		},
		{
			name:    "caller's URI plus a DNS SAN",
			der:     csrWith(&x509.CertificateRequest{URIs: []*url.URL{agentID.URL()}, DNSNames: []string{"x.example.org"}}),
			wantErr: "DNS, email or IP", foreign: true,
		},
		{
			name:    "URI naming another agent",
			der:     csrWith(&x509.CertificateRequest{URIs: []*url.URL{otherID.URL()}}),
			wantErr: "but the caller is " + agentID.String(), foreign: true,
		},
		{
			name:    "URI naming the caller's path in another trust domain",
			der:     csrWith(&x509.CertificateRequest{URIs: []*url.URL{foreignID.URL()}}),
			wantErr: "csr names " + foreignID.String(), foreign: true,
		},
		{
			name:    "caller's URI followed by another",
			der:     csrWith(&x509.CertificateRequest{URIs: []*url.URL{agentID.URL(), otherID.URL()}}),
			wantErr: "csr names " + otherID.String(), foreign: true,
		},
		{
			name:    "caller's ID with a trailing slash",
			der:     csrWith(&x509.CertificateRequest{URIs: []*url.URL{mustURL(t, agentID.String()+"/")}}),
			wantErr: "but the caller is", foreign: true,
		},
		{
			name:    "non-SPIFFE URI",
			der:     csrWith(&x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "https://example.org/hallmark/agent/runner-1")}}),
			wantErr: "but the caller is", foreign: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := parseCSR(tt.der, agentID)
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.NotNil(t, csr)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, csr)
			require.Equal(t, tt.foreign, errors.Is(err, errForeignName), "errors.Is(err, errForeignName) for %v", err)
		})
	}
}

func TestCheckIssued(t *testing.T) {
	root := newTestCA(t, "root")
	inter := root.intermediate(t, "intermediate")
	stranger := newTestCA(t, "stranger")

	key := newP256(t)
	csr := parsedCSR(t, makeCSR(t, key, nil))
	otherKey := newP256(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	// leaf issues a leaf from ca for pub, after edit changes the template.
	leaf := func(ca *testCA, pub crypto.PublicKey, edit func(*x509.Certificate)) *x509.Certificate {
		tmpl := leafTemplate(agentID)
		if edit != nil {
			edit(tmpl)
		}
		return ca.issue(t, tmpl, pub)
	}
	good := leaf(root, key.Public(), nil)

	tests := []struct {
		name    string
		chain   []*x509.Certificate
		wantErr string
	}{
		{name: "leaf and root", chain: []*x509.Certificate{good, root.cert}},
		{name: "leaf, intermediate and root", chain: []*x509.Certificate{leaf(inter, key.Public(), nil), inter.cert, root.cert}},
		{name: "leaf and intermediate only", chain: []*x509.Certificate{leaf(inter, key.Public(), nil), inter.cert}},
		{name: "empty chain", chain: nil, wantErr: "no CA certificate"},
		{name: "chain of 1", chain: []*x509.Certificate{good}, wantErr: "no CA certificate"},
		{
			name:    "leaf names another SPIFFE ID",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.URIs = []*url.URL{otherID.URL()} }), root.cert},
			wantErr: "want only " + agentID.String(),
		},
		{
			name:    "leaf names the caller in another trust domain",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.URIs = []*url.URL{foreignID.URL()} }), root.cert},
			wantErr: "want only",
		},
		{
			name:    "leaf names no URI",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.URIs = nil }), root.cert},
			wantErr: "want only",
		},
		{
			name:    "leaf names two URIs",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.URIs = []*url.URL{agentID.URL(), otherID.URL()} }), root.cert},
			wantErr: "want only",
		},
		{
			name:    "leaf names the caller twice",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.URIs = []*url.URL{agentID.URL(), agentID.URL()} }), root.cert},
			wantErr: "want only",
		},
		{
			name:    "leaf with a DNS SAN",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.DNSNames = []string{"runner-1.example.org"} }), root.cert},
			wantErr: "DNS, email or IP",
		},
		{
			name:    "leaf with an email SAN",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.EmailAddresses = []string{"ci@example.org"} }), root.cert},
			wantErr: "DNS, email or IP",
		},
		{
			name:    "leaf with an IP SAN",
			chain:   []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv6loopback} }), root.cert},
			wantErr: "DNS, email or IP",
		},
		{
			name: "leaf is a CA",
			chain: []*x509.Certificate{leaf(root, key.Public(), func(c *x509.Certificate) {
				c.IsCA = true
				c.KeyUsage |= x509.KeyUsageCertSign
			}), root.cert},
			wantErr: "leaf is a CA",
		},
		{
			name:    "leaf certifies another key",
			chain:   []*x509.Certificate{leaf(root, otherKey.Public(), nil), root.cert},
			wantErr: "does not certify the CSR's key",
		},
		{
			name:    "leaf certifies an RSA key",
			chain:   []*x509.Certificate{leaf(root, rsaKey.Public(), nil), root.cert},
			wantErr: "does not certify the CSR's key",
		},
		{
			name:    "leaf not signed by the next certificate",
			chain:   []*x509.Certificate{good, stranger.cert},
			wantErr: "chain[0] is not signed by chain[1]",
		},
		{
			name:    "intermediate not signed by the next certificate",
			chain:   []*x509.Certificate{leaf(inter, key.Public(), nil), inter.cert, stranger.cert},
			wantErr: "chain[1] is not signed by chain[2]",
		},
		{
			name:    "chain out of order",
			chain:   []*x509.Certificate{leaf(inter, key.Public(), nil), root.cert, inter.cert},
			wantErr: "chain[0] is not signed by chain[1]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkIssued(tt.chain, csr, agentID)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	key := newP256(f)
	f.Add(makeCSR(f, key, nil))
	f.Add(makeCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{agentID.URL()}}))
	f.Add(makeCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{otherID.URL()}}))
	f.Add(makeCSR(f, key, &x509.CertificateRequest{DNSNames: []string{"a.example.org"}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}))
	f.Add([]byte("garbage"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := parseCSR(der, agentID)
		if err != nil {
			require.Nil(t, csr)
			return
		}
		require.NoError(t, csr.CheckSignature())
		pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
		require.True(t, ok, "key %T", csr.PublicKey)
		require.Equal(t, elliptic.P256(), pub.Curve)
		require.Empty(t, csr.DNSNames)
		require.Empty(t, csr.EmailAddresses)
		require.Empty(t, csr.IPAddresses)
		for _, u := range csr.URIs {
			require.Equal(t, agentID.String(), u.String())
		}
	})
}

// fakeKeyManager is a hand-written KeyManager: it answers with sign.
type fakeKeyManager struct {
	sign  func(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error)
	calls int
}

func (k *fakeKeyManager) SignCSR(_ context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	k.calls++
	return k.sign(csr, id, ttl)
}

// fakeFault is a key manager error that knows its fix, as vault.Error does.
type fakeFault struct {
	msg, fix  string
	transient bool
}

func (f *fakeFault) Error() string   { return f.msg }
func (f *fakeFault) Fix() string     { return f.fix }
func (f *fakeFault) Transient() bool { return f.transient }

func TestIssueSigningCertificate(t *testing.T) {
	ca := newTestCA(t, "key manager CA")
	good := func(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
		tmpl := leafTemplate(id)
		tmpl.NotAfter = tmpl.NotBefore.Add(ttl)
		return []*x509.Certificate{ca.issue(t, tmpl, csr.PublicKey), ca.cert}, nil
	}
	key := newP256(t)
	tests := []struct {
		name       string
		csr        []byte
		sign       func(*x509.CertificateRequest, spiffeid.ID, time.Duration) ([]*x509.Certificate, error)
		wantCode   codes.Code
		wantResult string // label of hallmark_server_signing_certificates_total
		wantSigned bool   // the key manager was asked
		wantMsg    string // the status message, when set
	}{
		{name: "issued", csr: makeCSR(t, key, nil), sign: good, wantCode: codes.OK, wantResult: resultIssued, wantSigned: true},
		{name: "bad CSR", csr: []byte("garbage"), sign: good, wantCode: codes.InvalidArgument, wantResult: resultInvalid},
		{
			name:     "CSR naming another agent",
			csr:      makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{otherID.URL()}}),
			sign:     good,
			wantCode: codes.PermissionDenied, wantResult: resultDenied,
		},
		{
			name: "key manager down",
			csr:  makeCSR(t, key, nil),
			sign: func(*x509.CertificateRequest, spiffeid.ID, time.Duration) ([]*x509.Certificate, error) {
				return nil, errors.New("vault sealed")
			},
			wantCode: codes.Unavailable, wantResult: resultError, wantSigned: true,
		},
		{
			name: "key manager sealed: transient, with its fix",
			csr:  makeCSR(t, key, nil),
			sign: func(*x509.CertificateRequest, spiffeid.ID, time.Duration) ([]*x509.Certificate, error) {
				return nil, fmt.Errorf("wrapped: %w", &fakeFault{msg: "vault is sealed", transient: true, fix: "unseal Vault"})
			},
			wantCode: codes.Unavailable, wantResult: resultError, wantSigned: true,
			wantMsg: "key manager fake: wrapped: vault is sealed; fix: unseal Vault",
		},
		{
			name: "key manager refused by policy: not transient, with its fix",
			csr:  makeCSR(t, key, nil),
			sign: func(*x509.CertificateRequest, spiffeid.ID, time.Duration) ([]*x509.Certificate, error) {
				return nil, &fakeFault{msg: "vault refused by policy", fix: "grant the path"}
			},
			wantCode: codes.FailedPrecondition, wantResult: resultError, wantSigned: true,
			wantMsg: "key manager fake: vault refused by policy; fix: grant the path",
		},
		{
			name: "key manager names another agent",
			csr:  makeCSR(t, key, nil),
			sign: func(csr *x509.CertificateRequest, _ spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
				return good(csr, otherID, ttl)
			},
			wantCode: codes.Internal, wantResult: resultError, wantSigned: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, logs := newAuthzServer(t)
			s.cfg.CertificateTTL = 5 * time.Minute
			s.cfg.KeyManager.Name = "fake"
			km := &fakeKeyManager{sign: tt.sign}
			svc := &agentService{s: s, km: km}

			resp, err := svc.IssueSigningCertificate(withCaller(context.Background(), agentID), &serverv1.IssueSigningCertificateRequest{Csr: tt.csr})

			require.Equal(t, tt.wantCode, status.Code(err), "error %v", err)
			if tt.wantMsg != "" {
				require.Equal(t, tt.wantMsg, status.Convert(err).Message())
			}
			require.Equal(t, tt.wantSigned, km.calls == 1)
			require.Equal(t, 1.0, counterValue(t, s.metrics.issued.WithLabelValues(tt.wantResult)))
			var caExpiry dto.Metric
			require.NoError(t, s.metrics.caExpiry.Write(&caExpiry))
			if tt.wantCode != codes.OK {
				require.Zero(t, caExpiry.GetGauge().GetValue(), "nothing issued: no CA to report")
				require.Nil(t, resp)
				if tt.wantCode == codes.Internal {
					require.Equal(t, 1, logs.FilterMessage("Key manager issued a certificate that does not match the request; discarded").Len())
				}
				return
			}
			require.Len(t, resp.GetCertificateChain(), 2)
			leaf, err := x509.ParseCertificate(resp.GetCertificateChain()[0])
			require.NoError(t, err)
			require.Equal(t, agentID.String(), leaf.URIs[0].String())
			require.Equal(t, leaf.NotAfter, resp.GetExpiresAt().AsTime())
			require.Equal(t, 5*time.Minute, leaf.NotAfter.Sub(leaf.NotBefore))
			require.Equal(t, 1, logs.FilterMessage("Signing certificate issued").Len())
			require.Equal(t, float64(ca.cert.NotAfter.Unix()), caExpiry.GetGauge().GetValue(), "the issuing CA's NotAfter")
		})
	}
}

func TestCANotAfterIsTheChainsEarliest(t *testing.T) {
	t0 := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotAfter: t0.Add(time.Minute)}
	inter := &x509.Certificate{NotAfter: t0.Add(24 * time.Hour)}
	root := &x509.Certificate{NotAfter: t0.Add(12 * time.Hour)}
	require.Equal(t, t0.Add(12*time.Hour), caNotAfter([]*x509.Certificate{leaf, inter, root}), "a root ending first ends the chain")
	require.Equal(t, t0.Add(24*time.Hour), caNotAfter([]*x509.Certificate{leaf, inter}), "the leaf is not a CA")
}

func TestCheckIssuedRequiresSigningOnlyLeaf(t *testing.T) {
	root := newTestCA(t, "root")
	key := newP256(t)
	csr := parsedCSR(t, makeCSR(t, key, nil))
	tmpl := leafTemplate(agentID)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	err := checkIssued([]*x509.Certificate{root.issue(t, tmpl, key.Public()), root.cert}, csr, agentID)
	require.Error(t, err, "a TLS client certificate naming the agent must not leave the server")
}

// hugeRSACSR is a CSR for an RSA key of bits bits with exponent 2^31-1, as
// an attacker makes it: the key is no real key and the signature is noise,
// so checking it costs the most and fails.
func hugeRSACSR(t *testing.T, bits int) []byte {
	t.Helper()
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	n.SetBit(n, 0, 1)
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 1<<31 - 1})
	require.NoError(t, err)
	subject, err := asn1.Marshal(pkix.Name{CommonName: "x"}.ToRDNSequence())
	require.NoError(t, err)
	tbs, err := asn1.Marshal(struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  asn1.RawValue
		Attributes []asn1.RawValue `asn1:"tag:0"`
	}{Subject: asn1.RawValue{FullBytes: subject}, PublicKey: asn1.RawValue{FullBytes: spki}, Attributes: []asn1.RawValue{}})
	require.NoError(t, err)
	sig := make([]byte, (bits+7)/8)
	_, err = rand.Read(sig[1:])
	require.NoError(t, err)
	der, err := asn1.Marshal(struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{asn1.RawValue{FullBytes: tbs}, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, Parameters: asn1.NullRawValue}, asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	require.NoError(t, err)
	return der
}
