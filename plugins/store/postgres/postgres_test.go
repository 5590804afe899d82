package postgres

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/plugins/store"
	"github.com/hallmark-dev/hallmark/plugins/store/migrate"
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

func schemaVersions(t *testing.T, s *Store) []int {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT version FROM schema_migrations ORDER BY version`)
	require.NoError(t, err)
	v, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	return v
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	known := Migrations()
	require.Equal(t, "0001_init", known[0].Name)

	t.Run("from empty, by several servers at once", func(t *testing.T) {
		dsn := pgtest.NewSchema(t)
		var wg sync.WaitGroup
		stores := make([]*Store, 4)
		errs := make([]error, 4)
		for i := range stores {
			wg.Go(func() { stores[i], errs[i] = Open(ctx, Config{DSN: dsn}) })
		}
		wg.Wait()
		for i, s := range stores {
			require.NoError(t, errs[i])
			t.Cleanup(func() { s.Close() })
		}
		want := make([]int, len(known))
		for i := range want {
			want[i] = i + 1
		}
		require.Equal(t, want, schemaVersions(t, stores[0]))
	})

	t.Run("from the previous version", func(t *testing.T) {
		// A database made by the binary before the last migration, with
		// a log in it, then opened by this one; and then a next
		// migration on top of this binary's schema, keeping the data.
		dsn := pgtest.NewSchema(t)
		s := &Store{pool: openPool(t, dsn)}
		require.NoError(t, s.init(ctx, false, known[:len(known)-1]))
		if len(known) == 1 { // the previous version is the empty database
			require.Equal(t, []int{}, schemaVersions(t, s))
		}
		s = openTest(t, dsn)
		require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: storetest.Checkpoint(0)}))
		require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{storetest.Entry(0)}, Checkpoint: storetest.Checkpoint(1)}))

		next := append(slices.Clone(known), migrate.Migration{Version: len(known) + 1, Name: "9999_next",
			SQL: "ALTER TABLE entries ADD COLUMN note TEXT;\nCREATE INDEX entries_spiffe_id ON entries (spiffe_id);"})
		s2 := &Store{pool: openPool(t, dsn)}
		require.NoError(t, s2.init(ctx, false, next))
		require.Len(t, schemaVersions(t, s2), len(next))
		require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{storetest.Entry(1)}, Checkpoint: storetest.Checkpoint(2)}))
		found, err := s.EntriesByDedupeKey(ctx, [][]byte{storetest.Entry(0).DedupeKey, storetest.Entry(1).DedupeKey})
		require.NoError(t, err)
		require.Len(t, found, 2)

		// This binary refuses the newer database, also read-only.
		_, err = Open(ctx, Config{DSN: dsn})
		require.ErrorContains(t, err, "newer than this binary knows")
		_, err = Open(ctx, Config{DSN: dsn, MustExist: true})
		require.ErrorContains(t, err, "newer than this binary knows")
	})

	t.Run("a failing migration applies nothing", func(t *testing.T) {
		dsn := pgtest.NewSchema(t)
		bad := append(slices.Clone(known), migrate.Migration{Version: len(known) + 1, Name: "9999_bad",
			SQL: "CREATE TABLE half_done (x INTEGER);\nSELECT no_such_function();"})
		s := &Store{pool: openPool(t, dsn)}
		require.ErrorContains(t, s.init(ctx, false, bad), "9999_bad")
		var tables int
		require.NoError(t, s.pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&tables))
		require.Zero(t, tables)
	})

	t.Run("must exist", func(t *testing.T) {
		dsn := pgtest.NewSchema(t)
		_, err := Open(ctx, Config{DSN: dsn, MustExist: true})
		require.ErrorContains(t, err, "no hallmark schema")
		s := &Store{pool: openPool(t, dsn)}
		require.NoError(t, s.init(ctx, false, known[:len(known)-1]))
		if len(known) > 1 {
			_, err = Open(ctx, Config{DSN: dsn, MustExist: true})
			require.ErrorContains(t, err, "migrates it")
		}
		openTest(t, dsn)
		s, err = Open(ctx, Config{DSN: dsn, MustExist: true})
		require.NoError(t, err)
		require.NoError(t, s.Close())
	})
}

func openPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func TestOpenErrorsKeepThePassword(t *testing.T) {
	ctx := context.Background()
	_, err := Open(ctx, Config{})
	require.ErrorContains(t, err, "dsn is required")
	for _, dsn := range []string{
		"postgres://hallmark:s3cret@127.0.0.1:1/hallmark?connect_timeout=2",
		"host=127.0.0.1 port=1 user=hallmark password=s3cret dbname=hallmark connect_timeout=2",
		"postgres://hallmark:s3cret@db:notaport/hallmark",
	} {
		_, err := Open(ctx, Config{DSN: dsn})
		require.Error(t, err)
		require.NotContains(t, err.Error(), "s3cret")
		if err := CheckDSN(dsn); err != nil {
			require.NotContains(t, err.Error(), "s3cret")
		}
	}
	require.NoError(t, CheckDSN("host=/run/postgresql dbname=hallmark"))
}

func TestSearchPathWithoutSchema(t *testing.T) {
	dsn := pgtest.NewSchema(t) + "_missing"
	_, err := Open(context.Background(), Config{DSN: dsn})
	require.ErrorContains(t, err, "search_path")
}
