package agent

import (
	"bytes"
	"testing"

	commonpb "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// BenchmarkLoggedMaterial turns a log entry the size of an attestation's
// (its body holds the envelope and certificate) into what the outbox keeps.
func BenchmarkLoggedMaterial(b *testing.B) {
	hashes := make([][]byte, 20)
	for i := range hashes {
		hashes[i] = bytes.Repeat([]byte{byte(i)}, 32)
	}
	tlog, err := protojson.Marshal(&rekorpb.TransparencyLogEntry{
		LogIndex: 123456, LogId: &commonpb.LogId{KeyId: bytes.Repeat([]byte{1}, 32)},
		KindVersion:    &rekorpb.KindVersion{Kind: "dsse", Version: "0.0.2"},
		IntegratedTime: 1700000000,
		InclusionProof: &rekorpb.InclusionProof{LogIndex: 123456, RootHash: hashes[0], TreeSize: 200000, Hashes: hashes,
			Checkpoint: &rekorpb.Checkpoint{Envelope: string(bytes.Repeat([]byte("c"), 300))}},
		CanonicalizedBody: bytes.Repeat([]byte{'x'}, 5000),
	})
	if err != nil {
		b.Fatal(err)
	}
	ts := bytes.Repeat([]byte{0x30}, 1200)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := loggedMaterial(tlog, ts); err != nil {
			b.Fatal(err)
		}
	}
}
