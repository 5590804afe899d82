package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/attest"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// fleetConfig shapes the fleet figure; main sets it from flags.
type fleetConfig struct {
	Agents   int           // simulated agents, each with its own SPIFFE ID
	Replicas int           // hallmark-server replicas sharing one PostgreSQL
	Duration time.Duration // the measured phase
	// Renew is how often every agent renews its signing certificate; the
	// servers' certificate_ttl is twice that (agents renew at half life).
	Renew time.Duration
	// PolicyEvery is how often every agent fetches the policy (the
	// agent's default policy_refresh).
	PolicyEvery time.Duration
	// SubmitRate is the fleet's log submissions per second, in total.
	SubmitRate float64
}

var fleetCfg = fleetConfig{
	Agents: 2000, Replicas: 2, Duration: 2 * time.Minute,
	Renew: time.Minute, PolicyEvery: 30 * time.Second, SubmitRate: 50,
}

// fleetCallTimeout bounds one call, as hallmark-agent's does.
const fleetCallTimeout = 30 * time.Second

// benchFleet runs a fleet of simulated agents against hallmark-server
// replicas: a real SPIRE server and agent, fleetCfg.Replicas
// hallmark-servers (local key manager, one CA and one log key between
// them) sharing a private durable PostgreSQL (test/pgtest), and
// fleetCfg.Agents agents, each with an X509-SVID minted by SPIRE
// (spiffe://example.org/hallmark/agent/sim-N) and its own mTLS
// connection, spread round-robin over the replicas. Every agent keeps a
// WatchSigningAuthorities stream open, renews its signing certificate
// every fleetCfg.Renew (the fleet's renewals spread evenly over the
// interval), fetches the policy every fleetCfg.PolicyEvery and signs and
// submits attestations (attest.Sign with its certificate) at
// fleetCfg.SubmitRate for the fleet.
//
// Figures: issuance latency p50 and p99 as an agent sees it (the
// IssueSigningCertificate call), against the floor of the local key
// manager's own work: one x509.CreateCertificate of a P-256 leaf by a P-256
// CA, median, measured in the same run; renewals and log submissions per
// second against the rate the fleet offered. Any failed renewal fails the
// figure.
func benchFleet(ctx context.Context, _ string) ([]Result, error) {
	cfg := fleetCfg
	if cfg.Agents < 1 || cfg.Replicas < 1 || cfg.Duration <= 0 || cfg.Renew <= 0 {
		return nil, fmt.Errorf("fleet: bad configuration %+v", cfg)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "bench: fleet: "+format+"\n", args...)
	}

	// The stack.
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := harness.ShortTempDir("hm-fleet-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bins, err := harness.BuildBinaries(ctx, root, filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	sp, err := harness.StartSPIRE(ctx, root, dir, harness.SPIREOptions{})
	if err != nil {
		return nil, err
	}
	defer sp.Close()
	if err := sp.CreateEntry(ctx, harness.Entry{SPIFFEID: harness.ServerID, Binary: bins.Server, DNSName: harness.ServerDNSName}); err != nil {
		return nil, err
	}
	pg, err := pgtest.Start(ctx, pgtest.Options{Durable: true})
	if err != nil {
		return nil, err
	}
	defer pg.Stop()
	dsn, err := pg.CreateDatabase(ctx, "fleet")
	if err != nil {
		return nil, err
	}
	replicas, err := sp.StartReplicas(ctx, bins.Server, dir, "hallmark-server", cfg.Replicas, harness.ServerOptions{
		CertificateTTL: 2 * cfg.Renew,
		Store:          fmt.Sprintf("store \"postgres\" {\n  dsn = %q\n}\n", dsn),
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, r := range replicas {
			r.Stop() //nolint:errcheck // the figure is measured
		}
	}()
	bundle, err := sp.X509Bundle()
	if err != nil {
		return nil, err
	}

	// The fleet's identities, minted by SPIRE.
	td := spiffeid.RequireTrustDomainFromString(harness.TrustDomain)
	ids := make([]spiffeid.ID, cfg.Agents)
	for i := range ids {
		ids[i] = spiffeid.RequireFromPath(td, fmt.Sprintf("/hallmark/agent/sim-%d", i))
	}
	start := time.Now()
	svids, err := sp.MintX509SVIDs(ctx, ids, 0, 4)
	if err != nil {
		return nil, err
	}
	logf("%d X509-SVIDs minted by SPIRE's MintX509SVID in %s", len(svids), time.Since(start).Round(time.Millisecond))

	// Floors, on a quiet machine: the local CA's signing, and for
	// context an mTLS gRPC round trip (Health/Check) to a replica.
	signFloor, err := fleetSignFloor(500)
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	rtt, err := fleetRoundTrip(ctx, replicas[0].ServerAddr(), svids[0], bundle, 500)
	if err != nil {
		return nil, fmt.Errorf("round trip: %w", err)
	}
	logf("floor: local-CA signing (x509.CreateCertificate, P-256) p50 %s; for context, an mTLS gRPC Health/Check round trip p50 %s p99 %s",
		fmtDur(signFloor), fmtDur(percentile(rtt, 50)), fmtDur(percentile(rtt, 99)))

	// Connect: each agent dials its replica, takes its first
	// certificate, fetches the policy and opens its stream.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	agents := make([]*simAgent, cfg.Agents)
	for i := range agents {
		agents[i] = &simAgent{id: ids[i], replica: i % len(replicas)}
	}
	defer func() {
		for _, a := range agents {
			if a.conn != nil {
				a.conn.Close()
			}
		}
	}()
	var streams fleetStreams
	var streamsWG sync.WaitGroup
	start = time.Now()
	firstCerts, err := fleetConnect(runCtx, agents, svids, bundle, replicas, &streams, &streamsWG)
	if err != nil {
		return nil, err
	}
	logf("%d agents connected to %d replicas (%d each, one mTLS connection per agent), first certificates, policies and streams in %s; %d first issuances failed",
		cfg.Agents, len(replicas), cfg.Agents/len(replicas), time.Since(start).Round(time.Millisecond), firstCerts)

	// The measured phase.
	var (
		renewals = make([]*fleetCalls, len(replicas)) // by replica
		policies = newFleetCalls()
		submits  = newFleetCalls()
		wg       sync.WaitGroup
	)
	for i := range renewals {
		renewals[i] = newFleetCalls()
	}
	cpu0, err := readCPU(replicas)
	if err != nil {
		return nil, err
	}
	t0 := time.Now().Add(100 * time.Millisecond)
	end := t0.Add(cfg.Duration)
	n := time.Duration(cfg.Agents)
	submitEvery := time.Duration(float64(cfg.Agents) / cfg.SubmitRate * float64(time.Second))
	var product atomic.Int64
	for i, a := range agents {
		i := time.Duration(i)
		wg.Go(func() {
			every(runCtx, t0.Add(i*cfg.Renew/n), cfg.Renew, end, func() { renewals[a.replica].record(a.renew(runCtx)) })
		})
		wg.Go(func() {
			every(runCtx, t0.Add(i*cfg.PolicyEvery/n), cfg.PolicyEvery, end, func() { policies.record(a.getPolicy(runCtx)) })
		})
		if cfg.SubmitRate > 0 {
			wg.Go(func() {
				every(runCtx, t0.Add(i*submitEvery/n), submitEvery, end, func() { submits.record(a.submit(runCtx, product.Add(1))) })
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(t0)
	cpu1, err := readCPU(replicas)
	if err != nil {
		return nil, err
	}
	open := streams.open.Load()
	cancel()
	streamsWG.Wait()

	// The log on PostgreSQL: every accepted submission once.
	var logged int64
	if err := func() error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		return conn.QueryRow(ctx, `SELECT count(*) FROM entries`).Scan(&logged)
	}(); err != nil {
		return nil, fmt.Errorf("count log entries: %w", err)
	}

	r, p, s := summarize(renewals...), summarize(policies), summarize(submits)
	logf("measured %s (all work runs on %d CPUs shared by SPIRE, %d replicas, PostgreSQL and this generator)", elapsed.Round(time.Millisecond), runtime.NumCPU(), len(replicas))
	logf("renewals: %d attempted, %d succeeded, %d failed%s; issuance p50 %s p99 %s max %s",
		r.attempted, r.ok, r.failed, r.reasons(), fmtDur(r.p(50)), fmtDur(r.p(99)), fmtDur(r.max()))
	for i, c := range renewals {
		rr := summarize(c)
		sign := "unknown"
		if d, err := keyManagerSignMean(ctx, replicas[i]); err == nil {
			sign = fmtDur(d)
		}
		logf("  %s: %d renewals, %d failed; issuance p50 %s p99 %s; inside the server, the key manager's SignCSR took %s on average",
			replicas[i].Name, rr.attempted, rr.failed, fmtDur(rr.p(50)), fmtDur(rr.p(99)), sign)
	}
	logf("policy fetches: %d attempted, %d succeeded, %d failed%s; p50 %s p99 %s",
		p.attempted, p.ok, p.failed, p.reasons(), fmtDur(p.p(50)), fmtDur(p.p(99)))
	logf("log submissions: %d attempted, %d logged, %d failed%s; SubmitEntries p50 %s p99 %s; the PostgreSQL log holds %d entries",
		s.attempted, s.ok, s.failed, s.reasons(), fmtDur(s.p(50)), fmtDur(s.p(99)), logged)
	logf("WatchSigningAuthorities: %d of %d streams open at the end, %d broke during the run", open, cfg.Agents, streams.broke.Load())
	logf("CPU during the measured phase: %s", cpu1.since(cpu0))

	var errs []error
	if r.failed > 0 || r.attempted == 0 {
		errs = append(errs, fmt.Errorf("%d of %d renewals failed%s", r.failed, r.attempted, r.reasons()))
	}
	if s.failed > 0 {
		errs = append(errs, fmt.Errorf("%d of %d log submissions failed%s", s.failed, s.attempted, s.reasons()))
	}
	if int64(s.ok) != logged {
		errs = append(errs, fmt.Errorf("%d submissions logged but the log holds %d entries", s.ok, logged))
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	results := []Result{
		{Name: "fleet_issuance_p50", Value: ms(r.p(50)), Unit: "ms", Floor: ms(signFloor)},
		{Name: "fleet_issuance_p99", Value: ms(r.p(99)), Unit: "ms", Floor: ms(signFloor)},
		{Name: "fleet_renewals_rate", Value: float64(r.ok) / elapsed.Seconds(), Unit: "renewals/s",
			Floor: float64(cfg.Agents) / cfg.Renew.Seconds(), Rate: true},
	}
	if cfg.SubmitRate > 0 {
		results = append(results, Result{Name: "fleet_submissions_rate", Value: float64(s.ok) / elapsed.Seconds(), Unit: "entries/s",
			Floor: cfg.SubmitRate, Rate: true})
	}
	return results, errors.Join(errs...)
}

// simAgent is one simulated hallmark-agent: its identity, its connection
// to one replica and the signing key it holds.
type simAgent struct {
	id      spiffeid.ID
	replica int
	conn    *grpc.ClientConn
	client  serverv1.AgentServiceClient

	mu   sync.Mutex
	key  *ecdsa.PrivateKey
	leaf *x509.Certificate
}

// renew certifies a fresh key, as hallmark-agent does, and installs it;
// it returns the call's latency.
func (a *simAgent) renew(ctx context.Context) (time.Duration, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return 0, err
	}
	callCtx, cancel := context.WithTimeout(ctx, fleetCallTimeout)
	defer cancel()
	start := time.Now()
	resp, err := a.client.IssueSigningCertificate(callCtx, &serverv1.IssueSigningCertificateRequest{Csr: csr})
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	chain := resp.GetCertificateChain()
	if len(chain) < 2 {
		return took, errors.New("no CA in the chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return took, err
	}
	if !key.PublicKey.Equal(leaf.PublicKey) || len(leaf.URIs) != 1 || leaf.URIs[0].String() != a.id.String() {
		return took, errors.New("the certificate does not certify our key under our ID")
	}
	a.mu.Lock()
	a.key, a.leaf = key, leaf
	a.mu.Unlock()
	return took, nil
}

func (a *simAgent) getPolicy(ctx context.Context) (time.Duration, error) {
	callCtx, cancel := context.WithTimeout(ctx, fleetCallTimeout)
	defer cancel()
	start := time.Now()
	_, err := a.client.GetPolicy(callCtx, &serverv1.GetPolicyRequest{})
	return time.Since(start), err
}

// submit signs an attestation of product n with the held certificate and
// submits it; it returns the SubmitEntries call's latency.
func (a *simAgent) submit(ctx context.Context, n int64) (time.Duration, error) {
	a.mu.Lock()
	key, leaf := a.key, a.leaf
	a.mu.Unlock()
	if key == nil {
		return 0, errors.New("no signing certificate")
	}
	now := time.Now()
	sum := sha256.Sum256(fmt.Appendf(nil, "fleet product %d %d", now.UnixNano(), n))
	bundle, err := attest.Sign(attest.Step{
		Name: "build", Workspace: "/home/runner/work/app",
		Command:       []string{"make", "dist"},
		CallerCmdline: []string{"/usr/bin/make", "dist"},
		Products:      []attest.Artifact{{Name: fmt.Sprintf("dist/app-%d.tar.gz", n), SHA256: hex.EncodeToString(sum[:])}},
		Workload:      attest.Workload{SPIFFEIDs: []string{"spiffe://example.org/ci/builder"}, Selectors: []string{"unix:uid:1000"}, PID: 4242, UID: 1000, GID: 1000},
		BuilderID:     a.id.String(), StartedOn: now, FinishedOn: now,
	}, key, leaf)
	if err != nil {
		return 0, err
	}
	env, err := attest.BundleEnvelope(bundle) // as the agent submits it
	if err != nil {
		return 0, err
	}
	callCtx, cancel := context.WithTimeout(ctx, fleetCallTimeout)
	defer cancel()
	start := time.Now()
	resp, err := a.client.SubmitEntries(callCtx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{{Envelope: env, Certificate: leaf.Raw}}})
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	if len(resp.GetResults()) != 1 {
		return took, fmt.Errorf("%d results for 1 entry", len(resp.GetResults()))
	}
	if e := resp.GetResults()[0].GetError(); e != "" {
		return took, fmt.Errorf("refused: %s", e)
	}
	if len(resp.GetResults()[0].GetTlogEntry()) == 0 {
		return took, errors.New("no log entry")
	}
	return took, nil
}

// fleetStreams counts the agents' WatchSigningAuthorities streams.
type fleetStreams struct {
	open, broke atomic.Int64
}

// watch keeps a's stream open until ctx ends, reopening it when it
// breaks; first is called after the first message.
func (a *simAgent) watch(ctx context.Context, st *fleetStreams, first func()) {
	for ctx.Err() == nil {
		stream, err := a.client.WatchSigningAuthorities(ctx, &serverv1.WatchSigningAuthoritiesRequest{}, grpc.WaitForReady(true))
		if err == nil {
			opened := false
			for {
				if _, err = stream.Recv(); err != nil {
					break
				}
				if !opened {
					opened = true
					st.open.Add(1)
					if first != nil {
						first()
						first = nil
					}
				}
			}
			if opened {
				st.open.Add(-1)
			}
		}
		if ctx.Err() != nil {
			return
		}
		st.broke.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// fleetConnect dials every agent's replica and, 32 agents at a time,
// takes its first certificate, fetches the policy and opens its stream.
// It returns how many first issuances failed (those agents retry at their
// first scheduled renewal and submit nothing until then).
func fleetConnect(ctx context.Context, agents []*simAgent, svids []*x509svid.SVID, bundle *x509bundle.Bundle, replicas []*harness.Service, st *fleetStreams, streams *sync.WaitGroup) (int, error) {
	for i, a := range agents {
		creds := grpccredentials.MTLSClientCredentials(svids[i], bundle, tlsconfig.AuthorizeID(harness.ServerID))
		conn, err := grpc.NewClient(replicas[a.replica].ServerAddr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return 0, err
		}
		a.conn, a.client = conn, serverv1.NewAgentServiceClient(conn)
	}
	var (
		failed atomic.Int64
		errMu  sync.Mutex
		errOne error
		wg     sync.WaitGroup
		next   = make(chan *simAgent)
	)
	for range 32 {
		wg.Go(func() {
			for a := range next {
				if _, err := a.renew(ctx); err != nil {
					failed.Add(1)
					errMu.Lock()
					errOne = fmt.Errorf("%s: first issuance: %w", a.id, err)
					errMu.Unlock()
				}
				if _, err := a.getPolicy(ctx); err != nil {
					errMu.Lock()
					errOne = fmt.Errorf("%s: policy: %w", a.id, err)
					errMu.Unlock()
				}
				opened := make(chan struct{})
				streams.Go(func() { a.watch(ctx, st, func() { close(opened) }) })
				select {
				case <-opened:
				case <-time.After(fleetCallTimeout):
				case <-ctx.Done():
				}
			}
		})
	}
	for _, a := range agents {
		next <- a
	}
	close(next)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "bench: fleet: %d first issuances failed, e.g. %v\n", n, errOne)
	} else if errOne != nil {
		fmt.Fprintf(os.Stderr, "bench: fleet: while connecting: %v\n", errOne)
	}
	if got := st.open.Load(); got != int64(len(agents)) {
		return 0, fmt.Errorf("%d of %d WatchSigningAuthorities streams opened", got, len(agents))
	}
	return int(failed.Load()), ctx.Err()
}

// every calls f at first, first+interval, ... while before end.
func every(ctx context.Context, first time.Time, interval time.Duration, end time.Time, f func()) {
	for t := first; t.Before(end); t = t.Add(interval) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(t)):
		}
		f()
	}
}

// fleetCalls collects the outcomes of one kind of call.
type fleetCalls struct {
	mu    sync.Mutex
	took  []time.Duration // successful calls
	fails map[string]int  // by reason
}

func newFleetCalls() *fleetCalls { return &fleetCalls{fails: map[string]int{}} }

func (c *fleetCalls) record(took time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		reason := err.Error()
		if st, ok := status.FromError(err); ok {
			reason = st.Code().String() + ": " + st.Message()
		}
		if len(reason) > 120 {
			reason = reason[:120] + "..."
		}
		c.fails[reason]++
		return
	}
	c.took = append(c.took, took)
}

