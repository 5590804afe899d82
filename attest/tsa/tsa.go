// Package tsa issues and checks RFC 3161 timestamps over DSSE signatures,
// the way Sigstore uses them: the timestamp's message imprint is the
// SHA-256 of the signature bytes, and its time is when the signature is
// known to have existed. A Hallmark server is its own timestamp authority;
// its certificate chain is published in the trusted root
// (timestampAuthorities), where sigstore-go finds it too.
//
// Signer writes one shape of token directly (token.go): byte for byte
// what github.com/digitorus/timestamp, the library Sigstore's own
// timestamp authority uses, writes with the same settings
// (TestTokenIsWhatDigitorusWrites), at half its cost. Verify first reads
// a token of that shape in place (strict.go), which costs half as much,
// and asks digitorus about anything else; the fast path accepts nothing
// digitorus refuses (FuzzStrictAgrees). An authority
// made with SkipSignatureCheckOfIssued does not check the signature of a
// response its Signer issued recently (issued.go).
package tsa

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/digitorus/pkcs7"
	"github.com/digitorus/timestamp"
)

// MaxResponseSize bounds a timestamp response a verifier will parse.
const MaxResponseSize = 16 << 10

var (
	oidExtKeyUsage  = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidTimeStamping = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 8}
	// anyPolicy (RFC 5280 section 4.2.1.4): Hallmark states no TSA policy
	// beyond what docs/log.md says.
	oidAnyPolicy     = asn1.ObjectIdentifier{2, 5, 29, 32, 0}
	certificateTTL   = 10 * 365 * 24 * time.Hour
	errNotTimestamps = errors.New("tsa: certificate is not for timestamping (RFC 3161 section 2.3: one critical extended key usage, timeStamping)")
)

// Signer issues timestamps with a key and its certificate chain (leaf
// first, root last).
type Signer struct {
	key         crypto.Signer
	chain       []*x509.Certificate
	signingCert []byte // the signingCertificateV2 attribute's value for chain[0] (strict.go)
	issued      issued // its latest responses (issued.go)
}

// NewSigner checks that chain[0] certifies key, an ECDSA key, for
// timestamping and returns a Signer.
func NewSigner(key crypto.Signer, chain []*x509.Certificate) (*Signer, error) {
	if len(chain) == 0 {
		return nil, errors.New("tsa: no certificate")
	}
	leaf := chain[0]
	if err := checkLeaf(leaf); err != nil {
		return nil, err
	}
	// Signer writes ecdsa-with-SHA256 (token.go), as digitorus does for
	// every ECDSA key.
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("tsa: the certificate's key is %T, want an ECDSA key", leaf.PublicKey)
	}
	if !pub.Equal(key.Public()) {
		return nil, errors.New("tsa: the certificate is not for this key")
	}
	signingCert, err := signingCertificateV2(leaf)
	if err != nil {
		return nil, fmt.Errorf("tsa: timestamp authority certificate: %w", err)
	}
	return &Signer{key: key, chain: chain, signingCert: signingCert, issued: issued{limit: IssuedMemory}}, nil
}

// Chain is the signer's certificate chain, leaf first.
func (s *Signer) Chain() []*x509.Certificate { return s.chain }

// Timestamp returns a DER TimeStampResp (RFC 3161 section 2.4.2) granting
// time t, in whole seconds, to signature: the message imprint is
// SHA-256(signature), and the token embeds the TSA certificate. Its shape
// is token.go's.
func (s *Signer) Timestamp(signature []byte, t time.Time) ([]byte, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	resp, err := s.token(tokenFields{imprint: sha256.Sum256(signature), genTime: t, serial: serial, signingTime: t}, rand.Reader)
	if err != nil {
		return nil, err
	}
	s.issued.add(resp)
	return resp, nil
}

// Authority is a timestamp authority's certificate checked once against
// its trust anchors, for verifying many timestamps: the chain's
// signatures and usages do not depend on time, only its validity window
// does, and that is kept.
type Authority struct {
	leaf                *x509.Certificate
	notBefore, notAfter time.Time // where every certificate of the chain is valid
	signingCert         []byte    // the SigningCertificateV2 Signer writes for leaf (strict.go)
	issued              *issued   // responses whose signature is not checked, or nil (issued.go)
}

// NewAuthority checks that leaf is a timestamping certificate (RFC 3161
// section 2.3) that chains to roots through intermediates (RFC 5280
// section 6, timeStamping usage).
func NewAuthority(leaf *x509.Certificate, roots, intermediates *x509.CertPool) (*Authority, error) {
	if err := checkLeaf(leaf); err != nil {
		return nil, err
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: intermediates, CurrentTime: leaf.NotBefore,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping},
	})
	if err != nil {
		return nil, fmt.Errorf("tsa: timestamp authority certificate: %w", err)
	}
	signingCert, err := signingCertificateV2(leaf)
	if err != nil {
		return nil, fmt.Errorf("tsa: timestamp authority certificate: %w", err)
	}
	a := &Authority{leaf: leaf, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter, signingCert: signingCert}
	for _, c := range chains[0] {
		if c.NotBefore.After(a.notBefore) {
			a.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
	}
	return a, nil
}

