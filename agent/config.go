package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/internal/config"
)

// DefaultWorkloadAPISocket is the SPIRE agent's usual Workload API socket.
const DefaultWorkloadAPISocket = "unix:///run/spire/agent-sockets/api.sock"

// Config is hallmark-agent's runtime configuration.
type Config struct {
	Log *zap.Logger
	// ServerAddress is hallmark-server's agent API (host:port).
	ServerAddress string
	// ServerID is the only SPIFFE ID the agent accepts from the server.
	ServerID spiffeid.ID
	// WorkloadAPIAddr is the local SPIRE agent's Workload API (unix://PATH).
	WorkloadAPIAddr string
	// HealthAddress serves /healthz, /readyz, /metrics and /status over
	// plain HTTP; keep it on loopback. Empty disables it.
	HealthAddress string
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

type fileConfig struct {
	Agent agentBlock `hcl:"agent,block"`
}

type agentBlock struct {
	ServerAddress     string `hcl:"server_address"`
	ServerSPIFFEID    string `hcl:"server_spiffe_id"`
	WorkloadAPISocket string `hcl:"workload_api_socket,optional"`
	HealthAddress     string `hcl:"health_address,optional"`
	LogLevel          string `hcl:"log_level,optional"`
	LogFormat         string `hcl:"log_format,optional"`
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
	}
	if c.WorkloadAPIAddr == "" {
		c.WorkloadAPIAddr = DefaultWorkloadAPISocket
	}
	if c.ServerID, err = spiffeid.FromString(a.ServerSPIFFEID); err != nil {
		return Config{}, fmt.Errorf("agent.server_spiffe_id: %w", err)
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	if c.ServerAddress == "" {
		return errors.New("agent.server_address is required")
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		return fmt.Errorf("agent.server_address: %w", err)
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
