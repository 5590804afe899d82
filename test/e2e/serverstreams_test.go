package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
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
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
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
		c.open(t, 1, submit, append(grpcPrefix(16<<20), make([]byte, 16<<10)...), false)
		got := c.await(t, 10*time.Second, func(ev h2event) bool { return ev.stream == 1 && ev.status != "" })
		require.Equal(t, "7", got.status, "PermissionDenied; grpc-message %q", got.message)
		require.Contains(t, got.message, "may not call")
	})

	t.Run("an agent's request is read", func(t *testing.T) {
		c := dialH2(t, x509ctx, thief)
		// A whole, empty SubmitEntries request: past the tap to the
		// handler, which answers for itself.
		c.open(t, 1, submit, grpcPrefix(0), true)
		got := c.await(t, 10*time.Second, func(ev h2event) bool { return ev.stream == 1 && ev.status != "" })
		require.NotEqual(t, "7", got.status, "an agent may call SubmitEntries; grpc-message %q", got.message)
		require.NotEqual(t, "16", got.status, "grpc-message %q", got.message)
	})

	t.Run("an outsider's open calls are bounded over its connections", func(t *testing.T) {
		// Health checks are all an outsider may call. It holds each one
		// open, the request announced at 16 MiB and 16 KiB of it sent,
		// on connections of its own, until the server refuses a call by
		// its headers.
		check := "/grpc.health.v1.Health/Check"
		var conns []*h2conn
		refused := ""
		for i := 0; i < 16 && refused == ""; i++ {
			c := dialH2(t, x509ctx, outsider)
			conns = append(conns, c)
			c.open(t, 1, check, append(grpcPrefix(16<<20), make([]byte, 16<<10)...), false)
			// A call the server took waits for the rest of its request,
			// and the server says nothing of it.
			if ev, ok := c.next(t, time.Now().Add(time.Second)); ok {
				require.Equal(t, uint32(1), ev.stream)
				refused = ev.status
				require.Contains(t, ev.message, "not an agent")
			}
		}
		require.Equal(t, "8", refused, "ResourceExhausted, after %d calls held open", len(conns)-1)
		require.Equal(t, 4, len(conns)-1, "docs/security.md: 4 requests under way per SPIFFE ID")

		// Its calls ended, it is served again: a real gRPC health check.
		for _, c := range conns {
			c.conn.Close()
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
		require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		for i := 0; i < 200 && err == nil; i++ {
			id := uint32(2*i + 1)
			if err = c.tryOpen(t, id, submit, [2]string{"grpc-timeout", "8760H"}); err != nil {
				break
			}
			// Its answer, or the connection's end.
			for err == nil {
				var f http2.Frame
				if f, err = c.fr.ReadFrame(); err != nil {
					break
				}
				if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
					require.Equal(t, "7", headerValue(h, "grpc-status"), "PermissionDenied")
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
		require.Equal(t, uint32(16<<10), c.maxHeaders, "SETTINGS_MAX_HEADER_LIST_SIZE (docs/security.md: headers bounded to 16 KiB)")
		// Sent whatever the server announced: headers of n fields of 512
		// bytes, in a HEADERS frame and CONTINUATION frames of at most 8
		// KiB each.
		send := func(id uint32, n int) {
			var pad [][2]string
			for i := range n {
				pad = append(pad, [2]string{fmt.Sprintf("x-pad-%d", i), strings.Repeat("a", 512)})
			}
			block := headerBlock(t, submit, pad)
			const chunk = 8 << 10
			first := min(chunk, len(block))
			require.NoError(t, c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:first], EndHeaders: first == len(block)}))
			for rest := block[first:]; len(rest) > 0; {
				m := min(chunk, len(rest))
				require.NoError(t, c.fr.WriteContinuation(id, m == len(rest), rest[:m]))
				rest = rest[m:]
			}
			require.NoError(t, c.fr.WriteData(id, true, grpcPrefix(0)))
		}
		// 20 KiB: reset as its headers arrive (gRPC's FRAME_SIZE_ERROR);
		// a handler's answer, even an error, would be HEADERS with a
		// grpc-status.
		send(1, 40)
		got := c.await(t, 10*time.Second, func(ev h2event) bool { return ev.stream == 1 })
		require.Equal(t, http2.ErrCodeFrameSize, got.reset, "20 KiB of headers: %+v", got)
		// 12 KiB, sent the same way on the same connection: it reaches the
		// service, which answers it.
		send(3, 24)
		got = c.await(t, 10*time.Second, func(ev h2event) bool { return ev.stream == 3 && (ev.status != "" || ev.reset != 0) })
		require.Zero(t, got.reset, "12 KiB of headers: %+v", got)
		require.NotEmpty(t, got.status, "12 KiB of headers: %+v", got)
		t.Logf("20 KiB of headers: stream reset (%v); 12 KiB: grpc-status %s %q", http2.ErrCodeFrameSize, got.status, got.message)
	})

	t.Run("streams beyond the server's bound are refused", func(t *testing.T) {
		c := dialH2(t, x509ctx, thief)
		bound := c.maxStreams
		require.Equal(t, uint32(20), bound, "SETTINGS_MAX_CONCURRENT_STREAMS (docs/security.md: at most 20 streams)")
		const tries = 64
		require.Less(t, int(bound), tries)
		// Each stream a request of 1 MiB with its first KiB sent, held
		// open: none reaches a handler, each would hold what it sent.
		for i := range tries {
			c.open(t, uint32(2*i+1), submit, append(grpcPrefix(1<<20), make([]byte, 1<<10)...), false)
		}
		refused := map[uint32]bool{}
		c.await(t, 10*time.Second, func(ev h2event) bool {
			if ev.reset == http2.ErrCodeRefusedStream {
				refused[ev.stream] = true
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

// headerValue is the value of header name in f, if any.
func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if strings.EqualFold(hf.Name, name) {
			return hf.Value
		}
	}
	return ""
}

// h2conn is a raw HTTP/2 connection to the server, as an SVID holder
// who writes frames by hand would hold one.
type h2conn struct {
	conn       net.Conn
	fr         *http2.Framer
	maxStreams uint32 // as the server's first SETTINGS announced it
	maxHeaders uint32 // SETTINGS_MAX_HEADER_LIST_SIZE, likewise
}

// h2event is what a frame from the server said about a stream.
type h2event struct {
	stream          uint32
	status, message string // grpc-status and grpc-message, from headers
	reset           http2.ErrCode
}

func dialH2(t *testing.T, x509ctx *workloadapi.X509Context, id spiffeid.ID) *h2conn {
	t.Helper()
	cfg := tlsconfig.MTLSClientConfig(svidFor(t, x509ctx, id), x509ctx.Bundles, tlsconfig.AuthorizeID(harness.ServerID))
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", stack.Server.ServerAddr(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	c := &h2conn{conn: conn, fr: http2.NewFramer(conn, conn)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	require.NoError(t, c.fr.WriteSettings())
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	f, err := c.fr.ReadFrame()
	require.NoError(t, err)
	sf, ok := f.(*http2.SettingsFrame)
	require.True(t, ok, "the server's first frame is SETTINGS, not %T", f)
	if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); ok {
		c.maxStreams = v
	}
	if v, ok := sf.Value(http2.SettingMaxHeaderListSize); ok {
		c.maxHeaders = v
	}
	require.NoError(t, c.fr.WriteSettingsAck())
	return c
}

// open starts a call of method on stream id: its headers (and extra
// ones), then body, ending the stream only if end.
func (c *h2conn) open(t *testing.T, id uint32, method string, body []byte, end bool, extra ...[2]string) {
	t.Helper()
	require.NoError(t, c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headerBlock(t, method, extra), EndHeaders: true}))
	const frame = 16 << 10 // the largest DATA frame before SETTINGS say otherwise
	for len(body) > frame {
		require.NoError(t, c.fr.WriteData(id, false, body[:frame]))
		body = body[frame:]
	}
	require.NoError(t, c.fr.WriteData(id, end, body))
}

