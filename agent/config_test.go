package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/agent/measure"
)

// agentHCL is an agent block with the required settings and extra lines.
func agentHCL(lines ...string) string {
	return "agent {\n" +
		"  server_address   = \"hallmark.internal:8443\"\n" +
		"  server_spiffe_id = \"spiffe://example.org/hallmark/server\"\n" +
		"  " + strings.Join(lines, "\n  ") + "\n}\n"
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("agent.hcl", []byte(agentHCL()))
	require.NoError(t, err)
	require.NotNil(t, c.Log)
	require.Equal(t, "hallmark.internal:8443", c.ServerAddress)
	require.Equal(t, serverID, c.ServerID)
	require.Equal(t, DefaultWorkloadAPISocket, c.WorkloadAPIAddr)
	require.Empty(t, c.HealthAddress)
	require.Nil(t, c.Now)
	require.Equal(t, []string{"/proc/self/exe", ExecCanaryCommand}, c.ExecCanary, "the daemon proves every 30 s that its exec watch sees execs")

	c, err = ParseConfig("agent.hcl", []byte(agentHCL(
		`workload_api_socket = "unix:///tmp/spire/api.sock"`,
		`health_address = "127.0.0.1:8081"`,
		`log_level = "warn"`,
		`log_format = "text"`,
	)))
	require.NoError(t, err)
	require.Equal(t, "unix:///tmp/spire/api.sock", c.WorkloadAPIAddr)
	require.Equal(t, "127.0.0.1:8081", c.HealthAddress)
	require.False(t, c.Log.Core().Enabled(zap.InfoLevel))
	require.True(t, c.Log.Core().Enabled(zap.WarnLevel))

	_, err = New(c)
	require.NoError(t, err, "a parsed configuration is one New accepts")

	c, err = ParseConfig("agent.hcl", []byte(agentHCL(
		`max_files = 1`, `max_file_bytes = 2`, `max_total_bytes = 3`,
		`max_connections = 4`, `max_connections_per_uid = 5`, `max_streams_per_connection = 6`,
		`max_attestations_per_uid = 7`, `max_identifications_per_uid = 8`, `max_identifications = 9`,
		`log_batch_size = 10`, `outbox_max_pending_bytes = 68719476736`,
	)))
	require.NoError(t, err)
	require.Equal(t, measure.Limits{MaxFiles: 1, MaxFileBytes: 2, MaxTotalBytes: 3}, c.Limits)
	require.Equal(t, LocalLimits{
		Connections: 4, ConnectionsPerUID: 5, StreamsPerConnection: 6, AttestationsPerUID: 7,
		IdentificationsPerUID: 8, Identifications: 9, IdleTimeout: DefaultIdleTimeout,
	}, c.LocalLimits)
	require.Equal(t, 10, c.LogBatchSize)
	require.Equal(t, int64(64<<30), c.OutboxMaxPendingBytes)
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr []string
	}{
		{name: "not HCL", src: "agent {", wantErr: []string{"agent.hcl:1"}},
		{name: "socket_mode world-writable", src: agentHCL(`socket_mode = "0666"`), wantErr: []string{`agent.socket_mode: "0666" lets every local user connect; use a group (socket_group) instead`}},
		{name: "socket_mode world-writable only", src: agentHCL(`socket_mode = "0602"`), wantErr: []string{`agent.socket_mode: "0602" lets every local user connect`}},
		{name: "socket_mode not octal", src: agentHCL(`socket_mode = "rw-rw----"`), wantErr: []string{`agent.socket_mode: "rw-rw----" is not an octal mode like "0660"`}},
		{name: "policy_refresh that would fetch without pause", src: agentHCL(`policy_refresh = "1ns"`), wantErr: []string{"agent.policy_refresh: 1ns is shorter than 1s, the least it takes"}},
		{name: "socket_mode beyond permissions", src: agentHCL(`socket_mode = "04660"`), wantErr: []string{`agent.socket_mode: "04660" is not an octal mode`}},
		{name: "no agent block", src: "", wantErr: []string{"Missing agent block"}},
		{
			name:    "unknown key",
			src:     agentHCL(`server_spiffe_ids = ["spiffe://example.org/x"]`),
			wantErr: []string{`"server_spiffe_ids"`, "agent.hcl:4"},
		},
		{
			name:    "server block in an agent file",
			src:     agentHCL() + `server { trust_domain = "example.org" }`,
			wantErr: []string{`"server"`, "agent.hcl:6"},
		},
		{
			name: "misspelt required key",
			src:  "agent {\n  server_address = \"hallmark.internal:8443\"\n  server_spife_id = \"spiffe://example.org/hallmark/server\"\n}\n",
			// First the misspelling and its fix, then what it left missing.
			wantErr: []string{`agent.hcl:3,3-18: Unsupported argument; An argument named "server_spife_id" is not expected here. Did you mean "server_spiffe_id"?` + "\n" +
				`agent.hcl:1,7-7: Missing required argument; The argument "server_spiffe_id" is required`},
		},
		{
			name:    "two workload_attestor blocks of one name",
			src:     agentHCL() + "workload_attestor \"unix\" {\n  hash_executable = true\n}\nworkload_attestor \"unix\" {}\n",
			wantErr: []string{`agent.hcl:9,1-25: workload_attestor "unix" is given twice (first at line 6): merge the two blocks`},
		},
		{name: "a negative count", src: agentHCL(`max_files = -1`), wantErr: []string{"agent.max_files: -1 must be at least 1 (leave it unset for the default)"}},
		{name: "a zero count", src: agentHCL(`max_connections = 0`), wantErr: []string{"agent.max_connections: 0 must be at least 1 (leave it unset for the default)"}},
		{name: "a zero size", src: agentHCL(`max_total_bytes = 0`), wantErr: []string{"agent.max_total_bytes: 0 must be at least 1"}},
		{name: "a zero batch", src: agentHCL(`log_batch_size = 0`), wantErr: []string{"agent.log_batch_size: 0 must be at least 1"}},
		{name: "a batch the log never takes", src: agentHCL(`log_batch_size = 501`), wantErr: []string{"agent.log_batch_size: 501 is not in 1..500"}},
		{name: "a zero outbox bound", src: agentHCL(`outbox_max_pending_bytes = 0`), wantErr: []string{"agent.outbox_max_pending_bytes: 0 must be at least 1"}},
		{
			name:    "missing server_spiffe_id",
			src:     "agent {\n  server_address = \"hallmark.internal:8443\"\n}\n",
			wantErr: []string{`"server_spiffe_id"`},
		},
		{
			name:    "empty server_spiffe_id",
			src:     "agent {\n  server_address = \"hallmark.internal:8443\"\n  server_spiffe_id = \"\"\n}\n",
			wantErr: []string{"agent.server_spiffe_id: "},
		},
		{
			name:    "server_spiffe_id not a SPIFFE ID",
			src:     "agent {\n  server_address = \"hallmark.internal:8443\"\n  server_spiffe_id = \"https://example.org/hallmark/server\"\n}\n",
			wantErr: []string{"agent.server_spiffe_id: ", "scheme"},
		},
		{
			name:    "server_spiffe_id a trust domain",
			src:     "agent {\n  server_address = \"hallmark.internal:8443\"\n  server_spiffe_id = \"example.org\"\n}\n",
			wantErr: []string{"agent.server_spiffe_id: "},
		},
		{
			name:    "server_spiffe_id with a bad path",
			src:     "agent {\n  server_address = \"hallmark.internal:8443\"\n  server_spiffe_id = \"spiffe://example.org/hallmark/../server\"\n}\n",
			wantErr: []string{"agent.server_spiffe_id: "},
		},
		{
			name:    "missing server_address",
			src:     "agent {\n  server_spiffe_id = \"spiffe://example.org/hallmark/server\"\n}\n",
			wantErr: []string{"agent.server_address (one host:port) or agent.server_addresses (a list) is required"},
		},
		{
			name:    "empty server_address",
			src:     "agent {\n  server_address = \"\"\n  server_spiffe_id = \"spiffe://example.org/hallmark/server\"\n}\n",
			wantErr: []string{"agent.server_address (one host:port) or agent.server_addresses (a list) is required"},
		},
		{
			name:    "server_address without a port",
			src:     "agent {\n  server_address = \"hallmark.internal\"\n  server_spiffe_id = \"spiffe://example.org/hallmark/server\"\n}\n",
			wantErr: []string{"agent.server_address: "},
		},
		{
			name:    "workload_api_socket without a scheme",
			src:     agentHCL(`workload_api_socket = "/run/spire/api.sock"`),
			wantErr: []string{"agent.workload_api_socket: ", "unix:// or tcp://"},
		},
		{
			name:    "health_address without a port",
			src:     agentHCL(`health_address = "localhost"`),
			wantErr: []string{"agent.health_address: "},
		},
		{
			name:    "unknown log_level",
			src:     agentHCL(`log_level = "trace"`),
			wantErr: []string{`agent.log_level: "trace"`},
		},
		{
			name:    "unknown log_format",
			src:     agentHCL(`log_format = "logfmt"`),
			wantErr: []string{`agent.log_format: "logfmt"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("agent.hcl", []byte(tt.src))
			require.Error(t, err)
			for _, want := range tt.wantErr {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "agent.hcl")
	require.NoError(t, os.WriteFile(good, []byte(agentHCL()), 0o600))
	c, err := LoadConfig(good)
	require.NoError(t, err)
	require.Equal(t, serverID, c.ServerID)

	bad := filepath.Join(dir, "bad.hcl")
	require.NoError(t, os.WriteFile(bad, []byte(agentHCL(`bogus = 1`)), 0o600))
	_, err = LoadConfig(bad)
	require.ErrorContains(t, err, bad+":4")
	require.ErrorContains(t, err, `"bogus"`)

	_, err = LoadConfig(filepath.Join(dir, "missing.hcl"))
	require.ErrorContains(t, err, "read config: ")
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "empty", cfg: Config{}, wantErr: "agent: agent.server_address (one host:port) or agent.server_addresses (a list) is required"},
		{name: "no server ID", cfg: Config{ServerAddress: "h:1", WorkloadAPIAddr: DefaultWorkloadAPISocket}, wantErr: "agent.server_spiffe_id is required"},
		{name: "no workload API", cfg: Config{ServerAddress: "h:1", ServerID: serverID}, wantErr: "agent.workload_api_socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(agentHCL())
	f.Add(agentHCL(`workload_api_socket = "tcp://127.0.0.1:1"`, `health_address = "[::1]:0"`, `log_format = "text"`))
	f.Add(`agent { server_address = "h:1" server_spiffe_id = "spiffe://td/x" }`)
	f.Add(`agent { server_address = "${x}" }`)
	f.Add(`agent { server_addresses = ["a:1", "[::1]:2"] server_spiffe_id = "spiffe://td/x" }`)
	f.Add("agent {\n  server_spiffe_id = <<EOT\nspiffe://example.org/x\nEOT\n}\n")
	f.Fuzz(func(t *testing.T, src string) {
		c, err := ParseConfig("fuzz.hcl", []byte(src))
		if err != nil {
			return
		}
		require.False(t, c.ServerID.IsZero())
		require.NotEmpty(t, c.servers())
		require.True(t, strings.HasPrefix(c.WorkloadAPIAddr, "unix://") || strings.HasPrefix(c.WorkloadAPIAddr, "tcp://"))
		_, err = New(c)
		require.NoError(t, err)
	})
}

// Must show, with TestParseConfigErrors' refusals: a socket_mode that lets
// only the agent's user and a group connect is taken as given.
func TestParseConfigSocketMode(t *testing.T) {
	for _, mode := range []string{"0660", "0600", "0664", "0640"} {
		c, err := ParseConfig("agent.hcl", []byte(agentHCL(`socket_mode = "`+mode+`"`)))
		require.NoError(t, err, mode)
		want, err := strconv.ParseUint(mode, 8, 32)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(want), c.SocketMode, mode)
	}
}
