package peercred

import (
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// callers records the peer of every call the interceptor let through.
type callers struct {
	mu   sync.Mutex
	pids []int32
	args [][]string
}

func (r *callers) last() (int32, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pids) == 0 {
		return 0, nil
	}
	return r.pids[len(r.pids)-1], r.args[len(r.args)-1]
}

// gate is the interceptor a hallmark-agent would run: identify the caller
// from the connection, confirm it is still that process, then proceed.
func (r *callers) gate(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	c, ok := FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer credentials")
	}
	if err := c.Verify(); err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	args, err := c.Peer().Cmdline()
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	r.mu.Lock()
	r.pids = append(r.pids, c.Peer().PID)
	r.args = append(r.args, args)
	r.mu.Unlock()
	return next(ctx, req)
}

func serveHealth(t *testing.T, lis net.Listener) *callers {
	t.Helper()
	rec := &callers{}
	srv := grpc.NewServer(grpc.Creds(Credentials()), grpc.UnaryInterceptor(rec.gate))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return rec
}

// 7. A grpc.Server on a Listener with Credentials: handlers see the
// caller's pid, for callers in this process and in another.
func TestGRPCHealth(t *testing.T) {
	l, path := listen(t)
	rec := serveHealth(t, l)

	for _, tc := range []struct {
		name  string
		creds grpc.DialOption
	}{
		{"peercred client", grpc.WithTransportCredentials(Credentials())},
		{"insecure client", grpc.WithTransportCredentials(insecure.NewCredentials())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient("unix://"+path, tc.creds)
			require.NoError(t, err)
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			hc := healthpb.NewHealthClient(cc)

			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			require.NoError(t, err)
			require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
			pid, args := rec.last()
			require.Equal(t, int32(os.Getpid()), pid)
			require.Equal(t, os.Args, args)

			// A request much larger than one read: the HTTP/2 framer reads
			// it in many pieces through bufio.
			_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: strings.Repeat("s", 1<<20)})
			require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
		})
	}

	t.Run("other process", func(t *testing.T) {
		h := startHelper(t, "grpc-health", path)
		h.expect(t, "SERVING")
		require.NoError(t, h.cmd.Wait(), "helper stderr: %s", h.stderr)
		pid, args := rec.last()
		require.Equal(t, h.pid(), pid)
		require.Contains(t, args, "-test.run=^TestHelperProcess$")
	})
}

// Credentials refuses connections that did not come from a Listener: the
// server cannot identify their callers.
func TestGRPCRefusesPlainListener(t *testing.T) {
	path := sockDir(t) + "/plain.sock"
	lis, err := net.Listen("unix", path)
	require.NoError(t, err)
	serveHealth(t, lis)

	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(Credentials()))
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.Error(t, err)
	require.Contains(t, []codes.Code{codes.Unavailable, codes.DeadlineExceeded}, status.Code(err))
}

func TestFromContextWithoutPeer(t *testing.T) {
	_, ok := FromContext(context.Background())
	require.False(t, ok)
}
