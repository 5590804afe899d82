package postgres

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/plugins/store/storetest"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func openTest(t *testing.T, dsn string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{DSN: dsn})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func(t *testing.T) storetest.Store {
		dsn := pgtest.NewSchema(t)
		return func(t *testing.T) storetest.Store { return openTest(t, dsn) }
	})
}
