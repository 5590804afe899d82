package tsa

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// verifyStrict is Verify's fast path for the one shape of token Signer
// issues: DER, one signer, the authority's leaf as its only certificate.
// It reads the token in place with cryptobyte, where the general parser
// converts BER to DER, parses the embedded certificate and decodes
// everything by reflection, which cost twice the signature check.
//
// It only ever says yes: any token it does not fully understand, and
// any failure, comes back as errNotStrict, and Verify then asks the
// general parser, which also produces the error a caller sees. Where it
// says yes the general parser says yes with the same time; every check
// here is the general parser's or stricter. FuzzStrictAgrees tests that.
func (a *Authority) verifyStrict(resp, signature []byte) (time.Time, error) {
	key, ok := a.leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return time.Time{}, errNotStrict
	}
	// RFC 3161 section 2.4.2: TimeStampResp ::= SEQUENCE { status
	// PKIStatusInfo, timeStampToken TimeStampToken }, status granted (0)
	// with no text or failure info.
	var tsr, status, token cryptobyte.String
	in := cryptobyte.String(resp)
	var st int
	if !in.ReadASN1(&tsr, cbasn1.SEQUENCE) || !in.Empty() ||
		!tsr.ReadASN1(&status, cbasn1.SEQUENCE) || !status.ReadASN1Integer(&st) || st != 0 || !status.Empty() ||
		!tsr.ReadASN1(&token, cbasn1.SEQUENCE) || !tsr.Empty() {
		return time.Time{}, errNotStrict
	}
	// RFC 5652 section 3: ContentInfo, content type id-signedData,
	// content [0] EXPLICIT SignedData.
	var ct asn1.ObjectIdentifier
	var wrapped, sd cryptobyte.String
	if !token.ReadASN1ObjectIdentifier(&ct) || !ct.Equal(oidSignedData) ||
		!token.ReadASN1(&wrapped, cbasn1.Tag(0).Constructed().ContextSpecific()) || !token.Empty() ||
		!wrapped.ReadASN1(&sd, cbasn1.SEQUENCE) || !wrapped.Empty() {
		return time.Time{}, errNotStrict
	}
	// RFC 5652 section 5.1: SignedData: version 3 (the content is not
	// id-data), digestAlgorithms exactly {sha256}, encapContentInfo of
	// type id-ct-TSTInfo (RFC 3161 section 2.4.2) as one primitive
	// OCTET STRING, certificates exactly the authority's leaf, no crls,
	// one SignerInfo.
	var version int
	var digestAlgs, eci, eContent, certs, signers, si cryptobyte.String
	var tstInfo []byte
	if !sd.ReadASN1Integer(&version) || version != 3 ||
		!sd.ReadASN1(&digestAlgs, cbasn1.SET) || !readSHA256(&digestAlgs) || !digestAlgs.Empty() ||
		!sd.ReadASN1(&eci, cbasn1.SEQUENCE) ||
		!eci.ReadASN1ObjectIdentifier(&ct) || !ct.Equal(oidTSTInfo) ||
		!eci.ReadASN1(&eContent, cbasn1.Tag(0).Constructed().ContextSpecific()) || !eci.Empty() ||
		!eContent.ReadASN1Bytes(&tstInfo, cbasn1.OCTET_STRING) || !eContent.Empty() ||
		!sd.ReadASN1(&certs, cbasn1.Tag(0).Constructed().ContextSpecific()) || !bytes.Equal(certs, a.leaf.Raw) ||
		!sd.ReadASN1(&signers, cbasn1.SET) || !sd.Empty() ||
		!signers.ReadASN1(&si, cbasn1.SEQUENCE) || !signers.Empty() {
		return time.Time{}, errNotStrict
	}
	// RFC 5652 section 5.3: SignerInfo: version 1, sid the leaf's
	// issuerAndSerialNumber, digest SHA-256, signed attributes, signature
	// ecdsa-with-SHA256, no unsigned attributes.
	var sid, issuer, attrs cryptobyte.String
	var sigAlg, sig []byte
	serial := new(big.Int)
	if !si.ReadASN1Integer(&version) || version != 1 ||
		!si.ReadASN1(&sid, cbasn1.SEQUENCE) ||
		!sid.ReadASN1Element(&issuer, cbasn1.SEQUENCE) || !bytes.Equal(issuer, a.leaf.RawIssuer) ||
		!sid.ReadASN1Integer(serial) || !sid.Empty() || serial.Cmp(a.leaf.SerialNumber) != 0 ||
		!readSHA256(&si) ||
		!si.ReadASN1Element(&attrs, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!si.ReadASN1Element((*cryptobyte.String)(&sigAlg), cbasn1.SEQUENCE) || !bytes.Equal(sigAlg, ecdsaWithSHA256) ||
		!si.ReadASN1Bytes(&sig, cbasn1.OCTET_STRING) || !si.Empty() {
		return time.Time{}, errNotStrict
	}
	contentDigest := sha256.Sum256(tstInfo)
	if !a.checkAttributes(attrs, contentDigest[:]) {
		return time.Time{}, errNotStrict
	}
	// RFC 5652 section 5.4: the signature is over the DER of the signed
	// attributes with the EXPLICIT SET OF tag in place of [0].
	// A response this process's Signer produced is taken as signed
	// (SkipSignatureCheckOfIssued): it signed these very bytes.
	if a.issued == nil || !a.issued.has(resp) {
		signed := append([]byte{0x31}, attrs[1:]...)
		signedDigest := sha256.Sum256(signed)
		if !ecdsa.VerifyASN1(key, signedDigest[:], sig) {
			return time.Time{}, errNotStrict
		}
	}
	// RFC 3161 section 2.4.2: TSTInfo.
	gen, ok := readTSTInfo(tstInfo, signature)
	if !ok || gen.Before(a.notBefore) || gen.After(a.notAfter) {
		return time.Time{}, errNotStrict
	}
	return gen, nil
}

