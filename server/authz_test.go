package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

var (
	exampleTD = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD   = spiffeid.RequireTrustDomainFromString("other.org")
	serverID  = spiffeid.RequireFromString("spiffe://example.org/hallmark/server")
	issue     = serverv1.AgentService_IssueSigningCertificate_FullMethodName
)

// svidSource hands out one fixed X509-SVID.
type svidSource struct{ svid *x509svid.SVID }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// peerNetwork makes gRPC peer information the way a real server does: a TLS
// handshake through go-spiffe's credentials, which is the only way to get
// the AuthInfo that grpccredentials.PeerIDFromContext accepts.
type peerNetwork struct {
	ca    *testCA
	creds credentials.TransportCredentials
}

func newPeerNetwork(t *testing.T) *peerNetwork {
	t.Helper()
	ca := newTestCA(t, "spire")
	key := newP256(t)
	srv := &x509svid.SVID{ID: serverID, Certificates: []*x509.Certificate{ca.issue(t, svidTemplate(serverID), key.Public())}, PrivateKey: key}
	// The same CA stands for two trust domains so that a foreign caller can
	// finish the handshake; the production server's handshake also refuses
	// it, the interceptor must not rely on that.
	bundles := x509bundle.NewSet(
		x509bundle.FromX509Authorities(exampleTD, []*x509.Certificate{ca.cert}),
		x509bundle.FromX509Authorities(otherTD, []*x509.Certificate{ca.cert}),
	)
	return &peerNetwork{ca: ca, creds: grpccredentials.MTLSServerCredentials(svidSource{srv}, bundles, tlsconfig.AuthorizeAny())}
}

func svidTemplate(id spiffeid.ID) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// contextFor returns a context carrying the peer information of a client
// that presented an X509-SVID for id.
func (n *peerNetwork) contextFor(t *testing.T, id spiffeid.ID) context.Context {
	t.Helper()
	key := newP256(t)
	leaf := n.ca.issue(t, svidTemplate(id), key.Public())
	serverConn, clientConn := net.Pipe()
	t.Cleanup(func() {
		serverConn.Close()
		clientConn.Close()
	})
	clientErr := make(chan error, 1)
	go func() {
		c := tls.Client(clientConn, &tls.Config{
			Certificates:       []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}},
			InsecureSkipVerify: true, // the server side is what is under test
			NextProtos:         []string{"h2"},
		})
		clientErr <- c.Handshake()
		io.Copy(io.Discard, c) //nolint:errcheck // drains session tickets until the pipe closes
	}()
	_, authInfo, err := n.creds.ServerHandshake(serverConn)
	require.NoError(t, err)
	require.NoError(t, <-clientErr)
	return peer.NewContext(context.Background(), &peer.Peer{Addr: serverConn.RemoteAddr(), AuthInfo: authInfo})
}

func newAuthzServer(t *testing.T) (*Server, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	return &Server{
		cfg:     Config{TrustDomain: exampleTD, AgentPathPrefix: DefaultAgentPathPrefix},
		log:     zap.New(core),
		metrics: newMetrics(),
	}, logs
}

