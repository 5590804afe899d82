package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/baotest"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Must show 1: the certificate names the agent, lives the configured TTL
// and chains to the key manager's CA, for each key manager.
func TestSigningCertificate(t *testing.T) {
	t.Parallel()
	t.Run("local", func(t *testing.T) {
		ca := readCert(t, stack.LocalCAPath())
		st := agentStatus(t, stack.Agent)
		requireSigningCert(t, st, harness.AgentID, certificateTTL, 0, ca)
	})
	t.Run("vault", func(t *testing.T) {
		ctx := context.Background()
		bao := sharedVault(t)
		setup, err := harness.ConfigureVault(ctx, bao, stack.SPIRE, harness.VaultOptions{})
		require.NoError(t, err)
		srv := startServer(t, "hallmark-server-vault", harness.ServerOptions{CertificateTTL: certificateTTL, KeyManager: setup.KeyManager})
		ag := startAgent(t, "hallmark-agent-vault", srv, harness.ServerID)
		st := agentStatus(t, ag)
		// Vault backdates NotBefore by the role's not_before_duration
		// (default 30s); the certificate is valid for the TTL from issuance.
		requireSigningCert(t, st, harness.AgentID, certificateTTL, 30*time.Second, setup.CA)
	})
}

// Must show 2: each renewal brings a new key and a new serial.
func TestRenewalBringsNewKeyAndSerial(t *testing.T) {
	t.Parallel()
	seenSerials := map[string]bool{}
	seenKeys := map[string]bool{}
	first := agentStatus(t, stack.Agent)
	for n := range 3 {
		var st agent.Status
		waitFor(t, "a renewal", 2*certificateTTL, func() error {
			st = agentStatus(t, stack.Agent)
			if st.Renewals < first.Renewals+n {
				return fmt.Errorf("renewals %d, want %d", st.Renewals, first.Renewals+n)
			}
			return nil
		})
		leaf := chainOf(t, st)[0]
		serial := leaf.SerialNumber.String()
		key := fmt.Sprintf("%x", leaf.RawSubjectPublicKeyInfo)
		require.False(t, seenSerials[serial], "renewal %d reused serial %s", n, serial)
		require.False(t, seenKeys[key], "renewal %d reused a key", n)
		seenSerials[serial], seenKeys[key] = true, true
	}
}

// Must show 3: workloads outside the agents' prefix are refused, and a CSR
// naming another SPIFFE ID never yields a certificate for that ID.
func TestServerRefusesWhatIsNotAnAgent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	self, err := os.Executable()
	require.NoError(t, err)
	td := spiffeid.RequireTrustDomainFromString(harness.TrustDomain)
	outsider := spiffeid.RequireFromPath(td, "/test/outsider")
	impostor := spiffeid.RequireFromPath(td, "/hallmark/agent/impostor")
	for _, id := range []spiffeid.ID{outsider, impostor} {
		// This test binary holds both identities: the Workload API hands
		// it one SVID per matching entry.
		require.NoError(t, stack.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: id, Binary: self, X509SVIDTTL: time.Hour}))
	}
	x509ctx, err := stack.SPIRE.WaitForIdentities(ctx, outsider, impostor)
	require.NoError(t, err)

	victimURI := harness.AgentID.URL()
	cases := []struct {
		name     string
		as       spiffeid.ID
		csrURIs  []*url.URL
		wantCode codes.Code
		wantMsg  string
	}{
		{"outsider is refused", outsider, nil, codes.PermissionDenied, "may not call"},
		{"outsider naming an agent is refused", outsider, []*url.URL{victimURI}, codes.PermissionDenied, "may not call"},
		{"impostor agent naming node-1 is refused", impostor, []*url.URL{victimURI}, codes.PermissionDenied, "node-1"},
		{"impostor agent gets a certificate for itself only", impostor, nil, codes.OK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client := dialAs(t, x509ctx, tc.as, stack.Server.ServerAddr())
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			require.NoError(t, err)
			csr := newCSR(t, key, tc.csrURIs)
			resp, err := client.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: csr})
			if tc.wantCode != codes.OK {
				require.Equal(t, tc.wantCode, status.Code(err), "error: %v", err)
				require.ErrorContains(t, err, tc.wantMsg)
				require.Nil(t, resp)
				return
			}
			require.NoError(t, err)
			leaf, err := x509.ParseCertificate(resp.GetCertificateChain()[0])
			require.NoError(t, err)
			require.Len(t, leaf.URIs, 1)
			require.Equal(t, tc.as.String(), leaf.URIs[0].String())
		})
	}
}

