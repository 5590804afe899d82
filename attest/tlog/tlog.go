// Package tlog defines what Hallmark's transparency log commits to and how
// a client checks it, shared by the server that appends and the verifiers
// that check offline:
//
//   - the entry body: a Rekor v2 "dsse" v0.0.2 entry
//     (github.com/sigstore/rekor-tiles, api/proto/rekor/v2/dsse.proto) in
//     canonical JSON, binding the DSSE payload's hash, the envelope's
//     signature and the signing certificate. Shaping entries like Rekor
//     v2's is what lets Sigstore clients (sigstore-go, cosign) check them;
//   - RFC 6962 leaf and node hashing (github.com/transparency-dev/merkle);
//   - checkpoints in the C2SP tlog-checkpoint format, signed as C2SP signed
//     notes with an Ed25519 log key (golang.org/x/mod/sumdb/note).
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

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Entry kind and version, as a bundle's tlogEntries[].kindVersion names
// them and as the body's kind and apiVersion say: Rekor v2's dsse entry.
const (
	EntryKind    = "dsse"
	EntryVersion = "0.0.2"
)

// Names of protobuf-specs enums as the body spells them.
const (
	hashSHA256   = "SHA2_256"
	keyECDSAP256 = "PKIX_ECDSA_P256_SHA_256"
)

// Body is a log entry's content: the protojson form of a rekor v2 Entry
// whose spec is a DSSELogEntryV002. Byte fields are base64 (standard, with
// padding), as protojson writes them.
type Body struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Spec       bodySpec `json:"spec"`
}

type bodySpec struct {
	DSSEV002 *dsseV002 `json:"dsseV002"`
}

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

// NewBody returns the canonical body for env signed with the key of
// certDER (an ECDSA P-256 certificate, as every Hallmark signing
// certificate is). The envelope must carry exactly one signature. The
// JSON has its keys sorted and no insignificant space (RFC 8785 for these
// values), so equal entries have equal bodies and leaf hashes.
func NewBody(env *dssepb.Envelope, certDER []byte) ([]byte, error) {
	if len(env.GetSignatures()) != 1 {
		return nil, fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	if len(certDER) == 0 {
		return nil, errors.New("tlog: no certificate")
	}
	payload := sha256.Sum256(env.GetPayload())
	b := Body{
		APIVersion: EntryVersion, Kind: EntryKind,
		Spec: bodySpec{DSSEV002: &dsseV002{
			PayloadHash: hashOutput{Algorithm: hashSHA256, Digest: payload[:]},
			Signatures: []bodySignature{{
				Content:  env.GetSignatures()[0].GetSig(),
				Verifier: bodyVerifier{KeyDetails: keyECDSAP256, X509Certificate: &rawBytes{RawBytes: certDER}},
			}},
		}},
	}
	return json.Marshal(b) // struct field order is the sorted key order
}

// ParseBody decodes a body strictly (unknown fields refused) and checks
// its kind, version and shape: one signature by a certificate, a SHA-256
// payload hash.
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
	if b.Kind != EntryKind || b.APIVersion != EntryVersion {
		return Body{}, fmt.Errorf("tlog: entry body kind %q apiVersion %q, want %q %q", b.Kind, b.APIVersion, EntryKind, EntryVersion)
	}
	d := b.Spec.DSSEV002
	switch {
	case d == nil:
		return Body{}, errors.New("tlog: entry body has no dsseV002 spec")
	case d.PayloadHash.Algorithm != hashSHA256 || len(d.PayloadHash.Digest) != sha256.Size:
		return Body{}, fmt.Errorf("tlog: entry body payload hash is %s of %d bytes, want a SHA-256", d.PayloadHash.Algorithm, len(d.PayloadHash.Digest))
	case len(d.Signatures) != 1:
		return Body{}, fmt.Errorf("tlog: entry body has %d signatures, want 1", len(d.Signatures))
	case d.Signatures[0].Verifier.X509Certificate == nil:
		return Body{}, errors.New("tlog: entry body's verifier is not a certificate")
	}
	return b, nil
}

// Matches reports whether b commits to env and certDER.
func (b Body) Matches(env *dssepb.Envelope, certDER []byte) error {
	if len(env.GetSignatures()) != 1 {
		return fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	d := b.Spec.DSSEV002
	payload := sha256.Sum256(env.GetPayload())
	switch {
	case d == nil || len(d.Signatures) != 1 || d.Signatures[0].Verifier.X509Certificate == nil:
		return errors.New("tlog: entry body is not a parsed dsse entry")
	case !bytes.Equal(d.PayloadHash.Digest, payload[:]):
		return errors.New("tlog: entry commits to another payload")
	case !bytes.Equal(d.Signatures[0].Content, env.GetSignatures()[0].GetSig()):
		return errors.New("tlog: entry commits to another signature")
	case !bytes.Equal(d.Signatures[0].Verifier.X509Certificate.RawBytes, certDER):
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
	Origin string
	Size   uint64
	Root   []byte
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

// LogID is the log's ID as Sigstore computes it: the SHA-256 of its
// public key's PKIX DER.
func LogID(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	s := sha256.Sum256(der)
	return s[:], nil
}
