package agent

import (
	"testing"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
)

func TestEnvelopeOfFastPathMatchesProtojson(t *testing.T) {
	bundle := []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AQID"}},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"BAU="}]}}`)
	fast, err := envelopeOf(bundle)
	require.NoError(t, err)
	var env dssepb.Envelope
	require.NoError(t, protojson.Unmarshal(fast, &env), "fast path yields a valid envelope: %s", fast)
	require.Equal(t, "e30=", string(fast[len(`{"payload":"`):len(`{"payload":"`)+4]))
	require.Equal(t, []byte("{}"), env.GetPayload())
	require.Equal(t, []byte{4, 5}, env.GetSignatures()[0].GetSig())

	// Any other layout goes through protojson.
	other := []byte(`{"dsseEnvelope":{"payloadType":"x","payload":"e30=","signatures":[{"sig":"BAU="}]},"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AQID"}}}`)
	slow, err := envelopeOf(other)
	require.NoError(t, err)
	require.NoError(t, protojson.Unmarshal(slow, &env))
	require.Equal(t, "x", env.GetPayloadType())
}
