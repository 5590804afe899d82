// Package tlog defines what Hallmark's transparency log commits to and how
// a client checks it, shared by the server that appends and the verifiers
// that check offline:
//
//   - the entry body: a Rekor v2 "hashedrekord" v0.0.2 entry
//     (github.com/sigstore/rekor-tiles, api/proto/rekor/v2/hashedrekord.proto
//     and entry.proto) in canonical JSON (RFC 8785). For a DSSE envelope
//     the hashed data is the envelope's pre-authentication encoding
//     (DSSE PAE of payloadType and payload), the signature is the
//     envelope's one signature and the verifier is the signing
//     certificate: the form Rekor v2 logs a DSSE envelope in since it
//     dropped its "dsse" type, and the only one current Sigstore clients
//     (sigstore-go >= 1.2, cosign >= 3.1, sigstore-js >= 4) check;
//   - the legacy body, a Rekor v2 draft's "dsse" v0.0.2 entry, which logs
//     written before that change hold and verifiers still read
//     (docs/log.md, "Upgrading");
//   - RFC 6962 leaf and node hashing (github.com/transparency-dev/merkle);
//   - checkpoints in the C2SP tlog-checkpoint format, signed as C2SP signed
//     notes with an Ed25519 log key (golang.org/x/mod/sumdb/note), and the
//     log ID, the C2SP signed-note key ID of that key;
//   - a TransparencyLogEntry's JSON as strict parsers want it (MarshalEntry).
//
// The body carries no time: as in Rekor v2, the time a signature existed
// is vouched for by an RFC 3161 timestamp (package attest/tsa), not by the
// log.
//
// In a Sigstore bundle an entry travels as a TransparencyLogEntry whose
// canonicalizedBody is the body, whose kindVersion is {EntryKind,
// EntryVersion} and whose inclusionProof carries the signed checkpoint.
package tlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Entry kind and version, as a bundle's tlogEntries[].kindVersion names
// them and as the body's kind and apiVersion say: Rekor v2's hashedrekord
// entry.
const (
	EntryKind    = "hashedrekord"
	EntryVersion = "0.0.2"
)

// LegacyEntryKind is the kind of the entries Hallmark logs wrote before
// they moved to hashedrekord (version EntryVersion too): a Rekor v2
// draft's "dsse" entry. Verifiers still accept it; the log no longer
// writes it.
const LegacyEntryKind = "dsse"

// Names of protobuf-specs enums as the body spells them.
const (
	hashSHA256   = "SHA2_256"
	keyECDSAP256 = "PKIX_ECDSA_P256_SHA_256"
)

// Body is a parsed log entry body: the protojson form of a rekor v2
// Entry whose spec is a HashedRekordLogEntryV002 or, for a legacy entry,
// a DSSELogEntryV002. Byte fields are base64 (standard, with padding), as
// protojson writes them.
type Body struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Spec       bodySpec `json:"spec"`
}

type bodySpec struct {
	HashedRekordV002 *hashedRekordV002 `json:"hashedRekordV002,omitempty"`
	DSSEV002         *dsseV002         `json:"dsseV002,omitempty"`
}

// hashedRekordV002 is rekor-tiles' HashedRekordLogEntryV002: the digest
// of the signed data and the signature over it with its verifier.
type hashedRekordV002 struct {
	Data      hashOutput    `json:"data"`
	Signature bodySignature `json:"signature"`
}

// dsseV002 is the legacy DSSELogEntryV002.
type dsseV002 struct {
	PayloadHash hashOutput      `json:"payloadHash"`
	Signatures  []bodySignature `json:"signatures"`
}

type hashOutput struct {
	Algorithm string `json:"algorithm"`
	Digest    []byte `json:"digest"`
}

type bodySignature struct {
	Content  []byte       `json:"content"`
	Verifier bodyVerifier `json:"verifier"`
}

type bodyVerifier struct {
	KeyDetails      string    `json:"keyDetails"`
	X509Certificate *rawBytes `json:"x509Certificate"`
}

