package verify_test

import (
	"testing"
	"time"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

func TestParseTrustedRoot(t *testing.T) {
	h, err := verifytest.New(t0)
	require.NoError(t, err)
	tests := []struct {
		name   string
		change func(tr *trustrootpb.TrustedRoot)
		err    string
	}{
		{name: "as exported", change: func(*trustrootpb.TrustedRoot) {}},
		{name: "media type v0.2", change: func(tr *trustrootpb.TrustedRoot) {
			tr.MediaType = "application/vnd.dev.sigstore.trustedroot.v0.2+json"
		}},
		{name: "unknown media type", err: "media type", change: func(tr *trustrootpb.TrustedRoot) {
			tr.MediaType = "application/json"
		}},
		{name: "no CA", err: "no certificate authority", change: func(tr *trustrootpb.TrustedRoot) {
			tr.CertificateAuthorities = nil
		}},
		{name: "CA without validFor", err: "validFor has no start", change: func(tr *trustrootpb.TrustedRoot) {
			tr.CertificateAuthorities[0].ValidFor = nil
		}},
		{name: "CA validFor reversed: trusted never, but readable", change: func(tr *trustrootpb.TrustedRoot) {
			tr.CertificateAuthorities[0].ValidFor.End = timestamppb.New(t0.Add(-100 * time.Hour))
		}},
		{name: "CA certificate garbage", err: "certChain[0]", change: func(tr *trustrootpb.TrustedRoot) {
			tr.CertificateAuthorities[0].CertChain.Certificates[0].RawBytes = []byte("nope")
		}},
		{name: "CA chain empty", err: "empty certChain", change: func(tr *trustrootpb.TrustedRoot) {
			tr.CertificateAuthorities[0].CertChain = nil
		}},
		{name: "no log", err: "no transparency log", change: func(tr *trustrootpb.TrustedRoot) { tr.Tlogs = nil }},
		{name: "only a non-Ed25519 log", err: "no transparency log", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].PublicKey.KeyDetails = protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
		}},
		{name: "log ID not the key's", err: "not the ID of the log's key", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].LogId.KeyId = []byte("0123456789abcdef0123456789abcdef")
		}},
		{name: "legacy log ID (SHA-256 of the key's PKIX DER)", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].LogId.KeyId = h.Log.LegacyID()
		}},
		{name: "checkpointKeyId, 4 bytes", change: func(tr *trustrootpb.TrustedRoot) {
			tr.MediaType = "application/vnd.dev.sigstore.trustedroot.v0.2+json"
			tr.Tlogs[0].CheckpointKeyId = &protocommon.LogId{KeyId: h.Log.ID()[:4]}
		}},
		{name: "checkpointKeyId, whole", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].CheckpointKeyId = &protocommon.LogId{KeyId: h.Log.ID()}
		}},
		{name: "checkpointKeyId not the key's", err: "checkpointKeyId", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].CheckpointKeyId = &protocommon.LogId{KeyId: []byte{1, 2, 3, 4}}
		}},
		{name: "log ID under another origin", err: "not the ID of the log's key", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].BaseUrl = "https://other.example"
		}},
		{name: "log without baseUrl", err: "not an absolute URL", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].BaseUrl = ""
		}},
		{name: "log key garbage", err: "public key", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].PublicKey.RawBytes = []byte("nope")
		}},
		{name: "log hash SHA-384", err: "hash algorithm", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs[0].HashAlgorithm = protocommon.HashAlgorithm_SHA2_384
		}},
		{name: "log listed twice", err: "duplicate log ID", change: func(tr *trustrootpb.TrustedRoot) {
			tr.Tlogs = append(tr.Tlogs, tr.Tlogs[0])
		}},
		{name: "log key under a second origin", err: "its key is another log's too", change: func(tr *trustrootpb.TrustedRoot) {
			other := proto.Clone(tr.Tlogs[0]).(*trustrootpb.TransparencyLogInstance)
			other.BaseUrl, other.LogId, other.CheckpointKeyId = "https://other.example", nil, nil
			tr.Tlogs = append(tr.Tlogs, other)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := h.TrustedRoot()
			require.NoError(t, err)
			tc.change(tr)
			data, err := protojson.Marshal(tr)
			require.NoError(t, err)
			root, err := verify.ParseTrustedRoot(data)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.Nil(t, root)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, root)
		})
	}

	_, err = verify.ParseTrustedRoot([]byte(`{"mediaType":"application/vnd.dev.sigstore.trustedroot.v0.2+json","extra":1}`))
	require.ErrorContains(t, err, "unknown field")
	_, err = verify.NewTrustedRoot(nil)
	require.Error(t, err)
}