// NewAuthorityFromChain is NewAuthority for chain (leaf first), its last
// certificate taken as the trust anchor: for a chain its holder already
// trusts, such as a log's own or one its server sent over an
// authenticated channel.
func NewAuthorityFromChain(chain []*x509.Certificate) (*Authority, error) {
	if len(chain) == 0 {
		return nil, errors.New("tsa: no certificate")
	}
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(chain[len(chain)-1])
	for _, c := range chain[1 : len(chain)-1] {
		intermediates.AddCert(c)
	}
	return NewAuthority(chain[0], roots, intermediates)
}

// Verify checks an RFC 3161 TimeStampResp over signature, signed by the
// authority's certificate while its chain was valid, and returns the time
// it grants.
func (a *Authority) Verify(resp, signature []byte) (time.Time, error) {
	if len(resp) > MaxResponseSize {
		return time.Time{}, fmt.Errorf("tsa: timestamp is %d bytes, more than the %d allowed", len(resp), MaxResponseSize)
	}
	if t, err := a.verifyStrict(resp, signature); err == nil {
		return t, nil // the shape Signer issues, read in place (strict.go)
	}
	return a.verifyGeneral(resp, signature)
}

// verifyGeneral is Verify for any token, by the general parser.
func (a *Authority) verifyGeneral(resp, signature []byte) (time.Time, error) {
	// RFC 3161 section 2.4.2: a granted response whose token is CMS
	// SignedData over a TSTInfo. The general parser verifies the CMS
	// signature with the certificate the token embeds, whatever its key:
	// so first, without any signature check, insist on exactly one
	// certificate, the leaf. Otherwise a token embedding a certificate
	// for an RSA key of 48,000 bits and a large exponent costs 86 ms to
	// refuse (an attacker review), and the log checks every submitted
	// timestamp this way.
	if !a.embedsOnlyLeaf(resp) {
		return time.Time{}, errors.New("tsa: timestamp is not signed by the trusted timestamp authority's certificate")
	}
	ts, err := timestamp.ParseResponse(resp)
	if err != nil {
		return time.Time{}, fmt.Errorf("tsa: timestamp does not parse or its signature is invalid: %w", err)
	}
	if len(ts.Certificates) != 1 || !bytes.Equal(ts.Certificates[0].Raw, a.leaf.Raw) {
		return time.Time{}, errors.New("tsa: timestamp is not signed by the trusted timestamp authority's certificate")
	}
	// RFC 3161 section 2.4.2, messageImprint: the hash of the data
	// timestamped, here the DSSE signature.
	want := sha256.Sum256(signature)
	if ts.HashAlgorithm != crypto.SHA256 || !bytes.Equal(ts.HashedMessage, want[:]) {
		return time.Time{}, errors.New("tsa: timestamp is for other data than this signature")
	}
	// RFC 5280 section 6: the chain was valid at genTime.
	if ts.Time.Before(a.notBefore) || ts.Time.After(a.notAfter) {
		return time.Time{}, fmt.Errorf("tsa: timestamp authority certificate is valid %s .. %s, not at %s",
			a.notBefore.UTC().Format(time.RFC3339), a.notAfter.UTC().Format(time.RFC3339), ts.Time.UTC().Format(time.RFC3339))
	}
	return ts.Time, nil
}

// embedsOnlyLeaf reports whether resp is a TimeStampResp whose token
// embeds exactly one certificate, the authority's leaf, as the general
// parser reads it (encoding/asn1, then pkcs7.Parse), checking no
// signature. A response it cannot read is refused by the general parser
// anyway.
func (a *Authority) embedsOnlyLeaf(resp []byte) bool {
	var r struct {
		Status asn1.RawValue
		Token  asn1.RawValue `asn1:"optional"`
	}
	if rest, err := asn1.Unmarshal(resp, &r); err != nil || len(rest) > 0 {
		return true // for the general parser to refuse, saying why
	}
	p7, err := pkcs7.Parse(r.Token.FullBytes)
	if err != nil {
		return true // likewise
	}
	return len(p7.Certificates) == 1 && bytes.Equal(p7.Certificates[0].Raw, a.leaf.Raw)
}

// checkLeaf enforces RFC 3161 section 2.3: the TSA certificate has one
// extended key usage, timeStamping, and it is critical.
func checkLeaf(c *x509.Certificate) error {
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageTimeStamping || len(c.UnknownExtKeyUsage) != 0 {
		return errNotTimestamps
	}
	for _, e := range c.Extensions {
		if e.Id.Equal(oidExtKeyUsage) && e.Critical {
			return nil
		}
	}
	return errNotTimestamps
}

// NewChain makes a timestamp authority's certificates for leafKey: a
// self-signed root, whose key is generated here and dropped once it has
// signed, and a leaf for timestamping. Both are valid from notBefore for
// ten years. Dropping the root key means the chain can never certify
// another key: a new TSA key is a new root in the trusted root.
func NewChain(leafKey crypto.Signer, name string, notBefore time.Time) ([]*x509.Certificate, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tsa: generate root key: %w", err)
	}
	notAfter := notBefore.Add(certificateTTL)
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name + " root", Organization: []string{"Hallmark"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping},
	}
	root, err := create(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping})
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		Subject:         pkix.Name{CommonName: name, Organization: []string{"Hallmark"}},
		NotBefore:       notBefore,
		NotAfter:        notAfter,
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: eku}},
	}
	leaf, err := create(leafTmpl, root, leafKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, root}, nil
}

func create(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("tsa: create certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}
