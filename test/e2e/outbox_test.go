package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Must show: with the server down, steps still get signed bundles; all of
// them land in the log exactly once when it returns, also when the agent
// is killed -9 in the middle of draining.
func TestOutboxSurvivesOutageAndKill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "hallmark-server-outbox", harness.ServerOptions{CertificateTTL: 10 * time.Minute})
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-outbox", harness.AgentOptions{
		ServerAddr: srv.ServerAddr(), ServerID: harness.ServerID.String(), Policy: testPolicy(stack.Dir),
		Extra: "log_batch_size = 2", // a drain of many calls, to kill it in the middle
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	ws := workspace(t, map[string]string{"out": "product"})
	client := localClient(t, ag.Socket)

	attestN := func(n int) []string {
		var ids []string
		for i := range n {
			resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{
				Step: "build", Workspace: ws, Products: []string{"out"}, Command: []string{"step", fmt.Sprint(i)},
			})
			require.NoError(t, err, "attestation %d while the server is down", i)
			require.False(t, resp.GetLogged())
			ids = append(ids, resp.GetInvocationId())
		}
		return ids
	}

	// Round 1: server down for 200 steps.
	require.NoError(t, srv.Stop())
	ids := attestN(200)
	require.Equal(t, 200.0, gauge(t, ag, "hallmark_agent_outbox_queued"))
	require.NoError(t, srv.Start(ctx))
	waitFor(t, "the outbox to drain", 2*time.Minute, func() error {
		if q := gauge(t, ag, "hallmark_agent_outbox_queued"); q != 0 {
			return fmt.Errorf("%v queued", q)
		}
		return nil
	})
	requireLoggedOnce(t, client, ids)
	require.Equal(t, uint64(200), logSize(t, srv))

	// Round 2: 200 more, and the agent is killed -9 while draining.
	require.NoError(t, srv.Stop())
	ids2 := attestN(200)
	require.NoError(t, srv.Start(ctx))
	var atKill uint64
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "the drain never started")
		if atKill = logSize(t, srv); atKill > 200 {
			break
		}
	}
	ag.Kill()
	t.Logf("agent killed -9 with the log at %d of 400 (%d after the kill)", atKill, logSize(t, srv))
	require.Less(t, atKill, uint64(400), "the kill must land in the middle of the drain")
	require.NoError(t, ag.Start(ctx))
	client = localClient(t, ag.Socket)
	waitFor(t, "the outbox to drain after the restart", 2*time.Minute, func() error {
		if q := gauge(t, ag, "hallmark_agent_outbox_queued"); q != 0 {
			return fmt.Errorf("%v queued", q)
		}
		return nil
	})
	requireLoggedOnce(t, client, append(ids, ids2...))
	require.Equal(t, uint64(400), logSize(t, srv), "every envelope logged exactly once")
}

// requireLoggedOnce checks every invocation has a logged bundle whose
// inclusion proof verifies, at distinct log indexes.
func requireLoggedOnce(t *testing.T, client agentv1.WorkloadServiceClient, ids []string) {
	t.Helper()
	seen := map[int64]string{}
	for _, id := range ids {
		resp, err := client.GetBundle(context.Background(), &agentv1.GetBundleRequest{InvocationId: id})
		require.NoError(t, err)
		require.True(t, resp.GetLogged(), "invocation %s not logged", id)
		var b bundlepb.Bundle
		require.NoError(t, protojson.Unmarshal(resp.GetBundle(), &b))
		entries := b.GetVerificationMaterial().GetTlogEntries()
		require.Len(t, entries, 1)
		e := entries[0]
		requireIncluded(t, e)
		prev, dup := seen[e.GetLogIndex()]
		require.False(t, dup, "log index %d holds %s and %s", e.GetLogIndex(), prev, id)
		seen[e.GetLogIndex()] = id
	}
}

func requireIncluded(t *testing.T, e *rekorpb.TransparencyLogEntry) {
	t.Helper()
	p := e.GetInclusionProof()
	require.NoError(t, tlog.VerifyInclusion(uint64(p.GetLogIndex()), uint64(p.GetTreeSize()),
		tlog.LeafHash(e.GetCanonicalizedBody()), p.GetHashes(), p.GetRootHash()))
}

// logSize reads the size of the server's latest checkpoint.
func logSize(t *testing.T, srv *harness.Service) uint64 {
	t.Helper()
	body, err := srv.Get(context.Background(), "/log/checkpoint")
	require.NoError(t, err)
	text, _, _ := strings.Cut(string(body), "\n\n")
	cp, err := tlog.ParseCheckpoint(text + "\n")
	require.NoError(t, err)
	return cp.Size
}
