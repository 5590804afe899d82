package main

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/baotest"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// The vault figure's shape: callers at each concurrency, and rounds of
// vaultSlice per side, alternating raw and through-the-server so that both
// see the same machine (which other work may load).
var vaultConcurrency = []int{1, 8}

const (
	vaultRounds   = 5
	vaultSlice    = 2 * time.Second
	vaultCertTTL  = 5 * time.Minute
	vaultCSRsPool = 64
)

// benchVault measures signing-certificate issuance through hallmark-server
// with the vault key manager (an agent's IssueSigningCertificate call over
// mTLS: the server checks the CSR, asks Vault's pki/sign, checks and
// returns the chain), against the floor of the raw pki/sign call on the
// same OpenBao, same role, same CSRs and TTL, with a token of the server's
// policy, in the same run. Vault is a private OpenBao dev server
// (test/baotest), set up by plugins/keymanager/vault/setup.sh; the server
// logs in by cert auth with its X509-SVID. CSRs are made beforehand and
// reused, so neither side pays for key generation. Figures at 1 and 8
// concurrent callers (8 agents, each its own connection and SPIFFE ID):
// rate (target: at least 0.8 of raw, i.e. ratio at most 1.25) and p50 and
// p99 latency (p99 target: within 2x raw).
func benchVault(ctx context.Context, dir string) ([]Result, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: vault: "+format+"\n", args...) }
	bao, err := baotest.StartDev(ctx)
	if err != nil {
		return nil, err
	}
	defer bao.Stop()
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	short, err := harness.ShortTempDir("hm-bv-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(short)
	bins, err := harness.BuildBinaries(ctx, root, filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	sp, err := harness.StartSPIRE(ctx, root, short, harness.SPIREOptions{})
	if err != nil {
		return nil, err
	}
	defer sp.Close()
	if err := sp.CreateEntry(ctx, harness.Entry{SPIFFEID: harness.ServerID, Binary: bins.Server, DNSName: harness.ServerDNSName}); err != nil {
		return nil, err
	}
	setup, err := harness.ConfigureVault(ctx, bao, sp, harness.VaultOptions{Prefix: "bench"})
	if err != nil {
		return nil, err
	}
	srv, err := sp.StartServer(ctx, bins.Server, short, "hallmark-server", harness.ServerOptions{CertificateTTL: vaultCertTTL, KeyManager: setup.KeyManager})
	if err != nil {
		return nil, err
	}
	defer srv.Stop() //nolint:errcheck // the figure is measured
	logf("%s, mount %s, role %s; hallmark-server logs in by cert auth", bao, setup.Setup.PKIMount, setup.Setup.Role)

	csrs, err := benchCSRs(vaultCSRsPool)
	if err != nil {
		return nil, err
	}
	raw, err := rawVaultSigner(ctx, bao, setup)
	if err != nil {
		return nil, err
	}
	maxC := slices.Max(vaultConcurrency)
	agents, svids, err := vaultAgents(ctx, sp, srv, maxC)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, a := range agents {
			a.conn.Close()
		}
	}()
	ttlSeconds := fmt.Sprintf("%ds", int(vaultCertTTL/time.Second))
	rawSign := func(w, i int) error {
		_, err := raw.Logical().WriteWithContext(ctx, setup.Setup.PKIMount+"/sign/"+setup.Setup.Role, map[string]any{
			"csr": csrs[i%len(csrs)].pem, "ttl": ttlSeconds, "uri_sans": agents[w].id.String(),
			"exclude_cn_from_sans": true, "format": "pem",
		})
		return err
	}
	serverSign := func(w, i int) error {
		resp, err := agents[w].client.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: csrs[i%len(csrs)].der})
		if err == nil && len(resp.GetCertificateChain()) < 2 {
			err = errors.New("no chain in the answer")
		}
		return err
	}
	// Warm up both paths (logins, connections, the CA recorded in the log).
	for w := range maxC {
		if err := rawSign(w, w); err != nil {
			return nil, fmt.Errorf("raw pki/sign: %w", err)
		}
		if err := serverSign(w, w); err != nil {
			return nil, fmt.Errorf("through hallmark-server: %w", err)
		}
	}

	var results []Result
	for _, c := range vaultConcurrency {
		var rawRun, srvRun vaultRun
		for range vaultRounds {
			if err := rawRun.add(ctx, c, rawSign); err != nil {
				return nil, fmt.Errorf("raw pki/sign at %d callers: %w", c, err)
			}
			if err := srvRun.add(ctx, c, serverSign); err != nil {
				return nil, fmt.Errorf("through hallmark-server at %d callers: %w", c, err)
			}
		}
		logf("%d caller(s): raw pki/sign %.0f/s p50 %s p99 %s; through hallmark-server %.0f/s p50 %s p99 %s (%d rounds of %s each, alternating)",
			c, rawRun.rate(), fmtDur(rawRun.p(50)), fmtDur(rawRun.p(99)), srvRun.rate(), fmtDur(srvRun.p(50)), fmtDur(srvRun.p(99)), vaultRounds, vaultSlice)
		logf("%d caller(s): CPU per certificate: raw %s; through hallmark-server %s", c, rawRun.cpuPerOp(), srvRun.cpuPerOp())
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		suffix := fmt.Sprintf("_c%d", c)
		results = append(results,
			Result{Name: "vault_issuance_rate" + suffix, Value: srvRun.rate(), Unit: "certs/s", Floor: rawRun.rate(), Rate: true},
			Result{Name: "vault_issuance_p50" + suffix, Value: ms(srvRun.p(50)), Unit: "ms", Floor: ms(rawRun.p(50))},
			Result{Name: "vault_issuance_p99" + suffix, Value: ms(srvRun.p(99)), Unit: "ms", Floor: ms(rawRun.p(99))},
		)
	}
	if bundle, err := sp.X509Bundle(); err == nil {
		if rtt, err := fleetRoundTrip(ctx, srv.ServerAddr(), svids[0], bundle, 500); err == nil {
			logf("for context, an mTLS gRPC Health/Check round trip to hallmark-server: p50 %s p99 %s", fmtDur(percentile(rtt, 50)), fmtDur(percentile(rtt, 99)))
		}
	}
	if d, err := keyManagerSignMean(ctx, srv); err == nil {
		logf("inside hallmark-server, the vault key manager's SignCSR (the pki/sign call, its token check and parsing the answer) took %s on average", fmtDur(d))
	}
	logf("targets: rate ratio at most 1.25 (0.8x raw), p99 ratio at most 2; all on %d CPUs shared by OpenBao, SPIRE, hallmark-server and this generator", runtime.NumCPU())
	return results, nil
}