type rawBytes struct {
	RawBytes []byte `json:"rawBytes"`
}

// SignedDigest is what a hashedrekord entry for env records as its data:
// the SHA-256 of the DSSE pre-authentication encoding of env's payload
// type and payload, the bytes the envelope's signature signs.
func SignedDigest(env *dssepb.Envelope) [sha256.Size]byte {
	return sha256.Sum256(dsse.PAE(env.GetPayloadType(), env.GetPayload()))
}

// NewBody returns the canonical hashedrekord body for env signed with the
// key of certDER (an ECDSA P-256 certificate, as every Hallmark signing
// certificate is). The envelope must carry exactly one signature. The
// JSON is RFC 8785 canonical (keys sorted, no insignificant space; the
// values need no other canonicalization), byte for byte what rekor-tiles
// and sigstore-go rebuild from a bundle, so equal entries have equal
// bodies and leaf hashes.
func NewBody(env *dssepb.Envelope, certDER []byte) ([]byte, error) {
	if len(env.GetSignatures()) != 1 {
		return nil, fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	if len(certDER) == 0 {
		return nil, errors.New("tlog: no certificate")
	}
	digest := SignedDigest(env)
	b := Body{
		APIVersion: EntryVersion, Kind: EntryKind,
		Spec: bodySpec{HashedRekordV002: &hashedRekordV002{
			Data: hashOutput{Algorithm: hashSHA256, Digest: digest[:]},
			Signature: bodySignature{
				Content:  env.GetSignatures()[0].GetSig(),
				Verifier: bodyVerifier{KeyDetails: keyECDSAP256, X509Certificate: &rawBytes{RawBytes: certDER}},
			},
		}},
	}
	return json.Marshal(b) // struct field order is the sorted key order
}

// NewLegacyBody returns the legacy dsse body for env and certDER, as logs
// wrote it before hashedrekord. The log uses its leaf hash as a
// submission's dedupe key, so that an envelope logged before an upgrade
// is recognized after it (docs/log.md).
func NewLegacyBody(env *dssepb.Envelope, certDER []byte) ([]byte, error) {
	if len(env.GetSignatures()) != 1 {
		return nil, fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	if len(certDER) == 0 {
		return nil, errors.New("tlog: no certificate")
	}
	payload := sha256.Sum256(env.GetPayload())
	b := Body{
		APIVersion: EntryVersion, Kind: LegacyEntryKind,
		Spec: bodySpec{DSSEV002: &dsseV002{
			PayloadHash: hashOutput{Algorithm: hashSHA256, Digest: payload[:]},
			Signatures: []bodySignature{{
				Content:  env.GetSignatures()[0].GetSig(),
				Verifier: bodyVerifier{KeyDetails: keyECDSAP256, X509Certificate: &rawBytes{RawBytes: certDER}},
			}},
		}},
	}
	return json.Marshal(b)
}

// ParseBody decodes a body strictly (unknown fields refused) and checks
// its kind, version and shape: a hashedrekord v0.0.2 entry with a SHA-256
// digest and a signature by a certificate, or a legacy dsse v0.0.2 entry
// with a SHA-256 payload hash and one signature by a certificate.
func ParseBody(data []byte) (Body, error) {
	var b Body
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return Body{}, fmt.Errorf("tlog: entry body: %w", err)
	}
	if dec.More() {
		return Body{}, errors.New("tlog: entry body: data after the JSON object")
	}
	if b.APIVersion != EntryVersion || (b.Kind != EntryKind && b.Kind != LegacyEntryKind) {
		return Body{}, fmt.Errorf("tlog: entry body kind %q apiVersion %q, want %q (or %q) %q", b.Kind, b.APIVersion, EntryKind, LegacyEntryKind, EntryVersion)
	}
	if b.Kind == EntryKind {
		h := b.Spec.HashedRekordV002
		switch {
		case h == nil || b.Spec.DSSEV002 != nil:
			return Body{}, errors.New("tlog: hashedrekord entry body has no hashedRekordV002 spec alone")
		case h.Data.Algorithm != hashSHA256 || len(h.Data.Digest) != sha256.Size:
			return Body{}, fmt.Errorf("tlog: entry body digest is %s of %d bytes, want a SHA-256", h.Data.Algorithm, len(h.Data.Digest))
		case h.Signature.Verifier.X509Certificate == nil:
			return Body{}, errors.New("tlog: entry body's verifier is not a certificate")
		}
		return b, nil
	}
	d := b.Spec.DSSEV002
	switch {
	case d == nil || b.Spec.HashedRekordV002 != nil:
		return Body{}, errors.New("tlog: dsse entry body has no dsseV002 spec alone")
	case d.PayloadHash.Algorithm != hashSHA256 || len(d.PayloadHash.Digest) != sha256.Size:
		return Body{}, fmt.Errorf("tlog: entry body payload hash is %s of %d bytes, want a SHA-256", d.PayloadHash.Algorithm, len(d.PayloadHash.Digest))
	case len(d.Signatures) != 1:
		return Body{}, fmt.Errorf("tlog: entry body has %d signatures, want 1", len(d.Signatures))
	case d.Signatures[0].Verifier.X509Certificate == nil:
		return Body{}, errors.New("tlog: entry body's verifier is not a certificate")
	}
	return b, nil
}

// Legacy reports whether b is a legacy dsse entry.
func (b Body) Legacy() bool { return b.Kind == LegacyEntryKind }

// Matches reports whether b commits to env and certDER: for a hashedrekord
// entry the SHA-256 of env's PAE, its signature and the certificate with
// the key details of an ECDSA P-256 key; for a legacy entry the SHA-256 of
// its payload, its signature and the certificate.
func (b Body) Matches(env *dssepb.Envelope, certDER []byte) error {
	if len(env.GetSignatures()) != 1 {
		return fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	var digest []byte
	var sig bodySignature
	switch {
	case b.Kind == EntryKind && b.Spec.HashedRekordV002 != nil:
		d := SignedDigest(env)
		digest, sig = d[:], b.Spec.HashedRekordV002.Signature
		if !bytes.Equal(b.Spec.HashedRekordV002.Data.Digest, digest) {
			return errors.New("tlog: entry commits to another payload or payload type")
		}
	case b.Kind == LegacyEntryKind && b.Spec.DSSEV002 != nil && len(b.Spec.DSSEV002.Signatures) == 1:
		d := sha256.Sum256(env.GetPayload())
		digest, sig = d[:], b.Spec.DSSEV002.Signatures[0]
		if !bytes.Equal(b.Spec.DSSEV002.PayloadHash.Digest, digest) {
			return errors.New("tlog: entry commits to another payload")
		}
	default:
		return errors.New("tlog: entry body is not a parsed entry")
	}
	switch {
	case sig.Verifier.X509Certificate == nil:
		return errors.New("tlog: entry body's verifier is not a certificate")
	case sig.Verifier.KeyDetails != keyECDSAP256:
		return fmt.Errorf("tlog: entry body's key details are %q, want %q", sig.Verifier.KeyDetails, keyECDSAP256)
	case !bytes.Equal(sig.Content, env.GetSignatures()[0].GetSig()):
		return errors.New("tlog: entry commits to another signature")
	case !bytes.Equal(sig.Verifier.X509Certificate.RawBytes, certDER):
		return errors.New("tlog: entry commits to another certificate")
	}
	return nil
}

// Hasher is the RFC 6962 SHA-256 hasher the log uses.
var Hasher = rfc6962.DefaultHasher

// LeafHash is the RFC 6962 leaf hash of an entry body.
func LeafHash(body []byte) []byte { return Hasher.HashLeaf(body) }

// VerifyInclusion checks that leafHash is at index in the tree of size
// whose root is root.
func VerifyInclusion(index, size uint64, leafHash []byte, hashes [][]byte, root []byte) error {
	return proof.VerifyInclusion(Hasher, index, size, leafHash, hashes, root)
}

// VerifyConsistency checks that the tree (size2, root2) extends (size1, root1).
func VerifyConsistency(size1, size2 uint64, hashes [][]byte, root1, root2 []byte) error {
	return proof.VerifyConsistency(Hasher, size1, size2, hashes, root1, root2)
}

// Checkpoint is a C2SP tlog-checkpoint body.
type Checkpoint struct {
	Origin string `json:"origin"`
	Size   uint64 `json:"size"`
	Root   []byte `json:"rootHash"`
}

// Marshal renders the checkpoint body: origin, size and base64 root, one
// per line.
func (c Checkpoint) Marshal() []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root))
}

