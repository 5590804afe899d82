// Package tlog defines what Hallmark's transparency log commits to and how
// a client checks it, shared by the server that appends and the verifiers
// that check offline:
//
//   - the entry body: a canonical JSON document binding a DSSE envelope, the
//     signing certificate and the integrated time (the log's inclusion
//     proof is what makes that time trustworthy);
//   - RFC 6962 leaf and node hashing (github.com/transparency-dev/merkle);
//   - checkpoints in the C2SP tlog-checkpoint format, signed as C2SP signed
//     notes with an Ed25519 log key (golang.org/x/mod/sumdb/note).
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
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Entry kind and version, as a bundle's tlogEntries[].kindVersion names them.
const (
	EntryKind    = "hallmark-dsse"
	EntryVersion = "0.1.0"
)

// Body is a log entry's content. Hashes are lowercase hex SHA-256.
type Body struct {
	Kind    string `json:"kind"`
	Version string `json:"version"`
	// IntegratedTime is when the log accepted the entry (Unix seconds).
	IntegratedTime int64 `json:"integratedTime"`
	// PayloadType and PayloadSHA256 identify the DSSE payload.
	PayloadType   string `json:"payloadType"`
	PayloadSHA256 string `json:"payloadSha256"`
	// SignatureSHA256 is the hash of the envelope's only signature.
	SignatureSHA256 string `json:"signatureSha256"`
	// CertificateSHA256 is the hash of the signing certificate (DER).
	CertificateSHA256 string `json:"certificateSha256"`
}

// NewBody returns the canonical body for env signed by certDER, integrated
// at t. The envelope must carry exactly one signature.
func NewBody(env *dssepb.Envelope, certDER []byte, t time.Time) ([]byte, error) {
	if len(env.GetSignatures()) != 1 {
		return nil, fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	if len(certDER) == 0 {
		return nil, errors.New("tlog: no certificate")
	}
	b := Body{
		Kind: EntryKind, Version: EntryVersion, IntegratedTime: t.Unix(),
		PayloadType:       env.GetPayloadType(),
		PayloadSHA256:     sum(env.GetPayload()),
		SignatureSHA256:   sum(env.GetSignatures()[0].GetSig()),
		CertificateSHA256: sum(certDER),
	}
	return json.Marshal(b) // field order is fixed by the struct: canonical
}

// ParseBody decodes a body strictly (unknown fields refused) and checks its
// kind and version.
func ParseBody(data []byte) (Body, error) {
	var b Body
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return Body{}, fmt.Errorf("tlog: entry body: %w", err)
	}
	if b.Kind != EntryKind || b.Version != EntryVersion {
		return Body{}, fmt.Errorf("tlog: entry body kind %q version %q, want %q %q", b.Kind, b.Version, EntryKind, EntryVersion)
	}
	return b, nil
}

// Matches reports whether b commits to env and certDER.
func (b Body) Matches(env *dssepb.Envelope, certDER []byte) error {
	if len(env.GetSignatures()) != 1 {
		return fmt.Errorf("tlog: envelope has %d signatures, want 1", len(env.GetSignatures()))
	}
	switch {
	case b.PayloadType != env.GetPayloadType():
		return errors.New("tlog: entry names another payload type")
	case b.PayloadSHA256 != sum(env.GetPayload()):
		return errors.New("tlog: entry commits to another payload")
	case b.SignatureSHA256 != sum(env.GetSignatures()[0].GetSig()):
		return errors.New("tlog: entry commits to another signature")
	case b.CertificateSHA256 != sum(certDER):
		return errors.New("tlog: entry commits to another certificate")
	}
	return nil
}

// Time is the integrated time.
func (b Body) Time() time.Time { return time.Unix(b.IntegratedTime, 0).UTC() }

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
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
