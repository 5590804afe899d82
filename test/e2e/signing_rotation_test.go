package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// Issue #5, signing-CA part. Under continuous load (30 attestations/s
// from six build steps), a full signing-CA rotation through the real
// `hallmark admin rotate signing` CLI: prepare, activate, taint, revoke.
// No attestation fails and the log refuses nothing; within 10 s of the
// taint the agent holds a certificate from the new issuer; a bundle made
// before the rotation still verifies with the updated trusted root; a
// bundle logged under the old issuer after the revocation time does not,
// and names the chain check.
func TestSigningCARotation(t *testing.T) {
	runSigningCARotation(t, "hm-sig-", harness.StackOptions{}, nil)
}

// runSigningCARotation runs the rotation on a stack of its own with o's key
// manager; check, when set, sees each step's report.
func runSigningCARotation(t *testing.T, prefix string, o harness.StackOptions, check func(step signingStep)) {
	ctx := context.Background()
	// A certificate TTL long enough that only the taint makes the agent
	// renew during the test.
	o.CertificateTTL = 20 * time.Minute
	st := loadStack(t, prefix, o)
	dir := st.Dir
	require.NoError(t, registerBuilders(ctx, st))
	r := &signingRotation{t: t, st: st, dir: dir, check: check}

	load := startLoad(t, rotationLoad(st))
	oldIssuer := r.agentIssuer()
	before := r.attest("before")

	prepared := r.step("prepare")
	require.Equal(t, "prepared", prepared.Issuer.State)
	require.Equal(t, oldIssuer, r.agentIssuer(), "prepare changes nothing for agents")

	activated := r.step("activate")
	require.Equal(t, prepared.Issuer.ID, activated.Issuer.ID)
	require.Equal(t, "active", activated.Issuer.State)
	activatedAt := time.Now().UTC().Truncate(time.Second).Add(time.Second)
	time.Sleep(2 * time.Second) // past activatedAt on the second-granular clocks
	between := r.attest("between")
	require.Equal(t, oldIssuer, r.agentIssuer(), "agents keep their certificate until the taint")

	tainted := r.step("taint")
	taintedAt := time.Now()
	require.Equal(t, "tainted", tainted.Issuer.State)
	require.Equal(t, oldIssuer, tainted.Issuer.Fingerprint)
	var moved time.Duration
	require.Eventually(t, func() bool {
		if r.agentIssuer() == prepared.Issuer.Fingerprint {
			moved = time.Since(taintedAt)
			return true
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "within 10 s of the taint the agent holds a certificate from the new issuer")
	after := r.attest("after")

	// Past the grace, so that a straggler under the old issuer would be
	// refused and show up below.
	time.Sleep(3 * time.Second)
	revoked := r.step("revoke", "--at", activatedAt.Format(time.RFC3339))
	require.Equal(t, "revoked", revoked.Issuer.State)
	require.NotNil(t, revoked.Issuer.TrustedUntil)
	// Revoked from T: trusted until just before it (attest/trust).
	require.True(t, revoked.Issuer.TrustedUntil.Equal(activatedAt.Add(-time.Nanosecond)), "trusted until %s", revoked.Issuer.TrustedUntil)

	res := load.stop()
	rate := float64(res.ok) / res.elapsed.Seconds()
	t.Logf("load: %d attestations in %s (%.1f/s), %d failed; agent seen on the new issuer %s after the taint call returned (polled every 50 ms)",
		res.ok, res.elapsed.Round(time.Millisecond), rate, res.failed, moved.Round(time.Millisecond))
	require.Zero(t, res.failed, "failed attestations: %v", res.errors)
	require.GreaterOrEqual(t, rate, 20.0)

	// Nothing the agent signed was refused by the log (the outbox drains
	// every attestation; the agent metrics count refusals).
	require.Zero(t, counter(t, st.Agent, `hallmark_agent_log_submissions_total{result="denied"}`), "log refusals")

	// The updated trusted root: the bundle from before the rotation
	// verifies; the one logged under the old issuer after the revocation
	// time does not; the new issuer's does.
	root := r.trustedRoot()
	require.Equal(t, 0, r.verify(before, root), "before the rotation")
	require.Equal(t, 0, r.verify(after, root), "under the new issuer")
	require.Equal(t, 1, r.verify(between, root), "under the old issuer after the revocation time")
	require.Contains(t, r.lastOutput, "chain")
}

type signingRotation struct {
	t          *testing.T
	st         *harness.Stack
	dir        string
	lastOutput string
	check      func(signingStep)
}

type signingStep struct {
	Step   string `json:"step"`
	Issuer struct {
		ID           string     `json:"id"`
		State        string     `json:"state"`
		Fingerprint  string     `json:"fingerprint"`
		TrustedUntil *time.Time `json:"trusted_until"`
	} `json:"issuer"`
}

// step runs `hallmark admin rotate signing STEP` and returns its report.
func (r *signingRotation) step(name string, args ...string) signingStep {
	r.t.Helper()
	cmd := exec.Command(r.st.Bins.CLI, append([]string{"admin", "rotate", "signing", name, "--json",
		"--server-admin-socket", r.st.Server.AdminSocket}, args...)...)
	out, err := cmd.Output()
	require.NoError(r.t, err, "admin rotate signing %s: %s", name, stderrOf(err))
	var s signingStep
	require.NoError(r.t, json.Unmarshal(out, &s), "%s", out)
	r.t.Logf("rotate signing %s: issuer %s is %s", name, s.Issuer.ID, s.Issuer.State)
	if r.check != nil {
		r.check(s)
	}
	return s
}

// agentIssuer is the fingerprint (hex SHA-256) of the CA that issued the
// agent's current signing certificate, from its /status.
func (r *signingRotation) agentIssuer() string {
	r.t.Helper()
	body, err := r.st.Agent.Get(context.Background(), "/status")
	require.NoError(r.t, err)
	var s struct {
		SigningCertificate struct {
			ChainPEM string `json:"chain_pem"`
		} `json:"signing_certificate"`
	}
	require.NoError(r.t, json.Unmarshal(body, &s))
	rest := []byte(s.SigningCertificate.ChainPEM)
	var chain []*x509.Certificate
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		require.NoError(r.t, err)
		chain = append(chain, c)
	}
	require.GreaterOrEqual(r.t, len(chain), 2, "the agent's chain")
	fp := sha256.Sum256(chain[1].Raw)
	return hex.EncodeToString(fp[:])
}

// attest runs one logged step through the CLI and returns its bundle.
func (r *signingRotation) attest(name string) string {
	r.t.Helper()
	ws := filepath.Join(r.dir, "workspaces", "build")
	require.NoError(r.t, os.MkdirAll(ws, 0o755))
	out := filepath.Join(ws, name+".hallmark.json")
	cmd := exec.Command(r.st.Bins.CLI, "attest", "--socket", r.st.Agent.Socket, "--step", "build", "--wait-log",
		"--product", name, "--out", out, "--", "sh", "-c", "echo "+name+" > "+name)
	cmd.Dir = ws
	b, err := cmd.CombinedOutput()
	require.NoError(r.t, err, "attest %s: %s", name, b)
	return out
}

func (r *signingRotation) trustedRoot() string {
	r.t.Helper()
	root, err := r.st.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(r.t, err)
	path := filepath.Join(r.dir, "trusted_root.json")
	require.NoError(r.t, os.WriteFile(path, root, 0o644))
	return path
}

// verify runs `hallmark verify` on the bundle's product and returns its
// exit code.
func (r *signingRotation) verify(bundle, root string) int {
	r.t.Helper()
	product := strings.TrimSuffix(bundle, ".hallmark.json")
	cmd := exec.Command(r.st.Bins.CLI, "verify", product, "--bundle", bundle, "--trusted-root", root, "--builder-id-prefix", harness.AgentID.String())
	b, err := cmd.CombinedOutput()
	r.lastOutput = string(b)
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	require.NoError(r.t, err)
	return 0
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
