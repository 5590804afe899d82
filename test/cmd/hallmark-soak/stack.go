package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
	bao     *harness.Process
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
	vault, err := st.startOpenBao(ctx)
	if err != nil {
		return st, err
	}
	setup, err := harness.ConfigureVault(ctx, vault, st.spire)
	if err != nil {
		return st, fmt.Errorf("configure OpenBao: %w", err)
	}
	if err := completeVaultSetup(ctx, vault); err != nil {
		return st, err
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

// startOpenBao starts `bao server -dev -dev-tls` (or `vault`) on a free
// loopback port; the binary comes from PATH (`make soak` puts .tools/bin
// first).
//
// TODO(#11): start it through the harness once its OpenBao support lands.
func (st *soakStack) startOpenBao(ctx context.Context) (harness.Vault, error) {
	bin, err := exec.LookPath("bao")
	if err != nil {
		if bin, err = exec.LookPath("vault"); err != nil {
			return harness.Vault{}, errors.New("no bao or vault binary on PATH: install OpenBao into .tools/bin (see /work/shared/tools/openbao/README.md)")
		}
	}
	port, err := harness.FreePort()
	if err != nil {
		return harness.Vault{}, err
	}
	certDir := filepath.Join(st.dir, "openbao")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return harness.Vault{}, err
	}
	const token = "soak-root-token"
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if st.bao, err = harness.Start("openbao", certDir, nil, bin, "server", "-dev", "-dev-tls",
		"-dev-root-token-id="+token, "-dev-listen-address="+addr, "-dev-tls-cert-dir="+certDir); err != nil {
		return harness.Vault{}, err
	}
	caFile := filepath.Join(certDir, "vault-ca.pem")
	err = harness.WaitFor(ctx, "OpenBao to answer", time.Minute, func() error {
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return errors.New("no CA certificate yet")
		}
		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		resp, err := client.Get("https://" + addr + "/v1/sys/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		return harness.Vault{}, err
	}
	return harness.Vault{Addr: "https://" + addr, CACertFile: caFile, RootToken: token}, nil
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
		st.bao.Stop() //nolint:errcheck // on the way out
	}
	if st.spire != nil {
		st.spire.Close() //nolint:errcheck // on the way out
	}
	if st.pg != nil {
		st.pg.Stop()
	}
}

// rotationPolicy is the server's policy when it drives signing-CA
// rotation: signing plus what plugins/keymanager/vault/README.md adds for
// rotation, on the harness's mount.
const rotationPolicy = `
path "hallmark-pki/sign/hallmark-agent"  { capabilities = ["create", "update"] }
path "hallmark-pki/issuers"              { capabilities = ["list"] }
path "hallmark-pki/issuer/+"             { capabilities = ["read"] }
path "hallmark-pki/issuer/+/revoke"      { capabilities = ["update"] }
path "hallmark-pki/config/issuers"       { capabilities = ["read", "update"] }
path "hallmark-pki/root/rotate/internal" { capabilities = ["update"] }
`

// completeVaultSetup gives what a real OpenBao needs beyond the harness's
// setup (written against an emulator): an EC role, as
// plugins/keymanager/vault/README.md configures it, and the server policy
// rotation needs.
//
// TODO(#11): drop once the harness's OpenBao setup does it.
func completeVaultSetup(ctx context.Context, v harness.Vault) error {
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: v.CACertFile}); err != nil {
		return err
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	c.SetToken(v.RootToken)
	if _, err := c.Logical().WriteWithContext(ctx, "hallmark-pki/roles/hallmark-agent", map[string]any{
		"allowed_uri_sans": "spiffe://" + harness.TrustDomain + "/hallmark/agent/*",
		"max_ttl":          "1h", "require_cn": false, "use_csr_sans": false, "use_csr_common_name": false,
		"server_flag": false, "client_flag": false, "code_signing_flag": true, "no_store": true,
		"key_type": "ec", "key_bits": 256, "key_usage": "DigitalSignature",
	}); err != nil {
		return fmt.Errorf("OpenBao: write the agent role: %w", err)
	}
	if err := c.Sys().PutPolicyWithContext(ctx, "hallmark-server", rotationPolicy); err != nil {
		return fmt.Errorf("OpenBao: write the server's policy: %w", err)
	}
	return nil
}
