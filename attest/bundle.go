package attest

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
)

const (
	// BundleMediaType is the media type of the Sigstore bundles this package
	// writes.
	BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// bundleMediaTypeV03Alt is the older spelling of the same version, which
	// the bundle spec says clients must accept.
	bundleMediaTypeV03Alt = "application/vnd.dev.sigstore.bundle+json;version=0.3"

	// MaxBundleSize is the largest input [ParseBundle] accepts.
	MaxBundleSize = 16 << 20
)

// NewBundle packages a signed envelope and the signer's leaf certificate as a
// Sigstore bundle v0.3. As v0.3 requires, the verification material is the
// leaf certificate alone: intermediates and roots belong in the verifier's
// trusted root. The bundle has no transparency log entries yet.
func NewBundle(env *dssepb.Envelope, leaf *x509.Certificate) (*bundlepb.Bundle, error) {
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	if leaf == nil || len(leaf.Raw) == 0 {
		return nil, errors.New("attest: no leaf certificate")
	}
	return &bundlepb.Bundle{
		MediaType: BundleMediaType,
		VerificationMaterial: &bundlepb.VerificationMaterial{
			Content: &bundlepb.VerificationMaterial_Certificate{
				Certificate: &protocommon.X509Certificate{RawBytes: leaf.Raw},
			},
		},
		Content: &bundlepb.Bundle_DsseEnvelope{DsseEnvelope: env},
	}, nil
}

// MarshalBundle returns the JSON encoding of b: protojson, compacted, with
// its transparency-log entries written by tlog.MarshalEntry, which writes
// the members strict parsers require even when zero (logIndex 0, an empty
// list of proof hashes).
func MarshalBundle(b *bundlepb.Bundle) ([]byte, error) {
	if b == nil {
		return nil, errors.New("attest: nil bundle")
	}
	entries := b.GetVerificationMaterial().GetTlogEntries()
	if len(entries) == 0 {
		out, err := marshalCompact(b)
		if err != nil {
			return nil, fmt.Errorf("attest: marshal bundle: %w", err)
		}
		return out, nil
	}
	// The bundle without its entries, then the entries spliced into its
	// verification material.
	vm := b.GetVerificationMaterial()
	rest := &bundlepb.Bundle{
		MediaType: b.GetMediaType(), Content: b.GetContent(),
		VerificationMaterial: &bundlepb.VerificationMaterial{Content: vm.GetContent(), TimestampVerificationData: vm.GetTimestampVerificationData()},
	}
	out, err := marshalCompact(rest)
	if err != nil {
		return nil, fmt.Errorf("attest: marshal bundle: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("attest: marshal bundle: %w", err)
	}
	var material map[string]json.RawMessage
	if err := json.Unmarshal(doc["verificationMaterial"], &material); err != nil {
		return nil, fmt.Errorf("attest: marshal bundle: %w", err)
	}
	list := []byte{'['}
	for i, e := range entries {
		if i > 0 {
			list = append(list, ',')
		}
		ej, err := tlog.MarshalEntry(e)
		if err != nil {
			return nil, fmt.Errorf("attest: marshal bundle: %w", err)
		}
		list = append(list, ej...)
	}
	material["tlogEntries"] = append(list, ']')
	if doc["verificationMaterial"], err = marshalRaw(material); err != nil {
		return nil, fmt.Errorf("attest: marshal bundle: %w", err)
	}
	out, err = marshalRaw(doc)
	if err != nil {
		return nil, fmt.Errorf("attest: marshal bundle: %w", err)
	}
	return out, nil
}

// marshalRaw encodes members compactly, without HTML escaping.
func marshalRaw(members map[string]json.RawMessage) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(members); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// ParseBundle decodes untrusted bundle JSON and checks its shape: at most
// [MaxBundleSize] bytes, no unknown fields, media type v0.3, a single leaf
// certificate (not a chain, not a public key) that parses as X.509, and a
// DSSE envelope carrying an in-toto statement with exactly one signature.
// It verifies nothing cryptographically.
func ParseBundle(data []byte) (*bundlepb.Bundle, error) {
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("attest: bundle is %d bytes, limit is %d", len(data), MaxBundleSize)
	}
	var b bundlepb.Bundle
	if err := (protojson.UnmarshalOptions{}).Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("attest: decode bundle: %w", err)
	}
	switch mt := b.GetMediaType(); mt {
	case BundleMediaType, bundleMediaTypeV03Alt:
	case "":
		return nil, errors.New("attest: bundle has no media type")
	default:
		return nil, fmt.Errorf("attest: bundle media type is %q, want %q", mt, BundleMediaType)
	}

	vm := b.GetVerificationMaterial()
	if vm == nil {
		return nil, errors.New("attest: bundle has no verification material")
	}
	switch c := vm.GetContent().(type) {
	case *bundlepb.VerificationMaterial_Certificate:
		raw := c.Certificate.GetRawBytes()
		if len(raw) == 0 {
			return nil, errors.New("attest: bundle certificate is empty")
		}
		if _, err := x509.ParseCertificate(raw); err != nil {
			return nil, fmt.Errorf("attest: bundle certificate: %w", err)
		}
	case *bundlepb.VerificationMaterial_X509CertificateChain:
		return nil, errors.New("attest: bundle carries a certificate chain; a v0.3 bundle carries only the leaf certificate")
	case *bundlepb.VerificationMaterial_PublicKey:
		return nil, errors.New("attest: bundle carries a public key hint, want a leaf certificate")
	default:
		return nil, errors.New("attest: bundle has no certificate")
	}

	switch c := b.GetContent().(type) {
	case *bundlepb.Bundle_DsseEnvelope:
		if err := checkEnvelope(c.DsseEnvelope); err != nil {
			return nil, err
		}
	case *bundlepb.Bundle_MessageSignature:
		return nil, errors.New("attest: bundle carries a message signature, want a DSSE envelope")
	default:
		return nil, errors.New("attest: bundle has no DSSE envelope")
	}
	return &b, nil
}

