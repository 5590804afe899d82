package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// Load of the replicas test: workers per agent, each attesting
// replicaLoadPerWorker times a second, on two agents: 240/s offered.
const (
	replicaWorkers       = 10
	replicaLoadPerWorker = 12
)

// Issue #7. Three hallmark-server replicas on one PostgreSQL, two agents
// each given all three addresses, at least 200 attestations/s:
//
//   - kill -9 one replica: no attest call fails, every attestation is
//     logged exactly once, and a checkpoint from before the kill is
//     consistent with one after;
//   - restart PostgreSQL: the replicas say not ready while it is down,
//     attestations go on through the agents' outboxes, and everything
//     lands exactly once after it returns.
func TestReplicasOnPostgres(t *testing.T) {
	ctx := context.Background()
	pg, err := pgtest.Start(ctx, pgtest.Options{})
	require.NoError(t, err)
	t.Cleanup(pg.Stop)
	dsn, err := pg.CreateDatabase(ctx, "hallmark")
	require.NoError(t, err)

	dir, err := harness.ShortTempDir("hm-rep-")
	require.NoError(t, err)
	root, err := harness.RepoRoot()
	require.NoError(t, err)
	st := &harness.Stack{Root: root, Dir: dir}
	t.Cleanup(func() { closeKeepingLogs(t, dir, st.Close) })
	st.Bins, err = harness.BuildBinaries(ctx, root, filepath.Join(dir, "bin"))
	require.NoError(t, err)
	st.SPIRE, err = harness.StartSPIRE(ctx, root, dir, harness.SPIREOptions{})
	require.NoError(t, err)
	require.NoError(t, st.SPIRE.RegisterDaemons(ctx, root, st.Bins, time.Hour))
	replicas, err := st.SPIRE.StartReplicas(ctx, st.Bins.Server, dir, "hallmark-server", 3, harness.ServerOptions{
		Store: fmt.Sprintf("store \"postgres\" {\n  dsn = %q\n}\n", dsn),
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, r := range replicas {
			r.Stop() //nolint:errcheck // best effort
		}
	})
	st.Server = replicas[0]
	addrs := make([]string, len(replicas))
	for i, r := range replicas {
		addrs[i] = r.ServerAddr()
	}
	steps := []string{"build", "test"}
	policy := fmt.Sprintf(`
  rule "replicas-load" {
    spiffe_ids      = [%q]
    steps           = ["build", "test"]
    workspace_roots = [%q]
  }`, builderID, filepath.Join(dir, "workspaces"))
	var agents []*harness.Service
	for i := range 2 {
		ag, err := st.SPIRE.StartAgent(ctx, st.Bins.Agent, dir, fmt.Sprintf("hallmark-agent-%d", i+1), harness.AgentOptions{
			ServerAddrs: addrs, ServerID: harness.ServerID.String(), Policy: policy,
		})
		require.NoError(t, err)
		agents = append(agents, ag)
	}
	t.Cleanup(func() {
		for _, a := range agents {
			a.Stop() //nolint:errcheck // best effort
		}
	})
	st.Agent = agents[0]
	require.NoError(t, registerBuilders(ctx, st))
	rep := &replicaRun{t: t, replicas: replicas, agents: agents}
	rep.readTrust(ctx)

	// Phase 1: kill -9 a replica under load.
	spec := loadSpec{dir: dir, steps: steps, workers: replicaWorkers, perSecond: replicaLoadPerWorker}
	for _, a := range agents {
		spec.sockets = append(spec.sockets, a.Socket)
	}
	load := startLoad(t, spec)
	time.Sleep(8 * time.Second)
	before := rep.checkpoint(replicas[1])
	replicas[0].Kill()
	killedAt := time.Now()
	time.Sleep(12 * time.Second)
	res := load.stop()
	t.Logf("kill -9: %d attestations in %s (%.0f/s), %d failed; replica 1 killed %s into the run",
		res.ok, res.elapsed.Round(time.Millisecond), float64(res.ok)/res.elapsed.Seconds(), res.failed, killedAt.Sub(load.start).Round(time.Second))
	require.Zero(t, res.failed, "failed attestations: %v", res.errors)
	require.GreaterOrEqual(t, float64(res.ok)/res.elapsed.Seconds(), 200.0, "at least 200 attestations/s")
	live := replicas[1:]
	size := rep.drained(ctx, live, uint64(res.ok)+rep.baseline)
	after := rep.checkpoint(replicas[2])
	rep.consistent(ctx, replicas[2], before, after)
	t.Logf("kill -9: log at %d entries = %d before + %d attestations: none lost, none twice", size, rep.baseline, res.ok)
	rep.baseline = size

	// Phase 2: restart PostgreSQL under load.
	load = startLoad(t, spec)
	time.Sleep(5 * time.Second)
	before = rep.checkpoint(replicas[1])
	require.NoError(t, pg.Down())
	downAt := time.Now()
	for _, r := range live {
		require.Eventually(t, func() bool { return readyStatus(r) == http.StatusServiceUnavailable }, 15*time.Second, 100*time.Millisecond,
			"%s says not ready while PostgreSQL is down", r.Name)
	}
	time.Sleep(8 * time.Second)
	require.NoError(t, pg.Up(ctx))
	upAt := time.Now()
	for _, r := range live {
		require.Eventually(t, func() bool { return readyStatus(r) == http.StatusOK }, 30*time.Second, 100*time.Millisecond,
			"%s is ready again", r.Name)
	}
	time.Sleep(3 * time.Second)
	res = load.stop()
	t.Logf("PostgreSQL down %s: %d attestations in %s (%.0f/s), %d failed", upAt.Sub(downAt).Round(time.Millisecond),
		res.ok, res.elapsed.Round(time.Millisecond), float64(res.ok)/res.elapsed.Seconds(), res.failed)
	require.Zero(t, res.failed, "failed attestations: %v", res.errors)
	require.GreaterOrEqual(t, float64(res.ok)/res.elapsed.Seconds(), 200.0, "at least 200 attestations/s")
	size = rep.drained(ctx, live, uint64(res.ok)+rep.baseline)
	after = rep.checkpoint(replicas[1])
	rep.consistent(ctx, replicas[1], before, after)
	t.Logf("PostgreSQL restart: log at %d entries = %d before + %d attestations: none lost, none twice", size, rep.baseline, res.ok)
}

