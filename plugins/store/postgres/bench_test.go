package postgres

import (
	"context"
	"testing"

	"github.com/hallmark-dev/hallmark/plugins/store/storetest"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// BenchmarkAppendBatch: see storetest.BenchmarkAppendBatch. The test
// binary's server runs without fsync: this measures the store, not the
// disk (hallmark-bench's logappend-postgres figure measures both).
func BenchmarkAppendBatch(b *testing.B) {
	storetest.BenchmarkAppendBatch(b, func(b *testing.B) storetest.Store {
		s, err := Open(context.Background(), Config{DSN: pgtest.NewSchema(b)})
		if err != nil {
			b.Fatal(err)
		}
		return s
	})
}
