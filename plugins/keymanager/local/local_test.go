package local

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

var (
	agentID = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-1")
	// now is whole seconds: x509 validity has no finer precision.
	now = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func newKM(t *testing.T, dir string) *KeyManager {
	t.Helper()
	km, err := New(Config{Dir: dir, Now: fixedClock(now)})
	require.NoError(t, err)
	return km
}

func caCert(t *testing.T, km *KeyManager) *x509.Certificate {
	t.Helper()
	roots, err := km.Roots(context.Background())
	require.NoError(t, err)
	require.Len(t, roots, 1)
	return roots[0]
}

func newCSR(t *testing.T, tmpl *x509.CertificateRequest) (*ecdsa.PrivateKey, *x509.CertificateRequest) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	csr, err := x509.ParseCertificateRequest(der)
	require.NoError(t, err)
	return key, csr
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	info, err := os.Stat(path)
	require.NoError(t, err)
	return info.Mode().Perm()
}

func TestNewCreatesCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "keymanager", "local")
	km := newKM(t, dir)

	require.Equal(t, os.FileMode(0o700), mode(t, dir))
	require.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, keyFile)))
	require.Equal(t, os.FileMode(0o644), mode(t, filepath.Join(dir, certFile)), "the CA certificate is public")
	require.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, stateFile)))
	require.ElementsMatch(t, []string{keyFile, certFile, stateFile}, dirNames(t, dir), "no temporary files left behind")

	ca := caCert(t, km)
	require.True(t, ca.IsCA)
	require.Equal(t, "Hallmark local signing CA", ca.Subject.CommonName)
	require.Equal(t, now.Add(-time.Minute), ca.NotBefore)
	require.Equal(t, now.Add(DefaultCATTL), ca.NotAfter)
	require.Equal(t, x509.KeyUsageCertSign|x509.KeyUsageCRLSign, ca.KeyUsage)
	require.NoError(t, ca.CheckSignatureFrom(ca), "self-signed")

	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	require.NoError(t, err)
	block, _ := pem.Decode(certPEM)
	require.NotNil(t, block)
	require.Equal(t, "CERTIFICATE", block.Type)
	require.Equal(t, ca.Raw, block.Bytes)

	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	require.NoError(t, err)
	block, _ = pem.Decode(keyPEM)
	require.NotNil(t, block)
	require.Equal(t, "PRIVATE KEY", block.Type)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	require.True(t, key.(*ecdsa.PrivateKey).PublicKey.Equal(ca.PublicKey), "ca.key is the CA's key")
}

func TestNewOptions(t *testing.T) {
	km, err := New(Config{Dir: t.TempDir(), Now: fixedClock(now), CATTL: 48 * time.Hour, CommonName: "CI signing CA"})
	require.NoError(t, err)
	ca := caCert(t, km)
	require.Equal(t, "CI signing CA", ca.Subject.CommonName)
	require.Equal(t, now.Add(48*time.Hour), ca.NotAfter)
}

func TestNewRestrictsExistingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Chmod(dir, 0o755)) // whatever the umask
	newKM(t, dir)
	require.Equal(t, os.FileMode(0o700), mode(t, dir))
}

func TestNewReusesCA(t *testing.T) {
	dir := t.TempDir()
	first := caCert(t, newKM(t, dir))
	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	require.NoError(t, err)
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	require.NoError(t, err)

	// A later start, a day on, with other options: same CA.
	km, err := New(Config{Dir: dir, Now: fixedClock(now.Add(24 * time.Hour)), CATTL: time.Hour, CommonName: "other"})
	require.NoError(t, err)
	require.Equal(t, first.Raw, caCert(t, km).Raw)

	certPEM2, err := os.ReadFile(filepath.Join(dir, certFile))
	require.NoError(t, err)
	keyPEM2, err := os.ReadFile(filepath.Join(dir, keyFile))
	require.NoError(t, err)
	require.Equal(t, certPEM, certPEM2)
	require.Equal(t, keyPEM, keyPEM2)

	// And it signs with the stored key.
	_, csr := newCSR(t, nil)
	chain, err := km.SignCSR(context.Background(), csr, agentID, time.Minute)
	require.NoError(t, err)
	require.NoError(t, chain[0].CheckSignatureFrom(first))
}