type replicaRun struct {
	t        *testing.T
	replicas []*harness.Service
	agents   []*harness.Service
	origin   string
	pub      ed25519.PublicKey
	baseline uint64 // entries logged before the current phase
}

func (r *replicaRun) readTrust(ctx context.Context) {
	r.t.Helper()
	rootJSON, err := r.replicas[0].Get(ctx, "/trust/trusted_root.json")
	require.NoError(r.t, err)
	var tr trustrootpb.TrustedRoot
	require.NoError(r.t, protojson.Unmarshal(rootJSON, &tr))
	r.origin, err = trust.CheckpointOrigin(tr.GetTlogs()[0].GetBaseUrl())
	require.NoError(r.t, err)
	pub, err := x509.ParsePKIXPublicKey(tr.GetTlogs()[0].GetPublicKey().GetRawBytes())
	require.NoError(r.t, err)
	r.pub = pub.(ed25519.PublicKey)
	cp := r.checkpoint(r.replicas[0])
	r.baseline = cp.Size
}

// checkpoint is a replica's latest checkpoint, verified.
func (r *replicaRun) checkpoint(s *harness.Service) tlog.Checkpoint {
	r.t.Helper()
	note, err := s.Get(context.Background(), "/log/checkpoint")
	require.NoError(r.t, err)
	cp, err := tlog.OpenCheckpoint(note, r.origin, r.pub)
	require.NoError(r.t, err)
	return cp
}

// drained waits until the agents' outboxes are empty and the log holds
// want entries (as every live replica reports it), and returns the size.
// More than want means an entry logged twice: that fails at once.
func (r *replicaRun) drained(ctx context.Context, live []*harness.Service, want uint64) uint64 {
	r.t.Helper()
	var size uint64
	waitFor(r.t, fmt.Sprintf("outboxes empty and the log at %d entries", want), 90*time.Second, func() error {
		queued := 0.0
		for _, a := range r.agents {
			m, err := a.Get(ctx, "/metrics")
			if err != nil {
				return err
			}
			q, ok := metric(m, "hallmark_agent_outbox_queued")
			if !ok {
				return fmt.Errorf("%s exposes no hallmark_agent_outbox_queued", a.Name)
			}
			queued += q
		}
		if queued > 0 {
			return fmt.Errorf("%v queued", queued)
		}
		for _, s := range live {
			size = r.checkpoint(s).Size
			require.LessOrEqual(r.t, size, want, "%s's log holds more entries than the test attested: some logged twice, or logged without the step being told", s.Name)
			if size != want {
				return fmt.Errorf("%s's log at %d", s.Name, size)
			}
		}
		return nil
	})
	return size
}

// consistent checks an RFC 6962 consistency proof from a to b, served by s.
func (r *replicaRun) consistent(ctx context.Context, s *harness.Service, a, b tlog.Checkpoint) {
	r.t.Helper()
	body, err := s.Get(ctx, fmt.Sprintf("/log/proof/consistency?from=%d&to=%d", a.Size, b.Size))
	require.NoError(r.t, err)
	var cons struct {
		Hashes [][]byte `json:"hashes"`
	}
	require.NoError(r.t, json.Unmarshal(body, &cons))
	require.NoError(r.t, tlog.VerifyConsistency(a.Size, b.Size, cons.Hashes, a.Root, b.Root), "checkpoints %d and %d", a.Size, b.Size)
}

func readyStatus(s *harness.Service) int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + s.HealthAddr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
