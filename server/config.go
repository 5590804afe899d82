package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/internal/config"
	"github.com/hallmark-dev/hallmark/internal/policy"
)

// Defaults for settings a file leaves out.
const (
	DefaultListenAddress     = "0.0.0.0:8443"
	DefaultDataDir           = "/var/lib/hallmark-server"
	DefaultWorkloadAPISocket = "unix:///run/spire/agent-sockets/api.sock"
	DefaultAgentPathPrefix   = "/hallmark/agent/"
	DefaultCertificateTTL    = 5 * time.Minute
	// MinCertificateTTL and MaxCertificateTTL bound certificate_ttl.
	MinCertificateTTL       = 30 * time.Second
	MaxCertificateTTL       = time.Hour
	DefaultMaxConnectionAge = 10 * time.Minute
)

// Config is hallmark-server's runtime configuration.
type Config struct {
	Log *zap.Logger
	// ListenAddress is where the agent API is served (mTLS).
	ListenAddress string
	// HealthAddress serves /healthz, /readyz and /metrics over plain HTTP;
	// empty disables it.
	HealthAddress string
	// AdminSocket, if set, is the unix socket of the admin API (signing-CA
	// rotation; docs/rotation.md): mode 0600, for the server's user and
	// root only.
	AdminSocket string
	// DataDir holds the server's state (the local key manager's CA).
	DataDir string
	// WorkloadAPIAddr is the SPIRE agent's Workload API (unix://PATH).
	WorkloadAPIAddr string
	// TrustDomain is the only trust domain agents may come from.
	TrustDomain spiffeid.TrustDomain
	// AgentPathPrefix: agents are the SPIFFE IDs of TrustDomain whose path
	// starts with it.
	AgentPathPrefix string
	// CertificateTTL is the lifetime of agents' signing certificates.
	CertificateTTL time.Duration
	// MaxConnectionAge closes agent connections after this long so that
	// each reconnects with a fresh handshake (current SVIDs on both sides)
	// and load spreads across servers.
	MaxConnectionAge time.Duration
	// KeyManager names the key manager and builds it once the server holds
	// its SVID.
	KeyManager KeyManagerConfig
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
	// Policy is the attestation policy pushed to agents; nil when the
	// file has no policy block (agents then use their own).
	Policy *policy.Policy
	// Store keeps the transparency log and the signing CAs; sqlite in
	// DataDir when unset.
	Store StoreConfig
	// LogOrigin is the transparency log's checkpoint origin;
	// DefaultLogOrigin(TrustDomain) when empty. See docs/log.md.
	LogOrigin string
}

// DefaultLogOrigin is the log origin of a trust domain when the file sets
// none: "hallmark." followed by the trust domain's name.
func DefaultLogOrigin(td spiffeid.TrustDomain) string { return "hallmark." + td.Name() }

// setLogDefaults fills in the store and the log origin.
func (c *Config) setLogDefaults() {
	if c.Store.open == nil {
		c.Store, _ = storeConfig("sqlite", hcl.EmptyBody(), c.DataDir) // an empty body always decodes
	}
	if c.LogOrigin == "" {
		c.LogOrigin = DefaultLogOrigin(c.TrustDomain)
	}
}

// fileConfig is the HCL file: one server block, at most one key_manager,
// at most one store and at most one log block.
type fileConfig struct {
	Server      serverBlock    `hcl:"server,block"`
	KeyManagers []config.Block `hcl:"key_manager,block"`
	Policy      *policy.File   `hcl:"policy,block"`
	Stores      []config.Block `hcl:"store,block"`
	Log         *logBlock      `hcl:"log,block"`
}

// logBlock configures the transparency log.
type logBlock struct {
	Origin string `hcl:"origin,optional"`
}

type serverBlock struct {
	TrustDomain       string `hcl:"trust_domain"`
	AgentPathPrefix   string `hcl:"agent_path_prefix,optional"`
	ListenAddress     string `hcl:"listen_address,optional"`
	HealthAddress     string `hcl:"health_address,optional"`
	AdminSocket       string `hcl:"admin_socket,optional"`
	DataDir           string `hcl:"data_dir,optional"`
	WorkloadAPISocket string `hcl:"workload_api_socket,optional"`
	CertificateTTL    string `hcl:"certificate_ttl,optional"`
	MaxConnectionAge  string `hcl:"max_connection_age,optional"`
	LogLevel          string `hcl:"log_level,optional"`
	LogFormat         string `hcl:"log_format,optional"`
}

// LoadConfig reads a server configuration file. Unknown keys, blocks and
// plugins are errors; see docs/configuration.md for every setting.
func LoadConfig(path string) (Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(path, src, os.Getenv)
}

