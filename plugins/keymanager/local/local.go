// Package local is a key manager that certifies agents' signing keys with
// CAs kept by hallmark-server itself: ECDSA P-256 roots whose keys live in
// the server's data directory (mode 0600, in a 0700 directory). It is the
// embedded default for trying Hallmark without Vault; production deployments
// use the vault key manager so that no CA key sits on the server's disk.
//
// The key manager holds one or more issuers (see keymanager.Issuer) and
// signs with the active one. Rotation goes through PrepareIssuer (a new CA,
// published but unused), ActivateIssuer (SignCSR signs with it from then on)
// and RevokeIssuer (its key is destroyed). The first CA lives in ca.key and
// ca.pem, as before rotation existed; later ones in issuers/ID.key and
// issuers/ID.pem; issuers.json records their order, which one is active and
// which are revoked.
package local

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/internal/privdir"
	"github.com/hallmark-dev/hallmark/plugins/keymanager"
)

const (
	keyFile   = "ca.key"       // the first CA's key
	certFile  = "ca.pem"       // the first CA's certificate
	stateFile = "issuers.json" // order, active and revoked issuers
	issuerDir = "issuers"      // later CAs: ID.key and ID.pem

	// DefaultCATTL is the lifetime of a newly created CA.
	DefaultCATTL = 365 * 24 * time.Hour
)

