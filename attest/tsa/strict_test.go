package tsa

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// TestStrictPathReadsSignerTokens: every token Signer issues takes the
// fast path, with the general parser's time.
func TestStrictPathReadsSignerTokens(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := newSigner(t, t0.Add(-time.Hour))
	a, err := NewAuthority(s.Chain()[0], pool(s.Chain()[1]), nil)
	require.NoError(t, err)
	for _, at := range []time.Time{t0, t0.Add(123 * time.Millisecond), t0.Add(5*time.Hour + 999*time.Millisecond)} {
		sig := []byte("signature at " + at.String())
		resp, err := s.Timestamp(sig, at)
		require.NoError(t, err)
		fast, err := a.verifyStrict(resp, sig)
		require.NoError(t, err, "a Signer token must take the fast path")
		general, err := a.verifyGeneral(resp, sig)
		require.NoError(t, err)
		// The token carries whole seconds (encoding/asn1 writes no fraction).
		require.True(t, fast.Equal(general) && fast.Equal(at.Truncate(time.Second)), "fast %s, general %s, issued at %s", fast, general, at)

		_, err = a.verifyStrict(resp, []byte("another signature"))
		require.ErrorIs(t, err, errNotStrict)
	}
}

// TestStrictPathRefusesWhatItDoesNotKnow: tokens that verify but are not
// of Signer's shape go to the general parser, and ones that do not
// verify are refused by both. The tokens are signed with the TSA's key:
// they are what a TSA writing other shapes (or BER) would issue.
func TestStrictPathRefusesWhatItDoesNotKnow(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := newSigner(t, t0.Add(-time.Hour))
	a, err := NewAuthority(s.Chain()[0], pool(s.Chain()[1]), nil)
	require.NoError(t, err)
	sig := []byte("sig")
	resp, err := s.Timestamp(sig, t0)
	require.NoError(t, err)
	tst, attrs, md := tokenParts(t, resp)

	longer := append(append([]byte(nil), tst...), 0)
	withDigestOf := func(tst []byte) [][]byte {
		out := append([][]byte(nil), attrs...)
		out[md] = digestAttribute(tst)
		return out
	}
	without := func(i int) [][]byte {
		return append(append([][]byte(nil), attrs[:i]...), attrs[i+1:]...)
	}
	contentType := 0
	require.True(t, typeIs(attrs[contentType], oidContentType))
	// withSigningCert replaces the signingCertificateV2 attribute with
	// one whose ESSCertIDv2 is certHash followed by rest.
	leaf := s.Chain()[0]
	withSigningCert := func(rest []byte) [][]byte {
		hash := sha256.Sum256(leaf.Raw)
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1OctetString(hash[:])
					b.AddBytes(rest)
				})
			})
		})
		out := slices.DeleteFunc(slices.Clone(attrs), func(at []byte) bool { return typeIs(at, oidSigningCertificateV2) })
		return derOrder(append(out, attribute(oidSigningCertificateV2, b.BytesOrPanic())))
	}
	// issuerSerial is the IssuerSerial Signer writes, its serial number's
	// length in BER long form when berLength is set.
	issuerSerial := func(berLength bool) []byte {
		var serial cryptobyte.Builder
		serial.AddASN1BigInt(leaf.SerialNumber)
		integer := serial.BytesOrPanic()
		if berLength {
			integer = append([]byte{integer[0], 0x81}, integer[1:]...)
		}
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(4).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(leaf.RawIssuer) })
			})
			b.AddBytes(integer)
		})
		return b.BytesOrPanic()
	}
	for name, tc := range map[string]struct {
		token   []byte
		strict  bool // the fast path takes it
		general bool // the general parser accepts it
	}{
		"rebuilt as issued":                   {buildToken(t, s, tst, attrs, false), true, true},
		"signingCertificateV2 rebuilt":        {buildToken(t, s, tst, withSigningCert(issuerSerial(false)), false), true, true},
		"signingCertificateV2 without issuer": {buildToken(t, s, tst, withSigningCert(nil), false), false, true},
		// The general parser rewrites BER as DER before it checks the
		// signature, so these fail there; the fast path must not take them.
		"BER length in signingCertificateV2": {buildToken(t, s, tst, withSigningCert(issuerSerial(true)), false), false, false},
		"BER indefinite length in signingCertificateV2": {
			buildToken(t, s, tst, withSigningCert(append(issuerSerial(false), 0x30, 0x80, 0x00, 0x00)), false), false, false,
		},
		"attributes out of DER order": {buildToken(t, s, tst, reversed(attrs), false), false, false},
		"unsigned attribute added":    {buildToken(t, s, tst, attrs, true), false, true},
		"trailing byte after TSTInfo": {buildToken(t, s, longer, withDigestOf(longer), false), false, true},
		"digest of other content":     {buildToken(t, s, tst, withDigestOf(longer), false), false, false},
		"contentType twice":           {buildToken(t, s, tst, append([][]byte{attrs[contentType]}, attrs...), false), false, true},
		"no contentType":              {buildToken(t, s, tst, without(contentType), false), false, true},
		"no messageDigest":            {buildToken(t, s, tst, without(md), false), false, false},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := a.verifyStrict(tc.token, sig)
			require.Equal(t, tc.strict, err == nil, "strict: %v", err)
			_, err = a.verifyGeneral(tc.token, sig)
			require.Equal(t, tc.general, err == nil, "general: %v", err)
		})
	}
}

