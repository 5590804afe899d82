package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/baotest"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// The vault key manager end to end, on real SPIRE and a real OpenBao set up
// by plugins/keymanager/vault/setup.sh (through harness.ConfigureVault).

// Must show: signing certificates issued by Vault and renewed across
// SVID rotations, hallmark-server logging in with its X509-SVID (cert
// auth; its registration has a DNS name, so the SVID has a CN) or with a
// JWT-SVID (jwt auth, Vault trusting SPIRE's JWT authorities). The
// server's Vault token lives 20 s, so it logs in again every 10 s; the
// test runs longer than an SVID lives (1 min), so the later logins can
// only have used rotated SVIDs.
func TestVaultAcrossSVIDRotations(t *testing.T) {
	t.Parallel()
	for _, auth := range []string{"cert", "jwt"} {
		t.Run(auth, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			bao := sharedVault(t)
			setup, err := harness.ConfigureVault(ctx, bao, stack.SPIRE, harness.VaultOptions{Auth: auth, Prefix: "svid-" + auth, TokenTTL: "20s"})
			require.NoError(t, err)
			srv := startServer(t, "hallmark-server-vault-"+auth, harness.ServerOptions{CertificateTTL: certificateTTL, KeyManager: setup.KeyManager})
			ag := startAgent(t, "hallmark-agent-vault-"+auth, srv, harness.ServerID)
			first := agentStatus(t, ag)
			requireSigningCert(t, first, harness.AgentID, certificateTTL, 30*time.Second, setup.CA)
			start := time.Now()

			last := first
			waitFor(t, "2 server SVID rotations, renewals, and a run longer than an SVID lives", 4*svidTTL, func() error {
				last = agentStatus(t, ag)
				rotations := gauge(t, srv, "hallmark_server_svid_rotations_total")
				if rotations < 2 || last.Renewals < first.Renewals+4 || time.Since(start) < svidTTL+10*time.Second {
					return fmt.Errorf("%v server SVID rotations, %d renewals, %s", rotations, last.Renewals-first.Renewals, time.Since(start).Round(time.Second))
				}
				return nil
			})
			logins := strings.Count(srv.Log(), `"Vault token ready"`)
			t.Logf("%s auth, Vault at %s: %v server SVID rotations, %d agent renewals, %d failures, %d Vault logins in %s",
				auth, bao, gauge(t, srv, "hallmark_server_svid_rotations_total"), last.Renewals-first.Renewals, last.RenewalFailures, logins, time.Since(start).Round(time.Second))
			require.Zero(t, last.RenewalFailures, "renewal failures: %s", last.RenewalError)
			requireSigningCert(t, last, harness.AgentID, certificateTTL, 30*time.Second, setup.CA)
			require.GreaterOrEqual(t, logins, 5, "the server logs in again as its token ages")
			require.Contains(t, srv.Log(), `"auth_method":"`+auth+`"`)
			require.NotContains(t, srv.Log(), "Vault fault")
		})
	}
}

// Must show: a full signing-CA rotation (`hallmark admin rotate signing
// prepare|activate|taint|revoke`) with the vault key manager under load:
// zero failed attestations, old bundles still verify (see
// runSigningCARotation), and each step is what Vault says.
func TestSigningCARotationVault(t *testing.T) {
	ctx := context.Background()
	bao := sharedVault(t)
	var setup harness.VaultSetup
	admin, err := bao.Client()
	require.NoError(t, err)
	runSigningCARotation(t, "hm-sigv-", harness.StackOptions{
		KeyManager: harness.VaultKeyManager(bao, harness.VaultOptions{Rotation: true, Prefix: "rotation"}, &setup),
	}, func(s signingStep) {
		vaultDefault := func() string {
			c, err := admin.Logical().ReadWithContext(ctx, setup.Setup.PKIMount+"/config/issuers")
			require.NoError(t, err)
			return c.Data["default"].(string)
		}
		switch s.Step {
		case "prepare":
			require.NotEqual(t, s.Issuer.ID, vaultDefault(), "prepared, not yet Vault's default issuer")
		case "activate":
			require.Equal(t, s.Issuer.ID, vaultDefault(), "Vault's default issuer is the activated one")
		case "revoke":
			iss, err := admin.Logical().ReadWithContext(ctx, setup.Setup.PKIMount+"/issuer/"+s.Issuer.ID)
			require.NoError(t, err)
			require.Equal(t, true, iss.Data["revoked"], "revoked in Vault too")
		}
	})
	require.NotEmpty(t, setup.Setup.PKIMount, "the stack ran the Vault setup")
}

