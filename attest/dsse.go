package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"strconv"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
)

// PAE returns the DSSE v1 pre-authentication encoding of a payload, the
// bytes that are actually signed
// (https://github.com/secure-systems-lab/dsse/blob/master/protocol.md):
//
//	"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
//
// where LEN is the byte length in ASCII decimal without leading zeros.
func PAE(payloadType string, payload []byte) []byte {
	tl := strconv.Itoa(len(payloadType))
	pl := strconv.Itoa(len(payload))
	b := make([]byte, 0, len("DSSEv1 ")+len(tl)+1+len(payloadType)+1+len(pl)+1+len(payload))
	b = append(b, "DSSEv1 "...)
	b = append(b, tl...)
	b = append(b, ' ')
	b = append(b, payloadType...)
	b = append(b, ' ')
	b = append(b, pl...)
	b = append(b, ' ')
	b = append(b, payload...)
	return b
}

// paeDigest is SHA-256(PAE(payloadType, payload)), without copying the
// payload into the PAE.
func paeDigest(payloadType string, payload []byte) [sha256.Size]byte {
	var hdr [64]byte
	b := append(hdr[:0], "DSSEv1 "...)
	b = strconv.AppendInt(b, int64(len(payloadType)), 10)
	b = append(b, ' ')
	h := sha256.New()
	h.Write(b)
	h.Write([]byte(payloadType))
	b = append(hdr[:0], ' ')
	b = strconv.AppendInt(b, int64(len(payload)), 10)
	b = append(b, ' ')
	h.Write(b)
	h.Write(payload)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// SignEnvelope signs payload as an in-toto statement ([PayloadType]) and
// returns a DSSE envelope with one signature and an empty keyid. The signer
// must hold an ECDSA P-256 key; the signature is ASN.1 DER over
// SHA-256(PAE(PayloadType, payload)), as DSSE and Sigstore expect. The
// envelope refers to payload; it is not copied.
func SignEnvelope(payload []byte, signer crypto.Signer) (*dssepb.Envelope, error) {
	if signer == nil {
		return nil, errors.New("attest: nil signer")
	}
	if _, err := p256Key(signer.Public()); err != nil {
		return nil, fmt.Errorf("attest: signer: %w", err)
	}
	digest := paeDigest(PayloadType, payload)
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("attest: sign envelope: %w", err)
	}
	// A signer that returns raw r||s (some HSM and KMS wrappers do) would
	// produce an envelope nobody can verify; refuse it here.
	if !isDERSignature(sig) {
		return nil, errors.New("attest: signer returned a signature that is not ASN.1 DER ECDSA")
	}
	return &dssepb.Envelope{
		Payload:     payload,
		PayloadType: PayloadType,
		Signatures:  []*dssepb.Signature{{Sig: sig}},
	}, nil
}

// VerifyEnvelope checks that env is an in-toto envelope with exactly one
// signature made by pub (ECDSA P-256, ASN.1 DER over SHA-256 of the PAE) and
// returns its payload. It checks only the signature: certificates, logs and
// policy are the job of package attest/verify.
func VerifyEnvelope(env *dssepb.Envelope, pub crypto.PublicKey) ([]byte, error) {
	if env == nil {
		return nil, errors.New("attest: nil envelope")
	}
	key, err := p256Key(pub)
	if err != nil {
		return nil, fmt.Errorf("attest: verification key: %w", err)
	}
	if env.GetPayloadType() != PayloadType {
		return nil, fmt.Errorf("attest: envelope payload type is %q, want %q", env.GetPayloadType(), PayloadType)
	}
	if n := len(env.GetSignatures()); n != 1 {
		return nil, fmt.Errorf("attest: envelope has %d signatures, want 1", n)
	}
	digest := paeDigest(env.GetPayloadType(), env.GetPayload())
	if !ecdsa.VerifyASN1(key, digest[:], env.GetSignatures()[0].GetSig()) {
		return nil, errors.New("attest: envelope signature does not verify")
	}
	return env.GetPayload(), nil
}

func p256Key(pub crypto.PublicKey) (*ecdsa.PublicKey, error) {
	key, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want an ECDSA P-256 key", pub)
	}
	if key == nil || key.Curve == nil {
		return nil, errors.New("ECDSA key is empty")
	}
	if key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ECDSA key is on %s, want P-256", key.Curve.Params().Name)
	}
	return key, nil
}

func isDERSignature(sig []byte) bool {
	var v struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(sig, &v)
	return err == nil && len(rest) == 0 && v.R.Sign() > 0 && v.S.Sign() > 0
}