func TestSignCSR(t *testing.T) {
	km := newKM(t, t.TempDir())
	ca := caCert(t, km)
	// What the CSR asks for is ignored: only its key is used.
	key, csr := newCSR(t, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "evil.example.org"},
		DNSNames: []string{"evil.example.org"},
		URIs:     []*url.URL{spiffeid.RequireFromString("spiffe://example.org/hallmark/server").URL()},
	})
	const ttl = 5 * time.Minute

	chain, err := km.SignCSR(context.Background(), csr, agentID, ttl)
	require.NoError(t, err)

	require.Len(t, chain, 2)
	leaf := chain[0]
	require.Same(t, ca, chain[1])
	require.Len(t, leaf.URIs, 1)
	require.Equal(t, agentID.String(), leaf.URIs[0].String())
	require.Empty(t, leaf.DNSNames)
	require.Empty(t, leaf.EmailAddresses)
	require.Empty(t, leaf.IPAddresses)
	require.Empty(t, leaf.Subject.CommonName)
	require.Equal(t, now, leaf.NotBefore)
	require.Equal(t, now.Add(ttl), leaf.NotAfter)
	require.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, leaf.ExtKeyUsage)
	require.Equal(t, x509.KeyUsageDigitalSignature, leaf.KeyUsage)
	require.True(t, leaf.BasicConstraintsValid)
	require.False(t, leaf.IsCA)
	require.True(t, key.PublicKey.Equal(leaf.PublicKey), "leaf certifies the CSR's key")
	require.Equal(t, ca.Subject.String(), leaf.Issuer.String())
	require.Positive(t, leaf.SerialNumber.Sign())

	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now.Add(time.Minute),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	})
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now.Add(time.Minute), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.Error(t, err, "not usable for TLS client authentication")
}

func TestSignCSRSerialsDiffer(t *testing.T) {
	km := newKM(t, t.TempDir())
	_, csr := newCSR(t, nil)
	seen := map[string]bool{}
	for range 20 {
		chain, err := km.SignCSR(context.Background(), csr, agentID, time.Minute)
		require.NoError(t, err)
		s := chain[0].SerialNumber.String()
		require.False(t, seen[s], "serial %s reused", s)
		seen[s] = true
	}
}

func TestSignCSRErrors(t *testing.T) {
	km, err := New(Config{Dir: t.TempDir(), Now: fixedClock(now), CATTL: time.Hour})
	require.NoError(t, err)
	_, csr := newCSR(t, nil)
	tests := []struct {
		name    string
		id      spiffeid.ID
		ttl     time.Duration
		wantErr string
	}{
		{name: "no SPIFFE ID", id: spiffeid.ID{}, ttl: time.Minute, wantErr: "local: SPIFFE ID is required"},
		{name: "zero ttl", id: agentID, ttl: 0, wantErr: "local: invalid ttl 0s"},
		{name: "negative ttl", id: agentID, ttl: -time.Minute, wantErr: "local: invalid ttl -1m0s"},
		{name: "outlives the CA", id: agentID, ttl: time.Hour + time.Second, wantErr: "local: CA expires at 2030-06-01T13:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := km.SignCSR(context.Background(), csr, tt.id, tt.ttl)
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, chain)
		})
	}

	chain, err := km.SignCSR(context.Background(), csr, agentID, time.Hour)
	require.NoError(t, err, "up to the CA's own expiry is fine")
	require.Equal(t, now.Add(time.Hour), chain[0].NotAfter)
}

