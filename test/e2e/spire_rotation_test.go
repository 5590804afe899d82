package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hallmark-dev/hallmark/internal/spireadmin"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Timings of the rotation's own stack.
const (
	// SPIRE would rotate the daemons' SVIDs 5 minutes after issuance on
	// its own; the whole rotation takes about one, so an SVID from the new
	// authority before that is taint's doing.
	rotationSVIDTTL = 10 * time.Minute
	// The agent renews its signing certificate (an agent→server call)
	// every 15 s, and agent↔server connections are re-established (a new
	// mTLS handshake with the SVIDs and bundle of the moment) every 10 s.
	rotationCertTTL = 30 * time.Second
	rotationConnAge = 10 * time.Second
	// Load: one build step per worker, each attesting 5 times a second.
	loadPerWorker = 5
)

var loadSteps = []string{"build", "test", "package", "lint", "scan", "release"}

// loadStack starts a stack of a test's own (directory prefix) whose
// agent lets the builder attest every load step in its workspaces, and
// stops it at the end, keeping the logs when the test failed.
func loadStack(t *testing.T, prefix string, o harness.StackOptions) *harness.Stack {
	t.Helper()
	dir, err := harness.ShortTempDir(prefix)
	require.NoError(t, err)
	o.Policy = func(dir string) string {
		return fmt.Sprintf(`
  rule "rotation-load" {
    spiffe_ids      = [%q]
    steps           = [%s]
    workspace_roots = [%q]
  }`, builderID, `"`+strings.Join(loadSteps, `", "`)+`"`, filepath.Join(dir, "workspaces"))
	}
	st, err := harness.StartStack(context.Background(), dir, o)
	require.NoError(t, err, "logs in %s", dir)
	t.Cleanup(func() { closeKeepingLogs(t, dir, st.Close) })
	return st
}

// closeKeepingLogs stops what close stops and removes dir, unless the
// test failed: then it says where the logs are.
func closeKeepingLogs(t *testing.T, dir string, close func() error) {
	close() //nolint:errcheck // the test's outcome is decided
	if t.Failed() {
		t.Logf("logs kept in %s", dir)
		return
	}
	os.RemoveAll(dir)
}