func TestUnaryInterceptor(t *testing.T) {
	pn := newPeerNetwork(t)
	const unlisted = "/hallmark.server.v1.AgentService/IssueCACertificate"

	tests := []struct {
		name     string
		ctx      func(t *testing.T) context.Context
		method   string
		wantCode codes.Code // codes.OK: the handler runs
		denied   bool       // counted in the denied metric
	}{
		{
			name:   "agent under the prefix",
			ctx:    func(t *testing.T) context.Context { return pn.contextFor(t, agentID) },
			method: issue,
		},
		{
			name: "agent deeper under the prefix",
			ctx: func(t *testing.T) context.Context {
				return pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/pool-a/runner-7"))
			},
			method: issue,
		},
		{
			name: "workload of the trust domain outside the prefix",
			ctx: func(t *testing.T) context.Context {
				return pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/ci/job-42"))
			},
			method:   issue,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name:     "the server itself",
			ctx:      func(t *testing.T) context.Context { return pn.contextFor(t, serverID) },
			method:   issue,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name:     "agent path in a foreign trust domain",
			ctx:      func(t *testing.T) context.Context { return pn.contextFor(t, foreignID) },
			method:   issue,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name: "lookalike path /hallmark/agentx",
			ctx: func(t *testing.T) context.Context {
				return pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/hallmark/agentx"))
			},
			method:   issue,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name: "lookalike path /hallmark/agentx/runner-1",
			ctx: func(t *testing.T) context.Context {
				return pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/hallmark/agentx/runner-1"))
			},
			method:   issue,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name: "prefix without its last segment",
			ctx: func(t *testing.T) context.Context {
				return pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/hallmark"))
			},
			method:   issue,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name:     "agent calling an unknown method",
			ctx:      func(t *testing.T) context.Context { return pn.contextFor(t, agentID) },
			method:   unlisted,
			wantCode: codes.PermissionDenied, denied: true,
		},
		{
			name:     "no peer",
			ctx:      func(*testing.T) context.Context { return context.Background() },
			method:   issue,
			wantCode: codes.Unauthenticated,
		},
		{
			name: "peer not authenticated by go-spiffe credentials",
			ctx: func(t *testing.T) context.Context {
				cert := pn.ca.issue(t, svidTemplate(agentID), newP256(t).Public())
				info := credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}}
				return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
			},
			method:   issue,
			wantCode: codes.Unauthenticated,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, logs := newAuthzServer(t)
			ctx := tt.ctx(t)
			var (
				called    bool
				gotCaller spiffeid.ID
			)
			handler := func(ctx context.Context, req any) (any, error) {
				called = true
				gotCaller = caller(ctx)
				return "response", nil
			}

			resp, err := s.unaryInterceptor(s.policy())(ctx, "request", &grpc.UnaryServerInfo{FullMethod: tt.method}, handler)

			denied := counterValue(t, s.metrics.denied.WithLabelValues(deniedLabel(s, tt.method)))
			if tt.wantCode == codes.OK {
				require.NoError(t, err)
				require.Equal(t, "response", resp)
				require.True(t, called, "handler not called")
				wantID, ok := grpccredentials.PeerIDFromContext(ctx)
				require.True(t, ok)
				require.Equal(t, wantID, gotCaller)
				require.Zero(t, denied)
				require.Zero(t, logs.Len(), "a successful call logs nothing")
				return
			}
			require.Equal(t, tt.wantCode, status.Code(err), "error %v", err)
			require.Nil(t, resp)
			require.False(t, called, "handler called for a refused call")
			if tt.denied {
				require.Equal(t, 1.0, denied)
				require.Equal(t, 1, logs.FilterMessage("Call denied").FilterField(zap.String(logMethod, tt.method)).Len())
				id, _ := grpccredentials.PeerIDFromContext(ctx)
				require.Contains(t, status.Convert(err).Message(), id.String())
			} else {
				require.Zero(t, denied)
			}
		})
		// The tap decides the same, by the same policy, as the call's
		// headers arrive (TestServerRefusesByHeaders shows it before the
		// request is read, on a real server).
		t.Run(tt.name+" (tap)", func(t *testing.T) {
			s, logs := newAuthzServer(t)
			ctx := tt.ctx(t)
			got, err := s.tap(s.policy())(ctx, &tap.Info{FullMethodName: tt.method})
			denied := counterValue(t, s.metrics.denied.WithLabelValues(deniedLabel(s, tt.method)))
			if tt.wantCode == codes.OK {
				require.NoError(t, err)
				require.Equal(t, ctx, got)
				require.Zero(t, denied)
				require.Zero(t, logs.Len())
				return
			}
			require.Equal(t, tt.wantCode, status.Code(err), "error %v", err)
			require.Nil(t, got)
			if tt.denied {
				require.Equal(t, 1.0, denied)
				require.Equal(t, 1, logs.FilterMessage("Call denied").FilterField(zap.String(logMethod, tt.method)).Len())
			} else {
				require.Zero(t, denied)
			}
		})
	}
}

// deniedLabel is the denied metric's label for method: a method the
// policy does not name is counted as unknownMethod (its name is the
// caller's to choose).
func deniedLabel(s *Server, method string) string {
	if _, known := s.policy()[method]; !known {
		return unknownMethod
	}
	return method
}

func TestUnaryInterceptorHandlerError(t *testing.T) {
	pn := newPeerNetwork(t)
	s, logs := newAuthzServer(t)
	handler := func(context.Context, any) (any, error) {
		return nil, status.Error(codes.InvalidArgument, "csr: bad")
	}

	resp, err := s.unaryInterceptor(s.policy())(pn.contextFor(t, agentID), nil, &grpc.UnaryServerInfo{FullMethod: issue}, handler)

	require.Nil(t, resp)
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Zero(t, counterValue(t, s.metrics.denied.WithLabelValues(issue)), "a handler error is not a denial")
	failed := logs.FilterMessage("Call failed").All()
	require.Len(t, failed, 1)
	fields := failed[0].ContextMap()
	require.Equal(t, agentID.String(), fields[logCallerID])
	require.Equal(t, codes.InvalidArgument.String(), fields[logCode])
	require.Equal(t, "csr: bad", fields[logError])
}