func TestNewRefusesBadCA(t *testing.T) {
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	sec1, err := x509.MarshalECPrivateKey(otherKey)
	require.NoError(t, err)

	tests := []struct {
		name    string
		breakIt func(t *testing.T, dir string)
		wantErr string
	}{
		{
			name:    "key readable by others",
			breakIt: func(t *testing.T, dir string) { require.NoError(t, os.Chmod(filepath.Join(dir, keyFile), 0o644)) },
			wantErr: "is accessible by group or others (mode -rw-r--r--): chmod 600 it",
		},
		{
			name:    "key readable by group",
			breakIt: func(t *testing.T, dir string) { require.NoError(t, os.Chmod(filepath.Join(dir, keyFile), 0o640)) },
			wantErr: "is accessible by group or others",
		},
		{
			name: "key written by another user",
			breakIt: func(t *testing.T, dir string) {
				if os.Geteuid() != 0 {
					t.Skip("chown needs root")
				}
				require.NoError(t, os.Chown(filepath.Join(dir, keyFile), 4018, 4018))
			},
			wantErr: "is owned by uid 4018, not this daemon's (euid 0): whoever wrote it chose the key",
		},
		{
			name: "its directory writable by others",
			breakIt: func(t *testing.T, dir string) {
				require.NoError(t, os.Chmod(dir, 0o707))
			},
			wantErr: " is writable by others: they could put a CA of their own in its place, and certify any agent name",
		},
		{
			name:    "key not PEM",
			breakIt: func(t *testing.T, dir string) { writeKeyFile(t, dir, []byte("not a key")) },
			wantErr: "local: ca.key: no PEM block",
		},
		{
			name: "key PEM with garbage",
			breakIt: func(t *testing.T, dir string) {
				writeKeyFile(t, dir, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("garbage")}))
			},
			wantErr: "local: parse CA key: ",
		},
		{
			name: "key in SEC 1 rather than PKCS #8",
			breakIt: func(t *testing.T, dir string) {
				writeKeyFile(t, dir, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
			},
			wantErr: "local: parse CA key: ",
		},
		{
			name: "certificate not PEM",
			breakIt: func(t *testing.T, dir string) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, certFile), []byte("not a certificate"), 0o644))
			},
			wantErr: "local: ca.pem: no PEM block",
		},
		{
			name: "certificate PEM with garbage",
			breakIt: func(t *testing.T, dir string) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")}), 0o644))
			},
			wantErr: "local: parse CA certificate: ",
		},
		{
			name:    "key is a directory",
			breakIt: func(t *testing.T, dir string) { replaceWithDir(t, filepath.Join(dir, keyFile)) },
			wantErr: keyFile,
		},
		{
			name:    "certificate is a directory",
			breakIt: func(t *testing.T, dir string) { replaceWithDir(t, filepath.Join(dir, certFile)) },
			wantErr: "local: CA key present but certificate missing",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			newKM(t, dir)
			tt.breakIt(t, dir)
			km, err := New(Config{Dir: dir, Now: fixedClock(now)})
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, km)
		})
	}
}

// A key that does not belong to the certificate is refused at start, so no
// mismatched chain is ever handed out.
func TestNewRefusesMismatchedKey(t *testing.T) {
	dir := t.TempDir()
	newKM(t, dir)
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(otherKey)
	require.NoError(t, err)
	writeKeyFile(t, dir, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))

	km, err := New(Config{Dir: dir, Now: fixedClock(now)})
	require.ErrorContains(t, err, "local: ca.key is not the key of the certificate in ca.pem")
	require.Nil(t, km)
}

func TestNewRecreatesCAWithoutKey(t *testing.T) {
	// The key is written last, then issuers.json: a certificate without
	// its key or issuers.json is an interrupted first start, and a new CA
	// is made.
	dir := t.TempDir()
	first := caCert(t, newKM(t, dir))
	require.NoError(t, os.Remove(filepath.Join(dir, keyFile)))
	require.NoError(t, os.Remove(filepath.Join(dir, stateFile)))
	second := caCert(t, newKM(t, dir))
	require.NotEqual(t, first.Raw, second.Raw)
	require.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, keyFile)))
}

func TestNewRefusesKeyWithoutCertificate(t *testing.T) {
	dir := t.TempDir()
	newKM(t, dir)
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, certFile)))

	_, err = New(Config{Dir: dir, Now: fixedClock(now)})
	require.ErrorContains(t, err, "local: CA key present but certificate missing")
	after, err := os.ReadFile(filepath.Join(dir, keyFile))
	require.NoError(t, err)
	require.Equal(t, keyPEM, after, "the CA key must never be replaced")
}

func TestNewErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	tests := []struct {
		name    string
		dir     string
		wantErr string
	}{
		{name: "no directory", dir: "", wantErr: "local: directory is required"},
		{name: "directory is a file", dir: file, wantErr: "local: "},
		{name: "directory under a file", dir: filepath.Join(file, "ca"), wantErr: "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			km, err := New(Config{Dir: tt.dir})
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, km)
		})
	}
}

func writeKeyFile(t *testing.T, dir string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, keyFile), data, 0o600))
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func replaceWithDir(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, os.Remove(path))
	require.NoError(t, os.Mkdir(path, 0o700))
}