// checkEnvelope checks the shape this package produces and accepts: an
// in-toto payload and exactly one non-empty signature.
func checkEnvelope(env *dssepb.Envelope) error {
	if env == nil {
		return errors.New("attest: no DSSE envelope")
	}
	if env.GetPayloadType() != PayloadType {
		return fmt.Errorf("attest: envelope payload type is %q, want %q", env.GetPayloadType(), PayloadType)
	}
	if len(env.GetPayload()) == 0 {
		return errors.New("attest: envelope payload is empty")
	}
	if n := len(env.GetSignatures()); n != 1 {
		return fmt.Errorf("attest: envelope has %d signatures, want exactly 1", n)
	}
	if len(env.GetSignatures()[0].GetSig()) == 0 {
		return errors.New("attest: envelope signature is empty")
	}
	// Hallmark signs with an empty keyid. One in a bundle is bytes no
	// signature covers, and cosign refuses a keyid its key does not have.
	if id := env.GetSignatures()[0].GetKeyid(); id != "" {
		return fmt.Errorf("attest: envelope signature has keyid %q; Hallmark's have none", id)
	}
	return nil
}

// Sign attests one step: it builds the statement, signs it with signer and
// returns the Sigstore bundle JSON carrying leaf, which must certify the
// signer's public key.
func Sign(s Step, signer crypto.Signer, leaf *x509.Certificate) ([]byte, error) {
	return SignWith(s, signer, leaf, SignOptions{})
}

// SignOptions are what [SignWith] adds to [Sign].
type SignOptions struct {
	// MaxBundleSize, when positive, is the largest bundle to sign: a step
	// whose bundle would be larger is refused with a [*SizeError] before
	// anything is signed (with a timestamp of MaxTimestampSize counted).
	MaxBundleSize int
	// Timestamp, when set, is called with the envelope's signature once
	// it is made and returns an RFC 3161 timestamp response (DER
	// TimeStampResp) over it, which the bundle carries as its
	// verificationMaterial.timestampVerificationData. When it fails, or
	// returns more than MaxTimestampSize bytes, SignWith fails and the
	// signature is dropped: no bundle leaves without its timestamp.
	Timestamp        func(signature []byte) ([]byte, error)
	MaxTimestampSize int
}

// SizeError is SignWith's refusal of a bundle larger than
// SignOptions.MaxBundleSize; nothing was signed.
type SizeError struct {
	Size  int // what the bundle would weigh, in bytes (to within a few)
	Limit int // SignOptions.MaxBundleSize
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("attest: the bundle would be %d bytes, more than the %d allowed", e.Size, e.Limit)
}

// maxSignatureSize is the longest ASN.1 DER ECDSA P-256 signature:
// SEQUENCE { INTEGER r, INTEGER s }, each of at most 33 bytes.
const maxSignatureSize = 2 + 2*(2+33)

// SignWith is Sign with options.
func SignWith(s Step, signer crypto.Signer, leaf *x509.Certificate, opts SignOptions) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("attest: nil signer")
	}
	if _, err := p256Key(signer.Public()); err != nil {
		return nil, fmt.Errorf("attest: signer: %w", err)
	}
	if leaf == nil {
		return nil, errors.New("attest: no leaf certificate")
	}
	// A bundle whose certificate does not match its signature can never
	// verify; catch the mix-up (e.g. mid key rotation) at signing time.
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("attest: leaf certificate does not certify the signer's public key")
	}
	if len(leaf.Raw) == 0 {
		return nil, errors.New("attest: no leaf certificate")
	}
	// The same bytes as MarshalStatement(NewStatement(s)) and
	// MarshalBundle(NewBundle(env, leaf)), written directly: protojson
	// was most of the cost of signing.
	payload, err := statementJSON(s)
	if err != nil {
		return nil, err
	}
	tsSize := -1 // none
	if opts.Timestamp != nil {
		tsSize = opts.MaxTimestampSize
	}
	if size := bundleJSONSize(len(payload), maxSignatureSize, len(leaf.Raw), tsSize); opts.MaxBundleSize > 0 && size > opts.MaxBundleSize {
		return nil, &SizeError{Size: size, Limit: opts.MaxBundleSize}
	}
	env, err := SignEnvelope(payload, signer)
	if err != nil {
		return nil, err
	}
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	sig := env.GetSignatures()[0].GetSig()
	var ts []byte
	if opts.Timestamp != nil {
		if ts, err = opts.Timestamp(sig); err != nil {
			return nil, fmt.Errorf("attest: timestamp: %w", err)
		}
		if len(ts) == 0 || len(ts) > opts.MaxTimestampSize {
			return nil, fmt.Errorf("attest: timestamp is %d bytes, want 1 to %d", len(ts), opts.MaxTimestampSize)
		}
	}
	return bundleJSON(env.GetPayload(), sig, leaf.Raw, ts), nil
}
