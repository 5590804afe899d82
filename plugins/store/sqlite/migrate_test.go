package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// schemaV1 is the entries table as schema version 1 made it.
const schemaV1 = `
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (name, value) VALUES ('schema_version', '1');
CREATE TABLE entries (
  idx             INTEGER PRIMARY KEY,
  leaf_hash       BLOB    NOT NULL,
  dedupe_key      BLOB    NOT NULL UNIQUE,
  body            BLOB    NOT NULL,
  envelope        BLOB    NOT NULL,
  certificate     BLOB    NOT NULL,
  spiffe_id       TEXT    NOT NULL,
  integrated_time INTEGER NOT NULL
);
INSERT INTO entries VALUES (0, x'01', x'02', 'body', '{}', 'der', 'spiffe://example.org/a', 1700000000);
`

func TestMigrateFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hallmark.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	_, err = db.Exec(schemaV1)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	got, err := s.EntriesByDedupeKey(ctx, [][]byte{{0x02}})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, "body", string(got[0].Body), "a version 1 entry survives")
	require.Empty(t, got[0].Timestamp, "and has no timestamp")

	var v string
	require.NoError(t, s.w.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'schema_version'`).Scan(&v))
	require.Equal(t, schemaVersion, v)
	require.NoError(t, s.Close())

	// Reopening a migrated database changes nothing.
	s, err = Open(ctx, Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

func TestRefuseNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hallmark.db")
	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	_, err = s.w.ExecContext(ctx, `UPDATE meta SET value = '99' WHERE name = 'schema_version'`)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	_, err = Open(ctx, Config{Path: path})
	require.ErrorContains(t, err, "schema version 99")
}
