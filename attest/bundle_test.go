package attest_test

import (
	"bytes"
	"crypto/x509"
	"strings"
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/attest"
)

func validBundle(tb testing.TB) (*bundlepb.Bundle, testPKI) {
	tb.Helper()
	pki := newTestPKI(tb)
	data, err := attest.Sign(testStep(), pki.signer, pki.leaf)
	require.NoError(tb, err)
	b, err := attest.ParseBundle(data)
	require.NoError(tb, err)
	return b, pki
}

func TestNewBundle(t *testing.T) {
	b, pki := validBundle(t)
	env := b.GetDsseEnvelope()

	got, err := attest.NewBundle(env, pki.leaf)
	require.NoError(t, err)
	require.Equal(t, attest.BundleMediaType, got.GetMediaType())
	require.Equal(t, pki.leaf.Raw, got.GetVerificationMaterial().GetCertificate().GetRawBytes())
	require.Nil(t, got.GetVerificationMaterial().GetX509CertificateChain())
	require.Empty(t, got.GetVerificationMaterial().GetTlogEntries())
	require.True(t, proto.Equal(env, got.GetDsseEnvelope()))

	for _, tc := range []struct {
		name    string
		env     *dssepb.Envelope
		leaf    *x509.Certificate
		wantErr string
	}{
		{"nil envelope", nil, pki.leaf, "no DSSE envelope"},
		{"nil leaf", env, nil, "no leaf certificate"},
		{"leaf without DER", env, &x509.Certificate{}, "no leaf certificate"},
		{"unsigned envelope", &dssepb.Envelope{PayloadType: attest.PayloadType, Payload: []byte("{}")}, pki.leaf, "0 signatures"},
		{"other payload type", &dssepb.Envelope{PayloadType: "text/plain", Payload: []byte("x"),
			Signatures: []*dssepb.Signature{{Sig: []byte{1}}}}, pki.leaf, "payload type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := attest.NewBundle(tc.env, tc.leaf)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestMarshalBundleNil(t *testing.T) {
	_, err := attest.MarshalBundle(nil)
	require.ErrorContains(t, err, "nil bundle")
}

func TestParseBundle(t *testing.T) {
	valid, pki := validBundle(t)

	fromProto := func(mutate func(*bundlepb.Bundle)) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			b := proto.Clone(valid).(*bundlepb.Bundle)
			mutate(b)
			data, err := attest.MarshalBundle(b)
			require.NoError(t, err)
			return data
		}
	}
	validJSON := fromProto(func(*bundlepb.Bundle) {})

	for _, tc := range []struct {
		name    string
		data    func(t *testing.T) []byte
		wantErr string // empty: must parse
	}{
		{"valid", validJSON, ""},
		{"alternate v0.3 media type", fromProto(func(b *bundlepb.Bundle) {
			b.MediaType = "application/vnd.dev.sigstore.bundle+json;version=0.3"
		}), ""},
		{"with whitespace", func(t *testing.T) []byte {
			return []byte("\n  " + string(validJSON(t)) + "\n")
		}, ""},
		{"v0.2 media type", fromProto(func(b *bundlepb.Bundle) {
			b.MediaType = "application/vnd.dev.sigstore.bundle+json;version=0.2"
		}), "media type"},
		{"no media type", fromProto(func(b *bundlepb.Bundle) { b.MediaType = "" }), "no media type"},
		{"no verification material", fromProto(func(b *bundlepb.Bundle) { b.VerificationMaterial = nil }), "no verification material"},
		{"no certificate", fromProto(func(b *bundlepb.Bundle) { b.VerificationMaterial.Content = nil }), "no certificate"},
		{"empty certificate", fromProto(func(b *bundlepb.Bundle) {
			b.VerificationMaterial.Content = &bundlepb.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{}}
		}), "certificate is empty"},
		{"garbage certificate", fromProto(func(b *bundlepb.Bundle) {
			b.VerificationMaterial.Content = &bundlepb.VerificationMaterial_Certificate{
				Certificate: &protocommon.X509Certificate{RawBytes: []byte("not DER")}}
		}), "bundle certificate"},
		{"certificate chain", fromProto(func(b *bundlepb.Bundle) {
			b.VerificationMaterial.Content = &bundlepb.VerificationMaterial_X509CertificateChain{
				X509CertificateChain: &protocommon.X509CertificateChain{Certificates: []*protocommon.X509Certificate{
					{RawBytes: pki.leaf.Raw}, {RawBytes: pki.root.Raw}}}}
		}), "only the leaf certificate"},
		{"public key hint", fromProto(func(b *bundlepb.Bundle) {
			b.VerificationMaterial.Content = &bundlepb.VerificationMaterial_PublicKey{
				PublicKey: &protocommon.PublicKeyIdentifier{Hint: "k"}}
		}), "public key hint"},
		{"message signature", fromProto(func(b *bundlepb.Bundle) {
			b.Content = &bundlepb.Bundle_MessageSignature{MessageSignature: &protocommon.MessageSignature{Signature: []byte{1}}}
		}), "message signature"},
		{"no content", fromProto(func(b *bundlepb.Bundle) { b.Content = nil }), "no DSSE envelope"},
		{"no signatures", fromProto(func(b *bundlepb.Bundle) { b.GetDsseEnvelope().Signatures = nil }), "0 signatures"},
		{"two signatures", fromProto(func(b *bundlepb.Bundle) {
			env := b.GetDsseEnvelope()
			env.Signatures = append(env.Signatures, env.Signatures[0])
		}), "2 signatures"},
		{"empty signature", fromProto(func(b *bundlepb.Bundle) { b.GetDsseEnvelope().Signatures[0].Sig = nil }), "signature is empty"},
		{"empty payload", fromProto(func(b *bundlepb.Bundle) { b.GetDsseEnvelope().Payload = nil }), "payload is empty"},
		{"other payload type", fromProto(func(b *bundlepb.Bundle) { b.GetDsseEnvelope().PayloadType = "text/plain" }), "payload type"},
		{"unknown field", func(t *testing.T) []byte {
			return bytes.Replace(validJSON(t), []byte(`{"mediaType"`), []byte(`{"surprise":1,"mediaType"`), 1)
		}, "decode bundle"},
		{"duplicate field", func(t *testing.T) []byte {
			return bytes.Replace(validJSON(t), []byte(`{"mediaType"`), []byte(`{"mediaType":"x","mediaType"`), 1)
		}, "decode bundle"},
		{"not JSON", func(*testing.T) []byte { return []byte("certainly not json") }, "decode bundle"},
		{"empty input", func(*testing.T) []byte { return nil }, "decode bundle"},
		{"too large", func(t *testing.T) []byte {
			return []byte(string(validJSON(t)) + strings.Repeat(" ", attest.MaxBundleSize))
		}, "limit is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := attest.ParseBundle(tc.data(t))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.Nil(t, b)
				return
			}
			require.NoError(t, err)
			require.True(t, proto.Equal(valid.GetDsseEnvelope(), b.GetDsseEnvelope()))
		})
	}
}

