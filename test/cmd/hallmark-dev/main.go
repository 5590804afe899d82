// Command hallmark-dev runs a whole Hallmark deployment on this machine:
// SPIRE server and agent, hallmark-server and hallmark-agent, with Vault PKI
// as the key manager when a Vault-API server is at hand (`bao` or `vault` on
// PATH, or the OpenBao `make tools` installs in .tools/bin), set up by
// plugins/keymanager/vault/setup.sh, and the local key manager otherwise.
//
//	make dev    # foreground; Ctrl-C stops everything
//	make demo   # scripted walkthrough, then stops
//
// State, logs and an env.sh with the connection details live in .dev/.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hallmark-dev/hallmark/agent"
	"github.com/hallmark-dev/hallmark/test/baotest"
	"github.com/hallmark-dev/hallmark/test/harness"
)

func main() {
	demo := flag.Bool("demo", false, "run the scripted walkthrough and stop")
	verbose := flag.Bool("v", false, "echo every process's output")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *demo, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "hallmark-dev:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, demo, verbose bool) (err error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	dir := filepath.Join(root, ".dev")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	opts := harness.StackOptions{SVIDTTL: 10 * time.Minute, Policy: devPolicy(root)}
	if demo {
		// Short enough to watch a renewal.
		opts.CertificateTTL = 30 * time.Second
	}
	if verbose {
		opts.Echo = os.Stdout
	}
	kmName := "local"
	var (
		bao   *baotest.Server
		vault harness.VaultSetup
	)
	if _, err := baotest.Bin(); err == nil {
		if bao, err = baotest.StartDev(ctx); err != nil {
			return err
		}
		defer bao.Stop()
		kmName = fmt.Sprintf("vault, PKI on %s (dev mode)", bao)
		opts.KeyManager = harness.VaultKeyManager(bao, harness.VaultOptions{Rotation: true}, &vault)
	}
	step("Starting SPIRE, hallmark-server (key manager: %s) and hallmark-agent in %s", kmName, dir)
	if bao == nil {
		fmt.Println("   (no Vault-API server: using the local key manager; `make tools` installs OpenBao, or put bao or vault on PATH)")
	}
	start := time.Now()
	st, err := harness.StartStack(ctx, dir, opts)
	if err != nil {
		return fmt.Errorf("%w\n(logs in %s)", err, dir)
	}
	defer func() {
		step("Stopping everything")
		if cerr := st.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		} else {
			fmt.Println("   stopped cleanly")
		}
	}()
	fmt.Printf("   up in %s\n", time.Since(start).Round(100*time.Millisecond))
	signingCA := st.LocalCAPath()
	if bao != nil {
		signingCA = filepath.Join(dir, "vault-signing-ca.pem")
		if err := os.WriteFile(signingCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: vault.CA.Raw}), 0o644); err != nil {
			return err
		}
	}
	envFile, err := writeEnv(st, dir, signingCA, bao)
	if err != nil {
		return err
	}
	if demo {
		return walkthrough(ctx, st, bao, vault)
	}
	fmt.Printf(`
Hallmark is running. In another shell:

  source %s
  hallmark status             # the agent's SVID and signing certificate
  hallmark whoami             # how the agent sees you; policy lets your uid attest checkout, build, test, package
  hallmark attest --step build --product out.txt -- sh -c 'date > out.txt'
  spire-server entry show     # SPIRE registrations

Logs: %s/*.log
Press Ctrl-C to stop everything.
`, envFile, dir)
	<-ctx.Done()
	return nil
}