type fleetSummary struct {
	attempted, ok, failed int
	took                  []time.Duration // sorted
	fails                 map[string]int
}

// summarize merges the outcomes of calls.
func summarize(calls ...*fleetCalls) fleetSummary {
	s := fleetSummary{fails: map[string]int{}}
	for _, c := range calls {
		c.mu.Lock()
		s.took = append(s.took, c.took...)
		for k, n := range c.fails {
			s.fails[k] += n
			s.failed += n
		}
		c.mu.Unlock()
	}
	s.ok = len(s.took)
	s.attempted = s.ok + s.failed
	slices.Sort(s.took)
	return s
}

func (s fleetSummary) p(q float64) time.Duration { return percentile(s.took, q) }

func (s fleetSummary) max() time.Duration {
	if len(s.took) == 0 {
		return 0
	}
	return s.took[len(s.took)-1]
}

// reasons lists the failures by reason, most frequent first.
func (s fleetSummary) reasons() string {
	if len(s.fails) == 0 {
		return ""
	}
	keys := make([]string, 0, len(s.fails))
	for k := range s.fails {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return s.fails[keys[i]] > s.fails[keys[j]] })
	var b strings.Builder
	b.WriteString(" (")
	for i, k := range keys {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%d× %s", s.fails[k], k)
	}
	b.WriteString(")")
	return b.String()
}

