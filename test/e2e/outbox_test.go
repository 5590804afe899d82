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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Must show: with the log down (its PostgreSQL stopped; the server still
// answers), steps still get signed, timestamped bundles; all of them land
// in the log exactly once when it returns, also when the agent is killed
// -9 in the middle of draining. With the server itself down, attestation
// is refused at once and nothing is queued: no timestamp, no attestation
// (docs/log.md, "Late entries").
func TestOutboxSurvivesOutageAndKill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg, srv, ag := pgServer(t, "outbox", harness.ServerOptions{CertificateTTL: 10 * time.Minute}, "log_batch_size = 2") // a drain of many calls, to kill it in the middle
	ws := workspace(t, map[string]string{"out": "product"})
	client := localClient(t, ag.Socket)

	attestN := func(n int) []string {
		var ids []string
		for i := range n {
			resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{
				Step: "build", Workspace: ws, Products: []string{"out"}, Command: []string{"step", fmt.Sprint(i)},
			})
			require.NoError(t, err, "attestation %d while the log is down", i)
			require.False(t, resp.GetLogged())
			ids = append(ids, resp.GetInvocationId())
		}
		return ids
	}

	// Round 1: the log down for 200 steps.
	require.NoError(t, pg.Down())
	ids := attestN(200)
	require.Equal(t, 200.0, gauge(t, ag, "hallmark_agent_outbox_queued"))
	require.NoError(t, pg.Up(ctx))
	waitFor(t, "the outbox to drain", 2*time.Minute, func() error {
		if q := gauge(t, ag, "hallmark_agent_outbox_queued"); q != 0 {
			return fmt.Errorf("%v queued", q)
		}
		return nil
	})
	requireLoggedOnce(t, client, ids)
	require.Equal(t, uint64(200), logSize(t, srv))

	// The server down: refused at once, nothing queued.
	require.NoError(t, srv.Stop())
	for i := range 3 {
		start := time.Now()
		_, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}})
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		require.Contains(t, status.Convert(err).Message(), "no timestamp authority answered")
		require.Less(t, time.Since(start), 15*time.Second, "attempt %d: told at once", i)
	}
	require.Equal(t, 0.0, gauge(t, ag, "hallmark_agent_outbox_queued"))
	require.NoError(t, srv.Start(ctx))
	require.Equal(t, uint64(200), logSize(t, srv), "nothing logged of the refused ones")
	var back string // the first attestation once the agent reconnected
	waitFor(t, "attestation to work again", time.Minute, func() error {
		resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}})
		back = resp.GetInvocationId()
		return err
	})

	// Round 2: 200 more, and the agent is killed -9 while draining.
	require.NoError(t, pg.Down())
	ids2 := append(attestN(200), back)
	require.NoError(t, pg.Up(ctx))
	var atKill uint64
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "the drain never started")
		if atKill = logSize(t, srv); atKill > 201 {
			break
		}
	}
	ag.Kill()
	t.Logf("agent killed -9 with the log at %d of 401 (%d after the kill)", atKill, logSize(t, srv))
	require.Less(t, atKill, uint64(401), "the kill must land in the middle of the drain")
	require.NoError(t, ag.Start(ctx))
	client = localClient(t, ag.Socket)
	waitFor(t, "the outbox to drain after the restart", 2*time.Minute, func() error {
		if q := gauge(t, ag, "hallmark_agent_outbox_queued"); q != 0 {
			return fmt.Errorf("%v queued", q)
		}
		return nil
	})
	requireLoggedOnce(t, client, append(ids, ids2...))
	require.Equal(t, uint64(401), logSize(t, srv), "every envelope logged exactly once")
}

// requireLoggedOnce checks every invocation has a logged bundle whose
// inclusion proof verifies, at distinct log indexes, and returns their
// tlog entries.
func requireLoggedOnce(t *testing.T, client agentv1.WorkloadServiceClient, ids []string) []*rekorpb.TransparencyLogEntry {
	t.Helper()
	seen := map[int64]string{}
	var logged []*rekorpb.TransparencyLogEntry
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
		logged = append(logged, e)
	}
	return logged
}

// waitLogged waits until every invocation is logged (GetBundle with
// wait), then checks them as requireLoggedOnce does.
func waitLogged(t *testing.T, client agentv1.WorkloadServiceClient, ids []string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, id := range ids {
		_, err := client.GetBundle(ctx, &agentv1.GetBundleRequest{InvocationId: id, Wait: true})
		require.NoError(t, err, "invocation %s", id)
	}
	requireLoggedOnce(t, client, ids)
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