// checkAttributes checks the signed attributes (RFC 5652 section 11, RFC
// 5035 section 5.4.1): contentType id-ct-TSTInfo and messageDigest
// digest, each once with one value; signingTime, if there, inside the
// leaf's validity; signingCertificateV2, if there, exactly as Signer
// writes it for the leaf; nothing else. They must be DER, in DER order:
// the general parser converts the token from BER to DER and checks the
// signature over its own re-encoding of them, so bytes read here must be
// bytes it keeps.
func (a *Authority) checkAttributes(attrs cryptobyte.String, digest []byte) bool {
	var set cryptobyte.String
	if !attrs.ReadASN1(&set, cbasn1.Tag(0).Constructed().ContextSpecific()) || !attrs.Empty() {
		return false
	}
	var prev []byte
	var haveType, haveDigest, haveTime, haveCert bool
	for !set.Empty() {
		var attr, fields, values, value cryptobyte.String
		var typ asn1.ObjectIdentifier
		if !set.ReadASN1Element(&attr, cbasn1.SEQUENCE) || (prev != nil && bytes.Compare(prev, attr) >= 0) {
			return false
		}
		prev = attr
		if !attr.ReadASN1(&fields, cbasn1.SEQUENCE) ||
			!fields.ReadASN1ObjectIdentifier(&typ) || !fields.ReadASN1(&values, cbasn1.SET) || !fields.Empty() ||
			!values.ReadAnyASN1Element(&value, new(cbasn1.Tag)) || !values.Empty() {
			return false
		}
		switch {
		case typ.Equal(oidContentType) && !haveType:
			var ct asn1.ObjectIdentifier
			if !value.ReadASN1ObjectIdentifier(&ct) || !value.Empty() || !ct.Equal(oidTSTInfo) {
				return false
			}
			haveType = true
		case typ.Equal(oidMessageDigest) && !haveDigest:
			var got []byte
			if !value.ReadASN1Bytes(&got, cbasn1.OCTET_STRING) || !value.Empty() || subtle.ConstantTimeCompare(got, digest) != 1 {
				return false
			}
			haveDigest = true
		case typ.Equal(oidSigningTime) && !haveTime:
			var t time.Time
			if rest, err := asn1.Unmarshal(value, &t); err != nil || len(rest) != 0 || t.Before(a.leaf.NotBefore) || t.After(a.leaf.NotAfter) {
				return false
			}
			haveTime = true
		case typ.Equal(oidSigningCertificateV2) && !haveCert:
			// Compared whole, not read field by field: bytes left unread
			// (a BER length inside issuerSerial, say) would be rewritten
			// by the general parser, whose signature check then fails.
			if !bytes.Equal(value, a.signingCert) {
				return false
			}
			haveCert = true
		default:
			return false
		}
	}
	return haveType && haveDigest
}