// Issue #5, SPIRE part. Under continuous load (30 attestations/s from six
// build steps) a full SPIRE X.509 authority rotation through the real
// `hallmark admin rotate spire` CLI: no attestation and no agent↔server
// call fails, neither daemon logs a warning, nothing restarts, and
// hallmark-server and hallmark-agent both end on SVIDs from the new
// authority that verify against the final bundle, which no longer holds
// the old one.
func TestSpireRotation(t *testing.T) {
	ctx := context.Background()
	st := loadStack(t, "hm-rot-", harness.StackOptions{
		SVIDTTL: rotationSVIDTTL, CertificateTTL: rotationCertTTL, MaxConnectionAge: rotationConnAge,
	})

	// This test binary attests as a builder, and holds the agent's ID
	// too so that the SPIRE agent lets it see, through the Delegated
	// Identity API, the very SVID hallmark-agent holds.
	self, err := os.Executable()
	require.NoError(t, err)
	builder := spiffeid.RequireFromString(builderID)
	for _, id := range []spiffeid.ID{builder, harness.AgentID} {
		require.NoError(t, st.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: id, Binary: self, X509SVIDTTL: time.Hour}))
	}
	_, err = st.SPIRE.WaitForIdentities(ctx, builder, harness.AgentID)
	require.NoError(t, err)
	agentSVIDs := watchSVIDs(t, st.SPIRE, st.Agent.Pid())

	r := &rotation{t: t, st: st, start: time.Now()}
	authorityA := r.status().Active.ID
	requireOn(t, "hallmark-server", r.serverSVID(), authorityA)
	requireOn(t, "hallmark-agent", r.agentSVID(agentSVIDs), authorityA)
	agent0, server0 := scrape(t, st.Agent), scrape(t, st.Server)
	status0 := agentStatus(t, st.Agent)

	agentLog0, serverLog0 := len(st.Agent.Log()), len(st.Server.Log())

	// The load runs from before prepare to after revoke, and so does a
	// prober making a fresh mTLS handshake with hallmark-server 5 times a
	// second, from SVIDs and a bundle that follow SPIRE like the daemons'.
	load := startLoad(t, rotationLoad(st))
	probe := startProbe(t, st, builder)
	time.Sleep(5 * time.Second)

	prepared := r.step("prepare")
	authorityB := prepared.Authority.ID
	require.NotEqual(t, authorityA, authorityB)
	require.Equal(t, "prepared", prepared.State.Phase)
	bundleB := r.waitForBundle("the prepared authority to reach workloads", func(ids []string) bool { return slices.Contains(ids, authorityB) })

	activated := r.step("activate")
	require.Equal(t, authorityB, activated.State.Active.ID)
	require.Equal(t, authorityA, activated.State.Old.ID)
	// Activation alone moves no SVID: they are replaced at their normal
	// rotation, minutes away.
	time.Sleep(10 * time.Second)
	requireOn(t, "hallmark-server", r.serverSVID(), authorityA)
	requireOn(t, "hallmark-agent", r.agentSVID(agentSVIDs), authorityA)

	tainted := r.step("taint")
	require.Equal(t, authorityA, tainted.Authority.ID)
	require.True(t, mustInBundle(t, tainted.State.State, authorityA).Tainted)
	taintedAt := time.Now()
	var serverMoved, agentMoved time.Duration
	waitFor(t, "both daemons to hold SVIDs from the new authority", 2*time.Minute, func() error {
		if serverMoved == 0 && spireadmin.SignedBy(r.serverSVID()[0]) == authorityB {
			serverMoved = time.Since(taintedAt)
		}
		if agentMoved == 0 && spireadmin.SignedBy(r.agentSVID(agentSVIDs)[0]) == authorityB {
			agentMoved = time.Since(taintedAt)
		}
		if serverMoved == 0 || agentMoved == 0 {
			return fmt.Errorf("server moved: %v, agent moved: %v", serverMoved != 0, agentMoved != 0)
		}
		return nil
	})

	// As the runbook says: revoke once every holder is on the new
	// authority; meanwhile agent↔server connections are re-established
	// with the new SVIDs while both authorities are trusted.
	time.Sleep(rotationConnAge)

	revoked := r.step("revoke")
	require.Equal(t, authorityA, revoked.Authority.ID)
	require.Equal(t, "rotated", revoked.State.Phase)
	_, inBundle := revoked.State.InBundle(authorityA)
	require.False(t, inBundle, "revoke removes the old authority from the bundle")
	final := r.waitForBundle("the bundle without the old authority to reach workloads", func(ids []string) bool {
		return !slices.Contains(ids, authorityA) && slices.Contains(ids, authorityB)
	})

	// Keep the load on after revoke until agent↔server connections were
	// re-established and the signing certificate renewed with only the
	// new authority trusted.
	revokedAt := time.Now()
	renewed0 := counter(t, st.Agent, `hallmark_agent_signing_certificate_renewals_total{result="success"}`)
	waitFor(t, "a renewal and a reconnection after revoke", time.Minute, func() error {
		if time.Since(revokedAt) < rotationConnAge+5*time.Second {
			return errors.New("not yet a connection age")
		}
		if n := counter(t, st.Agent, `hallmark_agent_signing_certificate_renewals_total{result="success"}`); n <= renewed0 {
			return fmt.Errorf("%v renewals", n)
		}
		return nil
	})
	res := load.stop()
	probes := probe.stop()

	// Both sides on the new authority, verified against the final bundle.
	serverChain, agentChain := r.serverSVID(), r.agentSVID(agentSVIDs)
	requireOn(t, "hallmark-server", serverChain, authorityB)
	requireOn(t, "hallmark-agent", agentChain, authorityB)
	for name, chain := range map[string][]*x509.Certificate{"hallmark-server": serverChain, "hallmark-agent": agentChain} {
		_, _, err := x509svid.Verify(chain, final)
		require.NoError(t, err, "%s's SVID verifies against the final bundle", name)
		_, _, err = x509svid.Verify(chain, x509bundle.FromX509Authorities(final.TrustDomain(), onlyAuthority(t, bundleB, authorityA)))
		require.Error(t, err, "%s's SVID does not verify against the old authority alone", name)
	}

	// Zero failures: attestations, and every agent↔server call. The
	// numbers are reported first, then required.
	rate := float64(res.ok) / res.elapsed.Seconds()
	loggedErr := harness.WaitFor(ctx, "every attestation in the log", time.Minute, func() error {
		body := scrape(t, st.Agent)
		logged, _ := metric(body, `hallmark_agent_log_submissions_total{result="logged"}`)
		queued, _ := metric(body, `hallmark_agent_outbox_queued`)
		if queued != 0 || logged < float64(res.ok) {
			return fmt.Errorf("%v logged of %d, %v queued", logged, res.ok, queued)
		}
		return nil
	})
	agent1, server1 := scrape(t, st.Agent), scrape(t, st.Server)
	status1 := agentStatus(t, st.Agent)
	delta := func(body0, body1 []byte, series string) float64 {
		v0, _ := metric(body0, series)
		v1, _ := metric(body1, series)
		return v1 - v0
	}
	failures := []struct {
		body0, body1 []byte
		series       string
	}{
		{agent0, agent1, `hallmark_agent_signing_certificate_renewals_total{result="failure"}`},
		{agent0, agent1, `hallmark_agent_log_submissions_total{result="error"}`},
		{agent0, agent1, `hallmark_agent_log_submissions_total{result="denied"}`},
		{agent0, agent1, `hallmark_agent_attestations_total{result="error"}`},
		{agent0, agent1, `hallmark_agent_attestations_total{result="denied"}`},
		{server0, server1, `hallmark_server_signing_certificates_total{result="error"}`},
		{server0, server1, `hallmark_server_signing_certificates_total{result="denied"}`},
		{server0, server1, `hallmark_server_signing_certificates_total{result="invalid"}`},
	}
	var failedCalls float64
	for _, f := range failures {
		failedCalls += delta(f.body0, f.body1, f.series)
	}
	denials := sumSeries(server1, "hallmark_server_authorization_denied_total")
	renewals := delta(agent0, agent1, `hallmark_agent_signing_certificate_renewals_total{result="success"}`)
	logged := delta(agent0, agent1, `hallmark_agent_log_submissions_total{result="logged"}`)

	t.Logf("rotation %s -> %s under load, through `hallmark admin rotate spire`:", authorityA, authorityB)
	for _, e := range r.events {
		t.Logf("  %s", e)
	}
	t.Logf("  after taint: hallmark-server on the new authority in %s, hallmark-agent in %s",
		serverMoved.Round(10*time.Millisecond), agentMoved.Round(10*time.Millisecond))
	t.Logf("load: %d attestations in %s (%.1f/s) from %d steps, %d failed", res.ok, res.elapsed.Round(100*time.Millisecond), rate, len(loadSteps), res.failed)
	t.Logf("agent↔server: %.0f signing-certificate renewals, %.0f envelopes logged, %.0f failed calls, %.0f authorization denials; SVID rotations: server %.0f, agent %d",
		renewals, logged, failedCalls, denials, delta(server0, server1, "hallmark_server_svid_rotations_total"), status1.SVIDRotations-status0.SVIDRotations)
	t.Logf("fresh mTLS handshakes with hallmark-server (grpc.health.v1 Check): %d, %d failed", probes.ok, probes.failed)
	for _, e := range res.errors {
		t.Logf("failed attestation: %s", e)
	}
	for _, e := range probes.errors {
		t.Logf("failed probe: %s", e)
	}
	// Neither daemon logged a warning or an error during the rotation
	// (failed or retried calls, refused handshakes, policy sync).
	complaints := append(warnings(st.Agent.Log()[agentLog0:]), warnings(st.Server.Log()[serverLog0:])...)
	for _, c := range complaints {
		t.Logf("logged during the rotation: %s", c)
	}

	require.Zero(t, res.failed, "attestations that failed during the rotation")
	require.Empty(t, complaints, "warnings and errors the daemons logged during the rotation")
	require.Zero(t, probes.failed, "fresh mTLS handshakes with hallmark-server that failed")
	require.Greater(t, probes.ok, int64(100))
	require.GreaterOrEqual(t, rate, 20.0, "attestations per second")
	require.NoError(t, loggedErr)
	for _, f := range failures {
		require.Zero(t, delta(f.body0, f.body1, f.series), f.series)
	}
	require.Zero(t, denials, "server authorization denials")
	require.Equal(t, status0.RenewalFailures, status1.RenewalFailures, "renewal failures in /status")
	require.True(t, status1.Server.Reachable)
	require.Equal(t, r.agentPid, st.Agent.Pid(), "hallmark-agent was not restarted")
	require.Equal(t, r.serverPid, st.Server.Pid(), "hallmark-server was not restarted")
	require.GreaterOrEqual(t, renewals, 2.0, "renewals during the rotation")
	require.Equal(t, float64(res.ok), delta(agent0, agent1, `hallmark_agent_attestations_total{result="attested"}`))
	// What `hallmark admin status` tells an operator at the end.
	end := r.status()
	require.Equal(t, authorityB, end.Active.ID)
	require.Equal(t, "rotated", end.Phase)
	require.Len(t, end.Bundle, 1)
	require.Equal(t, authorityB, end.ServerSVID.SignedBy)
	require.Equal(t, spireadmin.RoleActive, end.ServerSVID.Role)
	require.True(t, end.ServerSVID.Trusted)
}