// headerBlock is a gRPC call's headers for method, and extra ones, HPACK
// encoded.
func headerBlock(t *testing.T, method string, extra [][2]string) []byte {
	t.Helper()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range append([][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "hallmark-server"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	}, extra...) {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	return hdr.Bytes()
}

// tryOpen starts a call with a whole, empty request, as open does, and
// returns the error of writing it (the server may have closed the
// connection).
func (c *h2conn) tryOpen(t *testing.T, id uint32, method string, extra ...[2]string) error {
	t.Helper()
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headerBlock(t, method, extra), EndHeaders: true}); err != nil {
		return err
	}
	return c.fr.WriteData(id, true, grpcPrefix(0))
}

// await reads frames until done accepts one, within d.
func (c *h2conn) await(t *testing.T, d time.Duration, done func(h2event) bool) h2event {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ev, ok := c.next(t, deadline)
		if !ok {
			t.Fatalf("no such frame within %s", d)
		}
		if done(ev) {
			return ev
		}
	}
}

// next reads frames until one says something of a stream (its headers or
// a reset), answering pings; ok is false if none did by deadline.
func (c *h2conn) next(t *testing.T, deadline time.Time) (ev h2event, ok bool) {
	t.Helper()
	require.NoError(t, c.conn.SetReadDeadline(deadline))
	for {
		f, err := c.fr.ReadFrame()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return h2event{}, false
		}
		require.NoError(t, err)
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			ev := h2event{stream: f.StreamID}
			for _, hf := range f.Fields {
				switch strings.ToLower(hf.Name) {
				case "grpc-status":
					ev.status = hf.Value
				case "grpc-message":
					ev.message = hf.Value
				}
			}
			return ev, true
		case *http2.RSTStreamFrame:
			return h2event{stream: f.StreamID, reset: f.ErrCode}, true
		case *http2.PingFrame:
			if !f.IsAck() {
				require.NoError(t, c.fr.WritePing(true, f.Data))
			}
		}
	}
}

// grpcPrefix is the five bytes gRPC puts before a message of n bytes:
// uncompressed, then the length.
func grpcPrefix(n uint32) []byte {
	p := make([]byte, 5)
	binary.BigEndian.PutUint32(p[1:], n)
	return p
}
