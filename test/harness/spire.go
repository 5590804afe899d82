package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TrustDomain is the trust domain of every stack the harness starts.
const TrustDomain = "example.org"

// SPIRE is a running SPIRE server and agent.
type SPIRE struct {
	Dir          string // everything SPIRE writes lives here
	ServerBin    string
	AgentBin     string
	ServerSocket string // the server's admin API socket (a path)
	AgentSocket  string // the agent's Workload API socket (a path)
	AdminSocket  string // the agent's admin API socket (Delegated Identity API)
	BundlePath   string // the trust domain's X.509 bundle, PEM
	AgentID      spiffeid.ID

	server, agent *Process
}

// SPIREOptions tune StartSPIRE.
type SPIREOptions struct {
	// Echo receives the SPIRE processes' output as well as their log files.
	Echo io.Writer
	// LogLevel of the SPIRE server and agent: "DEBUG" when empty (tests
	// read their logs); benchmarks use "INFO", as a deployment does.
	LogLevel string
}

// SPIREVersion is the SPIRE the tests run and the docs name.
const SPIREVersion = "1.13.3"

// FindSPIRE locates spire-server and spire-agent: first in the repository's
// .tools/bin (where `make tools` puts them), then on PATH; either must be
// SPIREVersion (or a build of it, "1.13.3-dev-unk").
func FindSPIRE(root string) (server, agent string, err error) {
	find := func(name string) (string, error) {
		if p := filepath.Join(root, ".tools", "bin", name); isExecutable(p) {
			return p, nil
		}
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		return "", fmt.Errorf("%s not found in %s or on PATH: run `make tools` (it builds SPIRE v%s once, 11-15 minutes)", name, filepath.Join(root, ".tools", "bin"), SPIREVersion)
	}
	check := func(p string) error {
		out, err := exec.Command(p, "--version").CombinedOutput()
		v := strings.TrimSpace(string(out))
		if err != nil || (v != SPIREVersion && !strings.HasPrefix(v, SPIREVersion+"-")) {
			return fmt.Errorf("%s is SPIRE %q, not v%s, which the tests and docs name: run `make tools`", p, v, SPIREVersion)
		}
		return nil
	}
	if server, err = find("spire-server"); err != nil {
		return "", "", err
	}
	if agent, err = find("spire-agent"); err != nil {
		return "", "", err
	}
	for _, p := range []string{server, agent} {
		if err := check(p); err != nil {
			return "", "", err
		}
	}
	return server, agent, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

const spireServerConf = `server {
  bind_address          = "127.0.0.1"
  bind_port             = "%d"
  socket_path           = "%s"
  trust_domain          = "%s"
  data_dir              = "%s"
  log_level             = "DEBUG"
  ca_ttl                = "24h"
  default_x509_svid_ttl = "1h"
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type     = "sqlite3"
      connection_string = "%s"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`

const spireAgentConf = `agent {
  data_dir          = "%s"
  log_level         = "DEBUG"
  server_address    = "127.0.0.1"
  server_port       = "%d"
  socket_path       = "%s"
  trust_bundle_path = "%s"
  trust_domain      = "%s"
  join_token        = "%s"
  # hallmark-agent's spire workload attestor asks here which SPIFFE IDs a
  # caller's PID holds (Delegated Identity API).
  admin_socket_path    = "%s"
  authorized_delegates = ["%s"]
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
`

// StartSPIRE starts a SPIRE server and an agent attested to it with a join
// token, in dir (keep it short: unix socket paths are limited to 107
// bytes). It returns once the agent serves the Workload API.
func StartSPIRE(ctx context.Context, root, dir string, opts SPIREOptions) (s *SPIRE, err error) {
	serverBin, agentBin, err := FindSPIRE(root)
	if err != nil {
		return nil, err
	}
	s = &SPIRE{
		Dir: dir, ServerBin: serverBin, AgentBin: agentBin,
		ServerSocket: filepath.Join(dir, "spire-server.sock"),
		AgentSocket:  filepath.Join(dir, "workload", "spire-agent.sock"),
		// SPIRE wants the admin socket outside the Workload API's
		// directory and its subdirectories.
		AdminSocket: filepath.Join(dir, "admin", "spire-admin.sock"),
		BundlePath:  filepath.Join(dir, "bundle.pem"),
	}
	started := s
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	if len(s.AgentSocket) > 100 {
		return nil, fmt.Errorf("spire: socket path %q is too long for a unix socket; use a shorter directory", s.AgentSocket)
	}
	for _, d := range []string{"server-data", "agent-data", "admin", "workload"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	serverConf := filepath.Join(dir, "spire-server.conf")
	conf := fmt.Sprintf(spireServerConf, port, s.ServerSocket, TrustDomain,
		filepath.Join(dir, "server-data"), filepath.Join(dir, "server-data", "datastore.sqlite3"))
	conf = withLogLevel(conf, opts.LogLevel)
	if err := os.WriteFile(serverConf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if s.server, err = Start("spire-server", dir, opts.Echo, serverBin, "run", "-config", serverConf); err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, "spire-server to become healthy", 60*time.Second, func() error {
		if s.server.Exited() {
			return errors.New("spire-server exited; see " + s.server.LogPath)
		}
		_, err := s.ServerCmd(ctx, "healthcheck")
		return err
	}); err != nil {
		return nil, err
	}

	bundle, err := s.ServerCmd(ctx, "bundle", "show", "-format", "pem")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.BundlePath, []byte(bundle), 0o644); err != nil {
		return nil, err
	}
	out, err := s.ServerCmd(ctx, "token", "generate", "-ttl", "600")
	if err != nil {
		return nil, err
	}
	var token string
	for line := range strings.SplitSeq(out, "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(line), "Token:"); ok {
			token = strings.TrimSpace(t)
		}
	}
	if s.AgentID, err = spiffeid.FromPath(spiffeid.RequireTrustDomainFromString(TrustDomain), "/spire/agent/join_token/"+token); token == "" || err != nil {
		return nil, fmt.Errorf("spire-server token generate: unexpected output %q", out)
	}

	agentConf := filepath.Join(dir, "spire-agent.conf")
	conf = fmt.Sprintf(spireAgentConf, filepath.Join(dir, "agent-data"), port, s.AgentSocket, s.BundlePath, TrustDomain, token,
		s.AdminSocket, AgentID)
	conf = withLogLevel(conf, opts.LogLevel)
	if err := os.WriteFile(agentConf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if s.agent, err = Start("spire-agent", dir, opts.Echo, agentBin, "run", "-config", agentConf); err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, "spire-agent to become healthy", 60*time.Second, func() error {
		if s.agent.Exited() {
			return errors.New("spire-agent exited; see " + s.agent.LogPath)
		}
		_, err := run(ctx, agentBin, "healthcheck", "-socketPath", s.AgentSocket)
		return err
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// AdminAPIAddr is the agent's admin API address.
func (s *SPIRE) AdminAPIAddr() string { return "unix://" + s.AdminSocket }

// WorkloadAPIAddr is the agent's Workload API address as go-spiffe wants it.
func (s *SPIRE) WorkloadAPIAddr() string { return "unix://" + s.AgentSocket }

// ServerCmd runs a spire-server CLI command against the server's socket.
func (s *SPIRE) ServerCmd(ctx context.Context, args ...string) (string, error) {
	return run(ctx, s.ServerBin, append(args, "-socketPath", s.ServerSocket)...)
}

// Entry is a registration entry for a workload on the harness's agent.
type Entry struct {
	SPIFFEID spiffeid.ID
	// Binary is the absolute path of the workload's executable
	// (selector unix:path); empty selects by user only.
	Binary string
	// UID selects the workload's user (selector unix:uid); the harness's
	// own by default.
	UID *int
	// DNSName, when set, becomes the SVID's first DNS SAN and its
	// subject CN (Vault's cert auth needs a CN).
	DNSName string
	// X509SVIDTTL is the SVID lifetime; SPIRE rotates at half of it.
	X509SVIDTTL time.Duration
}

// CreateEntry registers e under the agent's node.
func (s *SPIRE) CreateEntry(ctx context.Context, e Entry) error {
	uid := os.Getuid()
	if e.UID != nil {
		uid = *e.UID
	}
	args := []string{"entry", "create", "-parentID", s.AgentID.String(), "-spiffeID", e.SPIFFEID.String(),
		"-selector", "unix:uid:" + strconv.Itoa(uid)}
	if e.Binary != "" {
		args = append(args, "-selector", "unix:path:"+e.Binary)
	}
	if e.DNSName != "" {
		args = append(args, "-dns", e.DNSName)
	}
	if e.X509SVIDTTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.X509SVIDTTL/time.Second)))
	}
	_, err := s.ServerCmd(ctx, args...)
	return err
}