// attribute is the Attribute (RFC 5652 section 5.3) of type typ with the
// one value value, a whole DER element.
func attribute(typ asn1.ObjectIdentifier, value []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(typ)
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(value) })
	})
	return b.BytesOrPanic()
}

// derOrder sorts attributes as DER orders a SET OF (X.690 section 11.6).
func derOrder(attrs [][]byte) [][]byte {
	slices.SortFunc(attrs, bytes.Compare)
	return attrs
}

// digestAttribute is the messageDigest attribute for content.
func digestAttribute(content []byte) []byte {
	digest := sha256.Sum256(content)
	var b cryptobyte.Builder
	b.AddASN1OctetString(digest[:])
	return attribute(oidMessageDigest, b.BytesOrPanic())
}

// FuzzStrictAgrees: wherever the fast path accepts a token, the general
// parser accepts it with the same time. The fuzzer mutates a whole
// token (the parts no signature covers) and, in FuzzStrictAgreesSigned,
// the signed TSTInfo and attribute values. Both use fixedSigner, so the
// corpus replays against the same TSA.
func FuzzStrictAgrees(f *testing.F) {
	s, a := fixedSigner(f)
	sig := []byte("sig")
	resp, err := s.Timestamp(sig, fixedTime)
	require.NoError(f, err)
	f.Add(resp)
	f.Fuzz(func(t *testing.T, token []byte) {
		agree(t, a, token, sig)
	})
}

func FuzzStrictAgreesSigned(f *testing.F) {
	s, a := fixedSigner(f)
	sig := []byte("sig")
	resp, err := s.Timestamp(sig, fixedTime)
	require.NoError(f, err)
	tst, attrs, _ := tokenParts(f, resp)
	value := func(typ asn1.ObjectIdentifier) []byte {
		for _, at := range attrs {
			if typeIs(at, typ) {
				var fields, values cryptobyte.String
				s := cryptobyte.String(at)
				require.True(f, s.ReadASN1(&fields, cbasn1.SEQUENCE) && fields.SkipASN1(cbasn1.OBJECT_IDENTIFIER) && fields.ReadASN1(&values, cbasn1.SET))
				return values
			}
		}
		f.Fatalf("no attribute %s", typ)
		return nil
	}
	f.Add(tst, value(oidContentType), value(oidSigningTime), value(oidSigningCertificateV2), []byte(nil))
	f.Fuzz(func(t *testing.T, tst, contentType, signingTime, signingCert, more []byte) {
		// The harness signs, computes messageDigest, and wraps each
		// non-empty value (the SET OF AttributeValue's contents) in its
		// attribute, in DER order, so that mutations inside a value keep
		// the list well formed; more is whole attributes, added last.
		var list [][]byte
		for _, at := range []struct {
			typ   asn1.ObjectIdentifier
			value []byte
		}{{oidContentType, contentType}, {oidSigningTime, signingTime}, {oidSigningCertificateV2, signingCert}} {
			if len(at.value) > 0 {
				list = append(list, attribute(at.typ, at.value))
			}
		}
		list = append(derOrder(append(list, digestAttribute(tst))), more)
		agree(t, a, buildToken(t, s, tst, list, false), sig)
	})
}

// fixedTime is when fixedSigner's tokens are issued.
var fixedTime = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// fixedSigner is a TSA whose key and certificates are the same in every
// run, so that fuzz corpus entries still verify when replayed: the leaf
// key is a constant and the chain is signed with Ed25519, whose
// signatures are deterministic. It is valid from 2026 for a century, so
// the signingTime Signer writes (the time of signing) falls inside it.
func fixedSigner(t testing.TB) (*Signer, *Authority) {
	t.Helper()
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{1}, 32))
	require.NoError(t, err)
	rootKey := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	notBefore := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := notBefore.AddDate(100, 0, 0)
	root := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuzz tsa root"},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, root, root, rootKey.Public(), rootKey)
	require.NoError(t, err)
	root, err = x509.ParseCertificate(der)
	require.NoError(t, err)
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping})
	require.NoError(t, err)
	der, err = x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "fuzz tsa"},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: eku}},
	}, root, key.Public(), rootKey)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	s, err := NewSigner(key, []*x509.Certificate{leaf, root})
	require.NoError(t, err)
	a, err := NewAuthority(leaf, pool(root), nil)
	require.NoError(t, err)
	return s, a
}

func agree(t *testing.T, a *Authority, token, sig []byte) {
	fast, err := a.verifyStrict(token, sig)
	if err != nil {
		return
	}
	general, err := a.verifyGeneral(token, sig)
	require.NoError(t, err, "the fast path accepted what the general parser refuses")
	require.True(t, fast.Equal(general), "fast %s, general %s", fast, general)
}

