package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/plugins/keymanager/local"
)

func noEnv(string) string { return "" }

// serverHCL is a server block with a trust domain and line.
func serverHCL(line string) string {
	return "server {\n  trust_domain = \"example.org\"\n  " + line + "\n}\n"
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig("server.hcl", []byte(`server { trust_domain = "example.org" }`), noEnv)
	require.NoError(t, err)

	require.NotNil(t, c.Log)
	require.Equal(t, exampleTD, c.TrustDomain)
	require.Equal(t, DefaultListenAddress, c.ListenAddress)
	require.Empty(t, c.HealthAddress)
	require.Equal(t, DefaultDataDir, c.DataDir)
	require.Equal(t, DefaultWorkloadAPISocket, c.WorkloadAPIAddr)
	require.Equal(t, DefaultAgentPathPrefix, c.AgentPathPrefix)
	require.Equal(t, DefaultCertificateTTL, c.CertificateTTL)
	require.Equal(t, DefaultMaxConnectionAge, c.MaxConnectionAge)
	require.Equal(t, "local", c.KeyManager.Name)
	require.NotNil(t, c.KeyManager.build)
	require.Nil(t, c.Now)
}

func TestParseConfigFull(t *testing.T) {
	dataDir := t.TempDir()
	src := `
server {
  trust_domain        = "prod.example.org"
  agent_path_prefix   = "/ci/runners/"
  listen_address      = "127.0.0.1:9443"
  health_address      = "127.0.0.1:9080"
  data_dir            = "` + dataDir + `"
  workload_api_socket = "tcp://127.0.0.1:8081"
  certificate_ttl     = "2m"
  max_connection_age  = "1h"
  log_level           = "debug"
  log_format          = "text"
}

key_manager "local" {
  ca_ttl = "720h"
}
`
	c, err := ParseConfig("server.hcl", []byte(src), noEnv)
	require.NoError(t, err)
	require.Equal(t, "prod.example.org", c.TrustDomain.Name())
	require.Equal(t, "/ci/runners/", c.AgentPathPrefix)
	require.Equal(t, "127.0.0.1:9443", c.ListenAddress)
	require.Equal(t, "127.0.0.1:9080", c.HealthAddress)
	require.Equal(t, dataDir, c.DataDir)
	require.Equal(t, "tcp://127.0.0.1:8081", c.WorkloadAPIAddr)
	require.Equal(t, 2*time.Minute, c.CertificateTTL)
	require.Equal(t, time.Hour, c.MaxConnectionAge)
	require.Equal(t, "local", c.KeyManager.Name)
	require.True(t, c.Log.Core().Enabled(zap.DebugLevel))

	// The local key manager keeps its CA under data_dir and honours ca_ttl.
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	km, err := c.KeyManager.build(pluginDeps{log: zap.NewNop(), now: func() time.Time { return now }})
	require.NoError(t, err)
	info, err := os.Stat(filepath.Join(dataDir, "keymanager", "local", "ca.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	require.IsType(t, &local.KeyManager{}, km)
	roots, err := km.(*local.KeyManager).Roots(context.Background())
	require.NoError(t, err)
	require.Equal(t, now.Add(720*time.Hour), roots[0].NotAfter)
}

func TestParseConfigVault(t *testing.T) {
	src := `
server { trust_domain = "example.org" }
key_manager "vault" {
  address = "http://127.0.0.1:8200"
  role    = "hallmark-agent"
  auth "dev_token" {}
}
`
	env := func(k string) string {
		if k == "VAULT_TOKEN" {
			return "root"
		}
		return ""
	}
	c, err := ParseConfig("server.hcl", []byte(src), env)
	require.NoError(t, err)
	require.Equal(t, "vault", c.KeyManager.Name)

	_, err = ParseConfig("server.hcl", []byte(src), noEnv)
	require.ErrorContains(t, err, `key_manager "vault": vault: dev_token auth needs VAULT_TOKEN`)
}

func TestParseConfigAgentPathPrefix(t *testing.T) {
	tests := []struct {
		prefix  string
		want    string
		wantErr string
	}{
		{prefix: "/hallmark/agent/", want: "/hallmark/agent/"},
		{prefix: "/hallmark/agent", want: "/hallmark/agent/"}, // never admits /hallmark/agentx
		{prefix: "/runners", want: "/runners/"},
		{prefix: "hallmark/agent/", wantErr: "must be a SPIFFE ID path starting with /"},
		{prefix: "/hallmark//agent/", wantErr: "must be a SPIFFE ID path starting with /"},
		{prefix: "/", wantErr: "every workload of the trust domain"},
		{prefix: "//", wantErr: "must be a SPIFFE ID path"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			src := `server {
  trust_domain      = "example.org"
  agent_path_prefix = "` + tt.prefix + `"
}`
			c, err := ParseConfig("server.hcl", []byte(src), noEnv)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, "server.agent_path_prefix: ")
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, c.AgentPathPrefix)
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr []string // substrings
	}{
		{
			name:    "not HCL",
			src:     `server {`,
			wantErr: []string{"server.hcl:1"},
		},
		{
			name:    "empty file",
			src:     ``,
			wantErr: []string{"Missing server block"},
		},
		{
			name: "unknown key in the server block",
			src: `server {
  trust_domain = "example.org"
  trust_domian = "example.org"
}`,
			wantErr: []string{`"trust_domian"`, "server.hcl:3"},
		},
		{
			name: "unknown top-level block",
			src: `server { trust_domain = "example.org" }
agent {}`,
			wantErr: []string{`"agent"`, "server.hcl:2"},
		},
		{
			name:    "two server blocks",
			src:     serverHCL("") + serverHCL(""),
			wantErr: []string{"Duplicate server block", "server.hcl:5"},
		},
		{
			name:    "missing trust_domain",
			src:     `server {}`,
			wantErr: []string{`"trust_domain"`},
		},
		{
			name:    "invalid trust_domain",
			src:     `server { trust_domain = "Example Org!" }`,
			wantErr: []string{"server.trust_domain: "},
		},
		{
			name: "unknown key manager",
			src: `server { trust_domain = "example.org" }
key_manager "hsm" {}`,
			wantErr: []string{`key_manager "hsm": unknown (built in: local, vault)`},
		},
		{
			name: "key manager without a name",
			src: `server { trust_domain = "example.org" }
key_manager {}`,
			wantErr: []string{"key_manager"},
		},
		{
			name: "two key_manager blocks",
			src: `server { trust_domain = "example.org" }
key_manager "local" {}
key_manager "local" {}`,
			wantErr: []string{`server.hcl:3,1-20: key_manager "local": only one key_manager block is allowed; the first is at line 2`},
		},
		{
			name: "two store blocks",
			src: `server { trust_domain = "example.org" }
store "sqlite" {}

store "postgres" {}`,
			wantErr: []string{`server.hcl:4,1-17: store "postgres": only one store block is allowed; the first is at line 2`},
		},
		{
			name: "unknown key in the local key manager",
			src: `server { trust_domain = "example.org" }
key_manager "local" {
  directory = "/tmp"
}`,
			wantErr: []string{`key_manager "local": `, `"directory"`, "server.hcl:3"},
		},
		{
			name: "invalid local ca_ttl",
			src: `server { trust_domain = "example.org" }
key_manager "local" { ca_ttl = "one year" }`,
			wantErr: []string{`key_manager "local": ca_ttl: "one year" is not a duration`},
		},
		{
			name: "vault key manager missing its role",
			src: `server { trust_domain = "example.org" }
key_manager "vault" {
  address = "https://vault:8200"
  auth "cert" {}
}`,
			wantErr: []string{`key_manager "vault": `, `"role"`},
		},
		{
			name:    "certificate_ttl below the minimum",
			src:     serverHCL(`certificate_ttl = "29s"`),
			wantErr: []string{"server.certificate_ttl: 29s is below the 30s minimum"},
		},
		{
			name:    "certificate_ttl above the maximum",
			src:     serverHCL(`certificate_ttl = "61m"`),
			wantErr: []string{"server.certificate_ttl: 1h1m0s is above the 1h0m0s maximum"},
		},
		{
			name:    "certificate_ttl not a duration",
			src:     serverHCL(`certificate_ttl = "5"`),
			wantErr: []string{`server.certificate_ttl: "5" is not a duration`},
		},
		{
			name:    "max_connection_age that would reconnect without pause",
			src:     serverHCL(`max_connection_age = "1ms"`),
			wantErr: []string{"server.max_connection_age: 1ms is shorter than 5s, the least it takes"},
		},
		{
			name: "local ca_ttl that would rotate without pause",
			src: `server { trust_domain = "example.org" }
key_manager "local" { ca_ttl = "1s" }`,
			wantErr: []string{`key_manager "local": ca_ttl: 1s is shorter than 24h0m0s, the least it takes`},
		},
		{
			name:    "negative max_connection_age",
			src:     serverHCL(`max_connection_age = "-1m"`),
			wantErr: []string{"server.max_connection_age: must be positive"},
		},
		{
			name:    "relative data_dir",
			src:     serverHCL(`data_dir = "var/lib/hallmark"`),
			wantErr: []string{`server.data_dir: "var/lib/hallmark" must be an absolute path`},
		},
		{
			name:    "listen_address without a port",
			src:     serverHCL(`listen_address = "0.0.0.0"`),
			wantErr: []string{"server.listen_address: "},
		},
		{
			name:    "health_address without a port",
			src:     serverHCL(`health_address = "localhost"`),
			wantErr: []string{"server.health_address: "},
		},
		{
			name:    "workload_api_socket without a scheme",
			src:     serverHCL(`workload_api_socket = "/run/spire/api.sock"`),
			wantErr: []string{"server.workload_api_socket: ", "unix:// or tcp://"},
		},
		{
			name:    "unknown log_level",
			src:     serverHCL(`log_level = "loud"`),
			wantErr: []string{`server.log_level: "loud"`},
		},
		{
			name:    "unknown log_format",
			src:     serverHCL(`log_format = "xml"`),
			wantErr: []string{`server.log_format: "xml"`},
		},
		{
			name:    "trust_domain of the wrong type",
			src:     `server { trust_domain = ["example.org"] }`,
			wantErr: []string{"server.hcl:1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("server.hcl", []byte(tt.src), noEnv)
			require.Error(t, err)
			for _, want := range tt.wantErr {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "server.hcl")
	require.NoError(t, os.WriteFile(path, []byte(`server {
  trust_domain = "example.org"
  bogus        = true
}`), 0o600))

	_, err := LoadConfig(path)
	require.ErrorContains(t, err, path+":3")
	require.ErrorContains(t, err, `"bogus"`)

	_, err = LoadConfig(filepath.Join(dir, "missing.hcl"))
	require.ErrorContains(t, err, "read config: ")
	require.ErrorIs(t, err, os.ErrNotExist)
}

func FuzzParseConfig(f *testing.F) {
	f.Add(`server { trust_domain = "example.org" }`)
	f.Add(`server {
  trust_domain      = "example.org"
  agent_path_prefix = "/hallmark/agent"
  data_dir          = "/var/lib/x"
  certificate_ttl   = "30s"
}
key_manager "local" { ca_ttl = "24h" }`)
	f.Add(`server { trust_domain = "example.org" }
key_manager "vault" {
  address = "https://vault:8200"
  role    = "r"
  auth "jwt" { role = "hallmark" }
}`)
	f.Add(`server { trust_domain = "example.org" }
key_manager "vault" {
  address = "http://vault:8200"
  role    = "r"
  auth "dev_token" { mount = "/token/" }
}`)
	f.Add(`key_manager "x" {} key_manager "y" {}`)
	f.Add(`server { trust_domain = "${foo}" }`)
	f.Fuzz(func(t *testing.T, src string) {
		c, err := ParseConfig("fuzz.hcl", []byte(src), func(string) string { return "token" })
		if err != nil {
			return
		}
		require.False(t, c.TrustDomain.IsZero())
		require.GreaterOrEqual(t, c.CertificateTTL, 30*time.Second)
		require.Positive(t, c.MaxConnectionAge)
		require.True(t, filepath.IsAbs(c.DataDir), "data_dir %q", c.DataDir)
		require.True(t, strings.HasPrefix(c.AgentPathPrefix, "/") && strings.HasSuffix(c.AgentPathPrefix, "/"), "agent_path_prefix %q", c.AgentPathPrefix)
		require.NotEqual(t, "/", c.AgentPathPrefix)
		require.Contains(t, []string{"local", "vault"}, c.KeyManager.Name)
	})
}