// ParseConfig parses configuration source; filename is used in errors and
// getenv supplies environment variables plugins may read (VAULT_TOKEN).
func ParseConfig(filename string, src []byte, getenv func(string) string) (Config, error) {
	var f fileConfig
	if err := config.Decode(filename, src, &f); err != nil {
		return Config{}, err
	}
	s := f.Server
	log, err := config.Log{Level: s.LogLevel, Format: s.LogFormat}.NewLogger()
	if err != nil {
		return Config{}, fmt.Errorf("server.%w", err)
	}
	c := Config{
		Log:             log,
		ListenAddress:   or(s.ListenAddress, DefaultListenAddress),
		HealthAddress:   s.HealthAddress,
		AdminSocket:     s.AdminSocket,
		DataDir:         or(s.DataDir, DefaultDataDir),
		WorkloadAPIAddr: or(s.WorkloadAPISocket, DefaultWorkloadAPISocket),
		AgentPathPrefix: or(s.AgentPathPrefix, DefaultAgentPathPrefix),
	}
	if c.TrustDomain, err = spiffeid.TrustDomainFromString(s.TrustDomain); err != nil {
		return Config{}, fmt.Errorf("server.trust_domain: %w", err)
	}
	if c.CertificateTTL, err = config.Duration("server.certificate_ttl", s.CertificateTTL, DefaultCertificateTTL); err != nil {
		return Config{}, err
	}
	if c.MaxConnectionAge, err = config.DurationAtLeast("server.max_connection_age", s.MaxConnectionAge, DefaultMaxConnectionAge, 5*time.Second); err != nil {
		return Config{}, err
	}
	if c.CertificateTTL < MinCertificateTTL {
		return Config{}, fmt.Errorf("server.certificate_ttl: %s is below the %s minimum", c.CertificateTTL, MinCertificateTTL)
	}
	if c.CertificateTTL > MaxCertificateTTL {
		return Config{}, fmt.Errorf("server.certificate_ttl: %s is above the %s maximum: signing certificates are short-lived, so that a stolen agent key signs for minutes", c.CertificateTTL, MaxCertificateTTL)
	}
	km, err := config.OneBlock("key_manager", "local", f.KeyManagers)
	if err != nil {
		return Config{}, err
	}
	if c.KeyManager, err = keyManagerConfig(km.Name, km.Body, c.DataDir, getenv); err != nil {
		return Config{}, err
	}
	if f.Policy != nil {
		if c.Policy, err = policy.New(f.Policy.Rules); err != nil {
			return Config{}, err
		}
	}
	sb, err := config.OneBlock("store", "sqlite", f.Stores)
	if err != nil {
		return Config{}, err
	}
	if c.Store, err = storeConfig(sb.Name, sb.Body, c.DataDir); err != nil {
		return Config{}, err
	}
	if f.Log != nil {
		c.LogOrigin = f.Log.Origin
	}
	c.setLogDefaults()
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c *Config) validate() error {
	if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
		return fmt.Errorf("server.listen_address: %w", err)
	}
	if c.AdminSocket != "" && !filepath.IsAbs(c.AdminSocket) {
		return fmt.Errorf("server.admin_socket: %q must be an absolute path", c.AdminSocket)
	}
	if c.HealthAddress != "" {
		if _, _, err := net.SplitHostPort(c.HealthAddress); err != nil {
			return fmt.Errorf("server.health_address: %w", err)
		}
	}
	if !strings.HasPrefix(c.WorkloadAPIAddr, "unix://") && !strings.HasPrefix(c.WorkloadAPIAddr, "tcp://") {
		return fmt.Errorf("server.workload_api_socket: %q must start with unix:// or tcp://", c.WorkloadAPIAddr)
	}
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("server.data_dir: %q must be an absolute path", c.DataDir)
	}
	if !strings.HasPrefix(c.AgentPathPrefix, "/") || strings.Contains(c.AgentPathPrefix, "//") {
		return fmt.Errorf("server.agent_path_prefix: %q must be a SPIFFE ID path starting with /", c.AgentPathPrefix)
	}
	if !strings.HasSuffix(c.AgentPathPrefix, "/") {
		c.AgentPathPrefix += "/" // "/hallmark/agent" must not admit "/hallmark/agentx"
	}
	if c.AgentPathPrefix == "/" {
		return errors.New("server.agent_path_prefix: \"/\" would make every workload of the trust domain an agent")
	}
	if c.LogOrigin != "" {
		if err := validOrigin(c.LogOrigin); err != nil {
			return fmt.Errorf("log.origin: %w", err)
		}
	}
	return nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