// Every method the service declares must have a policy entry, or agents
// could not call it (the interceptor refuses what the policy omits).
func TestPolicyCoversEveryMethod(t *testing.T) {
	s, _ := newAuthzServer(t)
	policy := s.policy()
	n := 0
	for _, desc := range []grpc.ServiceDesc{serverv1.AgentService_ServiceDesc, healthpb.Health_ServiceDesc} {
		n += len(desc.Methods) + len(desc.Streams)
		for _, m := range desc.Methods {
			require.Contains(t, policy, "/"+desc.ServiceName+"/"+m.MethodName)
		}
		for _, st := range desc.Streams {
			require.Contains(t, policy, "/"+desc.ServiceName+"/"+st.StreamName)
		}
	}
	require.Len(t, policy, n, "no policy for a method nobody serves")
	// Health is for any member of the trust domain; the agent API for agents.
	outsider := spiffeid.RequireFromString("spiffe://example.org/test/outsider")
	require.True(t, policy[healthpb.Health_Check_FullMethodName](outsider))
	require.False(t, policy[healthpb.Health_Check_FullMethodName](spiffeid.RequireFromString("spiffe://other.org/hallmark/agent/x")))
	require.False(t, policy[serverv1.AgentService_SubmitEntries_FullMethodName](outsider))
}

func TestIsAgent(t *testing.T) {
	tests := []struct {
		name   string
		prefix string // as configured; New adds a missing trailing slash
		id     string
		want   bool
	}{
		{name: "under the default prefix", prefix: DefaultAgentPathPrefix, id: "spiffe://example.org/hallmark/agent/runner-1", want: true},
		{name: "deep under the prefix", prefix: DefaultAgentPathPrefix, id: "spiffe://example.org/hallmark/agent/a/b/c", want: true},
		{name: "lookalike", prefix: DefaultAgentPathPrefix, id: "spiffe://example.org/hallmark/agentx/runner-1", want: false},
		{name: "the prefix itself", prefix: DefaultAgentPathPrefix, id: "spiffe://example.org/hallmark/agent", want: false},
		{name: "foreign trust domain", prefix: DefaultAgentPathPrefix, id: "spiffe://other.org/hallmark/agent/runner-1", want: false},
		{name: "sub-domain of the trust domain", prefix: DefaultAgentPathPrefix, id: "spiffe://ci.example.org/hallmark/agent/runner-1", want: false},
		{name: "prefix without trailing slash admits agents", prefix: "/hallmark/agent", id: "spiffe://example.org/hallmark/agent/runner-1", want: true},
		{name: "prefix without trailing slash refuses lookalikes", prefix: "/hallmark/agent", id: "spiffe://example.org/hallmark/agentx", want: false},
		{name: "custom prefix", prefix: "/ci/runners/", id: "spiffe://example.org/ci/runners/r1", want: true},
		{name: "custom prefix refuses the default", prefix: "/ci/runners/", id: "spiffe://example.org/hallmark/agent/r1", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{
				ListenAddress:    DefaultListenAddress,
				DataDir:          t.TempDir(),
				WorkloadAPIAddr:  DefaultWorkloadAPISocket,
				TrustDomain:      exampleTD,
				AgentPathPrefix:  tt.prefix,
				CertificateTTL:   DefaultCertificateTTL,
				MaxConnectionAge: DefaultMaxConnectionAge,
				KeyManager: KeyManagerConfig{Name: "none", build: func(pluginDeps) (KeyManager, error) {
					return nil, errors.New("not used")
				}},
			})
			require.NoError(t, err)
			require.Equal(t, tt.want, s.isAgent(spiffeid.RequireFromString(tt.id)))
		})
	}
}