func walkthrough(ctx context.Context, st *harness.Stack, bao *baotest.Server, vault harness.VaultSetup) error {
	s, err := st.Agent.Status(ctx)
	if err != nil {
		return err
	}
	step("The agent's identity: an X509-SVID from SPIRE, rotated by SPIRE")
	fmt.Printf("   SPIFFE ID   %s\n   serial      %s\n   expires     %s\n", s.SPIFFEID, s.SVIDSerial, s.SVIDNotAfter.Format(time.RFC3339))

	step("Its signing certificate, issued by hallmark-server over mTLS for an in-memory key")
	printCert(s.SigningCertificate)
	if bao != nil {
		if err := showVaultIssuer(s.SigningCertificate, bao, vault); err != nil {
			return err
		}
	}

	step("Waiting for the agent to renew (at half the certificate's lifetime, %s)", s.SigningCertificate.RenewAt.Sub(s.SigningCertificate.NotBefore).Round(time.Second))
	first := s.SigningCertificate.Serial
	err = harness.WaitFor(ctx, "a renewal", time.Minute, func() error {
		if s, err = st.Agent.Status(ctx); err != nil {
			return err
		}
		if s.SigningCertificate == nil || s.SigningCertificate.Serial == first {
			return errors.New("not renewed yet")
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("   renewed: serial %s -> %s (new key), %d renewals, %d failures\n",
		first, s.SigningCertificate.Serial, s.Renewals, s.RenewalFailures)

	step("The same through the CLI: hallmark status")
	cmd := exec.CommandContext(ctx, st.Bins.CLI, "status", "--agent-health-addr", st.Agent.HealthAddr)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return err
	}
	return attestWalkthrough(ctx, st)
}

// showVaultIssuer checks that the signing certificate was issued by the
// Vault PKI mount's CA, and says so.
func showVaultIssuer(c *agent.CertStatus, bao *baotest.Server, vault harness.VaultSetup) error {
	if c == nil {
		return errors.New("no signing certificate")
	}
	var chain []*x509.Certificate
	for rest := []byte(c.ChainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return err
		}
		chain = append(chain, cert)
	}
	if len(chain) < 2 {
		return errors.New("the signing certificate came without its CA")
	}
	if err := chain[0].CheckSignatureFrom(vault.CA); err != nil {
		return fmt.Errorf("the signing certificate was not issued by the Vault CA: %w", err)
	}
	fmt.Printf("   issued by the Vault CA: %q, the root of PKI mount %s/ on %s\n   (checked: its signature verifies with that CA's key, which never leaves Vault;\n   Vault backdates NotBefore by 30s, so the TTL above is certificate_ttl plus 30s)\n",
		vault.CA.Subject.CommonName, vault.Setup.PKIMount, bao)
	return nil
}

// devPolicy lets the developer's uid attest a few steps in the repository,
// the home directory and /tmp.
func devPolicy(root string) func(string) string {
	return func(string) string {
		roots := []string{root, "/tmp"}
		if home, err := os.UserHomeDir(); err == nil {
			roots = append(roots, home)
		}
		quoted := make([]string, len(roots))
		for i, r := range roots {
			quoted[i] = fmt.Sprintf("%q", r)
		}
		return fmt.Sprintf(`
  rule "developer" {
    selectors       = ["unix:uid:%d"]
    steps           = ["checkout", "build", "test", "package"]
    workspace_roots = [%s]
  }`, os.Getuid(), strings.Join(quoted, ", "))
	}
}

func attestWalkthrough(ctx context.Context, st *harness.Stack) error {
	ws := filepath.Join(st.Dir, "workspace")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(ws, "main.c"), []byte("int main(void) { return 0; }\n"), 0o644); err != nil {
		return err
	}
	run := func(bin string, args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, bin, args...)
		c.Dir = ws
		c.Env = append(os.Environ(), "HALLMARK_AGENT_SOCKET="+st.Agent.Socket)
		c.Stdout, c.Stderr = os.Stdout, os.Stdout
		return c
	}
	hallmark := func(args ...string) *exec.Cmd { return run(st.Bins.CLI, args...) }
	// Build steps call hallmark-attest: `hallmark attest` flag for flag,
	// quick to start.
	hallmarkAttest := func(args ...string) *exec.Cmd { return run(st.Bins.Attest, args...) }
	step("How the agent sees this shell's user: hallmark whoami")
	if err := hallmark("whoami").Run(); err != nil {
		return err
	}
	step("A build step, attested and logged: hallmark-attest --wait-log --step build --material main.c --product dist -- sh -c '...'")
	build := hallmarkAttest("--wait-log", "--step", "build", "--material", "main.c", "--product", "dist", "--out", "build.hallmark.json",
		"--", "sh", "-c", "mkdir -p dist && cp main.c dist/app && echo built > dist/VERSION")
	if err := build.Run(); err != nil {
		return fmt.Errorf("attest build: %w", err)
	}
	if err := summarizeBundle(filepath.Join(ws, "build.hallmark.json"), ws); err != nil {
		return err
	}
	step("A step outside policy is refused, with the reason: hallmark-attest --step deploy ...")
	deploy := hallmarkAttest("--step", "deploy", "--product", "dist", "--out", "deploy.hallmark.json")
	if err := deploy.Run(); err == nil {
		return errors.New("the deploy step was attested, but policy does not allow it")
	}
	if _, err := os.Stat(filepath.Join(ws, "deploy.hallmark.json")); err == nil {
		return errors.New("a bundle was written for a refused step")
	}
	fmt.Println("   (refused as expected; no bundle written)")

	step("Offline verification against the server's trusted root (GET /trust/trusted_root.json)")
	root, err := st.Server.Get(ctx, "/trust/trusted_root.json")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(ws, "trusted_root.json"), root, 0o644); err != nil {
		return err
	}
	builder := harness.AgentID.String()
	fmt.Printf("   $ hallmark verify dist/app --bundle build.hallmark.json --trusted-root trusted_root.json --builder-id-prefix %s\n", builder)
	if err := hallmark("verify", "dist/app", "--bundle", "build.hallmark.json", "--trusted-root", "trusted_root.json", "--builder-id-prefix", builder).Run(); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	step("A tampered artifact fails, naming the check")
	if err := os.WriteFile(filepath.Join(ws, "dist", "app"), []byte("int main(void) { return 1; }\n"), 0o644); err != nil {
		return err
	}
	fmt.Println("   $ hallmark verify dist/app ... (after changing dist/app)")
	if err := hallmark("verify", "dist/app", "--bundle", "build.hallmark.json", "--trusted-root", "trusted_root.json", "--builder-id-prefix", builder).Run(); err == nil {
		return errors.New("a tampered artifact verified")
	}
	fmt.Println("   (not verified, as expected)")
	return pipelineWalkthrough(ctx, st)
}