// signingCertificateV2 is the value of the signingCertificateV2
// attribute (RFC 5035 section 5.4.1) naming leaf as Signer writes it:
//
//	SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2 }
//	ESSCertIDv2 ::= SEQUENCE { hashAlgorithm DEFAULT sha256 (absent),
//	    certHash OCTET STRING, issuerSerial IssuerSerial }
//	IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber }
//
// with one ESSCertIDv2, the SHA-256 of leaf, and issuer the one
// directoryName [4] (EXPLICIT, Name is a CHOICE) of leaf's issuer.
func signingCertificateV2(leaf *x509.Certificate) ([]byte, error) {
	hash := sha256.Sum256(leaf.Raw)
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1OctetString(hash[:])
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.Tag(4).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							b.AddBytes(leaf.RawIssuer)
						})
					})
					b.AddASN1BigInt(leaf.SerialNumber)
				})
			})
		})
	})
	return b.Bytes()
}

// readTSTInfo reads a TSTInfo (RFC 3161 section 2.4.2) over signature:
// version 1, policy anyPolicy (Signer's), messageImprint SHA-256 of
// signature, a serial number, genTime, then at most accuracy and the
// tsa name. It returns genTime.
func readTSTInfo(der, signature []byte) (time.Time, bool) {
	in := cryptobyte.String(der)
	var info, imprint, alg, genTime cryptobyte.String
	var version int
	var policy, hashed []byte
	serial := new(big.Int)
	if !in.ReadASN1(&info, cbasn1.SEQUENCE) || !in.Empty() ||
		!info.ReadASN1Integer(&version) || version != 1 ||
		!info.ReadASN1Element((*cryptobyte.String)(&policy), cbasn1.OBJECT_IDENTIFIER) || !bytes.Equal(policy, anyPolicyDER) ||
		!info.ReadASN1(&imprint, cbasn1.SEQUENCE) ||
		!imprint.ReadASN1(&alg, cbasn1.SEQUENCE) || !readSHA256Params(alg) ||
		!imprint.ReadASN1Bytes(&hashed, cbasn1.OCTET_STRING) || !imprint.Empty() ||
		!info.ReadASN1Integer(serial) ||
		!info.ReadASN1Element(&genTime, cbasn1.GeneralizedTime) {
		return time.Time{}, false
	}
	want := sha256.Sum256(signature)
	if !bytes.Equal(hashed, want[:]) {
		return time.Time{}, false
	}
	// encoding/asn1 reads GeneralizedTime as the general parser does,
	// fractional seconds included, DER only.
	var gen time.Time
	if rest, err := asn1.UnmarshalWithParams(genTime, &gen, "generalized"); err != nil || len(rest) != 0 {
		return time.Time{}, false
	}
	if info.PeekASN1Tag(cbasn1.SEQUENCE) {
		var acc cryptobyte.String
		var a accuracy
		if !info.ReadASN1Element(&acc, cbasn1.SEQUENCE) {
			return time.Time{}, false
		}
		if rest, err := asn1.Unmarshal(acc, &a); err != nil || len(rest) != 0 {
			return time.Time{}, false
		}
	}
	if info.PeekASN1Tag(cbasn1.Tag(0).Constructed().ContextSpecific()) {
		var name cryptobyte.String
		if !info.ReadASN1(&name, cbasn1.Tag(0).Constructed().ContextSpecific()) {
			return time.Time{}, false
		}
	}
	return gen, info.Empty()
}

// accuracy is TSTInfo's Accuracy, as the general parser reads it.
type accuracy struct {
	Seconds      int64 `asn1:"optional"`
	Milliseconds int64 `asn1:"tag:0,optional"`
	Microseconds int64 `asn1:"tag:1,optional"`
}

// readSHA256 reads an AlgorithmIdentifier that is SHA-256.
func readSHA256(s *cryptobyte.String) bool {
	var alg cryptobyte.String
	return s.ReadASN1(&alg, cbasn1.SEQUENCE) && readSHA256Params(alg)
}

// readSHA256Params checks an AlgorithmIdentifier's contents are SHA-256
// with absent or NULL parameters (RFC 5754 section 2).
func readSHA256Params(alg cryptobyte.String) bool {
	var oid asn1.ObjectIdentifier
	if !alg.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidSHA256) {
		return false
	}
	return alg.Empty() || (bytes.Equal(alg, []byte{0x05, 0x00}))
}

var (
	errNotStrict = errors.New("tsa: not a token of the strict shape")

	oidSignedData           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidTSTInfo              = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 4}
	oidContentType          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidMessageDigest        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidSigningTime          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	oidSigningCertificateV2 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 2, 47}
	oidSHA256               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	// ecdsaWithSHA256 is the AlgorithmIdentifier SEQUENCE { 1.2.840.10045.4.3.2 }.
	ecdsaWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	// anyPolicyDER is the OBJECT IDENTIFIER 2.5.29.32.0.
	anyPolicyDER = []byte{0x06, 0x04, 0x55, 0x1d, 0x20, 0x00}
)
