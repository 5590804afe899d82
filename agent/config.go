package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/agent/measure"
	"github.com/hallmark-dev/hallmark/internal/config"
	"github.com/hallmark-dev/hallmark/internal/exedigest"
	"github.com/hallmark-dev/hallmark/internal/limits"
	"github.com/hallmark-dev/hallmark/internal/policy"
)

// DefaultWorkloadAPISocket is the SPIRE agent's usual Workload API socket.
const DefaultWorkloadAPISocket = "unix:///run/spire/agent-sockets/api.sock"

// Config is hallmark-agent's runtime configuration.
type Config struct {
	Log *zap.Logger
	// ServerAddress is hallmark-server's agent API (host:port). A host
	// name that resolves to several addresses spreads the load over them.
	ServerAddress string
	// ServerAddresses are replicas of hallmark-server (host:port each)
	// sharing one database; calls spread over them and move on from one
	// that fails. Exactly one of ServerAddress and ServerAddresses is set.
	ServerAddresses []string
	// ServerID is the only SPIFFE ID the agent accepts from the server.
	ServerID spiffeid.ID
	// WorkloadAPIAddr is the local SPIRE agent's Workload API (unix://PATH).
	WorkloadAPIAddr string
	// HealthAddress serves /healthz, /readyz, /metrics and /status over
	// plain HTTP; keep it on loopback. Empty disables it.
	HealthAddress string
	// DataDir holds the agent's state: the outbox of envelopes waiting
	// to be logged. Never the signing key.
	DataDir string
	// SocketPath is the local API's unix socket, for build steps.
	SocketPath string
	// SocketMode is the socket's permission bits; SocketGID its group
	// (-1 keeps the agent's).
	SocketMode os.FileMode
	SocketGID  int
	// Attestors identify local callers; every one contributes.
	Attestors []NamedAttestor
	// Policy says who may attest which steps where; nil denies everything.
	Policy *policy.Policy
	// PolicyFromFile is true when Policy came from the agent's own file;
	// otherwise the agent follows the server's policy.
	PolicyFromFile bool
	// PolicyRefresh is how often the server's policy is fetched.
	PolicyRefresh time.Duration
	// LogBatchSize is the most envelopes submitted to the log at once.
	LogBatchSize int
	// OutboxMaxPendingBytes bounds the attestations queued and not yet
	// logged (the agent holds them in memory); past it, attestations are
	// refused until the log takes some. DefaultOutboxMaxPendingBytes when 0.
	OutboxMaxPendingBytes int64
	// Limits bound what one attestation may measure.
	Limits measure.Limits
	// LocalLimits bound what callers may hold at once on the local API.
	LocalLimits LocalLimits
	// ExecCanary is the program (argv) the agent runs every 30 s to prove
	// that the exec watch still sees execs; nil runs none. ParseConfig
	// sets hallmark-agent's own exec-canary command.
	ExecCanary []string
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// Defaults for the local API.
const (
	DefaultSocketPath    = "/run/hallmark/agent.sock"
	DefaultSocketMode    = 0o660
	DefaultPolicyRefresh = 30 * time.Second
	DefaultDataDir       = "/var/lib/hallmark-agent"
)

type fileConfig struct {
	Agent     agentBlock     `hcl:"agent,block"`
	Attestors []config.Block `hcl:"workload_attestor,block"`
	Policy    *policy.File   `hcl:"policy,block"`
}

type agentBlock struct {
	ServerAddress     string    `hcl:"server_address,optional"`
	ServerAddresses   *[]string `hcl:"server_addresses,optional"`
	ServerSPIFFEID    string    `hcl:"server_spiffe_id"`
	WorkloadAPISocket string    `hcl:"workload_api_socket,optional"`
	HealthAddress     string    `hcl:"health_address,optional"`
	LogLevel          string    `hcl:"log_level,optional"`
	LogFormat         string    `hcl:"log_format,optional"`
	SocketPath        string    `hcl:"socket_path,optional"`
	SocketMode        string    `hcl:"socket_mode,optional"`
	SocketGroup       string    `hcl:"socket_group,optional"`
	PolicyRefresh     string    `hcl:"policy_refresh,optional"`

	// Counts and sizes are pointers: unset is the default, and a 0
	// written in the file is refused (config.Positive).
	MaxFiles                 *int   `hcl:"max_files,optional"`
	MaxFileBytes             *int64 `hcl:"max_file_bytes,optional"`
	MaxTotalBytes            *int64 `hcl:"max_total_bytes,optional"`
	MaxConnections           *int   `hcl:"max_connections,optional"`
	MaxConnectionsPerUID     *int   `hcl:"max_connections_per_uid,optional"`
	MaxStreamsPerConnection  *int   `hcl:"max_streams_per_connection,optional"`
	MaxAttestationsPerUID    *int   `hcl:"max_attestations_per_uid,optional"`
	MaxIdentificationsPerUID *int   `hcl:"max_identifications_per_uid,optional"`
	MaxIdentifications       *int   `hcl:"max_identifications,optional"`
	LogBatchSize             *int   `hcl:"log_batch_size,optional"`
	OutboxMaxPendingBytes    *int64 `hcl:"outbox_max_pending_bytes,optional"`

	IdleTimeout string `hcl:"idle_timeout,optional"`
	DataDir     string `hcl:"data_dir,optional"`
}

// LoadConfig reads an agent configuration file. Unknown keys are errors;
// see docs/configuration.md for every setting.
func LoadConfig(path string) (Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(path, src)
}

// ParseConfig parses configuration source; filename is used in errors.
func ParseConfig(filename string, src []byte) (Config, error) {
	var f fileConfig
	if err := config.Decode(filename, src, &f); err != nil {
		return Config{}, err
	}
	a := f.Agent
	log, err := config.Log{Level: a.LogLevel, Format: a.LogFormat}.NewLogger()
	if err != nil {
		return Config{}, fmt.Errorf("agent.%w", err)
	}
	c := Config{
		Log:             log,
		ServerAddress:   a.ServerAddress,
		WorkloadAPIAddr: a.WorkloadAPISocket,
		HealthAddress:   a.HealthAddress,
		ExecCanary:      []string{"/proc/self/exe", ExecCanaryCommand},
	}
	if a.ServerAddresses != nil {
		if len(*a.ServerAddresses) == 0 {
			return Config{}, errors.New("agent.server_addresses is empty: list at least one host:port")
		}
		c.ServerAddresses = *a.ServerAddresses
	}
	if c.WorkloadAPIAddr == "" {
		c.WorkloadAPIAddr = DefaultWorkloadAPISocket
	}
	if c.ServerID, err = spiffeid.FromString(a.ServerSPIFFEID); err != nil {
		return Config{}, fmt.Errorf("agent.server_spiffe_id: %w", err)
	}
	if err := localAPIConfig(&c, a); err != nil {
		return Config{}, err
	}
	if len(f.Attestors) == 0 {
		f.Attestors = []config.Block{{Name: "unix", Body: hcl.EmptyBody()}}
	}
	if err := config.DistinctBlocks("workload_attestor", f.Attestors); err != nil {
		return Config{}, err
	}
	digests := exedigest.New(0)
	for _, b := range f.Attestors {
		att, err := newWorkloadAttestor(b.Name, b.Body, digests)
		if err != nil {
			return Config{}, err
		}
		c.Attestors = append(c.Attestors, NamedAttestor{Name: b.Name, Attestor: att})
	}
	var rules []policy.Rule
	if f.Policy != nil {
		rules, c.PolicyFromFile = f.Policy.Rules, true
	}
	if c.PolicyRefresh, err = config.DurationAtLeast("agent.policy_refresh", a.PolicyRefresh, DefaultPolicyRefresh, time.Second); err != nil {
		return Config{}, err
	}
	if c.Policy, err = policy.New(rules); err != nil {
		return Config{}, err
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// localAPIConfig fills the socket and limit settings.
func localAPIConfig(c *Config, a agentBlock) error {
	var (
		lim   measure.Limits
		local LocalLimits
		err   error
	)
	for _, n := range []struct {
		key string
		in  *int
		out *int
	}{
		{"max_files", a.MaxFiles, &lim.MaxFiles},
		{"max_connections", a.MaxConnections, &local.Connections},
		{"max_connections_per_uid", a.MaxConnectionsPerUID, &local.ConnectionsPerUID},
		{"max_streams_per_connection", a.MaxStreamsPerConnection, &local.StreamsPerConnection},
		{"max_attestations_per_uid", a.MaxAttestationsPerUID, &local.AttestationsPerUID},
		{"max_identifications_per_uid", a.MaxIdentificationsPerUID, &local.IdentificationsPerUID},
		{"max_identifications", a.MaxIdentifications, &local.Identifications},
		{"log_batch_size", a.LogBatchSize, &c.LogBatchSize},
	} {
		if *n.out, err = config.Positive("agent."+n.key, n.in); err != nil {
			return err
		}
	}
	for _, n := range []struct {
		key string
		in  *int64
		out *int64
	}{
		{"max_file_bytes", a.MaxFileBytes, &lim.MaxFileBytes},
		{"max_total_bytes", a.MaxTotalBytes, &lim.MaxTotalBytes},
		{"outbox_max_pending_bytes", a.OutboxMaxPendingBytes, &c.OutboxMaxPendingBytes},
	} {
		if *n.out, err = config.Positive("agent."+n.key, n.in); err != nil {
			return err
		}
	}
	if c.LogBatchSize > limits.MaxEntriesPerCall {
		return fmt.Errorf("agent.log_batch_size: %d is not in 1..%d, what the log takes in one call", c.LogBatchSize, limits.MaxEntriesPerCall)
	}
	if c.OutboxMaxPendingBytes > 0 && c.OutboxMaxPendingBytes < limits.MaxBundleBytes {
		return fmt.Errorf("agent.outbox_max_pending_bytes: %d is less than one bundle the log takes (%d bytes)", c.OutboxMaxPendingBytes, limits.MaxBundleBytes)
	}
	c.DataDir = a.DataDir
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("agent.data_dir: %q must be absolute", c.DataDir)
	}
	c.SocketPath, c.SocketMode, c.SocketGID = a.SocketPath, DefaultSocketMode, -1
	if c.SocketPath == "" {
		c.SocketPath = DefaultSocketPath
	}
	if !filepath.IsAbs(c.SocketPath) {
		return fmt.Errorf("agent.socket_path: %q must be absolute", c.SocketPath)
	}
	if a.SocketMode != "" {
		m, err := strconv.ParseUint(a.SocketMode, 8, 32)
		if err != nil || m&^0o777 != 0 {
			return fmt.Errorf("agent.socket_mode: %q is not an octal mode like \"0660\"", a.SocketMode)
		}
		if m&0o002 != 0 {
			return fmt.Errorf("agent.socket_mode: %q lets every local user connect; use a group (socket_group) instead", a.SocketMode)
		}
		c.SocketMode = os.FileMode(m)
	}
	if gid, err := strconv.Atoi(a.SocketGroup); err == nil && gid >= 0 {
		c.SocketGID = gid // a numeric GID needs no entry in /etc/group
	} else if a.SocketGroup != "" {
		g, err := user.LookupGroup(a.SocketGroup)
		if err != nil {
			if g, err = user.LookupGroupId(a.SocketGroup); err != nil {
				return fmt.Errorf("agent.socket_group: %q: no such group", a.SocketGroup)
			}
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return fmt.Errorf("agent.socket_group: %w", err)
		}
		c.SocketGID = gid
	}
	c.Limits = lim
	if local.IdleTimeout, err = config.Duration("agent.idle_timeout", a.IdleTimeout, DefaultIdleTimeout); err != nil {
		return err
	}
	c.LocalLimits = local
	return nil
}

func (c *Config) validate() error {
	if err := c.validateServers(); err != nil {
		return err
	}
	if c.ServerID.IsZero() {
		return errors.New("agent.server_spiffe_id is required")
	}
	if !strings.HasPrefix(c.WorkloadAPIAddr, "unix://") && !strings.HasPrefix(c.WorkloadAPIAddr, "tcp://") {
		return fmt.Errorf("agent.workload_api_socket: %q must start with unix:// or tcp://", c.WorkloadAPIAddr)
	}
	if c.HealthAddress != "" {
		if _, _, err := net.SplitHostPort(c.HealthAddress); err != nil {
			return fmt.Errorf("agent.health_address: %w", err)
		}
	}
	return nil
}
