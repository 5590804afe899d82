package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/hallmark-dev/hallmark/plugins/store/storetest"
)

// BenchmarkAppendBatch: see storetest.BenchmarkAppendBatch; commits are
// fsync'd (synchronous=FULL).
func BenchmarkAppendBatch(b *testing.B) {
	storetest.BenchmarkAppendBatch(b, func(b *testing.B) storetest.Store {
		s, err := Open(context.Background(), Config{Path: filepath.Join(b.TempDir(), "hallmark.db")})
		if err != nil {
			b.Fatal(err)
		}
		return s
	})
}