func FuzzParseBundle(f *testing.F) {
	valid, _ := validBundle(f)
	data, err := attest.MarshalBundle(valid)
	require.NoError(f, err)
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AAAA"}},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ=="}]}}`))
	f.Add([]byte(`null`))
	f.Add([]byte("\x00\xff{["))

	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := attest.ParseBundle(in)
		if err != nil {
			require.Nil(t, b)
			return
		}
		// Whatever parses must survive a round trip unchanged.
		out, err := attest.MarshalBundle(b)
		require.NoError(t, err)
		again, err := attest.ParseBundle(out)
		require.NoError(t, err)
		require.True(t, proto.Equal(b, again))
	})
}

// A logged bundle's JSON carries logIndex 0 and an empty hashes list for
// the first entry of a log, as strict parsers require, and reads back as
// the same bundle.
func TestMarshalBundleWritesZeroMembers(t *testing.T) {
	b, _ := validBundle(t)
	b.VerificationMaterial.TlogEntries = []*rekorpb.TransparencyLogEntry{{
		LogIndex:    0,
		LogId:       &protocommon.LogId{KeyId: []byte{7}},
		KindVersion: &rekorpb.KindVersion{Kind: "hashedrekord", Version: "0.0.2"},
		InclusionProof: &rekorpb.InclusionProof{LogIndex: 0, TreeSize: 1, RootHash: make([]byte, 32),
			Checkpoint: &rekorpb.Checkpoint{Envelope: "o\n1\nAAAA\n\n\u2014 o sig\n"}},
		CanonicalizedBody: []byte("{}"),
	}}
	b.VerificationMaterial.TimestampVerificationData = &bundlepb.TimestampVerificationData{
		Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: []byte("ts")}},
	}
	out, err := attest.MarshalBundle(b)
	require.NoError(t, err)
	require.Contains(t, string(out), `"tlogEntries":[{"logIndex":"0",`)
	require.Contains(t, string(out), `"hashes":[]`)
	back, err := attest.ParseBundle(out)
	require.NoError(t, err)
	require.True(t, proto.Equal(b, back))
}
