package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewSchema(t *testing.T) {
	ctx := context.Background()
	dsn := NewSchema(t)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE TABLE x (v INTEGER)`)
	require.NoError(t, err)
	var schema string
	require.NoError(t, conn.QueryRow(ctx, `SELECT table_schema FROM information_schema.tables WHERE table_name = 'x'`).Scan(&schema))
	require.Regexp(t, `^t_[0-9a-f]{12}$`, schema)
}

func TestWithSearchPath(t *testing.T) {
	require.Equal(t, "host=/tmp dbname=x search_path=s", WithParam("host=/tmp dbname=x", "search_path", "s"))
	require.Equal(t, "postgres://h/db?sslmode=disable&search_path=s", WithParam("postgres://h/db?sslmode=disable", "search_path", "s"))
	require.Equal(t, "postgres://h/db?search_path=s", WithParam("postgres://h/db", "search_path", "s"))
}

func TestBinDirMissingSaysHowToInstall(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	defer func(d string) { debianDir = d }(debianDir)
	debianDir = t.TempDir()
	_, err := BinDir()
	require.ErrorContains(t, err, "test/scripts/install-postgres.sh")
	require.ErrorContains(t, err, DSNEnv)
}
