package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"strings"
	"testing"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// signedEnvelope returns the envelope of a bundle Sign wrote, as the
// agent submits it to the log: the bundle's last member, sliced out.
func signedEnvelope(tb testing.TB) []byte {
	tb.Helper()
	key, leaf := testKey(tb)
	bundle, err := Sign(fullStep(), key, leaf)
	require.NoError(tb, err)
	const member = `,"dsseEnvelope":`
	i := bytes.LastIndex(bundle, []byte(member))
	require.Positive(tb, i)
	return bundle[i+len(member) : len(bundle)-1]
}

// testKey is a P-256 key and a self-signed certificate for it.
func testKey(tb testing.TB) (*ecdsa.PrivateKey, *x509.Certificate) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(tb, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(tb, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(tb, err)
	return key, leaf
}

// checkEnvelopeAgrees requires UnmarshalEnvelope to return what
// protojson.Unmarshal returns for in, and reports whether the fast path
// read it.
func checkEnvelopeAgrees(t *testing.T, in []byte) (fast bool) {
	t.Helper()
	want := &dssepb.Envelope{}
	wantErr := protojson.Unmarshal(in, want)
	fastEnv, fast := envelopeFast(in)
	if fast {
		require.NoError(t, wantErr, "the fast path read what protojson refuses: %q", in)
		require.True(t, proto.Equal(want, fastEnv), "fast path and protojson differ on %q", in)
	}
	got, err := UnmarshalEnvelope(in)
	if wantErr != nil {
		require.EqualError(t, err, wantErr.Error())
		require.Nil(t, got)
		return fast
	}
	require.NoError(t, err)
	require.True(t, proto.Equal(want, got), "UnmarshalEnvelope and protojson differ on %q", in)
	return fast
}

func TestUnmarshalEnvelope(t *testing.T) {
	signed := signedEnvelope(t)
	reform := func(old, new string) []byte {
		require.Contains(t, string(signed), old)
		return []byte(strings.Replace(string(signed), old, new, 1))
	}
	// What protojson itself writes: spaces may come and go from one
	// build to the next (protobuf's detrand), so this may or may not be
	// the fast path's form.
	env := &dssepb.Envelope{}
	require.NoError(t, protojson.Unmarshal(signed, env))
	marshalled, err := protojson.Marshal(env)
	require.NoError(t, err)
	withKeyID := proto.Clone(env).(*dssepb.Envelope)
	withKeyID.Signatures[0].Keyid = "k"
	keyed, err := protojson.Marshal(withKeyID)
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		in   []byte
		fast bool
	}{
		{"as Sign writes it", signed, true},
		{"empty payload and signature", []byte(`{"payload":"","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":""}]}`), true},
		{"as protojson writes it", marshalled, bytes.Equal(marshalled, signed)},
		{"a key ID", keyed, false},
		{"members reordered", []byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"sig":"AQ=="}]}`), false},
		{"proto field names", reform(`"payloadType"`, `"payload_type"`), false},
		{"another payload type", reform(`"application/vnd.in-toto+json"`, `"text/plain"`), false},
		{"two signatures", reform(`"}]}`, `"},{"sig":"AQ=="}]}`), false},
		{"unpadded base64", []byte(`{"payload":"e30","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ"}]}`), false},
		{"URL-safe base64", []byte(`{"payload":"-_-_","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ=="}]}`), false},
		{"an escaped character", []byte(`{"payload":"e30\u003d","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ=="}]}`), false},
		{"a raw newline in a string", []byte("{\"payload\":\"e3\n0=\",\"payloadType\":\"application/vnd.in-toto+json\",\"signatures\":[{\"sig\":\"AQ==\"}]}"), false},
		{"padding inside", []byte(`{"payload":"e3==e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ=="}]}`), false},
		{"trailing space", append(bytes.Clone(signed), ' '), false},
		{"trailing garbage", append(bytes.Clone(signed), '}'), false},
		{"an unknown member", reform(`{"payload"`, `{"x":1,"payload"`), false},
		{"cut short", signed[:len(signed)-2], false},
		{"null", []byte(`null`), false},
		{"empty", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.fast, checkEnvelopeAgrees(t, tc.in))
		})
	}
}

func FuzzUnmarshalEnvelope(f *testing.F) {
	signed := signedEnvelope(f)
	f.Add(signed)
	f.Add(signed[:len(signed)/2])
	f.Add([]byte(`{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ=="}]}`))
	f.Add([]byte(`{"payload":"e30","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ"}]}`))
	f.Add([]byte(`{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ==","keyid":""}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		checkEnvelopeAgrees(t, in)
	})
}

// UnmarshalEnvelope agrees with protojson on every payload of up to five
// characters of the base64 alphabet, padding included, whatever the
// signature.
func TestUnmarshalEnvelopeShortStrings(t *testing.T) {
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
	gen(nil, 5)
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

// A bundle SignWith wrote with a timestamp gives BundleEnvelope the
// envelope in the form UnmarshalEnvelope reads directly.
func TestBundleEnvelopeOfSignWith(t *testing.T) {
	key, leaf := testKey(t)
	bundle, err := SignWith(fullStep(), key, leaf, SignOptions{Timestamp: func([]byte) ([]byte, error) { return []byte{0x30, 0x03, 0x02, 0x01, 0x00}, nil }, MaxTimestampSize: 1 << 10})
	require.NoError(t, err)
	env, err := BundleEnvelope(bundle)
	require.NoError(t, err)
	_, fast := envelopeFast(env)
	require.True(t, fast, "%s", bundle)
}

// BenchmarkUnmarshalEnvelope reads the envelope an agent submits to the
// log, against protojson.Unmarshal of the same bytes as the floor.
func BenchmarkUnmarshalEnvelope(b *testing.B) {
	in := signedEnvelope(b)
	b.Run("UnmarshalEnvelope", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			if _, err := UnmarshalEnvelope(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			if err := protojson.Unmarshal(in, &dssepb.Envelope{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestBundleEnvelope(t *testing.T) {
	signed := signedEnvelope(t)
	for _, tc := range []struct {
		name, bundle string
		want         []byte // nil: protojson's form of the same envelope
		payloadType  string
	}{
		{
			name:   "as Sign writes it: sliced out",
			bundle: `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AQID"}},"dsseEnvelope":` + string(signed) + `}`,
			want:   signed, payloadType: PayloadType,
		},
		{
			name:   "with a timestamp: sliced out",
			bundle: `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AQID"},"timestampVerificationData":{"rfc3161Timestamps":[{"signedTimestamp":"AQ=="}]}},"dsseEnvelope":` + string(signed) + `}`,
			want:   signed, payloadType: PayloadType,
		},
		{
			// The envelope is not the last member, yet the bundle ends as
			// if it were: the slice would run on into verificationMaterial.
			name:        "envelope not last, bundle ending in `\"}]}}`: through protojson",
			bundle:      `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQ=="}]},"verificationMaterial":{"publicKey":{"hint":"k"},"tlogEntries":[{"logIndex":"1","canonicalizedBody":"e30="}]}}`,
			payloadType: PayloadType,
		},
		{
			name:        "another layout: through protojson",
			bundle:      `{"dsseEnvelope":{"payloadType":"x","payload":"e30=","signatures":[{"sig":"BAU="}]},"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AQID"}}}`,
			payloadType: "x",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BundleEnvelope([]byte(tc.bundle))
			require.NoError(t, err)
			if tc.want != nil {
				require.Equal(t, string(tc.want), string(got))
			}
			env, err := UnmarshalEnvelope(got)
			require.NoError(t, err)
			require.Equal(t, tc.payloadType, env.GetPayloadType())
			var b bundlepb.Bundle
			require.NoError(t, protojson.Unmarshal([]byte(tc.bundle), &b))
			require.True(t, proto.Equal(b.GetDsseEnvelope(), env), "the bundle's own envelope")
		})
	}
	for _, bad := range []string{`{"mediaType":"x"}`, `{"dsseEnvelope":`, ``} {
		_, err := BundleEnvelope([]byte(bad))
		require.Error(t, err, bad)
	}
}