// RegisterDaemons registers hallmark-server and hallmark-agent as the
// documentation says, by running deploy/spire/register-vm.sh from the
// repository at root: the daemons' uid (this process's), binary path and
// sha256. ttl, when not zero, is their X509-SVID lifetime.
func (s *SPIRE) RegisterDaemons(ctx context.Context, root string, bins Binaries, ttl time.Duration) error {
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(root, "deploy", "spire", "register-vm.sh"), s.AgentID.String())
	cmd.Env = append(os.Environ(),
		"HALLMARK_TRUST_DOMAIN="+TrustDomain,
		"HALLMARK_UID="+strconv.Itoa(os.Getuid()),
		"HALLMARK_SERVER_BIN="+bins.Server,
		"HALLMARK_AGENT_BIN="+bins.Agent,
		"HALLMARK_AGENT_NAME="+strings.TrimPrefix(AgentID.Path(), "/hallmark/agent/"),
		"SPIRE_SERVER="+s.ServerBin,
		"SPIRE_SERVER_SOCKET="+s.ServerSocket,
	)
	if ttl > 0 {
		cmd.Env = append(cmd.Env, "HALLMARK_SVID_TTL="+strconv.Itoa(int(ttl/time.Second)))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("deploy/spire/register-vm.sh: %w: %s", err, out)
	}
	return nil
}

