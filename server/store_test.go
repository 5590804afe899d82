package server

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseConfigPostgresStore(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, block string
		wantErr     []string
	}{
		{name: "neither dsn nor dsn_env", block: `store "postgres" {}`, wantErr: []string{`store "postgres"`, "exactly one of dsn and dsn_env"}},
		{name: "both", block: `store "postgres" {
  dsn     = "host=/run/postgresql dbname=hallmark"
  dsn_env = "HALLMARK_PG_DSN"
}`, wantErr: []string{"exactly one of dsn and dsn_env"}},
		{name: "unparsable dsn keeps its password to itself", block: `store "postgres" { dsn = "postgres://hallmark:s3cret@db:notaport/hallmark" }`, wantErr: []string{"dsn: "}},
		{name: "unknown key", block: `store "postgres" { url = "x" }`, wantErr: []string{`"url"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)+tt.block), noEnv)
			require.Error(t, err)
			for _, want := range tt.wantErr {
				require.ErrorContains(t, err, want)
			}
			require.NotContains(t, err.Error(), "s3cret")
		})
	}

	c, err := ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)+`store "postgres" { dsn_env = "HALLMARK_TEST_UNSET_PG_DSN" }`), noEnv)
	require.NoError(t, err)
	require.Equal(t, "postgres", c.Store.Name)
	_, err = c.Store.open(context.Background(), storeOptions{})
	require.ErrorContains(t, err, "HALLMARK_TEST_UNSET_PG_DSN is not set")

	c, err = ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)+`store "postgres" { dsn = "host=/nonexistent port=1 user=hallmark password=s3cret dbname=hallmark connect_timeout=1" }`), noEnv)
	require.NoError(t, err)
	_, err = c.Store.open(context.Background(), storeOptions{})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cret")
}