// rotation runs the CLI and keeps a timeline.
type rotation struct {
	t         *testing.T
	st        *harness.Stack
	start     time.Time
	events    []string
	agentPid  int
	serverPid int
}

// stepResult is `hallmark admin rotate spire STEP --json`.
type stepResult struct {
	Step      string
	Authority spireadmin.Authority
	State     struct {
		spireadmin.State
		Phase, Next string
	}
}

func (r *rotation) cli(args ...string) []byte {
	r.t.Helper()
	args = append(args, "--spire-socket", r.st.SPIRE.ServerSocket)
	out, err := exec.Command(r.st.Bins.CLI, args...).CombinedOutput()
	require.NoError(r.t, err, "hallmark %s: %s", strings.Join(args, " "), out)
	return out
}

func (r *rotation) step(name string) stepResult {
	r.t.Helper()
	if r.agentPid == 0 {
		r.agentPid, r.serverPid = r.st.Agent.Pid(), r.st.Server.Pid()
	}
	at := time.Since(r.start)
	out := r.cli("admin", "rotate", "spire", name, "--json")
	var res stepResult
	require.NoError(r.t, json.Unmarshal(out, &res), "%s", out)
	// What an operator sees.
	r.t.Logf("$ hallmark admin rotate spire %s\n%s", name, r.cli("admin", "status",
		"--server-address", r.st.Server.ServerAddr(), "--server-admin-socket", r.st.Server.AdminSocket))
	r.events = append(r.events, fmt.Sprintf("%-8s at +%s", name, at.Round(100*time.Millisecond)))
	return res
}

