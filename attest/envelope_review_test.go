package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"reflect"
	"testing"
	"time"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
)

// Review: UnmarshalEnvelope must return, field for field, what protojson returns.
func TestReviewUnmarshalEnvelopeDeepEqual(t *testing.T) {
	for _, in := range []string{
		`{"payload":"","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":""}]}`,
		`{"payload":"AA==","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AB=="}]}`,
		`{"payload":"AAB=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"////"}]}`,
	} {
		want := &dssepb.Envelope{}
		require.NoError(t, protojson.Unmarshal([]byte(in), want))
		got, ok := envelopeFast([]byte(in))
		require.True(t, ok)
		t.Logf("%q: protojson payload nil=%v sig nil=%v; fast payload nil=%v sig nil=%v", in, want.Payload == nil, want.Signatures[0].Sig == nil, got.Payload == nil, got.Signatures[0].Sig == nil)
		require.True(t, reflect.DeepEqual(want.Payload, got.Payload), "payload %#v vs %#v", want.Payload, got.Payload)
		require.True(t, reflect.DeepEqual(want.Signatures[0].Sig, got.Signatures[0].Sig))
	}
}

// Review: every payload/sig string over a small alphabet, lengths 0..8.
func TestReviewUnmarshalEnvelopeExhaustive(t *testing.T) {
	alpha := []byte("AQw/+=")
	var strs []string
	var gen func(prefix []byte, n int)
	gen = func(prefix []byte, n int) {
		strs = append(strs, string(prefix))
		if n == 0 {
			return
		}
		for _, c := range alpha {
			gen(append(prefix, c), n-1)
		}
	}
	gen(nil, 6)
	fast := 0
	for _, s := range strs {
		for _, sig := range []string{"", "AQ==", s} {
			in := []byte(`{"payload":"` + s + `","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"` + sig + `"}]}`)
			if checkEnvelopeAgrees(t, in) {
				fast++
			}
		}
	}
	t.Logf("%d strings, %d read by the fast path", len(strs), fast)
}

// Review: the bundles SignWith writes, with a timestamp, are sliced into the fast form.
func TestReviewSignWithTimestampFast(t *testing.T) {
	key, leaf := reviewKey(t)
	bundle, err := SignWith(fullStep(), key, leaf, SignOptions{Timestamp: func([]byte) ([]byte, error) { return []byte{0x30, 0x03, 0x02, 0x01, 0x00}, nil }, MaxTimestampSize: 1 << 10})
	require.NoError(t, err)
	env, err := BundleEnvelope(bundle)
	require.NoError(t, err)
	_, fast := envelopeFast(env)
	require.True(t, fast, "%s", bundle)
}

func reviewKey(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return key, leaf
}
