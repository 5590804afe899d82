package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/test/baotest"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// Timings of the stack.
const (
	svidTTL = 2 * time.Minute // SPIRE rotates at half
	certTTL = 2 * time.Minute // agents renew at half
)

// builderID is the identity the agents' policy lets attest; this process
// holds it.
var builderID = spiffeid.RequireFromString("spiffe://" + harness.TrustDomain + "/ci/soak-builder")

// soakStack is everything the soak runs.
type soakStack struct {
	dir     string
	bins    harness.Binaries
	pg      *pgtest.Server
	bao     *baotest.Server
	spire   *harness.SPIRE
	servers []*harness.Service
	agents  []*harness.Service
	wsRoot  string
}

// startStack starts the stack in dir.
func startStack(ctx context.Context, dir string, ev *events) (st *soakStack, err error) {
	st = &soakStack{dir: dir, wsRoot: filepath.Join(dir, "workspaces")}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	root, err := harness.RepoRoot()
	if err != nil {
		return st, err
	}
	ev.add("build", "go build ./cmd/...")
	if st.bins, err = harness.BuildBinaries(ctx, root, filepath.Join(dir, "bin")); err != nil {
		return st, err
	}
	ev.add("start", "PostgreSQL")
	if st.pg, err = pgtest.Start(ctx, pgtest.Options{}); err != nil {
		return st, err
	}
	dsn, err := st.pg.CreateDatabase(ctx, "hallmark")
	if err != nil {
		return st, err
	}
	ev.add("start", "SPIRE server and agent")
	if st.spire, err = harness.StartSPIRE(ctx, root, dir, harness.SPIREOptions{}); err != nil {
		return st, err
	}
	self, err := os.Executable()
	if err != nil {
		return st, err
	}
	for _, e := range []harness.Entry{
		{SPIFFEID: harness.ServerID, Binary: st.bins.Server, DNSName: harness.ServerDNSName, X509SVIDTTL: svidTTL},
		{SPIFFEID: harness.AgentID, Binary: st.bins.Agent, X509SVIDTTL: svidTTL},
		{SPIFFEID: builderID, Binary: self, X509SVIDTTL: time.Hour},
	} {
		if err := st.spire.CreateEntry(ctx, e); err != nil {
			return st, err
		}
	}
	ev.add("start", "OpenBao dev server (vault key manager)")
	if st.bao, err = baotest.StartDev(ctx); err != nil {
		return st, err
	}
	setup, err := harness.ConfigureVault(ctx, st.bao, st.spire, harness.VaultOptions{Rotation: true, Prefix: "soak"})
	if err != nil {
		return st, fmt.Errorf("configure OpenBao: %w", err)
	}
	ev.add("start", "two hallmark-server replicas on PostgreSQL")
	st.servers, err = st.spire.StartReplicas(ctx, st.bins.Server, dir, "hallmark-server", 2, harness.ServerOptions{
		CertificateTTL: certTTL, KeyManager: setup.KeyManager,
		Store: fmt.Sprintf("store \"postgres\" {\n  dsn = %q\n}\n", dsn),
	})
	if err != nil {
		return st, err
	}
	addrs := []string{st.servers[0].ServerAddr(), st.servers[1].ServerAddr()}
	policy := fmt.Sprintf(`
  rule "soak" {
    spiffe_ids      = [%q]
    steps           = ["build"]
    workspace_roots = [%q]
  }`, builderID.String(), st.wsRoot)
	ev.add("start", "two hallmark-agents")
	for i := range 2 {
		ag, err := st.spire.StartAgent(ctx, st.bins.Agent, dir, fmt.Sprintf("hallmark-agent-%d", i+1), harness.AgentOptions{
			ServerAddrs: addrs, ServerID: harness.ServerID.String(), Policy: policy,
		})
		if err != nil {
			return st, err
		}
		st.agents = append(st.agents, ag)
	}
	if _, err := st.spire.WaitForIdentities(ctx, builderID); err != nil {
		return st, err
	}
	return st, nil
}

// admin runs `hallmark admin ARGS --json` against replica 1's admin socket.
func (st *soakStack) admin(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "--json", "--server-admin-socket", st.servers[0].AdminSocket)
	out, err := exec.CommandContext(ctx, st.bins.CLI, append([]string{"admin"}, args...)...).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return out, fmt.Errorf("hallmark admin %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
	}
	return out, err
}

// close stops everything, in reverse order of start.
func (st *soakStack) close() {
	for _, s := range st.agents {
		s.Stop() //nolint:errcheck // on the way out
	}
	for _, s := range st.servers {
		s.Stop() //nolint:errcheck // on the way out
	}
	if st.bao != nil {
		st.bao.Stop()
	}
	if st.spire != nil {
		st.spire.Close() //nolint:errcheck // on the way out
	}
	if st.pg != nil {
		st.pg.Stop()
	}
}