// adminStatus is `hallmark admin status --json`'s SPIRE section.
type adminStatus struct {
	spireadmin.State
	Phase      string
	ServerSVID spireadmin.Holder `json:"server_svid"`
}

func (r *rotation) status() adminStatus {
	r.t.Helper()
	var st struct{ SPIRE adminStatus }
	out := r.cli("admin", "status", "--json", "--server-address", r.st.Server.ServerAddr())
	require.NoError(r.t, json.Unmarshal(out, &st), "%s", out)
	return st.SPIRE
}

// waitForBundle waits until the bundle the SPIRE agent hands to workloads
// (hallmark-server and hallmark-agent get theirs the same way) satisfies
// ok, and returns it.
func (r *rotation) waitForBundle(what string, ok func(ids []string) bool) *x509bundle.Bundle {
	r.t.Helper()
	since := time.Now()
	var b *x509bundle.Bundle
	waitFor(r.t, what, time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		set, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(r.st.SPIRE.WorkloadAPIAddr()))
		if err != nil {
			return err
		}
		td := spiffeid.RequireTrustDomainFromString(harness.TrustDomain)
		if b, err = set.GetX509BundleForTrustDomain(td); err != nil {
			return err
		}
		var ids []string
		for _, c := range b.X509Authorities() {
			ids = append(ids, spireadmin.AuthorityID(c))
		}
		if !ok(ids) {
			return fmt.Errorf("workloads' bundle: %v", ids)
		}
		return nil
	})
	r.events = append(r.events, fmt.Sprintf("  %s: %s", what, time.Since(since).Round(10*time.Millisecond)))
	return b
}