// tokenParts returns the TSTInfo and the signed attributes (each a whole
// DER element, in order) of a Signer token, and which is messageDigest.
func tokenParts(t testing.TB, resp []byte) (tst []byte, attrs [][]byte, md int) {
	t.Helper()
	in := cryptobyte.String(resp)
	var tsr, status, token, wrapped, sd, eci, eContent, certs, signers, si, set, skip cryptobyte.String
	var ver int
	ok := in.ReadASN1(&tsr, cbasn1.SEQUENCE) && tsr.ReadASN1(&status, cbasn1.SEQUENCE) && tsr.ReadASN1(&token, cbasn1.SEQUENCE) &&
		token.SkipASN1(cbasn1.OBJECT_IDENTIFIER) && token.ReadASN1(&wrapped, cbasn1.Tag(0).Constructed().ContextSpecific()) &&
		wrapped.ReadASN1(&sd, cbasn1.SEQUENCE) && sd.ReadASN1Integer(&ver) && sd.SkipASN1(cbasn1.SET) &&
		sd.ReadASN1(&eci, cbasn1.SEQUENCE) && eci.SkipASN1(cbasn1.OBJECT_IDENTIFIER) &&
		eci.ReadASN1(&eContent, cbasn1.Tag(0).Constructed().ContextSpecific()) && eContent.ReadASN1Bytes(&tst, cbasn1.OCTET_STRING) &&
		sd.ReadASN1(&certs, cbasn1.Tag(0).Constructed().ContextSpecific()) && sd.ReadASN1(&signers, cbasn1.SET) &&
		signers.ReadASN1(&si, cbasn1.SEQUENCE) && si.SkipASN1(cbasn1.INTEGER) && si.SkipASN1(cbasn1.SEQUENCE) && si.SkipASN1(cbasn1.SEQUENCE) &&
		si.ReadASN1(&set, cbasn1.Tag(0).Constructed().ContextSpecific())
	require.True(t, ok, "a Signer token")
	for !set.Empty() {
		require.True(t, set.ReadASN1Element(&skip, cbasn1.SEQUENCE))
		attrs = append(attrs, append([]byte(nil), skip...))
	}
	for i, at := range attrs {
		if typeIs(at, oidMessageDigest) {
			return tst, attrs, i
		}
	}
	t.Fatal("no messageDigest attribute")
	return nil, nil, 0
}

func typeIs(attr []byte, oid asn1.ObjectIdentifier) bool {
	s := cryptobyte.String(attr)
	var fields cryptobyte.String
	var typ asn1.ObjectIdentifier
	return s.ReadASN1(&fields, cbasn1.SEQUENCE) && fields.ReadASN1ObjectIdentifier(&typ) && typ.Equal(oid)
}

func reversed(in [][]byte) [][]byte {
	out := make([][]byte, len(in))
	for i, v := range in {
		out[len(in)-1-i] = v
	}
	return out
}

// buildToken builds a TimeStampResp of Signer's shape around tst, signed
// by s over attrs (each a whole attribute element, in the order given;
// the messageDigest among them is used as is), with an unsigned
// attribute when unsigned is set.
func buildToken(t testing.TB, s *Signer, tst []byte, attrs [][]byte, unsigned bool) []byte {
	t.Helper()
	leaf := s.Chain()[0]
	var set []byte
	for _, at := range attrs {
		set = append(set, at...)
	}
	var sb cryptobyte.Builder
	sb.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(set) })
	signed, err := sb.Bytes()
	if err != nil {
		t.Skip("attributes too long to encode")
	}
	d := sha256.Sum256(signed)
	sig, err := ecdsa.SignASN1(rand.Reader, s.key.(*ecdsa.PrivateKey), d[:])
	require.NoError(t, err)
	sha := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSHA256) })
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1Int64(0) })
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidSignedData)
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1Int64(3)
					b.AddASN1(cbasn1.SET, sha)
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(oidTSTInfo)
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1OctetString(tst) })
					})
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(leaf.Raw) })
					b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1Int64(1)
							b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
								b.AddBytes(leaf.RawIssuer)
								b.AddASN1BigInt(leaf.SerialNumber)
							})
							sha(b)
							b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(set) })
							b.AddBytes(ecdsaWithSHA256)
							b.AddASN1OctetString(sig)
							if unsigned {
								b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(attrs[0]) })
							}
						})
					})
				})
			})
		})
	})
	out, err := b.Bytes()
	if err != nil {
		t.Skip("token too long to encode")
	}
	return out
}

// BenchmarkVerify: a Signer token through Verify (the fast path), through
// Verify of an authority trusting the Signer that issued it (the log's
// admission, issued.go), and through the general parser alone, as every
// token went before (docs/log.md quotes all three).
func BenchmarkVerify(b *testing.B) {
	s := newSigner(b, time.Now().Add(-time.Hour))
	a, trusting := authorities(b, s)
	sig := []byte("a DSSE signature")
	resp, err := s.Timestamp(sig, time.Now())
	require.NoError(b, err)
	for name, verify := range map[string]func([]byte, []byte) (time.Time, error){
		"Verify":        a.Verify,
		"Verify_issued": trusting.Verify,
		"digitorus":     a.verifyGeneral,
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := verify(resp, sig); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