// counterValue reads a counter (or a CounterFunc). (prometheus/testutil
// would need a module that go.mod does not list.)
func counterValue(t testing.TB, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

// Must show: one connection may have at most maxCallsPerConn unary calls
// under way; another is refused at once (ResourceExhausted, counted, its
// handler not run), while calls on other connections go on, those of the
// same SPIFFE ID included (on Kubernetes every agent may hold the same
// one), and the connection's own once one of its calls has ended.
func TestCallsLimitedPerConnection(t *testing.T) {
	pn := newPeerNetwork(t)
	s, _ := newAuthzServer(t)
	intercept := s.unaryInterceptor(s.policy())
	info := &grpc.UnaryServerInfo{FullMethod: issue}
	agent := pn.contextFor(t, agentID)
	onConn := func(port int) context.Context {
		p, ok := peer.FromContext(agent)
		require.True(t, ok)
		q := *p
		q.Addr = &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: port}
		return peer.NewContext(agent, &q)
	}
	connA, connB := onConn(40001), onConn(40002)
	block := make(chan struct{})
	entered := make(chan struct{}, maxCallsPerConn)
	blocking := func(context.Context, any) (any, error) {
		entered <- struct{}{}
		<-block
		return "done", nil
	}
	ran := false
	quick := func(context.Context, any) (any, error) { ran = true; return "ok", nil }

	var wg sync.WaitGroup
	for range maxCallsPerConn {
		wg.Go(func() {
			_, err := intercept(connA, nil, info, blocking)
			assert.NoError(t, err)
		})
	}
	for range maxCallsPerConn {
		<-entered
	}
	_, err := intercept(connA, nil, info, quick)
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.False(t, ran, "a refused call's handler does not run")
	require.Equal(t, 1.0, counterValue(t, s.metrics.limited.WithLabelValues(issue)))

	resp, err := intercept(connB, nil, info, quick)
	require.NoError(t, err, "another connection of the same SPIFFE ID is not held back")
	require.Equal(t, "ok", resp)

	close(block)
	wg.Wait()
	ran = false
	_, err = intercept(connA, nil, info, quick)
	require.NoError(t, err)
	require.True(t, ran, "the connection's calls ended: it may call again")
}

// A caller that is not an agent has at most maxOutsiderCalls calls open,
// over all its connections, each given back when its call ends; an
// agent's calls and another outsider's are not held back by it.
func TestOutsiderCallsLimitedByID(t *testing.T) {
	pn := newPeerNetwork(t)
	s, _ := newAuthzServer(t)
	admit := s.tap(s.policy())
	check := &tap.Info{FullMethodName: healthpb.Health_Check_FullMethodName}
	outsider := spiffeid.RequireFromString("spiffe://example.org/ci/job-42")

	// Each call's context is the stream's, which gRPC cancels when the
	// call ends; the peer's address differs, as on separate connections.
	open := func(id spiffeid.ID, port int) (context.CancelFunc, error) {
		p, ok := peer.FromContext(pn.contextFor(t, id))
		require.True(t, ok)
		q := *p
		q.Addr = &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: port}
		ctx, cancel := context.WithCancel(peer.NewContext(context.Background(), &q))
		_, err := admit(ctx, check)
		return cancel, err
	}
	var ends []context.CancelFunc
	for i := range maxOutsiderCalls {
		end, err := open(outsider, 50000+i)
		require.NoError(t, err, "call %d", i+1)
		ends = append(ends, end)
	}
	end, err := open(outsider, 50100)
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), outsider.String())
	end()
	require.Equal(t, 1.0, counterValue(t, s.metrics.limited.WithLabelValues(healthpb.Health_Check_FullMethodName)))

	end, err = open(spiffeid.RequireFromString("spiffe://example.org/ci/job-43"), 50200)
	require.NoError(t, err, "another outsider is not held back")
	end()
	for i := range maxOutsiderCalls + 2 {
		end, err := open(agentID, 50300+i)
		require.NoError(t, err, "an agent's call %d is not counted", i+1)
		defer end()
	}

	ends[0]() // a call ends: its place comes back
	require.Eventually(t, func() bool {
		end, err := open(outsider, 50400)
		if err != nil {
			return false
		}
		end()
		return true
	}, 5*time.Second, 10*time.Millisecond)
	for _, end := range ends[1:] {
		end()
	}
}

