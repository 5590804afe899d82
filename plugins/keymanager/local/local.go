// Package local is a key manager that certifies agents' signing keys with a
// CA kept by hallmark-server itself: an ECDSA P-256 root whose key lives in
// the server's data directory (mode 0600). It is the embedded default for
// trying Hallmark without Vault; production deployments use the vault key
// manager so that the CA key never sits on the server's disk.
package local

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	keyFile  = "ca.key"
	certFile = "ca.pem"

	// DefaultCATTL is the lifetime of a newly created CA.
	DefaultCATTL = 365 * 24 * time.Hour
)

// Config configures the local key manager.
type Config struct {
	// Dir holds the CA key and certificate. It is created with mode 0700.
	Dir string
	// CATTL is the lifetime of a CA created at first start.
	CATTL time.Duration
	// CommonName is the CA's subject common name.
	CommonName string
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// KeyManager signs with a CA loaded from, or created in, Config.Dir.
type KeyManager struct {
	key  crypto.Signer
	cert *x509.Certificate
	now  func() time.Time
}

// New loads the CA from cfg.Dir, creating it on first use.
func New(cfg Config) (*KeyManager, error) {
	if cfg.Dir == "" {
		return nil, errors.New("local: directory is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CATTL <= 0 {
		cfg.CATTL = DefaultCATTL
	}
	if cfg.CommonName == "" {
		cfg.CommonName = "Hallmark local signing CA"
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("local: create directory: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("local: restrict directory: %w", err)
	}
	km := &KeyManager{now: cfg.Now}
	err := km.load(cfg.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		err = km.create(cfg)
	}
	if err != nil {
		return nil, err
	}
	return km, nil
}

// Roots returns the CA certificate that every issued chain ends in.
func (k *KeyManager) Roots(context.Context) ([]*x509.Certificate, error) {
	return []*x509.Certificate{k.cert}, nil
}

// SignCSR issues a certificate for the CSR's public key, valid for ttl from
// now, whose only SAN is id. The CSR's own subject and extensions are
// ignored. It returns the leaf followed by the CA certificate.
func (k *KeyManager) SignCSR(_ context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("local: SPIFFE ID is required")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("local: invalid ttl %s", ttl)
	}
	now := k.now()
	notAfter := now.Add(ttl)
	if notAfter.After(k.cert.NotAfter) {
		return nil, fmt.Errorf("local: CA expires at %s, before the requested certificate would", k.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now,
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.cert, csr.PublicKey, k.key)
	if err != nil {
		return nil, fmt.Errorf("local: sign certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("local: parse issued certificate: %w", err)
	}
	return []*x509.Certificate{leaf, k.cert}, nil
}

func (k *KeyManager) load(dir string) error {
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return err
	}
	info, err := os.Stat(filepath.Join(dir, keyFile))
	if err != nil {
		return err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("local: %s is accessible by group or others (mode %s): chmod 600 it", filepath.Join(dir, keyFile), info.Mode().Perm())
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	if err != nil {
		return fmt.Errorf("local: CA key present but certificate missing or unreadable (refusing to replace the CA): %v", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return fmt.Errorf("local: %s: no PEM block", keyFile)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return fmt.Errorf("local: parse CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return fmt.Errorf("local: CA key of type %T cannot sign", key)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil {
		return fmt.Errorf("local: %s: no PEM block", certFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("local: parse CA certificate: %w", err)
	}
	k.key, k.cert = signer, cert
	return nil
}

func (k *KeyManager) create(cfg Config) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("local: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	now := cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cfg.CommonName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("local: self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("local: parse CA certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("local: marshal CA key: %w", err)
	}
	if err := writeFile(filepath.Join(cfg.Dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	// The key is written last: its presence marks a complete CA.
	if err := writeFile(filepath.Join(cfg.Dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		return err
	}
	k.key, k.cert = key, cert
	return nil
}

// writeFile writes data atomically: a temporary file, fsync, rename.
func writeFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("local: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("local: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("local: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("local: serial: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}
