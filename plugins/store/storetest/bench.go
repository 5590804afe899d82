package storetest

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/hallmark-dev/hallmark/plugins/store"
)

// BenchmarkAppendBatch appends batches of entries shaped like the log's
// (a 3 KiB envelope, a 600-byte certificate, a timestamp, one subject
// digest, two tree nodes per entry) to a fresh store from open; ns/op is
// per entry.
func BenchmarkAppendBatch(b *testing.B, open func(b *testing.B) Store) {
	for _, size := range []int{1, 64, 512} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			ctx := context.Background()
			s := open(b)
			defer s.Close()
			if err := s.AppendBatch(ctx, store.Batch{Checkpoint: store.Checkpoint{Size: 0, Note: []byte("n")}}); err != nil {
				b.Fatal(err)
			}
			envelope, cert, timestamp := randomBytes(3072), randomBytes(600), randomBytes(1200)
			next := uint64(0)
			b.ResetTimer()
			for done := 0; done < b.N; {
				var batch store.Batch
				for range min(size, b.N-done) {
					batch.Entries = append(batch.Entries, store.Entry{
						Index: next, LeafHash: randomBytes(32), DedupeKey: randomBytes(32), Body: randomBytes(330),
						Envelope: envelope, Certificate: cert, SPIFFEID: "spiffe://example.org/hallmark/agent/runner-1",
						IntegratedTime: 1700000000, Timestamp: timestamp, SubjectDigests: [][]byte{randomBytes(32)},
					})
					batch.Nodes = append(batch.Nodes,
						store.Node{NodeID: store.NodeID{Level: 0, Index: next}, Hash: randomBytes(32)},
						store.Node{NodeID: store.NodeID{Level: 1 + uint(next%20), Index: next}, Hash: randomBytes(32)})
					next++
					done++
				}
				batch.Checkpoint = store.Checkpoint{Size: next, Note: randomBytes(200)}
				if err := s.AppendBatch(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) //nolint:errcheck // never fails
	return b
}
