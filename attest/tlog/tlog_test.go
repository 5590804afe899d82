package tlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	rekortilespb "github.com/sigstore/rekor-tiles/v2/pkg/generated/protobuf"
	"github.com/sigstore/rekor-tiles/v2/pkg/types/hashedrekord"
	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func TestBodyRoundTrip(t *testing.T) {
	env := &dssepb.Envelope{Payload: []byte("{}"), PayloadType: "application/vnd.in-toto+json", Signatures: []*dssepb.Signature{{Sig: []byte("sig")}}}
	cert := []byte("cert")
	b, err := NewBody(env, cert)
	require.NoError(t, err)
	pae := sha256.Sum256([]byte("DSSEv1 28 application/vnd.in-toto+json 2 {}"))
	require.Equal(t, `{"apiVersion":"0.0.2","kind":"hashedrekord","spec":{"hashedRekordV002":{"data":{"algorithm":"SHA2_256",`+
		`"digest":"`+base64.StdEncoding.EncodeToString(pae[:])+`"},"signature":{"content":"c2ln","verifier":`+
		`{"keyDetails":"PKIX_ECDSA_P256_SHA_256","x509Certificate":{"rawBytes":"Y2VydA=="}}}}}}`, string(b))
	body, err := ParseBody(b)
	require.NoError(t, err)
	require.False(t, body.Legacy())
	require.NoError(t, body.Matches(env, cert))

	tampered := &dssepb.Envelope{Payload: []byte("{ }"), PayloadType: env.PayloadType, Signatures: env.Signatures}
	require.ErrorContains(t, body.Matches(tampered, cert), "another payload")
	otherType := &dssepb.Envelope{Payload: env.Payload, PayloadType: "text/plain", Signatures: env.Signatures}
	require.ErrorContains(t, body.Matches(otherType, cert), "another payload or payload type")
	require.ErrorContains(t, body.Matches(env, []byte("other")), "another certificate")
	require.ErrorContains(t, body.Matches(env2sig(env, "other"), cert), "another signature")
	_, err = ParseBody([]byte(`{"kind":"x","apiVersion":"0.0.2"}`))
	require.Error(t, err)
	_, err = ParseBody(append(b[:len(b)-1], []byte(`,"extra":1}`)...))
	require.Error(t, err)
	_, err = ParseBody([]byte(`{"apiVersion":"0.0.2","kind":"hashedrekord","spec":{}}`))
	require.Error(t, err, "no spec")
}

func TestLegacyBody(t *testing.T) {
	env := &dssepb.Envelope{Payload: []byte("{}"), PayloadType: "application/vnd.in-toto+json", Signatures: []*dssepb.Signature{{Sig: []byte("sig")}}}
	cert := []byte("cert")
	b, err := NewLegacyBody(env, cert)
	require.NoError(t, err)
	// What logs wrote before hashedrekord, byte for byte.
	require.Equal(t, `{"apiVersion":"0.0.2","kind":"dsse","spec":{"dsseV002":{"payloadHash":{"algorithm":"SHA2_256",`+
		`"digest":"RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="},"signatures":[{"content":"c2ln","verifier":`+
		`{"keyDetails":"PKIX_ECDSA_P256_SHA_256","x509Certificate":{"rawBytes":"Y2VydA=="}}}]}}}`, string(b))
	body, err := ParseBody(b)
	require.NoError(t, err)
	require.True(t, body.Legacy())
	require.NoError(t, body.Matches(env, cert))
	tampered := &dssepb.Envelope{Payload: []byte("{ }"), PayloadType: env.PayloadType, Signatures: env.Signatures}
	require.ErrorContains(t, body.Matches(tampered, cert), "another payload")
	require.ErrorContains(t, body.Matches(env2sig(env, "other"), cert), "another signature")
	// A body may not carry both specs.
	_, err = ParseBody([]byte(`{"apiVersion":"0.0.2","kind":"dsse","spec":{"dsseV002":{"payloadHash":{"algorithm":"SHA2_256","digest":"RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="},"signatures":[{"content":"c2ln","verifier":{"keyDetails":"PKIX_ECDSA_P256_SHA_256","x509Certificate":{"rawBytes":"Y2VydA=="}}}]},"hashedRekordV002":{"data":{"algorithm":"SHA2_256","digest":"RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="},"signature":{"content":"c2ln","verifier":{"keyDetails":"PKIX_ECDSA_P256_SHA_256","x509Certificate":{"rawBytes":"Y2VydA=="}}}}}}`))
	require.Error(t, err)
}

