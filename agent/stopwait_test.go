package agent

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// Must show, as the outside review found it: a step waiting for the log
// (--wait-log, two minutes by default, an hour if it says so) held the
// agent's stop for as long, while the agent, stopping, submitted nothing:
// 117 s to stop, and the step then failed blaming the server. At the stop
// such a wait ends at once with Unavailable, naming the invocation queued
// on disk, and the stop does not wait for the step's timeout.
func TestStopEndsLogWaits(t *testing.T) {
	fx := newLocalAPIFixture(t)
	dir, err := os.MkdirTemp("", "hm-ob-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o700))
	ob, err := fx.a.openOutbox(dir)
	require.NoError(t, err)
	t.Cleanup(func() { ob.Close() })
	fx.write(t, "out", 10)
	c := fx.client(t)
	resp, err := c.AttestStep(context.Background(), &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"out"}})
	require.NoError(t, err)

	// No submitter runs: the entry stays queued, and the wait waits.
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	waited := make(chan error, 1)
	go func() {
		_, err := c.GetBundle(ctx, &agentv1.GetBundleRequest{InvocationId: resp.GetInvocationId(), Wait: true})
		waited <- err
	}()
	require.Eventually(t, func() bool { return ob.Waiting() > 0 }, 10*time.Second, time.Millisecond, "the wait to begin")

	start := time.Now()
	fx.stop()
	require.Less(t, time.Since(start), localStopGrace, "the stop did not wait for the step's hour")
	err = <-waited
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "hallmark-agent is stopping: invocation "+resp.GetInvocationId()+" is queued on its disk")
	it, ok, err := ob.Get(resp.GetInvocationId())
	require.NoError(t, err)
	require.True(t, ok, "still queued")
	require.Equal(t, outbox.Pending, it.State)
}