// serverSVID is the certificate chain hallmark-server presents in a TLS
// handshake (verified by the caller, against a bundle).
func (r *rotation) serverSVID() []*x509.Certificate {
	r.t.Helper()
	chain, err := spireadmin.PeerSVID(context.Background(), r.st.Server.ServerAddr())
	require.NoError(r.t, err)
	return chain
}

// agentSVID is the SVID hallmark-agent reports holding (its /status
// serial), as the SPIRE agent issued it.
func (r *rotation) agentSVID(w *svidWatch) []*x509.Certificate {
	r.t.Helper()
	var chain []*x509.Certificate
	waitFor(r.t, "hallmark-agent's SVID from the Delegated Identity API", 30*time.Second, func() error {
		serial := agentStatus(r.t, r.st.Agent).SVIDSerial
		if chain = w.get(serial); chain == nil {
			return fmt.Errorf("SVID serial %s not seen yet", serial)
		}
		return nil
	})
	return chain
}

// svidWatch follows the SVIDs the SPIRE agent issues to a process.
type svidWatch struct {
	mu     sync.Mutex
	serial map[string][]*x509.Certificate
}

func (w *svidWatch) get(serial string) []*x509.Certificate {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.serial[serial]
}

// watchSVIDs subscribes to the SVIDs of pid through the SPIRE agent's
// Delegated Identity API; this test binary holds an authorized
// delegate's ID.
func watchSVIDs(t *testing.T, sp *harness.SPIRE, pid int) *svidWatch {
	t.Helper()
	conn, err := grpc.NewClient(sp.AdminAPIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := delegatedidentityv1.NewDelegatedIdentityClient(conn).SubscribeToX509SVIDs(ctx, &delegatedidentityv1.SubscribeToX509SVIDsRequest{Pid: int32(pid)})
	require.NoError(t, err)
	w := &svidWatch{serial: map[string][]*x509.Certificate{}}
	first := make(chan error, 1)
	go func() {
		for n := 0; ; n++ {
			resp, err := stream.Recv()
			if err != nil {
				if n == 0 {
					first <- err
				}
				return
			}
			w.mu.Lock()
			for _, s := range resp.GetX509Svids() {
				var chain []*x509.Certificate
				for _, der := range s.GetX509Svid().GetCertChain() {
					if c, err := x509.ParseCertificate(der); err == nil {
						chain = append(chain, c)
					}
				}
				if len(chain) > 0 {
					w.serial[chain[0].SerialNumber.Text(16)] = chain
				}
			}
			w.mu.Unlock()
			if n == 0 {
				first <- nil
			}
		}
	}()
	select {
	case err := <-first:
		require.NoError(t, err, "Delegated Identity API subscription for hallmark-agent (pid %d)", pid)
	case <-time.After(30 * time.Second):
		t.Fatal("no answer from the Delegated Identity API")
	}
	return w
}

// loadResult counts the attestations of a load run.
type loadResult struct {
	ok, failed int64
	elapsed    time.Duration
	errors     []string
}

type loadRun struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  time.Time
	ok     atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errors []string
}

// loadSpec is a load of attestations: on each agent socket, workers
// callers, worker w attesting steps[w%len(steps)] perSecond times a
// second, each time of a product of its own (so every attestation is its
// own log entry), in workspaces under dir/workspaces.
type loadSpec struct {
	dir       string
	sockets   []string
	steps     []string
	workers   int
	perSecond int
}

// rotationLoad is the rotation tests' load: one worker per load step on
// the stack's agent, loadPerWorker a second each.
func rotationLoad(st *harness.Stack) loadSpec {
	return loadSpec{dir: st.Dir, sockets: []string{st.Agent.Socket}, steps: loadSteps, workers: len(loadSteps), perSecond: loadPerWorker}
}

