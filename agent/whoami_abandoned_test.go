package agent

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

// slowAttestor answers after d, or fails when ctx ends first.
type slowAttestor struct{ d time.Duration }

func (s slowAttestor) Attest(ctx context.Context, _ workloadattestor.Caller) (workloadattestor.Result, error) {
	select {
	case <-time.After(s.d):
		return workloadattestor.Result{SPIFFEIDs: []string{testCallerID}}, nil
	case <-ctx.Done():
		return workloadattestor.Result{}, ctx.Err()
	}
}

// Must show: a caller that closes its connection while it is being
// identified (hallmark-attest's early WhoAmI, when the step's command
// fails fast) is no failure the agent warns of.
func TestIdentificationAbandonedIsNoWarning(t *testing.T) {
	fx := newLocalAPIFixture(t, NamedAttestor{Name: "slow", Attestor: slowAttestor{time.Second}})
	c, err := agentclient.Dial(context.Background(), fx.socket)
	require.NoError(t, err)
	go c.Identify(context.Background()) //nolint:errcheck // abandoned
	time.Sleep(200 * time.Millisecond)
	c.Close()
	time.Sleep(200 * time.Millisecond)
	require.Empty(t, fx.logs.FilterMessage("Local API call failed").All())
}