// The body is byte for byte what rekor-tiles (and so sigstore-go, which
// rebuilds it from a bundle) computes for a DSSE envelope signed by an
// ECDSA P-256 certificate.
func TestBodyIsRekorTilesHashedRekord(t *testing.T) {
	env := &dssepb.Envelope{Payload: []byte(`{"_type":"https://in-toto.io/Statement/v1"}`), PayloadType: "application/vnd.in-toto+json",
		Signatures: []*dssepb.Signature{{Sig: []byte("a signature, any bytes")}}}
	cert := []byte("certificate DER, any bytes")
	b, err := NewBody(env, cert)
	require.NoError(t, err)
	digest := SignedDigest(env)
	want, err := hashedrekord.ToEntryHash(digest[:], &rekortilespb.Signature{
		Content: env.Signatures[0].Sig,
		Verifier: &rekortilespb.Verifier{
			Verifier:   &rekortilespb.Verifier_X509Certificate{X509Certificate: &protocommon.X509Certificate{RawBytes: cert}},
			KeyDetails: protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256,
		},
	})
	require.NoError(t, err)
	require.Equal(t, want, LeafHash(b))
}

// The log ID is the C2SP key ID whose first four bytes are the key hint
// of the checkpoint's signature line.
func TestKeyID(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	origin := "hallmark.example.org"
	id := KeyID(origin, pub)
	require.Len(t, id, 32)
	signed, err := SignCheckpoint(Checkpoint{Origin: origin, Size: 1, Root: make([]byte, 32)}, priv)
	require.NoError(t, err)
	line := string(signed[bytes.LastIndex(signed, []byte("\u2014 ")):])
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.Fields(line)[2]))
	require.NoError(t, err)
	require.Equal(t, id[:4], sig[:4])
	require.NotEqual(t, id, KeyID("other.example.org", pub), "the origin is part of the ID")
	legacy, err := LegacyLogID(pub)
	require.NoError(t, err)
	require.NotEqual(t, id, legacy)
}

// MarshalEntry is protojson's encoding with the zero members strict
// parsers require: logIndex 0 and an empty hashes list.
func TestMarshalEntry(t *testing.T) {
	e := &rekorpb.TransparencyLogEntry{
		LogIndex:    0,
		LogId:       &protocommon.LogId{KeyId: []byte{1, 2, 3}},
		KindVersion: &rekorpb.KindVersion{Kind: EntryKind, Version: EntryVersion},
		InclusionProof: &rekorpb.InclusionProof{
			LogIndex: 0, RootHash: make([]byte, 32), TreeSize: 1,
			Checkpoint: &rekorpb.Checkpoint{Envelope: "o\n1\nAAAA\n\n\u2014 o sig\n"},
		},
		CanonicalizedBody: []byte(`{"kind":"hashedrekord"}`),
	}
	out, err := MarshalEntry(e)
	require.NoError(t, err)
	var generic map[string]any
	require.NoError(t, json.Unmarshal(out, &generic))
	require.Equal(t, "0", generic["logIndex"])
	proofJSON := generic["inclusionProof"].(map[string]any)
	require.Equal(t, "0", proofJSON["logIndex"])
	require.Equal(t, []any{}, proofJSON["hashes"])
	require.NotContains(t, generic, "integratedTime")

	var back rekorpb.TransparencyLogEntry
	require.NoError(t, protojson.UnmarshalOptions{}.Unmarshal(out, &back))
	require.True(t, proto.Equal(e, &back), "protojson reads what MarshalEntry wrote")

	e.LogIndex, e.InclusionProof.LogIndex, e.InclusionProof.TreeSize = 6, 6, 9
	e.InclusionProof.Hashes = [][]byte{{1}, {2}}
	e.IntegratedTime = 17
	e.InclusionPromise = &rekorpb.InclusionPromise{SignedEntryTimestamp: []byte("set")}
	out, err = MarshalEntry(e)
	require.NoError(t, err)
	want, err := protojson.Marshal(e)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(out), "otherwise the same as protojson")
}