// percentile is the q-th percentile (nearest rank) of sorted durations.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	if !slices.IsSorted(sorted) {
		sorted = slices.Clone(sorted)
		slices.Sort(sorted)
	}
	i := int(q/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.3gms", float64(d)/float64(time.Millisecond))
}

// fleetSignFloor is the median cost of the local key manager's signing:
// x509.CreateCertificate of a P-256 leaf (its template) by a P-256 CA.
func fleetSignFloor(n int) (time.Duration, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet floor CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return 0, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return 0, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	id, _ := url.Parse("spiffe://example.org/hallmark/agent/sim-0")
	took := make([]time.Duration, n)
	for i := range took {
		start := time.Now()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), NotBefore: now, NotAfter: now.Add(2 * time.Minute),
			URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, BasicConstraintsValid: true,
		}
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, ca, leafKey.Public(), caKey); err != nil {
			return 0, err
		}
		took[i] = time.Since(start)
	}
	return percentile(took, 50), nil
}

// fleetRoundTrip times n gRPC Health/Check calls to addr over one mTLS
// connection with svid (after the handshake).
func fleetRoundTrip(ctx context.Context, addr string, svid *x509svid.SVID, bundle *x509bundle.Bundle, n int) ([]time.Duration, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(svid, bundle, tlsconfig.AuthorizeID(harness.ServerID))))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		return nil, err
	}
	took := make([]time.Duration, n)
	for i := range took {
		start := time.Now()
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			return nil, err
		}
		took[i] = time.Since(start)
	}
	slices.Sort(took)
	return took, nil
}

// keyManagerSignMean is the mean of a server's
// hallmark_server_key_manager_sign_seconds, from its /metrics.
func keyManagerSignMean(ctx context.Context, s *harness.Service) (time.Duration, error) {
	body, err := s.Get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	const name = "hallmark_server_key_manager_sign_seconds"
	var sum, count float64
	for line := range strings.SplitSeq(string(body), "\n") {
		metric, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(metric, name+"_sum"):
			sum += v
		case strings.HasPrefix(metric, name+"_count"):
			count += v
		}
	}
	if count == 0 {
		return 0, errors.New("no signings")
	}
	return time.Duration(sum / count * float64(time.Second)), nil
}