// Must show 4: the agent refuses a server presenting another SPIFFE ID.
func TestAgentRefusesAnotherServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A copy of hallmark-server at another path gets another identity.
	rogueBin := filepath.Join(stack.Dir, "rogue", "hallmark-server")
	require.NoError(t, os.MkdirAll(filepath.Dir(rogueBin), 0o700))
	copyFile(t, stack.Bins.Server, rogueBin)
	rogueID := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(harness.TrustDomain), "/hallmark/rogue-server")
	require.NoError(t, stack.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: rogueID, Binary: rogueBin, X509SVIDTTL: time.Hour}))
	rogue, err := stack.SPIRE.StartServer(ctx, rogueBin, stack.Dir, "rogue-server", harness.ServerOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { rogue.Stop() })

	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-misled", harness.AgentOptions{
		ServerAddr: rogue.ServerAddr(), ServerID: harness.ServerID.String(), NotReady: true,
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })

	var st agent.Status
	waitFor(t, "the agent to report the refused server", time.Minute, func() error {
		st = agentStatus(t, ag)
		if st.Server.LastError == "" {
			return fmt.Errorf("no error yet")
		}
		return nil
	})
	require.Contains(t, st.Server.LastError, rogueID.String(), "the error should name the unexpected server ID")
	require.False(t, st.Server.Reachable)
	require.Nil(t, st.SigningCertificate, "no certificate from a server with the wrong ID")
	_, err = ag.Get(ctx, "/readyz")
	require.Error(t, err, "an agent without a certificate is not ready")
	require.NotContains(t, rogue.Log(), "Signing certificate issued")
}

// Must show 5: calls keep succeeding across at least 3 SVID rotations.
func TestRenewalsAcrossSVIDRotations(t *testing.T) {
	t.Parallel()
	before := agentStatus(t, stack.Agent)
	var st agent.Status
	var serverRotations float64
	waitFor(t, "3 SVID rotations of the agent and of the server", 5*svidTTL, func() error {
		st = agentStatus(t, stack.Agent)
		serverRotations = gauge(t, stack.Server, "hallmark_server_svid_rotations_total")
		if st.SVIDRotations < 3 || serverRotations < 3 {
			return fmt.Errorf("%d agent and %v server SVID rotations so far", st.SVIDRotations, serverRotations)
		}
		// The rotations may all be behind us when this test starts:
		// see a renewal happen too.
		if st.Renewals == before.Renewals {
			return fmt.Errorf("no renewal during this test yet")
		}
		return nil
	})
	t.Logf("agent: %d SVID rotations (server: %v), %d renewals (%d during this test), %d failures",
		st.SVIDRotations, serverRotations, st.Renewals, st.Renewals-before.Renewals, st.RenewalFailures)
	require.Zero(t, st.RenewalFailures, "renewal failures across rotations")
	require.Greater(t, st.Renewals, before.Renewals)
	require.True(t, st.Server.Reachable)
}

// Must show 6: the agent keeps its certificate through a server outage
// longer than a renewal interval, retries, and renews once it is back.
func TestServerOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "hallmark-server-outage", harness.ServerOptions{CertificateTTL: certificateTTL})
	ag := startAgent(t, "hallmark-agent-outage", srv, harness.ServerID)

	// Stop the server right after a renewal.
	st0 := agentStatus(t, ag)
	var held agent.Status
	waitFor(t, "a fresh renewal", 2*certificateTTL, func() error {
		held = agentStatus(t, ag)
		if held.Renewals == st0.Renewals {
			return fmt.Errorf("no renewal yet")
		}
		return nil
	})
	require.NoError(t, srv.Stop())
	stopped := time.Now()
	interval := certificateTTL / 2

	time.Sleep(interval + 5*time.Second)
	during := agentStatus(t, ag)
	t.Logf("server down for %s (renewal interval %s): %d failed renewals, last error %q",
		time.Since(stopped).Round(time.Second), interval, during.RenewalFailures-held.RenewalFailures, during.Server.LastError)
	require.NotNil(t, during.SigningCertificate, "the agent dropped its certificate")
	require.Equal(t, held.SigningCertificate.Serial, during.SigningCertificate.Serial, "the agent kept its certificate")
	require.False(t, during.Server.Reachable)
	require.Greater(t, during.RenewalFailures, held.RenewalFailures, "the agent retried")
	_, err := ag.Get(ctx, "/readyz")
	require.NoError(t, err, "an agent with a valid certificate stays ready")

	require.NoError(t, srv.Start(ctx))
	restarted := time.Now()
	var after agent.Status
	waitFor(t, "a renewal after the server returned", time.Minute, func() error {
		after = agentStatus(t, ag)
		if after.SigningCertificate == nil || after.SigningCertificate.Serial == held.SigningCertificate.Serial {
			return fmt.Errorf("still on the old certificate")
		}
		return nil
	})
	t.Logf("renewed %s after the server returned (%s after it stopped)", time.Since(restarted).Round(time.Second), time.Since(stopped).Round(time.Second))
	require.True(t, after.Server.Reachable)
	ca := readCert(t, filepath.Join(srv.Dir, "data", "keymanager", "local", "ca.pem"))
	requireSigningCert(t, after, harness.AgentID, certificateTTL, 0, ca)
}