// WaitForIdentities waits until the calling process is issued SVIDs for
// all ids: new entries take a sync interval (about 5 s) to reach the agent.
func (s *SPIRE) WaitForIdentities(ctx context.Context, ids ...spiffeid.ID) (*workloadapi.X509Context, error) {
	var x509ctx *workloadapi.X509Context
	err := WaitFor(ctx, fmt.Sprintf("SVIDs for %v", ids), 60*time.Second, func() error {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := workloadapi.FetchX509Context(fctx, workloadapi.WithAddr(s.WorkloadAPIAddr()))
		if err != nil {
			return err
		}
		have := map[spiffeid.ID]bool{}
		for _, svid := range c.SVIDs {
			have[svid.ID] = true
		}
		for _, id := range ids {
			if !have[id] {
				return fmt.Errorf("no identity issued for %s yet", id)
			}
		}
		x509ctx = c
		return nil
	})
	return x509ctx, err
}

// Close stops the agent, then the server.
func (s *SPIRE) Close() error {
	var errs []error
	for _, p := range []*Process{s.agent, s.server} {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	return errors.Join(errs...)
}

// AgentPid is the SPIRE agent's process ID (0 when it is not running).
func (s *SPIRE) AgentPid() int {
	if s.agent == nil || s.agent.Exited() {
		return 0
	}
	return s.agent.Pid()
}

// Logs returns the SPIRE processes' log file paths.
func (s *SPIRE) Logs() []string {
	var logs []string
	for _, p := range []*Process{s.server, s.agent} {
		if p != nil {
			logs = append(logs, p.LogPath)
		}
	}
	return logs
}

func run(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// withLogLevel sets a SPIRE configuration's log_level (DEBUG in the
// templates) to level, when not empty.
func withLogLevel(conf, level string) string {
	if level == "" {
		return conf
	}
	return regexp.MustCompile(`(?m)^(\s*log_level\s*=\s*)"DEBUG"`).ReplaceAllString(conf, `${1}"`+level+`"`)
}