type benchCSR struct {
	der []byte
	pem string
}

// benchCSRs makes n CSRs for fresh P-256 keys, naming nothing, as
// hallmark-agent sends them.
func benchCSRs(n int) ([]benchCSR, error) {
	out := make([]benchCSR, n)
	for i := range out {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			return nil, err
		}
		out[i] = benchCSR{der: der, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}
	}
	return out, nil
}

// rawVaultSigner is a Vault client with a token of the server's policy.
func rawVaultSigner(ctx context.Context, bao *baotest.Server, setup harness.VaultSetup) (*api.Client, error) {
	admin, err := bao.Client()
	if err != nil {
		return nil, err
	}
	tok, err := admin.Auth().Token().CreateWithContext(ctx, &api.TokenCreateRequest{Policies: []string{setup.Setup.Policy}, NoDefaultPolicy: true, TTL: "1h"})
	if err != nil {
		return nil, fmt.Errorf("raw token: %w", err)
	}
	c, err := bao.Client()
	if err != nil {
		return nil, err
	}
	c.SetToken(tok.Auth.ClientToken)
	return c, nil
}

type vaultAgent struct {
	id     spiffeid.ID
	conn   *grpc.ClientConn
	client serverv1.AgentServiceClient
}

// vaultAgents are n agents with SVIDs minted by SPIRE, each connected to
// srv, and their SVIDs.
func vaultAgents(ctx context.Context, sp *harness.SPIRE, srv *harness.Service, n int) ([]vaultAgent, []*x509svid.SVID, error) {
	td := spiffeid.RequireTrustDomainFromString(harness.TrustDomain)
	ids := make([]spiffeid.ID, n)
	for i := range ids {
		ids[i] = spiffeid.RequireFromPath(td, fmt.Sprintf("/hallmark/agent/bench-%d", i))
	}
	svids, err := sp.MintX509SVIDs(ctx, ids, 0, 4)
	if err != nil {
		return nil, nil, err
	}
	bundle, err := sp.X509Bundle()
	if err != nil {
		return nil, nil, err
	}
	agents := make([]vaultAgent, n)
	for i := range agents {
		creds := grpccredentials.MTLSClientCredentials(svids[i], bundle, tlsconfig.AuthorizeID(harness.ServerID))
		conn, err := grpc.NewClient(srv.ServerAddr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, nil, err
		}
		agents[i] = vaultAgent{id: ids[i], conn: conn, client: serverv1.NewAgentServiceClient(conn)}
	}
	return agents, svids, nil
}

// vaultRun accumulates the calls of several slices, and the CPU time this
// generator and the processes it started (OpenBao, hallmark-server, SPIRE)
// used meanwhile.
type vaultRun struct {
	ops     int
	elapsed time.Duration
	took    []time.Duration
	cpu     map[string]time.Duration // by process name; "generator" is this one
}

// cpuPerOp says the CPU each process spent per call, busiest first.
func (r *vaultRun) cpuPerOp() string {
	names := make([]string, 0, len(r.cpu))
	for n := range r.cpu {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(r.cpu[b], r.cpu[a]) })
	var b strings.Builder
	for _, n := range names {
		if per := r.cpu[n] / time.Duration(max(r.ops, 1)); per >= 10*time.Microsecond {
			fmt.Fprintf(&b, "%s %dus, ", n, per.Microseconds())
		}
	}
	return strings.TrimSuffix(b.String(), ", ")
}

// add runs c callers of op for vaultSlice; op(w, i) is caller w's i-th call.
func (r *vaultRun) add(ctx context.Context, c int, op func(w, i int) error) error {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		first error
	)
	cpu0, err := readCPU(nil)
	if err != nil {
		return err
	}
	defer func() {
		cpu1, err := readCPU(nil)
		if err != nil {
			return
		}
		if r.cpu == nil {
			r.cpu = map[string]time.Duration{}
		}
		r.cpu["generator"] += cpu1.self - cpu0.self
		for pid, t := range cpu1.children {
			r.cpu[t.name] += t.cpu - cpu0.children[pid].cpu
		}
	}()
	start := time.Now()
	end := start.Add(vaultSlice)
	for w := range c {
		wg.Go(func() {
			var took []time.Duration
			for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := op(w, i*c+w); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					return
				}
				took = append(took, time.Since(t0))
			}
			mu.Lock()
			r.took = append(r.took, took...)
			mu.Unlock()
		})
	}
	wg.Wait()
	r.elapsed += time.Since(start)
	r.ops = len(r.took)
	if first != nil {
		return first
	}
	return ctx.Err()
}

func (r *vaultRun) rate() float64 { return float64(r.ops) / r.elapsed.Seconds() }

func (r *vaultRun) p(q float64) time.Duration {
	slices.Sort(r.took)
	return percentile(r.took, q)
}