// --- helpers ---

func startServer(t *testing.T, name string, o harness.ServerOptions) *harness.Service {
	t.Helper()
	srv, err := stack.SPIRE.StartServer(context.Background(), stack.Bins.Server, stack.Dir, name, o)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Stop() })
	return srv
}

func startAgent(t *testing.T, name string, srv *harness.Service, serverID spiffeid.ID) *harness.Service {
	t.Helper()
	ag, err := stack.SPIRE.StartAgent(context.Background(), stack.Bins.Agent, stack.Dir, name, harness.AgentOptions{
		ServerAddr: srv.ServerAddr(), ServerID: serverID.String(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	return ag
}

func agentStatus(t *testing.T, s *harness.Service) agent.Status {
	t.Helper()
	st, err := s.Status(context.Background())
	require.NoError(t, err)
	return st
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	require.NoError(t, harness.WaitFor(context.Background(), what, timeout, cond))
}

func chainOf(t *testing.T, st agent.Status) []*x509.Certificate {
	t.Helper()
	require.NotNil(t, st.SigningCertificate, "agent holds no signing certificate")
	var chain []*x509.Certificate
	rest := []byte(st.SigningCertificate.ChainPEM)
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		require.NoError(t, err)
		chain = append(chain, c)
	}
	require.NotEmpty(t, chain)
	return chain
}

// requireSigningCert checks the agent's certificate: id as its only name,
// valid for ttl from issuance (NotBefore backdated by backdate), chaining
// to ca for code signing.
func requireSigningCert(t *testing.T, st agent.Status, id spiffeid.ID, ttl, backdate time.Duration, ca *x509.Certificate) {
	t.Helper()
	chain := chainOf(t, st)
	leaf := chain[0]
	require.Len(t, leaf.URIs, 1)
	require.Equal(t, id.String(), leaf.URIs[0].String(), "URI SAN")
	require.Empty(t, leaf.DNSNames)
	require.Equal(t, ttl+backdate, leaf.NotAfter.Sub(leaf.NotBefore), "lifetime")
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	})
	require.NoError(t, err, "chains to the key manager's CA")
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	block, _ := pem.Decode(b)
	require.NotNil(t, block, "no PEM in %s", path)
	c, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return c
}

func newCSR(t *testing.T, key crypto.Signer, uris []*url.URL) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris}, key)
	require.NoError(t, err)
	return der
}

// dialAs connects to the server at addr with the SVID for id from x509ctx.
func dialAs(t *testing.T, x509ctx *workloadapi.X509Context, id spiffeid.ID, addr string) serverv1.AgentServiceClient {
	t.Helper()
	creds := grpccredentials.MTLSClientCredentials(svidFor(t, x509ctx, id), x509ctx.Bundles, tlsconfig.AuthorizeID(harness.ServerID))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return serverv1.NewAgentServiceClient(conn)
}

// svidFor picks the SVID for id among those the Workload API returned.
func svidFor(t *testing.T, x509ctx *workloadapi.X509Context, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	for _, s := range x509ctx.SVIDs {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("no SVID for %s", id)
	return nil
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

// sharedVault is the test binary's OpenBao dev server (test/baotest), or
// the Vault HALLMARK_TEST_VAULT_ADDR names; tests set up mounts of their
// own on it.
func sharedVault(t *testing.T) *baotest.Server {
	t.Helper()
	bao, err := baotest.Shared(context.Background())
	require.NoError(t, err)
	t.Logf("Vault: %s", bao)
	return bao
}

// Must show (docs/configuration.md: the server's data_dir is "created
// 0700"): the running server's data directory, which it created, and every
// directory in it are 0700; every file holding a private key (the local
// CA's, the log's) is 0600, and no file is writable by group or others.
func TestServerDataDirIsPrivate(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(stack.Server.Dir, "data")
	files, keys := 0, 0
	require.NoError(t, filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // the running server removed it meanwhile (a journal)
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			require.Equal(t, fs.FileMode(0o700), info.Mode().Perm(), "%s", path)
			return nil
		}
		files++
		require.Zero(t, info.Mode().Perm()&0o022, "%s is %v", path, info.Mode().Perm())
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			keys++
			require.Equal(t, fs.FileMode(0o600), info.Mode().Perm(), "%s holds a private key", path)
		}
		return nil
	}))
	require.Positive(t, keys, "no private key found in %s: the test looks in the wrong place", dataDir)
	t.Logf("%s: %d files, %d of them keys (0600), none writable by others", dataDir, files, keys)
}
