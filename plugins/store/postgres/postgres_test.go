package postgres

import (
	"context"
	"errors"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

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

// Through a transaction-mode pooler (PgBouncer) statements cannot be
// prepared: the simple protocol, which interpolates arguments, must do.
func TestContractSimpleProtocol(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func(t *testing.T) storetest.Store {
		dsn := pgtest.NewSchema(t) + " default_query_exec_mode=simple_protocol"
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

// Appends whose context ends at any point (before, during or after the
// pipelined transaction) commit all of their batch or nothing, and leave
// the store usable and the log linear. An append cut short once the
// server had its whole pipeline may still commit after AppendBatch
// returned (as any commit whose answer is lost): the next append then
// fails with store.ErrConflict, which the log answers by reloading the
// tree (server.TransparencyLog.commit), and nothing else.
func TestCancelledAppendsAreAllOrNothing(t *testing.T) {
	bg := context.Background()
	name := "cancelled-appends-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	dsn := pgtest.WithParam(pgtest.NewSchema(t), "application_name", name)
	s := openTest(t, dsn)
	began := time.Now()
	require.NoError(t, s.AppendBatch(bg, store.Batch{Checkpoint: storetest.Checkpoint(0)}))
	took := time.Since(began) // deadlines fall before, within and after an append's usual time
	var attempts [][][]byte   // the dedupe keys of each attempt
	failed, conflicts := 0, 0
	for a := range 40 {
		cp, err := s.LatestCheckpoint(bg)
		require.NoError(t, err)
		var b store.Batch
		var keys [][]byte
		for j := range 1 + a%17 {
			e := storetest.Entry(cp.Size + uint64(j))
			e.DedupeKey = storetest.HashOf("attempt", a, "entry", j)
			b.Entries = append(b.Entries, e)
			b.Nodes = append(b.Nodes, store.Node{NodeID: store.NodeID{Index: e.Index}, Hash: e.LeafHash})
			keys = append(keys, e.DedupeKey)
		}
		b.Checkpoint = storetest.Checkpoint(cp.Size + uint64(len(b.Entries)))
		attempts = append(attempts, keys)
		ctx, cancel := context.WithTimeout(bg, time.Duration(mathrand.Int64N(int64(3*took)+1)))
		if err := s.AppendBatch(ctx, b); err != nil {
			if errors.Is(err, store.ErrConflict) {
				require.NotZero(t, failed, "a conflict with no append cut short before it: %v", err)
				conflicts++
			} else {
				failed++
			}
		}
		cancel()
	}
	t.Logf("%d of %d appends cut short, %d refused after one that committed late", failed, len(attempts), conflicts)

	// Settled: every connection the store opened is gone, on the server
	// too, so no append of a cut-short call can still commit.
	s.Close()
	admin, err := pgx.Connect(bg, pgtest.NewSchema(t))
	require.NoError(t, err)
	defer admin.Close(bg)
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(bg, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, name).Scan(&n)
		return err == nil && n == 0
	}, 30*time.Second, 10*time.Millisecond, "the store's connections outlive it")
	s = openTest(t, dsn)

	var total uint64
	for a, keys := range attempts {
		found, err := s.EntriesByDedupeKey(bg, keys)
		require.NoError(t, err)
		require.Contains(t, []int{0, len(keys)}, len(found), "attempt %d: %d of %d entries", a, len(found), len(keys))
		total += uint64(len(found))
	}
	cp, err := s.LatestCheckpoint(bg)
	require.NoError(t, err)
	require.Equal(t, total, cp.Size)
	var entries int
	require.NoError(t, s.pool.QueryRow(bg, `SELECT count(*) FROM entries WHERE idx < $1`, int64(total)).Scan(&entries))
	require.Equal(t, int(total), entries, "no gaps")
	require.NoError(t, s.AppendBatch(bg, store.Batch{Entries: []store.Entry{storetest.Entry(total)}, Checkpoint: storetest.Checkpoint(total + 1)}))
}