// Must show: two replicas on one PostgreSQL sharing one Vault through a
// signing-CA rotation driven on one of them, under load: no attestation
// fails, the agent (given both replicas) ends on the new Vault issuer,
// and a bundle from before the rotation still verifies.
func TestVaultReplicasRotation(t *testing.T) {
	ctx := context.Background()
	pg, err := pgtest.Start(ctx, pgtest.Options{})
	require.NoError(t, err)
	t.Cleanup(pg.Stop)
	dsn, err := pg.CreateDatabase(ctx, "hallmark")
	require.NoError(t, err)
	bao := sharedVault(t)

	dir, err := harness.ShortTempDir("hm-vrep-")
	require.NoError(t, err)
	root, err := harness.RepoRoot()
	require.NoError(t, err)
	st := &harness.Stack{Root: root, Dir: dir}
	t.Cleanup(func() { closeKeepingLogs(t, dir, st.Close) })
	st.Bins, err = harness.BuildBinaries(ctx, root, filepath.Join(dir, "bin"))
	require.NoError(t, err)
	st.SPIRE, err = harness.StartSPIRE(ctx, root, dir, harness.SPIREOptions{})
	require.NoError(t, err)
	for _, e := range []harness.Entry{
		{SPIFFEID: harness.ServerID, Binary: st.Bins.Server, DNSName: harness.ServerDNSName, X509SVIDTTL: time.Hour},
		{SPIFFEID: harness.AgentID, Binary: st.Bins.Agent, X509SVIDTTL: time.Hour},
	} {
		require.NoError(t, st.SPIRE.CreateEntry(ctx, e))
	}
	setup, err := harness.ConfigureVault(ctx, bao, st.SPIRE, harness.VaultOptions{Rotation: true, Prefix: "replicas"})
	require.NoError(t, err)
	replicas, err := st.SPIRE.StartReplicas(ctx, st.Bins.Server, dir, "hallmark-server", 2, harness.ServerOptions{
		CertificateTTL: 20 * time.Minute, KeyManager: setup.KeyManager,
		Store: fmt.Sprintf("store \"postgres\" {\n  dsn = %q\n}\n", dsn),
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, r := range replicas {
			r.Stop() //nolint:errcheck // best effort
		}
	})
	st.Server = replicas[0]
	policy := fmt.Sprintf(`
  rule "rotation-load" {
    spiffe_ids      = [%q]
    steps           = [%s]
    workspace_roots = [%q]
  }`, builderID, `"`+strings.Join(loadSteps, `", "`)+`"`, filepath.Join(dir, "workspaces"))
	st.Agent, err = st.SPIRE.StartAgent(ctx, st.Bins.Agent, dir, "hallmark-agent", harness.AgentOptions{
		ServerAddrs: []string{replicas[0].ServerAddr(), replicas[1].ServerAddr()}, ServerID: harness.ServerID.String(), Policy: policy,
	})
	require.NoError(t, err)
	require.NoError(t, registerBuilders(ctx, st))
	r := &signingRotation{t: t, st: st, dir: dir}

	load := startLoad(t, rotationLoad(st))
	oldIssuer := r.agentIssuer()
	before := r.attest("before")
	prepared := r.step("prepare")
	activated := r.step("activate")
	require.Equal(t, prepared.Issuer.ID, activated.Issuer.ID)
	activatedAt := time.Now().UTC().Truncate(time.Second).Add(time.Second)
	time.Sleep(2 * time.Second)
	r.step("taint")
	require.Eventually(t, func() bool { return r.agentIssuer() == prepared.Issuer.Fingerprint }, 20*time.Second, 50*time.Millisecond,
		"the agent moves to the new Vault issuer after the taint")
	after := r.attest("after")
	time.Sleep(3 * time.Second)
	revoked := r.step("revoke", "--at", activatedAt.Format(time.RFC3339))
	require.Equal(t, "revoked", revoked.Issuer.State)
	res := load.stop()
	t.Logf("two replicas sharing %s (mount %s): %d attestations in %s (%.1f/s), %d failed; agent moved from issuer %s to %s",
		bao, setup.Setup.PKIMount, res.ok, res.elapsed.Round(time.Millisecond), float64(res.ok)/res.elapsed.Seconds(), res.failed, oldIssuer[:12], prepared.Issuer.Fingerprint[:12])
	require.Zero(t, res.failed, "failed attestations: %v", res.errors)

	// The rotation driven on replica 1 holds for replica 2: an agent that
	// knows only replica 2 gets its certificate from the new issuer.
	ag2, err := st.SPIRE.StartAgent(ctx, st.Bins.Agent, dir, "hallmark-agent-2", harness.AgentOptions{
		ServerAddr: replicas[1].ServerAddr(), ServerID: harness.ServerID.String(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag2.Stop() })
	r2 := &signingRotation{t: t, st: &harness.Stack{Agent: ag2}}
	require.Equal(t, prepared.Issuer.Fingerprint, r2.agentIssuer(), "replica 2 signs with the Vault issuer activated through replica 1")

	rootPath := r.trustedRoot()
	require.Equal(t, 0, r.verify(before, rootPath), "a bundle from before the rotation")
	require.Equal(t, 0, r.verify(after, rootPath), "a bundle under the new issuer")
}

// Timings of the fault test: the agent renews every 20 s; each fault lasts
// until a renewal has failed on it (at most half a certificate lifetime),
// so the certificate held always outlives it.
const faultCertTTL = 40 * time.Second

// Must show: Vault faults under load, each with zero failed attestations
// while the agent's current certificate is valid, a server log line naming
// the fault and `hallmark doctor` giving the fix: Vault stopped and
// restarted, sealed and unsealed, the server's Vault token revoked, the
// role's policy removed ("refused by policy", not "unreachable"). Vault
// here is a server of the test's own with file storage, so that it can be
// stopped and sealed.
func TestVaultFaults(t *testing.T) {
	ctx := context.Background()
	bao, err := baotest.StartPersistent(ctx)
	require.NoError(t, err)
	t.Cleanup(bao.Stop)
	admin, err := bao.Client()
	require.NoError(t, err)
	var setup harness.VaultSetup
	st := loadStack(t, "hm-vf-", harness.StackOptions{
		CertificateTTL: faultCertTTL,
		KeyManager:     harness.VaultKeyManager(bao, harness.VaultOptions{Prefix: "faults"}, &setup),
	})
	require.NoError(t, registerBuilders(ctx, st))
	t.Logf("Vault: %s, mount %s", bao, setup.Setup.PKIMount)
	var policy string

	faults := []struct {
		name      string
		start     func() error
		end       func() error // nil: nothing to undo
		fails     bool         // renewals fail while it lasts
		serverLog string       // the server's log line naming the fault
		doctor    string       // in doctor's fix while it lasts
	}{
		{
			name:  "Vault stopped and restarted",
			start: func() error { bao.Kill(); return nil },
			end:   func() error { return bao.Restart(ctx) },
			fails: true, serverLog: `"Vault fault: unreachable"`, doctor: "start Vault or fix the way to it",
		},
		{
			name:  "Vault sealed and unsealed",
			start: func() error { return bao.Seal(ctx) },
			end:   func() error { return bao.Unseal(ctx) },
			fails: true, serverLog: `"Vault fault: sealed"`, doctor: "unseal Vault",
		},
		{
			name: "the server's Vault token revoked",
			start: func() error {
				_, err := admin.Logical().WriteWithContext(ctx, "sys/leases/revoke-prefix/auth/"+setup.Setup.AuthMount+"/login", nil)
				return err
			},
			serverLog: `"Vault refused the server's token (revoked, expired, or its policy changed); logging in again"`,
		},
		{
			name: "the role's policy removed",
			start: func() error {
				if policy, err = admin.Sys().GetPolicyWithContext(ctx, setup.Setup.Policy); err != nil {
					return err
				}
				return admin.Sys().DeletePolicyWithContext(ctx, setup.Setup.Policy)
			},
			end:   func() error { return admin.Sys().PutPolicyWithContext(ctx, setup.Setup.Policy, policy) },
			fails: true, serverLog: `"Vault fault: refused by policy"`, doctor: "the server's Vault token lacks a grant for " + setup.Setup.PKIMount + "/sign/",
		},
	}

	load := startLoad(t, rotationLoad(st))
	for _, f := range faults {
		// Start right after a renewal, so the certificate held has its
		// whole lifetime ahead.
		s0 := agentStatus(t, st.Agent)
		waitFor(t, "a renewal before: "+f.name, faultCertTTL, func() error {
			if s := agentStatus(t, st.Agent); s.Renewals == s0.Renewals {
				return errors.New("no renewal yet")
			}
			return nil
		})
		held := agentStatus(t, st.Agent)
		require.NoError(t, f.start(), f.name)
		began := time.Now()
		var during string
		if f.fails {
			var s = held
			waitFor(t, "a renewal failing on: "+f.name, faultCertTTL, func() error {
				if s = agentStatus(t, st.Agent); s.RenewalFailures == held.RenewalFailures {
					return errors.New("no failed renewal yet")
				}
				return nil
			})
			require.True(t, s.SigningCertificate.NotAfter.After(time.Now()), "the agent's certificate is still valid")
			require.Equal(t, held.SigningCertificate.Serial, s.SigningCertificate.Serial)
			during = s.RenewalError
			require.True(t, s.Server.Reachable, "the server answered, naming its Vault's fault: it is reachable (%s)", during)
			out := doctorFor(t, st)
			require.Contains(t, out, "WARN  signing-cert", out)
			require.Contains(t, out, f.doctor, out)
			t.Logf("%s: agent's renewal error: %s\n  hallmark doctor:\n%s", f.name, during, indentLines(out))
		}
		if f.end != nil {
			require.NoError(t, f.end(), f.name)
		}
		ended := time.Now()
		waitFor(t, "a renewal after: "+f.name, faultCertTTL, func() error {
			s := agentStatus(t, st.Agent)
			if s.Renewals == held.Renewals || s.RenewalError != "" {
				return fmt.Errorf("renewals %d (held %d), last error %q", s.Renewals, held.Renewals, s.RenewalError)
			}
			return nil
		})
		require.Contains(t, st.Server.Log(), f.serverLog, f.name)
		for _, line := range strings.Split(st.Server.Log(), "\n") {
			if strings.Contains(line, f.serverLog) {
				t.Logf("%s: server log: %s", f.name, line)
				break
			}
		}
		after := agentStatus(t, st.Agent)
		t.Logf("%s: lasted %s, renewed %s after it ended; %d failed renewals meanwhile",
			f.name, ended.Sub(began).Round(100*time.Millisecond), time.Since(ended).Round(100*time.Millisecond), after.RenewalFailures-held.RenewalFailures)
		if !f.fails {
			require.Equal(t, held.RenewalFailures, after.RenewalFailures, "a fresh login hides a revoked token: no renewal fails")
		}
		requireSigningCert(t, after, harness.AgentID, faultCertTTL, 30*time.Second, setup.CA)
	}
	res := load.stop()
	t.Logf("load: %d attestations in %s (%.1f/s), %d failed", res.ok, res.elapsed.Round(time.Millisecond), float64(res.ok)/res.elapsed.Seconds(), res.failed)
	require.Zero(t, res.failed, "failed attestations: %v", res.errors)
	require.NotContains(t, st.Server.Log(), `"vault_fault":"unreachable","error":"vault: write `+setup.Setup.PKIMount+`/sign/hallmark-agent: HTTP 403`,
		"a refusal is never called unreachable")
}

// doctorFor runs `hallmark doctor` against st's agent.
func doctorFor(t *testing.T, st *harness.Stack) string {
	t.Helper()
	out, err := exec.Command(st.Bins.CLI, "doctor",
		"--spire-socket", st.SPIRE.WorkloadAPIAddr(),
		"--agent-health-addr", st.Agent.HealthAddr,
		"--socket", st.Agent.Socket).CombinedOutput()
	require.NoError(t, err, "doctor fails only when a link is broken:\n%s", out)
	return string(out)
}

func indentLines(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
