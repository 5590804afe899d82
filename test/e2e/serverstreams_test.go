package e2e

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/h2test"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// The server refuses a caller by its headers, before it reads the
// request, and bounds the calls open on one connection. Both are shown
// the way an attacker with an SVID of the trust domain would try them:
// raw HTTP/2 frames on a mutually authenticated connection, ignoring
// what the server announces. An outsider is any workload SPIRE gives an
// SVID (a build step has one); the stream bound is tried with an agent's
// SVID, as a thief of one would.
func TestServerRefusesByHeaders(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	require.NoError(t, err)
	td := spiffeid.RequireTrustDomainFromString(harness.TrustDomain)
	outsider := spiffeid.RequireFromPath(td, "/test/headers-outsider")
	thief := spiffeid.RequireFromPath(td, "/hallmark/agent/headers-thief")
	for _, id := range []spiffeid.ID{outsider, thief} {
		require.NoError(t, stack.SPIRE.CreateEntry(t.Context(), harness.Entry{SPIFFEID: id, Binary: self, X509SVIDTTL: time.Hour}))
	}
	x509ctx, err := stack.SPIRE.WaitForIdentities(t.Context(), outsider, thief)
	require.NoError(t, err)
	submit := serverv1.AgentService_SubmitEntries_FullMethodName

	t.Run("an outsider is refused before its request is read", func(t *testing.T) {
		c := dialH2(t, x509ctx, outsider)
		// A request that announces 16 MiB and sends 16 KiB of it: a
		// server that reads requests before deciding waits for the rest.
		c.Open(t, 1, submit, append(h2test.GRPCPrefix(16<<20), make([]byte, 16<<10)...), false)
		got := c.Await(t, 10*time.Second, func(ev h2test.Event) bool { return ev.Stream == 1 && ev.Status != "" })
		require.Equal(t, "7", got.Status, "PermissionDenied; grpc-message %q", got.Message)
		require.Contains(t, got.Message, "may not call")
	})

	t.Run("an agent's request is read", func(t *testing.T) {
		c := dialH2(t, x509ctx, thief)
		// A whole, empty SubmitEntries request: past the tap to the
		// handler, which answers for itself.
		c.Open(t, 1, submit, h2test.GRPCPrefix(0), true)
		got := c.Await(t, 10*time.Second, func(ev h2test.Event) bool { return ev.Stream == 1 && ev.Status != "" })
		require.NotEqual(t, "7", got.Status, "an agent may call SubmitEntries; grpc-message %q", got.Message)
		require.NotEqual(t, "16", got.Status, "grpc-message %q", got.Message)
	})

	t.Run("an outsider's open calls are bounded over its connections", func(t *testing.T) {
		// Health checks are all an outsider may call. It holds each one
		// open, the request announced at 16 MiB and 16 KiB of it sent,
		// on connections of its own, until the server refuses a call by
		// its headers.
		check := "/grpc.health.v1.Health/Check"
		var conns []*h2test.Client
		refused := ""
		for i := 0; i < 16 && refused == ""; i++ {
			c := dialH2(t, x509ctx, outsider)
			conns = append(conns, c)
			c.Open(t, 1, check, append(h2test.GRPCPrefix(16<<20), make([]byte, 16<<10)...), false)
			// A call the server took waits for the rest of its request,
			// and the server says nothing of it.
			if ev, ok := c.Next(t, time.Now().Add(time.Second)); ok {
				require.Equal(t, uint32(1), ev.Stream)
				refused = ev.Status
				require.Contains(t, ev.Message, "not an agent")
			}
		}
		require.Equal(t, "8", refused, "ResourceExhausted, after %d calls held open", len(conns)-1)
		require.Equal(t, 4, len(conns)-1, "docs/security.md: 4 requests under way per SPIFFE ID")

		// Its calls ended, it is served again: a real gRPC health check.
		for _, c := range conns {
			c.Conn.Close()
		}
		waitFor(t, "the outsider's places to come back", 10*time.Second, func() error {
			return healthCheckAs(t, x509ctx, outsider)
		})
	})

	t.Run("an outsider's health watches hold no place once their requests are read", func(t *testing.T) {
		creds := grpccredentials.MTLSClientCredentials(svidFor(t, x509ctx, outsider), x509ctx.Bundles, tlsconfig.AuthorizeID(harness.ServerID))
		conn, err := grpc.NewClient(stack.Server.ServerAddr(), grpc.WithTransportCredentials(creds))
		require.NoError(t, err)
		defer conn.Close()
		for i := range 6 {
			w, err := healthpb.NewHealthClient(conn).Watch(t.Context(), &healthpb.HealthCheckRequest{})
			require.NoError(t, err)
			_, err = w.Recv() // the server read the request and answered
			require.NoError(t, err, "watch %d", i+1)
		}
		require.NoError(t, healthCheckAs(t, x509ctx, outsider), "six watches open, and a check is served")
	})

	t.Run("a connection refused call after call is closed", func(t *testing.T) {
		c := dialH2(t, x509ctx, outsider)
		// Each call with a timeout of a year: gRPC keeps a timer for a
		// call the tap refuses (maxRefusalsPerConn in server/connguard.go).
		refused := 0
		var err error
		deadline := time.Now().Add(30 * time.Second)
		for i := 0; i < 200 && err == nil; i++ {
			id := uint32(2*i + 1)
			if err = c.TryOpen(t, id, submit, [2]string{"grpc-timeout", "8760H"}); err != nil {
				break
			}
			// Its answer, or the connection's end.
			for err == nil {
				var ev h2test.Event
				if ev, err = c.ReadEvent(deadline); err != nil {
					break
				}
				if !ev.RST && ev.Stream == id {
					require.Equal(t, "7", ev.Status, "PermissionDenied")
					refused++
					break
				}
			}
		}
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server closed the connection rather than keep answering: %v", err)
		require.Error(t, err, "the connection is closed")
		require.GreaterOrEqual(t, refused, 100)
		require.LessOrEqual(t, refused, 101)
		t.Logf("%d calls refused, then the connection closed (%v)", refused, err)
	})

	t.Run("headers over 16 KiB are refused", func(t *testing.T) {
		c := dialH2(t, x509ctx, thief)
		require.Equal(t, uint32(16<<10), c.MaxHeaderListSize, "SETTINGS_MAX_HEADER_LIST_SIZE (docs/security.md: headers bounded to 16 KiB)")
		// Sent whatever the server announced: headers of n fields of 512
		// bytes, in a HEADERS frame and CONTINUATION frames of at most 8
		// KiB each.
		send := func(id uint32, n int) {
			var pad [][2]string
			for i := range n {
				pad = append(pad, [2]string{fmt.Sprintf("x-pad-%d", i), strings.Repeat("a", 512)})
			}
			block := c.HeaderBlock(t, submit, pad...)
			const chunk = 8 << 10
			first := min(chunk, len(block))
			require.NoError(t, c.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:first], EndHeaders: first == len(block)}))
			for rest := block[first:]; len(rest) > 0; {
				m := min(chunk, len(rest))
				require.NoError(t, c.Framer.WriteContinuation(id, m == len(rest), rest[:m]))
				rest = rest[m:]
			}
			require.NoError(t, c.Framer.WriteData(id, true, h2test.GRPCPrefix(0)))
		}
		// 20 KiB: reset as its headers arrive (gRPC's FRAME_SIZE_ERROR);
		// a handler's answer, even an error, would be HEADERS with a
		// grpc-status.
		send(1, 40)
		got := c.Await(t, 10*time.Second, func(ev h2test.Event) bool { return ev.Stream == 1 })
		require.Equal(t, http2.ErrCodeFrameSize, got.Reset, "20 KiB of headers: %+v", got)
		// 12 KiB, sent the same way on the same connection: it reaches the
		// service, which answers it.
		send(3, 24)
		got = c.Await(t, 10*time.Second, func(ev h2test.Event) bool { return ev.Stream == 3 && (ev.Status != "" || ev.Reset != 0) })
		require.Zero(t, got.Reset, "12 KiB of headers: %+v", got)
		require.NotEmpty(t, got.Status, "12 KiB of headers: %+v", got)
		t.Logf("20 KiB of headers: stream reset (%v); 12 KiB: grpc-status %s %q", http2.ErrCodeFrameSize, got.Status, got.Message)
	})

	t.Run("streams beyond the server's bound are refused", func(t *testing.T) {
		c := dialH2(t, x509ctx, thief)
		bound := c.MaxConcurrentStreams
		require.Equal(t, uint32(20), bound, "SETTINGS_MAX_CONCURRENT_STREAMS (docs/security.md: at most 20 streams)")
		const tries = 64
		require.Less(t, int(bound), tries)
		// Each stream a request of 1 MiB with its first KiB sent, held
		// open: none reaches a handler, each would hold what it sent.
		for i := range tries {
			c.Open(t, uint32(2*i+1), submit, append(h2test.GRPCPrefix(1<<20), make([]byte, 1<<10)...), false)
		}
		refused := map[uint32]bool{}
		c.Await(t, 10*time.Second, func(ev h2test.Event) bool {
			if ev.Reset == http2.ErrCodeRefusedStream {
				refused[ev.Stream] = true
			}
			return len(refused) == tries-int(bound)
		})
		for i := range tries {
			id := uint32(2*i + 1)
			require.Equal(t, i >= int(bound), refused[id], "stream %d of %d (bound %d)", i+1, tries, bound)
		}
	})
}

// healthCheckAs asks the server's gRPC health service, as id.
func healthCheckAs(t *testing.T, x509ctx *workloadapi.X509Context, id spiffeid.ID) error {
	t.Helper()
	creds := grpccredentials.MTLSClientCredentials(svidFor(t, x509ctx, id), x509ctx.Bundles, tlsconfig.AuthorizeID(harness.ServerID))
	conn, err := grpc.NewClient(stack.Server.ServerAddr(), grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	return err
}

// dialH2 is a raw HTTP/2 connection to the server with id's SVID, as an
// SVID holder who writes frames by hand would hold one.
func dialH2(t *testing.T, x509ctx *workloadapi.X509Context, id spiffeid.ID) *h2test.Client {
	t.Helper()
	cfg := tlsconfig.MTLSClientConfig(svidFor(t, x509ctx, id), x509ctx.Bundles, tlsconfig.AuthorizeID(harness.ServerID))
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", stack.Server.ServerAddr(), cfg)
	require.NoError(t, err)
	return h2test.New(t, conn, "https", "hallmark-server")
}