// startLoad runs spec until stop.
func startLoad(t *testing.T, spec loadSpec) *loadRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &loadRun{cancel: cancel, start: time.Now()}
	var n atomic.Int64
	for si, socket := range spec.sockets {
		client := localClient(t, socket)
		for w := range spec.workers {
			step := spec.steps[w%len(spec.steps)]
			ws := filepath.Join(spec.dir, "workspaces", fmt.Sprintf("a%d-w%d", si, w))
			require.NoError(t, os.MkdirAll(ws, 0o755))
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				tick := time.NewTicker(time.Second / time.Duration(spec.perSecond))
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					l.count(step, attestOnce(client, ws, step, fmt.Sprintf("out-%d", n.Add(1))))
				}
			}()
		}
	}
	t.Cleanup(func() { cancel(); l.wg.Wait() })
	return l
}

// attestOnce writes a product and attests step on it.
func attestOnce(client agentv1.WorkloadServiceClient, ws, step, name string) error {
	path := filepath.Join(ws, name)
	if err := os.WriteFile(path, []byte(name), 0o644); err != nil {
		return err
	}
	defer os.Remove(path)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: step, Workspace: ws, Products: []string{name}})
	if err == nil && len(resp.GetBundle()) == 0 {
		err = errors.New("no bundle")
	}
	return err
}

// startProbe calls hallmark-server's grpc.health.v1 over a new mTLS
// connection every 200 ms, as id, until stop.
func startProbe(t *testing.T, st *harness.Stack, id spiffeid.ID) *loadRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	src, err := workloadapi.NewX509Source(ctx,
		workloadapi.WithClientOptions(workloadapi.WithAddr(st.SPIRE.WorkloadAPIAddr())),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == id {
					return s
				}
			}
			return svids[0]
		}))
	require.NoError(t, err)
	creds := grpccredentials.MTLSClientCredentials(src, src, tlsconfig.AuthorizeID(harness.ServerID))
	l := &loadRun{cancel: cancel, start: time.Now()}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			err := func() error {
				conn, err := grpc.NewClient(st.Server.ServerAddr(), grpc.WithTransportCredentials(creds))
				if err != nil {
					return err
				}
				defer conn.Close()
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer ccancel()
				resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: "hallmark.server.v1.AgentService"})
				if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					err = fmt.Errorf("status %s", resp.GetStatus())
				}
				return err
			}()
			l.count("probe", err)
		}
	}()
	t.Cleanup(func() { cancel(); l.wg.Wait(); src.Close() })
	return l
}

func (l *loadRun) count(what string, err error) {
	if err == nil {
		l.ok.Add(1)
		return
	}
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errors) < 10 {
		l.errors = append(l.errors, fmt.Sprintf("+%s %s: %v", time.Since(l.start).Round(time.Millisecond), what, err))
	}
}

func (l *loadRun) stop() loadResult {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadResult{ok: l.ok.Load(), failed: l.failed.Load(), elapsed: time.Since(l.start), errors: l.errors}
}

func requireOn(t *testing.T, who string, chain []*x509.Certificate, authority string) {
	t.Helper()
	require.Equal(t, authority, spireadmin.SignedBy(chain[0]), "%s's SVID (serial %s) is signed by", who, chain[0].SerialNumber.Text(16))
}

func mustInBundle(t *testing.T, st spireadmin.State, id string) spireadmin.BundleAuthority {
	t.Helper()
	b, ok := st.InBundle(id)
	require.True(t, ok, "authority %s in the bundle", id)
	return b
}

// onlyAuthority is the authority id of bundle b.
func onlyAuthority(t *testing.T, b *x509bundle.Bundle, id string) []*x509.Certificate {
	t.Helper()
	for _, c := range b.X509Authorities() {
		if spireadmin.AuthorityID(c) == id {
			return []*x509.Certificate{c}
		}
	}
	t.Fatalf("authority %s not in the bundle", id)
	return nil
}

// sumSeries adds every sample of a metric, whatever its labels.
func sumSeries(body []byte, name string) float64 {
	var sum float64
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			var v float64
			fmt.Sscan(f[len(f)-1], &v)
			sum += v
		}
	}
	return sum
}

// warnings are the lines of a daemon's JSON log at warn level or above.
func warnings(log string) []string {
	var out []string
	for line := range strings.SplitSeq(log, "\n") {
		for _, level := range []string{`"level":"warn"`, `"level":"error"`, `"level":"dpanic"`, `"level":"fatal"`} {
			if strings.Contains(line, level) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}
