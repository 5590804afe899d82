package tsa

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// This file writes the one shape of token Signer issues, directly, where
// github.com/digitorus/timestamp builds it by reflection (about 450
// allocations a token, most of a timestamp's cost besides its signature).
// The shape is exactly what digitorus writes for Signer's settings
// (TestTokenIsWhatDigitorusWrites compares them byte for byte), which is
// the shape strict.go reads, and which sigstore-go, cosign and sigstore-js
// accept in the bundles the e2e TestInteropVerifiers has them verify:
//
//	TimeStampResp { status granted,                  RFC 3161 section 2.4.2
//	  ContentInfo { id-signedData,                    RFC 5652 section 3
//	    SignedData { version 3, digestAlgorithms {sha256},
//	      encapContentInfo { id-ct-TSTInfo, TSTInfo },
//	      certificates [the TSA's leaf],
//	      signerInfos { SignerInfo { version 1, issuerAndSerialNumber of
//	        the leaf, sha256, signedAttrs { contentType, signingTime,
//	        messageDigest, signingCertificateV2 }, ecdsa-with-SHA256,
//	        signature }}}}}
//
//	TSTInfo { version 1, policy anyPolicy, messageImprint {sha256,
//	  SHA-256(signature)}, serialNumber (160 random bits), genTime (whole
//	  seconds), accuracy {seconds 1}, tsa [0] directoryName of the leaf's
//	  subject }

// tokenFields are what varies between two tokens of one Signer.
type tokenFields struct {
	imprint [sha256.Size]byte // SHA-256 of the timestamped signature
	genTime time.Time         // granted time, written in whole seconds
	serial  *big.Int          // TSTInfo's serial number, positive
	// signingTime is the signingTime attribute (RFC 5652 section 11.3).
	// Timestamp sets it to the granted time, where digitorus set its own
	// clock's.
	signingTime time.Time
}

// token writes and signs a TimeStampResp of Signer's shape, drawing the
// signature's randomness from random.
func (s *Signer) token(f tokenFields, random io.Reader) ([]byte, error) {
	if len(s.signingCert) == 0 {
		return nil, errors.New("tsa: signer made without NewSigner")
	}
	leaf := s.chain[0]
	tst, err := s.tstInfo(f)
	if err != nil {
		return nil, err
	}
	contentDigest := sha256.Sum256(tst)

	// RFC 5652 section 5.3: the signed attributes, a DER SET OF, so in
	// the order of their encodings (X.690 section 11.6). They are listed
	// in that order already (each is longer than the one before, so its
	// length byte sorts higher); the sort only guards a change of list.
	attrs := make([][]byte, 0, 4)
	for _, a := range []struct {
		typ   asn1.ObjectIdentifier
		value func(*cryptobyte.Builder)
	}{
		{oidContentType, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidTSTInfo) }},
		{oidSigningTime, func(b *cryptobyte.Builder) { addTime(b, f.signingTime) }},
		{oidMessageDigest, func(b *cryptobyte.Builder) { b.AddASN1OctetString(contentDigest[:]) }},
		{oidSigningCertificateV2, func(b *cryptobyte.Builder) { b.AddBytes(s.signingCert) }},
	} {
		der, err := signedAttribute(a.typ, a.value)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, der)
	}
	slices.SortFunc(attrs, bytes.Compare)
	content := slices.Concat(attrs...)
	// RFC 5652 section 5.4: the signature is over the attributes' DER
	// with the SET OF tag, not the [0] IMPLICIT they carry in SignerInfo.
	var set cryptobyte.Builder
	set.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(content) })
	signedAttrs, err := set.Bytes()
	if err != nil {
		return nil, fmt.Errorf("tsa: encode signed attributes: %w", err)
	}
	signedDigest := sha256.Sum256(signedAttrs)
	sig, err := s.key.Sign(random, signedDigest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("tsa: sign timestamp: %w", err)
	}

	sha256Alg := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSHA256) })
	}
	// Sized for the whole token: the leaf, the TSTInfo and the signed
	// attributes, and 256 bytes for the rest.
	b := cryptobyte.NewBuilder(make([]byte, 0, len(leaf.Raw)+len(tst)+len(content)+256))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // TimeStampResp
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1Int64(0) }) // PKIStatusInfo: granted
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {                      // ContentInfo
			b.AddASN1ObjectIdentifier(oidSignedData)
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignedData
					b.AddASN1Int64(3)
					b.AddASN1(cbasn1.SET, sha256Alg)
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // EncapsulatedContentInfo
						b.AddASN1ObjectIdentifier(oidTSTInfo)
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							b.AddASN1OctetString(tst)
						})
					})
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(leaf.Raw) })
					b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignerInfo
							b.AddASN1Int64(1)
							b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // IssuerAndSerialNumber
								b.AddBytes(leaf.RawIssuer)
								b.AddASN1BigInt(leaf.SerialNumber)
							})
							sha256Alg(b)
							b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
								b.AddBytes(content)
							})
							b.AddBytes(ecdsaWithSHA256)
							b.AddASN1OctetString(sig)
						})
					})
				})
			})
		})
	})
	resp, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("tsa: encode timestamp: %w", err)
	}
	return resp, nil
}

// tstInfo writes the TSTInfo (RFC 3161 section 2.4.2).
func (s *Signer) tstInfo(f tokenFields) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(1)
		b.AddBytes(anyPolicyDER)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // MessageImprint
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidSHA256)
				b.AddASN1NULL()
			})
			b.AddASN1OctetString(f.imprint[:])
		})
		b.AddASN1BigInt(f.serial)
		b.AddASN1GeneralizedTime(f.genTime.UTC().Truncate(time.Second))
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1Int64(1) }) // Accuracy: seconds 1
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.Tag(4).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddBytes(s.chain[0].RawSubject)
			})
		})
	})
	tst, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("tsa: encode TSTInfo: %w", err)
	}
	return tst, nil
}

// signedAttribute is the DER of an Attribute (RFC 5652 section 5.3) of
// type typ with the one value value writes.
func signedAttribute(typ asn1.ObjectIdentifier, value func(*cryptobyte.Builder)) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(typ)
		b.AddASN1(cbasn1.SET, value)
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("tsa: encode signed attribute %s: %w", typ, err)
	}
	return der, nil
}

// addTime writes t as encoding/asn1 writes a time.Time, which is how
// digitorus writes signingTime: UTCTime from 1950 through 2049, else
// GeneralizedTime (RFC 5280 section 4.1.2.5 draws the same line).
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC().Truncate(time.Second)
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
		return
	}
	b.AddASN1GeneralizedTime(t)
}

// serialNumber is a TSTInfo serial number as digitorus draws it: 160
// random bits read as a non-negative integer (RFC 3161 section 2.4.2 asks
// for one unique to each token, of at most 160 bits; 160 random bits make
// a collision negligible).
func serialNumber() (*big.Int, error) {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("tsa: serial number: %w", err)
	}
	return new(big.Int).SetBytes(b[:]), nil
}