// Config configures the local key manager.
type Config struct {
	// Dir holds the CA keys and certificates. It is created with mode 0700.
	Dir string
	// CATTL is the lifetime of a CA created at first start or by
	// PrepareIssuer.
	CATTL time.Duration
	// CommonName is the CAs' subject common name.
	CommonName string
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// KeyManager signs with the active CA of those kept in Config.Dir. SignCSR
// is safe for concurrent use, also while the active issuer changes; the
// rotation methods are serialized.
type KeyManager struct {
	cfg Config

	// active is what SignCSR signs with: read without a lock, replaced
	// whole, never modified.
	active atomic.Pointer[signingCA]

	mu      sync.Mutex // serializes rotation; guards issuers and their revocation
	issuers []*issuer  // oldest first
}

type issuer struct {
	id     string
	legacy bool // lives in ca.key and ca.pem
	cert   *x509.Certificate
	key    crypto.Signer // nil once revoked
	// revokedAt is when the issuer was revoked; zero while it is not.
	revokedAt time.Time
}

func (i *issuer) revoked() bool { return !i.revokedAt.IsZero() }

// signingCA is the active issuer as SignCSR sees it.
type signingCA struct {
	id   string
	cert *x509.Certificate
	key  crypto.Signer
}

func (k *KeyManager) activate(iss *issuer) {
	k.active.Store(&signingCA{id: iss.id, cert: iss.cert, key: iss.key})
}

func (i *issuer) certPath() string {
	if i.legacy {
		return certFile
	}
	return filepath.Join(issuerDir, i.id+".pem")
}

func (i *issuer) keyPath() string {
	if i.legacy {
		return keyFile
	}
	return filepath.Join(issuerDir, i.id+".key")
}

// state is issuers.json.
type state struct {
	Version int           `json:"version"`
	Active  string        `json:"active"`
	Issuers []stateIssuer `json:"issuers"`
}

type stateIssuer struct {
	ID        string     `json:"id"`
	Legacy    bool       `json:"legacy,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// New loads the CAs from cfg.Dir, creating the first one on first use. A
// directory laid out before rotation existed (ca.key and ca.pem only) is
// upgraded: its CA becomes the first, active issuer.
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
	if err := privdir.CheckAncestors(cfg.Dir, "put a CA of their own in its place, and certify any agent name"); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("local: create directory: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("local: restrict directory: %w", err)
	}
	k := &KeyManager{cfg: cfg}
	data, err := os.ReadFile(filepath.Join(cfg.Dir, stateFile))
	switch {
	case err == nil:
		err = k.loadState(data)
	case errors.Is(err, fs.ErrNotExist):
		err = k.upgrade()
	default:
		err = fmt.Errorf("local: read %s: %w", stateFile, err)
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

// upgrade starts from a directory without issuers.json: ca.key and ca.pem
// from before rotation existed, or nothing.
func (k *KeyManager) upgrade() error {
	if _, err := os.Stat(filepath.Join(k.cfg.Dir, issuerDir)); err == nil {
		return fmt.Errorf("local: %s exists but %s is missing: refusing to guess which CA is active", filepath.Join(k.cfg.Dir, issuerDir), filepath.Join(k.cfg.Dir, stateFile))
	}
	iss := &issuer{legacy: true}
	var err error
	iss.key, iss.cert, err = loadPair(k.cfg.Dir, certFile, keyFile)
	if errors.Is(err, fs.ErrNotExist) {
		// The key is written last: without it there is no CA yet (or an
		// interrupted first start left a certificate alone).
		iss.key, iss.cert, err = k.createCA(certFile, keyFile)
	}
	if err != nil {
		return err
	}
	iss.id = issuerID(iss.cert)
	k.issuers = []*issuer{iss}
	if err := k.saveState(iss.id); err != nil {
		return err
	}
	k.activate(iss)
	return nil
}

func (k *KeyManager) loadState(data []byte) error {
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("local: parse %s: %w", stateFile, err)
	}
	if st.Version != 1 {
		return fmt.Errorf("local: %s: unsupported version %d", stateFile, st.Version)
	}
	seen := map[string]bool{}
	var active *issuer
	for _, s := range st.Issuers {
		if !validID(s.ID) || seen[s.ID] {
			return fmt.Errorf("local: %s: invalid or repeated issuer id %q", stateFile, s.ID)
		}
		seen[s.ID] = true
		iss := &issuer{id: s.ID, legacy: s.Legacy}
		if s.RevokedAt != nil {
			iss.revokedAt = *s.RevokedAt
		}
		var err error
		if iss.revoked() {
			iss.cert, err = loadCert(k.cfg.Dir, iss.certPath())
			if err == nil {
				// Finish a revocation interrupted before the key was gone.
				err = removeKey(k.cfg.Dir, iss.keyPath())
			}
		} else {
			iss.key, iss.cert, err = loadPair(k.cfg.Dir, iss.certPath(), iss.keyPath())
			if errors.Is(err, fs.ErrNotExist) {
				err = fmt.Errorf("local: issuer %s is not revoked but its key %s is missing: %w", iss.id, filepath.Join(k.cfg.Dir, iss.keyPath()), err)
			}
		}
		if err != nil {
			return err
		}
		if got := issuerID(iss.cert); got != iss.id {
			return fmt.Errorf("local: %s holds the certificate of issuer %s, not %s as %s says", iss.certPath(), got, iss.id, stateFile)
		}
		if iss.id == st.Active {
			active = iss
		}
		k.issuers = append(k.issuers, iss)
	}
	if active == nil {
		return fmt.Errorf("local: %s: active issuer %q is not listed", stateFile, st.Active)
	}
	if active.revoked() {
		return fmt.Errorf("local: %s: active issuer %s is revoked", stateFile, active.id)
	}
	k.activate(active)
	return nil
}

// saveState writes issuers.json atomically with active as the active issuer.
func (k *KeyManager) saveState(active string) error {
	st := state{Version: 1, Active: active, Issuers: make([]stateIssuer, 0, len(k.issuers))}
	for _, iss := range k.issuers {
		s := stateIssuer{ID: iss.id, Legacy: iss.legacy}
		if iss.revoked() {
			t := iss.revokedAt.UTC()
			s.RevokedAt = &t
		}
		st.Issuers = append(st.Issuers, s)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return writeFile(filepath.Join(k.cfg.Dir, stateFile), append(data, '\n'), 0o600)
}

// Roots returns the CA certificates of every issuer not revoked, oldest
// first: every chain SignCSR hands out ends in one of them.
func (k *KeyManager) Roots(context.Context) ([]*x509.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var roots []*x509.Certificate
	for _, iss := range k.issuers {
		if !iss.revoked() {
			roots = append(roots, iss.cert)
		}
	}
	return roots, nil
}

// Issuers returns every issuer, revoked ones included, oldest first.
func (k *KeyManager) Issuers(context.Context) ([]keymanager.Issuer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	active := k.active.Load().id
	out := make([]keymanager.Issuer, 0, len(k.issuers))
	for _, iss := range k.issuers {
		out = append(out, iss.public(iss.id == active))
	}
	return out, nil
}

func (i *issuer) public(active bool) keymanager.Issuer {
	return keymanager.Issuer{ID: i.id, Chain: []*x509.Certificate{i.cert}, Active: active, Revoked: i.revoked()}
}

// PrepareIssuer creates a new CA (ECDSA P-256, valid for Config.CATTL) and
// keeps it as an issuer that does not sign yet.
func (k *KeyManager) PrepareIssuer(ctx context.Context) (keymanager.Issuer, error) {
	if err := ctx.Err(); err != nil {
		return keymanager.Issuer{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	dir := filepath.Join(k.cfg.Dir, issuerDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return keymanager.Issuer{}, fmt.Errorf("local: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return keymanager.Issuer{}, fmt.Errorf("local: restrict %s: %w", dir, err)
	}
	// The file names depend on the ID, which depends on the certificate:
	// create under temporary names, then rename.
	key, cert, err := k.newCA()
	if err != nil {
		return keymanager.Issuer{}, err
	}
	iss := &issuer{id: issuerID(cert), cert: cert, key: key}
	if err := writeCA(k.cfg.Dir, iss.certPath(), iss.keyPath(), key, cert); err != nil {
		return keymanager.Issuer{}, err
	}
	k.issuers = append(k.issuers, iss)
	if err := k.saveState(k.active.Load().id); err != nil {
		k.issuers = k.issuers[:len(k.issuers)-1]
		os.Remove(filepath.Join(k.cfg.Dir, iss.keyPath()))
		os.Remove(filepath.Join(k.cfg.Dir, iss.certPath()))
		return keymanager.Issuer{}, err
	}
	return iss.public(false), nil
}

// ActivateIssuer makes SignCSR sign with issuer id from now on; the choice
// survives a restart. Activating the active issuer does nothing. An unknown
// id wraps keymanager.ErrUnknownIssuer; a revoked issuer is refused.
func (k *KeyManager) ActivateIssuer(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	iss := k.find(id)
	if iss == nil {
		return fmt.Errorf("local: activate issuer %q: %w", id, keymanager.ErrUnknownIssuer)
	}
	if iss.revoked() {
		return fmt.Errorf("local: activate issuer %s: it is revoked and can never sign again", id)
	}
	if k.active.Load().id == iss.id {
		return nil
	}
	if err := k.saveState(iss.id); err != nil {
		return err
	}
	k.activate(iss)
	return nil
}

// RevokeIssuer marks issuer id revoked from now on and destroys its key.
// The active issuer cannot be revoked: activate another first. Revoking a
// revoked issuer does nothing. An unknown id wraps
// keymanager.ErrUnknownIssuer.
func (k *KeyManager) RevokeIssuer(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	iss := k.find(id)
	if iss == nil {
		return fmt.Errorf("local: revoke issuer %q: %w", id, keymanager.ErrUnknownIssuer)
	}
	if iss.revoked() {
		return nil
	}
	if k.active.Load().id == iss.id {
		return fmt.Errorf("local: revoke issuer %s: it is the active issuer; activate another one first", id)
	}
	// Recorded first, so that a crash before the key is removed is finished
	// at the next start rather than forgotten.
	iss.revokedAt = k.cfg.Now()
	if err := k.saveState(k.active.Load().id); err != nil {
		iss.revokedAt = time.Time{}
		return err
	}
	iss.key = nil
	return removeKey(k.cfg.Dir, iss.keyPath())
}

func (k *KeyManager) find(id string) *issuer {
	for _, iss := range k.issuers {
		if iss.id == id {
			return iss
		}
	}
	return nil
}

// SignCSR issues a certificate for the CSR's public key, valid for ttl from
// now, whose only SAN is id, with the active issuer. The CSR's own subject
// and extensions are ignored. It returns the leaf followed by the issuer's
// CA certificate.
func (k *KeyManager) SignCSR(_ context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("local: SPIFFE ID is required")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("local: invalid ttl %s", ttl)
	}
	ca := k.active.Load()
	now := k.cfg.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		return nil, fmt.Errorf("local: CA expires at %s, before the requested certificate would", ca.cert.NotAfter.UTC().Format(time.RFC3339))
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("local: sign certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("local: parse issued certificate: %w", err)
	}
	return []*x509.Certificate{leaf, ca.cert}, nil
}

// issuerID is the hex of the first 16 bytes of the SHA-256 of the DER.
func issuerID(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:16])
}

func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// loadPair reads a CA key and certificate (paths relative to dir). A
// missing key is fs.ErrNotExist; a key without its certificate is an error,
// never a reason to replace the CA. The key must be the certificate's.
func loadPair(dir, certRel, keyRel string) (crypto.Signer, *x509.Certificate, error) {
	keyPath := filepath.Join(dir, keyRel)
	if _, err := privdir.CheckFile(keyPath, "CA key"); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("local: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	if _, err := os.ReadFile(filepath.Join(dir, certRel)); err != nil {
		return nil, nil, fmt.Errorf("local: CA key present but certificate missing or unreadable (refusing to replace the CA): %v", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("local: %s: no PEM block", keyRel)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("local: parse CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("local: CA key of type %T cannot sign", key)
	}
	cert, err := loadCert(dir, certRel)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("local: %s is not the key of the certificate in %s", keyRel, certRel)
	}
	return signer, cert, nil
}

func loadCert(dir, certRel string) (*x509.Certificate, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, certRel))
	if err != nil {
		return nil, fmt.Errorf("local: read CA certificate: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil {
		return nil, fmt.Errorf("local: %s: no PEM block", certRel)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("local: parse CA certificate: %w", err)
	}
	return cert, nil
}

func removeKey(dir, keyRel string) error {
	if err := os.Remove(filepath.Join(dir, keyRel)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local: destroy revoked key: %w", err)
	}
	return nil
}

// createCA makes the first CA in ca.pem and ca.key.
func (k *KeyManager) createCA(certRel, keyRel string) (crypto.Signer, *x509.Certificate, error) {
	key, cert, err := k.newCA()
	if err != nil {
		return nil, nil, err
	}
	if err := writeCA(k.cfg.Dir, certRel, keyRel, key, cert); err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

func (k *KeyManager) newCA() (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("local: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := k.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: k.cfg.CommonName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(k.cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("local: self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("local: parse CA certificate: %w", err)
	}
	return key, cert, nil
}

// writeCA writes the certificate (0644: it is public) and then the key
// (0600): the key's presence marks a complete CA.
func writeCA(dir, certRel, keyRel string, key *ecdsa.PrivateKey, cert *x509.Certificate) error {
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("local: marshal CA key: %w", err)
	}
	if err := writeFile(filepath.Join(dir, certRel), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, keyRel), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600)
}

// writeFile writes data atomically: a temporary file, fsync, rename, fsync
// of the directory.
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
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() //nolint:errcheck // best effort: the rename is done
		d.Close()
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
