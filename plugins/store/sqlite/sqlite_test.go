package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/internal/privdir"
	"github.com/hallmark-dev/hallmark/plugins/store"
	"github.com/hallmark-dev/hallmark/plugins/store/storetest"
)

func openTest(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Path: path})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func(t *testing.T) storetest.Store {
		path := filepath.Join(t.TempDir(), "db", "hallmark.db")
		return func(t *testing.T) storetest.Store { return openTest(t, path) }
	})
}

func TestPersistenceAndPermissions(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "hallmark.db")

	_, err := Open(ctx, Config{Path: path, MustExist: true})
	require.ErrorContains(t, err, "does not exist")
	_, err = Open(ctx, Config{Path: "relative.db"})
	require.ErrorContains(t, err, "absolute")

	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: storetest.Checkpoint(0)}))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{storetest.Entry(0)}, Checkpoint: storetest.Checkpoint(1)}))

	for name, want := range map[string]os.FileMode{dir: 0o700, path: 0o600, path + "-wal": 0o600, path + "-shm": 0o600} {
		info, err := os.Stat(name)
		require.NoError(t, err, name)
		require.Equal(t, want, info.Mode().Perm(), name)
	}
	var mode string
	require.NoError(t, s.w.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.Equal(t, "wal", mode)
	require.NoError(t, s.Close())

	// Loose permissions are tightened on open.
	require.NoError(t, os.Chmod(path, 0o644))
	s, err = Open(ctx, Config{Path: path, MustExist: true})
	require.NoError(t, err)
	defer s.Close()
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), cp.Size)

	// A directory others could rename the database out of is refused.
	require.NoError(t, os.Chmod(dir, 0o777))
	defer os.Chmod(dir, 0o700) //nolint:errcheck // best effort
	_, err = Open(ctx, Config{Path: path, MustExist: true})
	require.ErrorIs(t, err, privdir.ErrNotPrivate)
	require.ErrorContains(t, err, "sqlite: "+dir+" is writable by others: they could put a database of their own in its place")
}
