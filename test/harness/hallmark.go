package harness

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hallmark-dev/hallmark/agent"
)

// Binaries are the Hallmark executables built from this repository.
type Binaries struct {
	Dir    string
	Server string // hallmark-server
	Agent  string // hallmark-agent
	CLI    string // hallmark
	Attest string // hallmark-attest: `hallmark attest` alone, light to start
}

// BuildFlags are the flags `make build` gives go build: without
// golang.org/x/net/trace, which grpc-go links unless told not to and
// Hallmark never enables (grpc.EnableTracing), and without a symbol table
// or DWARF, as SPIRE's own releases are built. Size is CPU on every step
// in SPIRE's pid mode: with discover_workload_path, the SPIRE agent hashes
// hallmark-agent's whole executable on every Delegated Identity call, to
// attest it as a delegate, and the step's executable too.
var BuildFlags = []string{"-tags", "grpcnotrace", "-ldflags=-s -w"}

// BuildBinaries builds ./cmd/... from root into dir, as `make build` does.
func BuildBinaries(ctx context.Context, root, dir string) (Binaries, error) {
	args := append(append([]string{"build"}, BuildFlags...), "-o", dir+string(filepath.Separator), "./cmd/...")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build ./cmd/...: %w: %s", err, out)
	}
	return Binaries{
		Dir:    dir,
		Server: filepath.Join(dir, "hallmark-server"),
		Agent:  filepath.Join(dir, "hallmark-agent"),
		CLI:    filepath.Join(dir, "hallmark"),
		Attest: filepath.Join(dir, "hallmark-attest"),
	}, nil
}

// Service is a running hallmark-server or hallmark-agent.
type Service struct {
	Name       string
	Bin        string
	ConfigPath string
	HealthAddr string // host:port of /healthz, /readyz, /metrics (and /status on agents)
	Dir        string
	echo       io.Writer
	proc       *Process
	listenAddr string   // servers
	notReady   bool     // wait for /healthz only
	env        []string // extra environment
	// Socket is an agent's local API socket.
	Socket string
	// AdminSocket is a server's admin API socket (signing-CA rotation).
	AdminSocket string
}

// ServerOptions configure a hallmark-server.
type ServerOptions struct {
	ListenAddr       string // default: a free port on 127.0.0.1
	CertificateTTL   time.Duration
	MaxConnectionAge time.Duration
	// KeyManager is an HCL `key_manager "NAME" { ... }` block; empty means
	// the local key manager.
	KeyManager string
	// Policy is HCL rule blocks for the server's policy block, pushed to
	// agents; empty means none.
	Policy string
	// Store is an HCL `store "NAME" { ... }` block; empty means the
	// sqlite store in the data directory.
	Store string
	Echo  io.Writer
}

// ServerAddr is the address agents dial (set after start).
func (s *Service) ServerAddr() string { return s.listenAddr }

// StartServer writes a configuration for bin under dir/name and starts it,
// returning once /readyz answers.
func (sp *SPIRE) StartServer(ctx context.Context, bin, dir, name string, o ServerOptions) (*Service, error) {
	if o.ListenAddr == "" {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		o.ListenAddr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "server {\n  trust_domain = %q\n  listen_address = %q\n  health_address = %q\n  data_dir = %q\n  workload_api_socket = %q\n",
		TrustDomain, o.ListenAddr, "%HEALTH%", filepath.Join(dir, name, "data"), sp.WorkloadAPIAddr())
	if o.CertificateTTL > 0 {
		fmt.Fprintf(&b, "  certificate_ttl = %q\n", o.CertificateTTL)
	}
	if o.MaxConnectionAge > 0 {
		fmt.Fprintf(&b, "  max_connection_age = %q\n", o.MaxConnectionAge)
	}
	adminSocket := filepath.Join(dir, name, "admin.sock")
	fmt.Fprintf(&b, "  admin_socket = %q\n", adminSocket)
	b.WriteString("  log_level = \"debug\"\n}\n")
	b.WriteString(o.KeyManager)
	b.WriteString(o.Store)
	b.WriteString(policyBlock(o.Policy))
	svc, err := startService(ctx, bin, dir, name, b.String(), o.Echo)
	if err != nil {
		return nil, err
	}
	svc.listenAddr = o.ListenAddr
	svc.AdminSocket = adminSocket
	return svc, nil
}

// AgentOptions configure a hallmark-agent.
type AgentOptions struct {
	ServerAddr string
	// ServerAddrs, if set, are several replicas' addresses
	// (server_addresses) instead of ServerAddr.
	ServerAddrs []string
	ServerID    string
	// NotReady returns as soon as the agent serves /healthz, without
	// waiting for a signing certificate (for agents meant to fail).
	NotReady bool
	// Policy is HCL rule blocks for the agent's policy block; empty
	// means no block: the agent follows the server's policy.
	Policy string
	// Env is extra environment, e.g. test hooks.
	Env []string
	// Extra is HCL appended to the agent block, e.g. "max_files = 10".
	Extra string
	// SocketGroup is the local API socket's group; the agent's directory
	// is made traversable (0711) so callers of other uids reach it.
	SocketGroup string
	// SPIREExtra is added to the spire workload attestor's block (e.g.
	// `attest = "unix_selectors"`).
	SPIREExtra string
	// LogLevel is the agent's log_level: "debug" when empty (tests read
	// its logs); benchmarks use "info", as a deployment does.
	LogLevel string
	Echo     io.Writer
}