func TestCheckpointSignAndOpen(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	root := make([]byte, 32)
	cp := Checkpoint{Origin: "hallmark.example/log", Size: 42, Root: root}
	signed, err := SignCheckpoint(cp, priv)
	require.NoError(t, err)
	got, err := OpenCheckpoint(signed, cp.Origin, pub)
	require.NoError(t, err)
	require.Equal(t, cp, got)

	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	_, err = OpenCheckpoint(signed, cp.Origin, otherPub)
	require.Error(t, err, "another key")
	_, err = OpenCheckpoint(signed, "other.example/log", pub)
	require.Error(t, err, "another origin")
}

func TestInclusionAndConsistency(t *testing.T) {
	var leaves [][]byte
	rf := compact.RangeFactory{Hash: Hasher.HashChildren}
	tree := rf.NewEmptyRange(0)
	for i := range 13 {
		leaves = append(leaves, LeafHash([]byte{byte(i)}))
		require.NoError(t, tree.Append(leaves[i], nil))
	}
	root, err := tree.GetRootHash(nil)
	require.NoError(t, err)
	nodes, err := proof.Inclusion(5, 13)
	require.NoError(t, err)
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		hashes[i] = subtree(t, leaves, id)
	}
	hashes, err = nodes.Rehash(hashes, Hasher.HashChildren)
	require.NoError(t, err)
	require.NoError(t, VerifyInclusion(5, 13, leaves[5], hashes, root))
	require.Error(t, VerifyInclusion(6, 13, leaves[5], hashes, root))
}

func env2sig(env *dssepb.Envelope, sig string) *dssepb.Envelope {
	return &dssepb.Envelope{Payload: env.Payload, PayloadType: env.PayloadType, Signatures: []*dssepb.Signature{{Sig: []byte(sig)}}}
}

// subtree computes the hash of the perfect subtree id from leaves.
func subtree(t *testing.T, leaves [][]byte, id compact.NodeID) []byte {
	t.Helper()
	begin, end := id.Coverage()
	var mth func(l [][]byte) []byte
	mth = func(l [][]byte) []byte {
		if len(l) == 1 {
			return l[0]
		}
		return Hasher.HashChildren(mth(l[:len(l)/2]), mth(l[len(l)/2:]))
	}
	return mth(leaves[begin:end])
}

// FuzzParseBody: entry bodies come from bundles and from the store; a
// body that parses round-trips through Matches without panicking, and
// NewBody's output always parses.
func FuzzParseBody(f *testing.F) {
	env := &dssepb.Envelope{Payload: []byte("{}"), PayloadType: "application/vnd.in-toto+json", Signatures: []*dssepb.Signature{{Sig: []byte("sig")}}}
	good, err := NewBody(env, []byte("cert"))
	require.NoError(f, err)
	f.Add(good)
	legacy, err := NewLegacyBody(env, []byte("cert"))
	require.NoError(f, err)
	f.Add(legacy)
	f.Add([]byte(`{"apiVersion":"0.0.2","kind":"dsse","spec":{}}`))
	f.Add([]byte(`{"apiVersion":"0.0.2","kind":"hashedrekord","spec":{"hashedRekordV002":{}}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBody(data)
		if err != nil {
			return
		}
		if b.Kind != EntryKind && b.Kind != LegacyEntryKind {
			t.Fatalf("accepted kind %q", b.Kind)
		}
		_ = b.Matches(env, []byte("cert"))
	})
}

// FuzzCheckpoint: checkpoints arrive in bundles and over HTTP.
func FuzzCheckpoint(f *testing.F) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(f, err)
	signed, err := SignCheckpoint(Checkpoint{Origin: "hallmark.example.org", Size: 3, Root: make([]byte, 32)}, priv)
	require.NoError(f, err)
	f.Add(signed)
	f.Fuzz(func(t *testing.T, data []byte) {
		if cp, err := OpenCheckpoint(data, "hallmark.example.org", pub); err == nil && len(cp.Root) != 32 {
			t.Fatalf("accepted a root of %d bytes", len(cp.Root))
		}
		ParseCheckpoint(string(data)) //nolint:errcheck // must not panic
	})
}
