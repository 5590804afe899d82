package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// Both daemons answer grpc.health.v1: the agent on its local socket, the
// server over mTLS to any member of the trust domain.
func TestGRPCHealth(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	conn, err := grpc.NewClient("unix://"+stack.Agent.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	agentHealth := healthpb.NewHealthClient(conn)
	resp, err := agentHealth.Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus(), "the agent holds a signing certificate")
	_, err = agentHealth.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	require.Equal(t, codes.NotFound, status.Code(err))

	// The server, as a member of the trust domain that is not an agent
	// (this test binary's builder identity).
	builder := spiffeid.RequireFromString(builderID)
	x509ctx, err := stack.SPIRE.WaitForIdentities(ctx, builder)
	require.NoError(t, err)
	creds := grpccredentials.MTLSClientCredentials(svidFor(t, x509ctx, builder), x509ctx.Bundles, tlsconfig.AuthorizeID(harness.ServerID))
	sconn, err := grpc.NewClient(stack.Server.ServerAddr(), grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	defer sconn.Close()
	resp, err = healthpb.NewHealthClient(sconn).Check(ctx, &healthpb.HealthCheckRequest{Service: "hallmark.server.v1.AgentService"})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
}
