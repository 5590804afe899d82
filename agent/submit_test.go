package agent

import (
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	commonpb "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func TestLoggedMaterialMatchesProtojson(t *testing.T) {
	tlog := []byte(` {"logIndex":"7","logId":{"keyId":"AQI="},"kindVersion":{"kind":"dsse","version":"0.0.2"},"integratedTime":"1700000000","canonicalizedBody":"e30="}` + "\n")
	ts := []byte{0x30, 0x82, 0x01, 0xff, 0xfe}
	got, err := loggedMaterial(tlog, ts)
	require.NoError(t, err)

	var e rekorpb.TransparencyLogEntry
	require.NoError(t, protojson.Unmarshal(tlog, &e))
	want := &bundlepb.VerificationMaterial{
		TlogEntries: []*rekorpb.TransparencyLogEntry{&e},
		TimestampVerificationData: &bundlepb.TimestampVerificationData{
			Rfc3161Timestamps: []*commonpb.RFC3161SignedTimestamp{{SignedTimestamp: ts}},
		},
	}
	var m bundlepb.VerificationMaterial
	require.NoError(t, protojson.Unmarshal(got, &m), "%s", got)
	require.True(t, proto.Equal(want, &m), "%s", got)

	// What withLogged merges it into.
	bundle := []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AQID"}},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"BAU="}]}}`)
	merged, err := withLogged(bundle, got)
	require.NoError(t, err)
	var b bundlepb.Bundle
	require.NoError(t, protojson.Unmarshal(merged, &b))
	require.True(t, proto.Equal(&e, b.GetVerificationMaterial().GetTlogEntries()[0]))
	require.Equal(t, ts, b.GetVerificationMaterial().GetTimestampVerificationData().GetRfc3161Timestamps()[0].GetSignedTimestamp())

	for _, bad := range [][]byte{nil, []byte(`{"logIndex":`), []byte(`[]`), []byte(`{"nope":1}`)} {
		_, err := loggedMaterial(bad, ts)
		require.Error(t, err, "%q", bad)
	}
	_, err = loggedMaterial(tlog, nil)
	require.Error(t, err)
}
