package spire

import (
	"context"
	"testing"

	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

func TestScratchHung(t *testing.T) {
	release := make(chan struct{})
	hung := func(_ *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		<-release
		return nil
	}
	addr := serve(t, &fakeDelegatedIdentity{subscribe: hung})
	t.Cleanup(func() { close(release) })
	a := newAttestor(t, addr, "200ms")
	_, err := a.Attest(context.Background(), workloadattestor.Caller{PID: 1})
	t.Log(err)
}