// ParseCheckpoint parses a checkpoint body (extension lines are ignored).
func ParseCheckpoint(text string) (Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return Checkpoint{}, errors.New("tlog: checkpoint: want origin, size and root lines")
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("tlog: checkpoint size: %w", err)
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != sha256.Size {
		return Checkpoint{}, errors.New("tlog: checkpoint root is not a base64 SHA-256 hash")
	}
	if lines[0] == "" {
		return Checkpoint{}, errors.New("tlog: checkpoint has no origin")
	}
	return Checkpoint{Origin: lines[0], Size: size, Root: root}, nil
}

// OpenCheckpoint verifies a signed checkpoint note with the log's key,
// named origin, and parses it. The note's origin line must equal origin.
func OpenCheckpoint(signed []byte, origin string, pub ed25519.PublicKey) (Checkpoint, error) {
	vkey, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("tlog: log key: %w", err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("tlog: log key: %w", err)
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("tlog: checkpoint signature: %w", err)
	}
	cp, err := ParseCheckpoint(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != origin {
		return Checkpoint{}, fmt.Errorf("tlog: checkpoint origin %q, want %q", cp.Origin, origin)
	}
	return cp, nil
}

// SignCheckpoint signs cp with the log's private key as a C2SP signed note.
func SignCheckpoint(cp Checkpoint, priv ed25519.PrivateKey) ([]byte, error) {
	skey, err := signerKey(cp.Origin, priv)
	if err != nil {
		return nil, err
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("tlog: log key: %w", err)
	}
	return note.Sign(&note.Note{Text: string(cp.Marshal())}, s)
}

// signerKey encodes priv as a note signer key: PRIVATE+KEY+name+hash+key.
func signerKey(name string, priv ed25519.PrivateKey) (string, error) {
	vkey, err := note.NewEd25519VerifierKey(name, priv.Public().(ed25519.PublicKey))
	if err != nil {
		return "", fmt.Errorf("tlog: log key: %w", err)
	}
	hash := strings.Split(vkey, "+")[1]
	key := append([]byte{1}, priv.Seed()...) // algorithm 1: Ed25519
	return "PRIVATE+KEY+" + name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(key), nil
}

// KeyID is a log's ID as Rekor v2 defines it: the C2SP signed-note key ID
// of its checkpoint key, SHA-256(origin || 0x0A || 0x01 || Ed25519 public
// key), not truncated (rekor-tiles CLIENTS.md; protobuf-specs
// TransparencyLogInstance.log_id and checkpoint_key_id). Its first four
// bytes are the key hint on every checkpoint signature line.
func KeyID(origin string, pub ed25519.PublicKey) []byte {
	h := sha256.New()
	h.Write([]byte(origin))
	h.Write([]byte{'\n', 0x01}) // signed-note algorithm 1: Ed25519
	h.Write(pub)
	return h.Sum(nil)
}

// LegacyLogID is the log ID Hallmark used before KeyID, and the one
// Rekor v1 uses: the SHA-256 of the log key's PKIX (SubjectPublicKeyInfo)
// DER. Bundles written before the change carry it; verifiers still
// accept it for the log whose key it hashes.
func LegacyLogID(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	s := sha256.Sum256(der)
	return s[:], nil
}
