package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The identities the harness registers.
var (
	td       = spiffeid.RequireTrustDomainFromString(TrustDomain)
	ServerID = spiffeid.RequireFromPath(td, "/hallmark/server")
	AgentID  = spiffeid.RequireFromPath(td, "/hallmark/agent/node-1")
)

// ServerDNSName is the DNS SAN (and so the CN) of the server's SVID; Vault's
// cert auth names its entity alias after the CN.
const ServerDNSName = "hallmark-server"

// StackOptions configure StartStack.
type StackOptions struct {
	Echo io.Writer // process output, besides the log files
	// SVIDTTL is the X509-SVID lifetime of hallmark-server and
	// hallmark-agent; SPIRE rotates at half of it. Default 1h.
	SVIDTTL          time.Duration
	CertificateTTL   time.Duration
	MaxConnectionAge time.Duration
	// KeyManager returns the server's key_manager block once SPIRE runs
	// (the Vault setup needs the trust bundle); nil means local.
	KeyManager func(ctx context.Context, sp *SPIRE) (string, error)
	// Policy is the agent's policy rules (HCL rule blocks); the stack's
	// directory is passed so rules can name workspaces in it.
	Policy func(dir string) string
	// AgentEnv is extra environment for hallmark-agent.
	AgentEnv []string
	// AgentExtra is HCL appended to the agent block.
	AgentExtra string
	// SocketGroup is the agent socket's group (name or GID); callers of
	// another uid need it, and the stack's directories become traversable.
	SocketGroup string
	// SPIREExtra is added to the agent's spire workload attestor block.
	SPIREExtra string
	// Quiet runs SPIRE and hallmark-agent at info level, as deployments
	// do, instead of debug (benchmarks: debug logging costs CPU per call).
	Quiet bool
}

// Stack is SPIRE plus one hallmark-server and one hallmark-agent.
type Stack struct {
	Root   string
	Dir    string
	Bins   Binaries
	SPIRE  *SPIRE
	Server *Service
	Agent  *Service
}

// StartStack builds the binaries, starts SPIRE, registers the server and
// agent as docs/configuration.md says (deploy/spire/register-vm.sh), and
// starts both, returning once the agent holds a
// signing certificate. dir should be short (unix socket paths).
func StartStack(ctx context.Context, dir string, o StackOptions) (st *Stack, err error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	st = &Stack{Root: root, Dir: dir}
	started := st
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	if st.Bins, err = BuildBinaries(ctx, root, filepath.Join(dir, "bin")); err != nil {
		return nil, err
	}
	if st.SPIRE, err = StartSPIRE(ctx, root, dir, SPIREOptions{Echo: o.Echo, LogLevel: o.spireLogLevel()}); err != nil {
		return nil, err
	}
	ttl := o.SVIDTTL
	if ttl == 0 {
		ttl = time.Hour
	}
	if err := st.SPIRE.RegisterDaemons(ctx, root, st.Bins, ttl); err != nil {
		return nil, err
	}
	km := ""
	if o.KeyManager != nil {
		if km, err = o.KeyManager(ctx, st.SPIRE); err != nil {
			return nil, fmt.Errorf("key manager setup: %w", err)
		}
	}
	if st.Server, err = st.SPIRE.StartServer(ctx, st.Bins.Server, dir, "hallmark-server", ServerOptions{
		CertificateTTL: o.CertificateTTL, MaxConnectionAge: o.MaxConnectionAge, KeyManager: km, Echo: o.Echo,
	}); err != nil {
		return nil, err
	}
	policy := ""
	if o.Policy != nil {
		policy = o.Policy(dir)
	}
	if st.Agent, err = st.SPIRE.StartAgent(ctx, st.Bins.Agent, dir, "hallmark-agent", AgentOptions{
		ServerAddr: st.Server.ServerAddr(), ServerID: ServerID.String(), Echo: o.Echo,
		Policy: policy, Env: o.AgentEnv, SocketGroup: o.SocketGroup, Extra: o.AgentExtra, SPIREExtra: o.SPIREExtra,
		LogLevel: o.agentLogLevel(),
	}); err != nil {
		return nil, err
	}
	return st, nil
}

// LocalCAPath is where the server's local key manager keeps its CA
// certificate.
func (st *Stack) LocalCAPath() string {
	return filepath.Join(st.Server.Dir, "data", "keymanager", "local", "ca.pem")
}

// Close stops everything in reverse order of start.
func (st *Stack) Close() error {
	var errs []error
	for _, s := range []*Service{st.Agent, st.Server} {
		if s != nil {
			errs = append(errs, s.Stop())
		}
	}
	if st.SPIRE != nil {
		errs = append(errs, st.SPIRE.Close())
	}
	return errors.Join(errs...)
}

// ShortTempDir makes a directory under /tmp with a short name, for unix
// socket paths that must stay under 108 bytes.
func ShortTempDir(prefix string) (string, error) {
	return os.MkdirTemp("/tmp", prefix)
}

func (o StackOptions) spireLogLevel() string {
	if o.Quiet {
		return "INFO"
	}
	return ""
}

func (o StackOptions) agentLogLevel() string {
	if o.Quiet {
		return "info"
	}
	return ""
}
