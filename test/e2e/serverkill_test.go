package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Must show: hallmark-server on its default store (SQLite), killed -9
// eight times while an agent's steps keep attesting and its outbox keeps
// submitting, loses nothing, logs nothing twice and takes back nothing it
// published. After each restart on the same data, the log is consistent
// with the checkpoint read just before the kill. Once the outbox has
// drained, the log holds exactly the attestations steps were told of,
// each once, and every tree a bundle proves its entry's inclusion in is
// consistent with the log the server serves then. Steps refused while it
// was down (Unavailable: no timestamp authority answered) are not logged;
// once a step begun after a restart has been attested, none is refused
// until the next kill (nor before the first kill).
// How many kills landed between a commit and its answer (the agent
// submits those again, and the server answers with the entry it holds)
// is logged, not required: the kills land where they land.
func TestServerKilledWhileAppending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "hallmark-server-killed", harness.ServerOptions{CertificateTTL: 10 * time.Minute})
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-killed", harness.AgentOptions{
		ServerAddr: srv.ServerAddr(), ServerID: harness.ServerID.String(), Policy: testPolicy(stack.Dir),
		// Small submissions, so that appends are many and a kill may
		// land in the middle of one: between its commit and the agent
		// hearing of it, the agent submits again.
		Extra: "log_batch_size = 4",
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	ws := workspace(t, map[string]string{"out": "product"})
	client := localClient(t, ag.Socket)
	rep := &replicaRun{t: t, replicas: []*harness.Service{srv}, agents: []*harness.Service{ag}}
	rep.readTrust(ctx)

	// Eight steps at a time, each a log entry of its own (the command
	// differs), as fast as the agent answers.
	var (
		mu         sync.Mutex
		acked      []string
		attested   []callSpan // each acked step's call
		refusals   []callSpan // each refused step's call
		unexpected []error
		killedAt   []time.Time
		restarted  []time.Time
		repeats    float64 // submissions answered with an entry already logged
		n          atomic.Int64
		wg         sync.WaitGroup
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	for range 8 {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				start := time.Now()
				resp, err := client.AttestStep(cctx, &agentv1.AttestStepRequest{
					Step: "build", Workspace: ws, Products: []string{"out"}, Command: []string{"step", fmt.Sprint(n.Add(1))},
				})
				end := time.Now()
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					acked = append(acked, resp.GetInvocationId())
					attested = append(attested, callSpan{start, end})
				case status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "without a timestamp from the log's authority"):
					refusals = append(refusals, callSpan{start, end})
				default:
					unexpected = append(unexpected, err)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // no spinning while the server is down
				}
			}
		})
	}
	t.Cleanup(func() { stopLoad(); wg.Wait() })

	for kill := range 8 {
		start := rep.checkpoint(srv).Size
		waitFor(t, "the log to grow under load", time.Minute, func() error {
			if size := rep.checkpoint(srv).Size; size < start+100 {
				return fmt.Errorf("at %d entries, from %d", size, start)
			}
			return nil
		})
		time.Sleep(time.Duration(rand.IntN(20_000)) * time.Microsecond)
		repeats += counter(t, srv, `hallmark_server_log_appends_total{result="duplicate"}`)
		last := rep.checkpoint(srv)
		mu.Lock()
		killedAt = append(killedAt, time.Now())
		refusedBefore := len(refusals)
		mu.Unlock()
		srv.Kill()
		waitFor(t, "a step to be refused while the server is down", 30*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(refusals) == refusedBefore {
				return fmt.Errorf("none refused yet")
			}
			return nil
		})
		require.NoError(t, srv.Start(ctx), "restart %d", kill+1)
		mu.Lock()
		restarted = append(restarted, time.Now())
		mu.Unlock()
		after := rep.checkpoint(srv)
		require.GreaterOrEqual(t, after.Size, last.Size, "restart %d: the log shrank", kill+1)
		rep.consistent(ctx, srv, last, after)
		t.Logf("kill %d: the log at %d entries when killed, %d after the restart", kill+1, last.Size, after.Size)
	}
	// Until steps are attested again.
	mu.Lock()
	ackedBefore := len(acked)
	mu.Unlock()
	waitFor(t, "steps to be attested again", time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < ackedBefore+50 {
			return fmt.Errorf("%d attested since the last restart", len(acked)-ackedBefore)
		}
		return nil
	})
	stopLoad()
	wg.Wait()
	repeats += counter(t, srv, `hallmark_server_log_appends_total{result="duplicate"}`)

	require.Empty(t, unexpected, "errors other than the server down")
	t.Logf("%d steps attested, %d refused while the server was down", len(acked), len(refusals))
	// Refused only while down: in each stretch the server was up (before
	// the first kill, and from each restart to the next kill), once a
	// call begun in the stretch has attested a step, no call that began
	// after that and ended before the next kill was refused.
	var slowest time.Duration // from a restart to the first step attested
	for i := range len(killedAt) + 1 {
		from, until := time.Time{}, time.Now()
		if i > 0 {
			from = restarted[i-1]
		}
		if i < len(killedAt) {
			until = killedAt[i]
		}
		var firstOK time.Time
		for _, a := range attested {
			if a.start.After(from) && a.end.Before(until) && (firstOK.IsZero() || a.end.Before(firstOK)) {
				firstOK = a.end
			}
		}
		if firstOK.IsZero() {
			continue // the agent had not reconnected before the next kill
		}
		if i > 0 {
			slowest = max(slowest, firstOK.Sub(from))
		}
		for _, r := range refusals {
			require.False(t, r.start.After(firstOK) && r.end.Before(until),
				"a step was refused while the server was up (stretch %d: attested again %s after the restart; the call ran %s to %s, the next kill at %s)",
				i, firstOK.Sub(from), r.start.Format(time.StampMicro), r.end.Format(time.StampMicro), until.Format(time.StampMicro))
		}
	}
	t.Logf("after each restart, steps were attested again within %s", slowest)
	size := rep.drained(ctx, []*harness.Service{srv}, rep.baseline+uint64(len(acked)))
	logged := requireLoggedOnce(t, client, acked)
	// Every tree a bundle's proof is against is a prefix of the log as
	// the server serves it after the kills.
	final := rep.checkpoint(srv)
	trees := map[uint64][]byte{}
	for _, e := range logged {
		p := e.GetInclusionProof()
		if root, ok := trees[uint64(p.GetTreeSize())]; ok {
			require.Equal(t, root, p.GetRootHash(), "two roots for a tree of %d entries", p.GetTreeSize())
			continue
		}
		trees[uint64(p.GetTreeSize())] = p.GetRootHash()
		rep.consistent(ctx, srv, tlog.Checkpoint{Size: uint64(p.GetTreeSize()), Root: p.GetRootHash()}, final)
	}
	t.Logf("the log at %d entries: every attested step once, no refused one; %d trees the bundles prove against, each consistent with it; %.0f submissions repeated after a kill (killed between a commit and its answer)",
		size, len(trees), repeats)
}

// callSpan is when a call began and ended.
type callSpan struct{ start, end time.Time }