// summarizeBundle prints what the bundle says and checks its subjects
// against sha256sum.
func summarizeBundle(path, ws string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var b struct {
		MediaType    string `json:"mediaType"`
		DSSEEnvelope struct {
			Payload     []byte `json:"payload"`
			PayloadType string `json:"payloadType"`
		} `json:"dsseEnvelope"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		return err
	}
	var st struct {
		Subject []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		PredicateType string `json:"predicateType"`
		Predicate     struct {
			RunDetails struct {
				Builder struct {
					ID string `json:"id"`
				} `json:"builder"`
			} `json:"runDetails"`
		} `json:"predicate"`
	}
	if err := json.Unmarshal(b.DSSEEnvelope.Payload, &st); err != nil {
		return err
	}
	fmt.Printf("   bundle      %s (%s, %d bytes)\n   statement   %s, predicate %s\n   builder.id  %s\n",
		filepath.Base(path), b.MediaType, len(raw), b.DSSEEnvelope.PayloadType, st.PredicateType, st.Predicate.RunDetails.Builder.ID)
	for _, s := range st.Subject {
		fmt.Printf("   subject     %s sha256:%s\n", s.Name, s.Digest["sha256"])
	}
	out, err := exec.Command("sh", "-c", "cd "+ws+" && sha256sum dist/*").Output()
	if err != nil {
		return err
	}
	fmt.Printf("   sha256sum says:\n%s", indent(string(out)))
	return nil
}

func indent(s string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("     " + line + "\n")
	}
	return b.String()
}

func printCert(c *agent.CertStatus) {
	if c == nil {
		fmt.Println("   (none)")
		return
	}
	fmt.Printf("   subject SAN %s\n   issuer      %s\n   serial      %s\n   TTL         %s (%s to %s)\n",
		strings.Join(c.URISANs, ", "), c.Issuer, c.Serial, c.NotAfter.Sub(c.NotBefore),
		c.NotBefore.Format(time.TimeOnly), c.NotAfter.Format(time.TimeOnly))
}

// writeEnv writes the connection details as shell exports.
func writeEnv(st *harness.Stack, dir, signingCA string, bao *baotest.Server) (string, error) {
	path := filepath.Join(dir, "env.sh")
	env := fmt.Sprintf(`# Hallmark dev stack (%s); source this file.
export PATH=%q:%q:"$PATH"
export HALLMARK_AGENT_SOCKET=%q
export HALLMARK_AGENT_HEALTH_ADDR=%q
export HALLMARK_SERVER_ADDRESS=%q
export HALLMARK_SERVER_HEALTH_ADDR=%q
export SPIFFE_ENDPOINT_SOCKET=%q
export SPIRE_SERVER_SOCKET=%q
export HALLMARK_TRUST_BUNDLE=%q
export HALLMARK_SIGNING_CA=%q
spire-server() { command spire-server "$@" -socketPath "$SPIRE_SERVER_SOCKET"; }
`, time.Now().Format(time.RFC3339), st.Bins.Dir, filepath.Dir(st.SPIRE.ServerBin),
		st.Agent.Socket, st.Agent.HealthAddr, st.Server.ServerAddr(), st.Server.HealthAddr,
		st.SPIRE.WorkloadAPIAddr(), st.SPIRE.ServerSocket, st.SPIRE.BundlePath, signingCA)
	if bao != nil {
		env += fmt.Sprintf("export VAULT_ADDR=%q\nexport VAULT_CACERT=%q\n", bao.Addr, bao.CACertFile)
	}
	return path, os.WriteFile(path, []byte(env), 0o600)
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}