// A method the policy does not name is the caller's to choose: denials of
// such methods share one label, and the name is logged cut short; and
// denials are logged 20 a second at most, while the metric counts each.
func TestDenialsBounded(t *testing.T) {
	pn := newPeerNetwork(t)
	s, logs := newAuthzServer(t)
	ctx := pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/ci/job-42"))
	long := "/x/" + strings.Repeat("y", 8<<10)
	for i := range 100 {
		method := fmt.Sprintf("%s%d", long, i)
		_, err := s.tap(s.policy())(ctx, &tap.Info{FullMethodName: method})
		require.Equal(t, codes.PermissionDenied, status.Code(err))
		require.Less(t, len(status.Convert(err).Message()), 512)
	}
	require.Equal(t, 100.0, counterValue(t, s.metrics.denied.WithLabelValues(unknownMethod)))
	series := make(chan prometheus.Metric, 200)
	s.metrics.denied.Collect(series)
	require.Len(t, series, 1, "one series")
	denials := logs.FilterMessage("Call denied").All()
	require.Len(t, denials, 20, "the first 20 this second")
	for _, e := range denials {
		require.LessOrEqual(t, len(e.ContextMap()[logMethod].(string)), maxLoggedMethod+len("…"))
	}
}

// An outsider's place is given back once its request is read, while the
// call goes on: by the unary interceptor as it starts, and by a stream's
// first RecvMsg. A health watch kept open holds none.
func TestOutsiderPlaceGivenBackOnceRead(t *testing.T) {
	pn := newPeerNetwork(t)
	s, _ := newAuthzServer(t)
	outsider := pn.contextFor(t, spiffeid.RequireFromString("spiffe://example.org/ci/job-42"))
	admit := func(method string) context.Context {
		ctx, err := s.tap(s.policy())(outsider, &tap.Info{FullMethodName: method})
		require.NoError(t, err)
		return ctx
	}
	// full tries one more call, and gives its place back at once.
	full := func() bool {
		ctx, err := s.tap(s.policy())(outsider, &tap.Info{FullMethodName: healthpb.Health_Check_FullMethodName})
		if err == nil {
			requestRead(ctx)
		}
		return status.Code(err) == codes.ResourceExhausted
	}

	// Unary: the interceptor runs with the request read.
	for range maxOutsiderCalls {
		ctx := admit(healthpb.Health_Check_FullMethodName)
		_, err := s.unaryInterceptor(s.policy())(ctx, "request", &grpc.UnaryServerInfo{FullMethod: healthpb.Health_Check_FullMethodName},
			func(context.Context, any) (any, error) { return "ok", nil })
		require.NoError(t, err)
	}
	require.False(t, full(), "calls whose requests were read hold no place, though their contexts go on")

	// Streaming: held until the handler's first RecvMsg returns.
	var held []context.Context
	for range maxOutsiderCalls {
		held = append(held, admit(healthpb.Health_Watch_FullMethodName))
	}
	require.True(t, full())
	err := s.streamInterceptor(s.policy())(nil, &fakeServerStream{ctx: held[0]}, &grpc.StreamServerInfo{FullMethod: healthpb.Health_Watch_FullMethodName},
		func(_ any, ss grpc.ServerStream) error {
			require.True(t, full(), "not before the request is read")
			require.NoError(t, ss.RecvMsg(new(healthpb.HealthCheckRequest)))
			require.False(t, full(), "read: the place is back while the watch goes on")
			return nil
		})
	require.NoError(t, err)

	// A client stream (no health method is one; the policy could allow
	// one some day): held until a RecvMsg finds the request's end.
	held = append(held, admit(healthpb.Health_Watch_FullMethodName))
	require.True(t, full())
	err = s.streamInterceptor(s.policy())(nil, &fakeServerStream{ctx: held[len(held)-1], recv: []error{nil, nil, io.EOF}},
		&grpc.StreamServerInfo{FullMethod: healthpb.Health_Watch_FullMethodName, IsClientStream: true},
		func(_ any, ss grpc.ServerStream) error {
			for i := range 2 {
				require.NoError(t, ss.RecvMsg(new(healthpb.HealthCheckRequest)))
				require.True(t, full(), "message %d read, more may come", i+1)
			}
			require.ErrorIs(t, ss.RecvMsg(new(healthpb.HealthCheckRequest)), io.EOF)
			require.False(t, full(), "the end read: the place is back")
			return nil
		})
	require.NoError(t, err)
}

// fakeServerStream is a grpc.ServerStream whose RecvMsg returns recv's
// errors in turn, then nil.
type fakeServerStream struct {
	grpc.ServerStream
	ctx  context.Context
	recv []error
}

func (f *fakeServerStream) Context() context.Context { return f.ctx }

func (f *fakeServerStream) RecvMsg(any) error {
	if len(f.recv) == 0 {
		return nil
	}
	err := f.recv[0]
	f.recv = f.recv[1:]
	return err
}
