package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/attest"
)

func TestPAE(t *testing.T) {
	for _, tc := range []struct {
		name        string
		payloadType string
		payload     []byte
		want        string
	}{
		// The test vector from the DSSE protocol spec.
		{"spec vector", "http://example.com/HelloWorld", []byte("hello world"),
			"DSSEv1 29 http://example.com/HelloWorld 11 hello world"},
		{"empty", "", nil, "DSSEv1 0  0 "},
		{"in-toto", "application/vnd.in-toto+json", []byte(`{"a":1}`),
			"DSSEv1 28 application/vnd.in-toto+json 7 {\"a\":1}"},
		{"binary payload", "t", []byte{0, ' ', 0xff}, "DSSEv1 1 t 3 \x00 \xff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := attest.PAE(tc.payloadType, tc.payload)
			require.Equal(t, tc.want, string(got))
			// And it agrees with go-securesystemslib's implementation.
			require.Equal(t, dsse.PAE(tc.payloadType, tc.payload), got)
		})
	}
}

func TestSignAndVerifyEnvelope(t *testing.T) {
	pki := newTestPKI(t)
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)

	payload := []byte(`{"_type":"https://in-toto.io/Statement/v1"}`)
	env, err := attest.SignEnvelope(payload, pki.signer)
	require.NoError(t, err)
	require.Equal(t, attest.PayloadType, env.GetPayloadType())
	require.Equal(t, payload, env.GetPayload())
	require.Len(t, env.GetSignatures(), 1)
	require.Empty(t, env.GetSignatures()[0].GetKeyid())

	got, err := attest.VerifyEnvelope(env, pki.leaf.PublicKey)
	require.NoError(t, err)
	require.Equal(t, payload, got)

	for _, tc := range []struct {
		name    string
		mutate  func(*dssepb.Envelope)
		pub     crypto.PublicKey
		wantErr string
	}{
		{"wrong key", nil, &other.PublicKey, "does not verify"},
		{"p384 key", nil, &p384.PublicKey, "want P-256"},
		{"nil key", nil, nil, "want an ECDSA P-256 key"},
		{"payload changed", func(e *dssepb.Envelope) { e.Payload = append(e.Payload, ' ') }, pki.leaf.PublicKey, "does not verify"},
		{"payload type changed", func(e *dssepb.Envelope) { e.PayloadType = "text/plain" }, pki.leaf.PublicKey, "payload type"},
		{"signature flipped", func(e *dssepb.Envelope) { e.Signatures[0].Sig[10] ^= 1 }, pki.leaf.PublicKey, "does not verify"},
		{"no signatures", func(e *dssepb.Envelope) { e.Signatures = nil }, pki.leaf.PublicKey, "0 signatures"},
		{"two signatures", func(e *dssepb.Envelope) {
			e.Signatures = append(e.Signatures, e.Signatures[0])
		}, pki.leaf.PublicKey, "2 signatures"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := proto.Clone(env).(*dssepb.Envelope)
			if tc.mutate != nil {
				tc.mutate(e)
			}
			_, err := attest.VerifyEnvelope(e, tc.pub)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}

	t.Run("nil envelope", func(t *testing.T) {
		_, err := attest.VerifyEnvelope(nil, pki.leaf.PublicKey)
		require.ErrorContains(t, err, "nil envelope")
	})
}

func TestSignEnvelopeErrors(t *testing.T) {
	pki := newTestPKI(t)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		signer  crypto.Signer
		wantErr string
	}{
		{"nil signer", nil, "nil signer"},
		{"p224 signer", p224, "want P-256"},
		{"raw r||s signer", rawSigner{pki.signer}, "not ASN.1 DER"},
		{"failing signer", failingSigner{pki.signer}, "hsm unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := attest.SignEnvelope([]byte("{}"), tc.signer)
			require.ErrorContains(t, err, tc.wantErr)
			require.Nil(t, env)
		})
	}
}
