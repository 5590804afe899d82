package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"io"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/stretchr/testify/require"
)

// testPKI is a throwaway signing CA and one agent leaf certificate with the
// code-signing EKU, the shape Vault PKI issues to agents.
type testPKI struct {
	root   *x509.Certificate
	leaf   *x509.Certificate
	signer *ecdsa.PrivateKey
}

const testAgentID = "spiffe://example.org/hallmark/agent/node-1"

func newTestPKI(tb testing.TB) testPKI {
	tb.Helper()
	now := time.Now()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(tb, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hallmark test signing CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	require.NoError(tb, err)
	root, err := x509.ParseCertificate(caDER)
	require.NoError(tb, err)

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(tb, err)
	uri, err := url.Parse(testAgentID)
	require.NoError(tb, err)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(10 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		URIs:         []*url.URL{uri},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, leafKey.Public(), caKey)
	require.NoError(tb, err)
	leaf, err := x509.ParseCertificate(leafDER)
	require.NoError(tb, err)

	// Sanity: the leaf chains to the root for code signing.
	pool := x509.NewCertPool()
	pool.AddCert(root)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}})
	require.NoError(tb, err)

	return testPKI{root: root, leaf: leaf, signer: leafKey}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// testStep returns a fully populated step; products and materials are
// deliberately out of order.
func testStep() attest.Step {
	return attest.Step{
		Name:          "build",
		Workspace:     "/builds/acme/widget",
		Command:       []string{"make", "-j4", "dist"},
		CallerCmdline: []string{"/usr/bin/hallmark", "attest", "--step", "build", "--", "make", "-j4", "dist"},
		Products: []attest.Artifact{
			{Name: "dist/widget.tar.gz", SHA256: sha256Hex("tarball")},
			{Name: "dist/SHA256SUMS", SHA256: sha256Hex("sums")},
			{Name: "bin/widget", SHA256: sha256Hex("binary")},
		},
		Materials: []attest.Artifact{
			{Name: "go.sum", SHA256: sha256Hex("go.sum")},
			{Name: "Makefile", SHA256: sha256Hex("makefile")},
		},
		Workload: attest.Workload{
			SPIFFEIDs: []string{"spiffe://example.org/ci/runner/widget"},
			Selectors: []string{"unix:uid:1001", "unix:gid:1001", "unix:path:/usr/bin/make"},
			PID:       4242,
			UID:       1001,
			GID:       1001,
		},
		BuilderID:    testAgentID,
		InvocationID: "0b6f6f7e-8f0b-4b8e-9a3c-6f2f5d1c2a11",
		StartedOn:    time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC),
		FinishedOn:   time.Date(2025, 3, 4, 5, 7, 8, 0, time.UTC),
	}
}

// rawSigner returns IEEE P1363 r||s instead of ASN.1 DER, like some KMS
// wrappers.
type rawSigner struct{ *ecdsa.PrivateKey }

func (s rawSigner) Sign(_ io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	r, ss, err := ecdsa.Sign(rand.Reader, s.PrivateKey, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	ss.FillBytes(out[32:])
	return out, nil
}

// failingSigner has a P-256 public key but cannot sign.
type failingSigner struct{ *ecdsa.PrivateKey }

func (s failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("hsm unavailable")
}