// StartAgent writes a configuration for bin under dir/name and starts it,
// returning once it holds a signing certificate (/readyz).
func (sp *SPIRE) StartAgent(ctx context.Context, bin, dir, name string, o AgentOptions) (*Service, error) {
	socket := filepath.Join(dir, name, "agent.sock")
	group := ""
	if o.SocketGroup != "" {
		group = fmt.Sprintf("socket_group        = %q", o.SocketGroup)
		for _, d := range []string{dir, filepath.Join(dir, name)} {
			if err := os.MkdirAll(d, 0o711); err != nil {
				return nil, err
			}
			if err := os.Chmod(d, 0o711); err != nil {
				return nil, err
			}
		}
	}
	addr := fmt.Sprintf("server_address      = %q", o.ServerAddr)
	if len(o.ServerAddrs) > 0 {
		quoted := make([]string, len(o.ServerAddrs))
		for i, a := range o.ServerAddrs {
			quoted[i] = strconv.Quote(a)
		}
		addr = "server_addresses    = [" + strings.Join(quoted, ", ") + "]"
	}
	conf := fmt.Sprintf(`agent {
  %s
  server_spiffe_id    = %q
  workload_api_socket = %q
  health_address      = %q
  socket_path         = %q
  data_dir            = %q
  %s
  %s
  log_level           = %q
}

workload_attestor "unix" {}

workload_attestor "spire" {
  admin_socket = %q
  %s
}
%s
`, addr, o.ServerID, sp.WorkloadAPIAddr(), "%HEALTH%", socket, filepath.Join(dir, name, "data"), group, o.Extra, cmp.Or(o.LogLevel, "debug"), sp.AdminAPIAddr(), o.SPIREExtra, policyBlock(o.Policy))
	s := &Service{notReady: o.NotReady, env: o.Env, Socket: socket}
	return s.start(ctx, bin, dir, name, conf, o.Echo)
}

func startService(ctx context.Context, bin, dir, name, conf string, echo io.Writer) (*Service, error) {
	s := &Service{}
	return s.start(ctx, bin, dir, name, conf, echo)
}

func (s *Service) start(ctx context.Context, bin, dir, name, conf string, echo io.Writer) (*Service, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	s.Name, s.Bin, s.Dir, s.echo = name, bin, filepath.Join(dir, name), echo
	s.HealthAddr = fmt.Sprintf("127.0.0.1:%d", port)
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	s.ConfigPath = filepath.Join(s.Dir, "config.hcl")
	conf = strings.Replace(conf, "%HEALTH%", s.HealthAddr, 1)
	if err := os.WriteFile(s.ConfigPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return s, s.Start(ctx)
}

// Start (re)starts the service with its configuration and waits for it.
func (s *Service) Start(ctx context.Context) error {
	p, err := StartEnv(s.Name, s.Dir, s.echo, s.env, s.Bin, "run", "--config", s.ConfigPath)
	if err != nil {
		return err
	}
	s.proc = p
	path := "/readyz"
	if s.notReady {
		path = "/healthz"
	}
	err = WaitFor(ctx, s.Name+" "+path, 60*time.Second, func() error {
		if p.Exited() {
			return errors.New("exited; see " + p.LogPath)
		}
		_, err := s.Get(ctx, path)
		return err
	})
	if err != nil {
		p.Stop() //nolint:errcheck // reporting the start failure
		return fmt.Errorf("%w\n--- %s log (tail) ---\n%s", err, s.Name, tail(p.Log(), 40))
	}
	return nil
}

// Stop stops the service (SIGTERM, then SIGKILL after 10s).
func (s *Service) Stop() error {
	if s.proc == nil {
		return nil
	}
	return s.proc.Stop()
}

// Log returns the service's output so far.
func (s *Service) Log() string {
	if s.proc == nil {
		return ""
	}
	return s.proc.Log()
}

// LogPath is the service's log file.
func (s *Service) LogPath() string { return filepath.Join(s.Dir, s.Name+".log") }

// Get fetches path from the service's health listener; non-200 answers are
// errors.
func (s *Service) Get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.HealthAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// Status reads an agent's /status.
func (s *Service) Status(ctx context.Context) (agent.Status, error) {
	var st agent.Status
	body, err := s.Get(ctx, "/status")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(body, &st)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Pid is the running service's process ID (0 when stopped).
func (s *Service) Pid() int {
	if s.proc == nil || s.proc.Exited() {
		return 0
	}
	return s.proc.Pid()
}

// policyBlock wraps rule blocks in a policy block; empty stays empty.
func policyBlock(rules string) string {
	if rules == "" {
		return ""
	}
	return "\npolicy {\n" + rules + "\n}\n"
}

// Kill sends SIGKILL to the service and waits for it (a crash).
func (s *Service) Kill() {
	if s.proc != nil && !s.proc.Exited() {
		s.proc.Kill()
	}
}
