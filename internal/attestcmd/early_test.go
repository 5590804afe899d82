package attestcmd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// seenCall is a call a connAgent received: on which connection, and
// whether the step's command had ended by then (its marker file exists).
type seenCall struct {
	method string
	conn   int64
	ended  bool
}

// connAgent answers WhoAmI and AttestStep, recording each call with its
// connection (stats.Handler tags them) and when each connection ended.
type connAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	marker    string // the file the step's command creates as it ends
	refuseWho bool
	whoDelay  time.Duration // how long WhoAmI takes to answer
	// tainted is the connection whose AttestStep is refused as the agent
	// refuses one its exec watch can no longer vouch for.
	tainted int64

	next  atomic.Int64
	mu    sync.Mutex
	calls []seenCall
	ended map[int64]bool // connections that ended, and whether after the command
}

type connKey struct{}

func (a *connAgent) record(ctx context.Context, method string) {
	_, err := os.Stat(a.marker)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, seenCall{method: method, conn: ctx.Value(connKey{}).(int64), ended: err == nil})
}

func (a *connAgent) WhoAmI(ctx context.Context, _ *agentv1.WhoAmIRequest) (*agentv1.WhoAmIResponse, error) {
	a.record(ctx, "WhoAmI")
	time.Sleep(a.whoDelay)
	if a.refuseWho {
		return nil, status.Error(codes.PermissionDenied, "no")
	}
	return &agentv1.WhoAmIResponse{}, nil
}

func (a *connAgent) AttestStep(ctx context.Context, _ *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	a.record(ctx, "AttestStep")
	if ctx.Value(connKey{}).(int64) == a.tainted {
		return nil, status.Error(codes.PermissionDenied, "caller changed since it connected: peercred: the exec watch cannot vouch for the connection: the kernel dropped process events while pid 7 was connected")
	}
	return &agentv1.AttestStepResponse{Bundle: []byte("{}"), InvocationId: "inv"}, nil
}

func (a *connAgent) AttestStepStream(req *agentv1.AttestStepRequest, s agentv1.WorkloadService_AttestStepStreamServer) error {
	resp, err := a.AttestStep(s.Context(), req)
	if err != nil {
		return err
	}
	return s.Send(&agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Result{Result: resp}})
}

func (a *connAgent) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connKey{}, a.next.Add(1))
}

func (a *connAgent) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		_, err := os.Stat(a.marker)
		a.mu.Lock()
		if a.ended == nil {
			a.ended = map[int64]bool{}
		}
		a.ended[ctx.Value(connKey{}).(int64)] = err == nil
		a.mu.Unlock()
	}
}

func (a *connAgent) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (a *connAgent) HandleRPC(context.Context, stats.RPCStats)                       {}

func (a *connAgent) seen() []seenCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seenCall(nil), a.calls...)
}

// serveConnAgent serves a at socket until the test ends or stop is called.
func serveConnAgent(t *testing.T, socket string, a *connAgent) (stop func(how func(*grpc.Server))) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.StatsHandler(a))
	agentv1.RegisterWorkloadServiceServer(srv, a)
	go srv.Serve(ln) //nolint:errcheck // stopped by the test
	t.Cleanup(srv.Stop)
	return func(how func(*grpc.Server)) { how(srv) }
}

// runStep runs `hallmark-attest --step build -- sh -c script` with
// workspace dir against socket and returns its exit code and stderr. The
// script runs in the test's directory: it names files in dir by their
// absolute path.
func runStep(t *testing.T, dir, socket, script string) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	env := OSEnv()
	env.Stdout, env.Stderr = &bytes.Buffer{}, &stderr
	code := Run(context.Background(), "hallmark-attest", []string{
		"--socket", socket, "--workspace", dir, "--step", "build", "--product", "p",
		"--out", filepath.Join(dir, "build.json"), "--progress", "never", "--", "sh", "-c", script,
	}, env)
	return code, stderr.String()
}

// Must show: while the step's command runs, the agent is asked to
// identify the caller (WhoAmI) on the connection the attestation then
// uses; so the attestation finds SPIRE's answer kept for it (agent
// identify). A refused identification is no refusal of the step: the
// attestation is asked on a new connection and answers for itself.
func TestIdentifiedWhileTheCommandRuns(t *testing.T) {
	for _, tc := range []struct {
		name      string
		refuseWho bool
		want      []string // method@connection, in order
	}{
		{"identified", false, []string{"WhoAmI@1", "AttestStep@1"}},
		{"identification refused", true, []string{"WhoAmI@1", "AttestStep@2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, socket := socketDir(t)
			a := &connAgent{marker: filepath.Join(dir, "ended"), refuseWho: tc.refuseWho}
			serveConnAgent(t, socket, a)

			code, stderr := runStep(t, dir, socket, "sleep 1; touch "+a.marker)
			require.Zero(t, code, stderr)
			var got []string
			for _, c := range a.seen() {
				got = append(got, c.method+"@"+strconv.FormatInt(c.conn, 10))
			}
			require.Equal(t, tc.want, got)
			calls := a.seen()
			require.False(t, calls[0].ended, "WhoAmI came after the command ended")
			require.True(t, calls[1].ended)
		})
	}
}

// Must show: a connection the agent is closing while the command runs
// (GOAWAY as it stops, or its end) is not used for the attestation,
// which is asked on a new connection, of the agent now serving.
func TestEarlyConnectionClosedByTheAgent(t *testing.T) {
	for _, tc := range agentStops {
		t.Run(tc.name, func(t *testing.T) {
			dir, socket := socketDir(t)
			old := &connAgent{marker: filepath.Join(dir, "ended")}
			stopOld := serveConnAgent(t, socket, old)
			restarted := &connAgent{marker: old.marker}
			// The script waits until the test has replaced the agent.
			go func() {
				require.Eventually(t, func() bool { return len(old.seen()) == 1 }, 10*time.Second, 5*time.Millisecond)
				stopOld(tc.stop)
				os.Remove(socket)
				serveConnAgent(t, socket, restarted)
				os.WriteFile(filepath.Join(dir, "go"), nil, 0o600) //nolint:errcheck // the script times out without it
			}()
			code, stderr := runStep(t, dir, socket, "for i in $(seq 100); do [ -e "+dir+"/go ] && break; sleep 0.1; done; touch "+old.marker)
			require.Zero(t, code, stderr)
			require.Equal(t, "WhoAmI", old.seen()[0].method)
			got := restarted.seen()
			require.Len(t, got, 1)
			require.Equal(t, "AttestStep", got[0].method)
		})
	}
}

// Must show: the early connection is closed once keep has passed, while
// the command still runs (the agent counts a uid's open connections), and
// take then has none to give.
func TestEarlyConnectionKeptOnlySoLong(t *testing.T) {
	dir, socket := socketDir(t)
	a := &connAgent{marker: filepath.Join(dir, "ended")}
	serveConnAgent(t, socket, a)
	ctx := context.Background()

	e := identifyEarly(ctx, socket, 300*time.Millisecond)
	require.Eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, ended := a.ended[1]
		return ended
	}, 5*time.Second, 10*time.Millisecond, "the early connection outlived keep")
	require.Nil(t, e.take(ctx))
	require.Equal(t, []seenCall{{method: "WhoAmI", conn: 1}}, a.seen())

	// Within keep, take hands the identified connection over.
	e = identifyEarly(ctx, socket, time.Minute)
	c := e.take(ctx)
	require.NotNil(t, c)
	defer c.Close()
	require.True(t, c.Idle())
}

// socketDir is a new directory with the path of a socket in it; not
// t.TempDir(): a socket's path must fit in 108 bytes.
func socketDir(t *testing.T) (dir, socket string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p"), []byte("product"), 0o600))
	return dir, filepath.Join(dir, "agent.sock")
}

// Must show: an early connection held while the command runs does not
// hold up the agent's graceful stop (grpc-go waits up to 5 s for the
// answer to the PING it sends with its first GOAWAY): it is closed as
// soon as the agent says GOAWAY, and take has none to give.
func TestEarlyConnectionDoesNotHoldUpTheAgentsStop(t *testing.T) {
	dir, socket := socketDir(t)
	a := &connAgent{marker: filepath.Join(dir, "ended")}
	stop := serveConnAgent(t, socket, a)
	ctx := context.Background()

	e := identifyEarly(ctx, socket, time.Minute)
	require.Eventually(t, func() bool { return len(a.seen()) == 1 }, 5*time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond) // WhoAmI's answer read
	start := time.Now()
	stop((*grpc.Server).GracefulStop)
	require.Less(t, time.Since(start), time.Second, "the agent's graceful stop waited for the early connection")
	require.Nil(t, e.take(ctx))
}

// Must show: once the command has ended, an identification still under
// way is waited for, not abandoned when keep passes: the attestation
// would wait for SPIRE's answer anyway, on a new connection and from the
// start.
func TestEarlyIdentificationWaitedForOnceTheCommandEnded(t *testing.T) {
	dir, socket := socketDir(t)
	a := &connAgent{marker: filepath.Join(dir, "ended"), whoDelay: 500 * time.Millisecond}
	serveConnAgent(t, socket, a)
	ctx := context.Background()

	e := identifyEarly(ctx, socket, 200*time.Millisecond)
	time.Sleep(50 * time.Millisecond) // the command ends
	c := e.take(ctx)
	require.NotNil(t, c, "the identification under way was abandoned")
	defer c.Close()
	require.True(t, c.Idle())
	require.Len(t, a.seen(), 1)
}

// Must show: an attestation refused on the early connection because the
// agent's exec watch lost events while the command ran (it then refuses
// every connection open at the time, whatever its process did) is asked
// again on a new connection, which the agent identifies afresh; the same
// refusal on a connection made for the attestation is the step's answer.
func TestAttestAgainWhenTheEarlyConnectionIsTainted(t *testing.T) {
	for _, tc := range []struct {
		name      string
		refuseWho bool // so the early connection is not used
		tainted   int64
		wantCode  int
		want      []string
	}{
		{"early connection tainted", false, 1, 0, []string{"WhoAmI@1", "AttestStep@1", "AttestStep@2"}},
		{"new connection tainted", true, 2, 1, []string{"WhoAmI@1", "AttestStep@2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, socket := socketDir(t)
			a := &connAgent{marker: filepath.Join(dir, "ended"), refuseWho: tc.refuseWho, tainted: tc.tainted}
			serveConnAgent(t, socket, a)
			code, stderr := runStep(t, dir, socket, "touch "+a.marker)
			require.Equal(t, tc.wantCode, code, stderr)
			var got []string
			for _, c := range a.seen() {
				got = append(got, c.method+"@"+strconv.FormatInt(c.conn, 10))
			}
			require.Equal(t, tc.want, got)
		})
	}
}

// closingListener closes the first n connections it accepts unanswered,
// as an agent older than the client closes those over their uid's
// connection limit, or after saying say, as the agent does now.
type closingListener struct {
	net.Listener
	n      atomic.Int32
	closed atomic.Int32
	say    []byte
}

func (l *closingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.closed.Load() >= l.n.Load() {
			return c, err
		}
		l.closed.Add(1)
		c.Write(l.say) //nolint:errcheck // then closed
		c.Close()
	}
}

// refusal is the agent's refusal of a connection at accept
// (agent/refusal.go), as golang.org/x/net/http2 writes it.
func refusal(code http2.ErrCode, why string) []byte {
	var b bytes.Buffer
	http2.NewFramer(&b, nil).WriteGoAway(0, code, []byte(why)) //nolint:errcheck // to a bytes.Buffer
	return b.Bytes()
}

// Must show: a connection the agent refuses over its limits, saying so,
// is tried again until one is served; one it refuses because the caller's
// pid is not visible to it fails the step at once, with the agent's
// reason: a new connection would fail alike.
func TestRefusedConnections(t *testing.T) {
	for _, tc := range []struct {
		name       string
		say        []byte
		n          int32
		wantCode   int
		wantClosed int32
		wantSaid   string
	}{
		{"over the limits, then served", refusal(http2.ErrCodeEnhanceYourCalm, "hallmark-agent: too many connections"), 4, 0, 4, ""},
		{"pid not visible", refusal(http2.ErrCodeInadequateSecurity, "hallmark-agent: cannot identify the caller: its pid is not visible"), 1 << 30, 1, 2,
			"refused by the agent at %s: hallmark-agent: cannot identify the caller: its pid is not visible"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, socket := socketDir(t)
			ln, err := net.Listen("unix", socket)
			require.NoError(t, err)
			cl := &closingListener{Listener: ln, say: tc.say}
			cl.n.Store(tc.n)
			a := &connAgent{marker: filepath.Join(dir, "ended")}
			srv := grpc.NewServer(grpc.StatsHandler(a))
			agentv1.RegisterWorkloadServiceServer(srv, a)
			go srv.Serve(cl) //nolint:errcheck // stopped below
			t.Cleanup(srv.Stop)

			start := time.Now()
			code, stderr := runStep(t, dir, socket, "touch "+a.marker)
			require.Equal(t, tc.wantCode, code, stderr)
			require.Equal(t, tc.wantClosed, cl.closed.Load(), "connections refused")
			if tc.wantSaid != "" {
				require.Contains(t, stderr, fmt.Sprintf(tc.wantSaid, socket))
				require.Less(t, time.Since(start), retryUnanswered/2, "not tried again")
			} else {
				require.Equal(t, []seenCall{{method: "AttestStep", conn: 1, ended: true}}, a.seen())
			}
		})
	}
}

// Must show: while the agent closes the step's connections before
// greeting them (its uid is at its connection limit), the attestation is
// asked again on a new connection, until one is served; nothing was
// processed on the others. An agent that keeps closing them for longer
// than retryUnanswered fails the step, saying so.
func TestAttestAgainWhileConnectionsAreClosedUnanswered(t *testing.T) {
	dir, socket := socketDir(t)
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	cl := &closingListener{Listener: ln}
	cl.n.Store(4) // the early connection, then three tries
	a := &connAgent{marker: filepath.Join(dir, "ended")}
	srv := grpc.NewServer(grpc.StatsHandler(a))
	agentv1.RegisterWorkloadServiceServer(srv, a)
	go srv.Serve(cl) //nolint:errcheck // stopped below
	t.Cleanup(srv.Stop)

	code, stderr := runStep(t, dir, socket, "touch "+a.marker)
	require.Zero(t, code, stderr)
	require.EqualValues(t, 4, cl.closed.Load())
	require.Equal(t, []seenCall{{method: "AttestStep", conn: 1, ended: true}}, a.seen())

	cl.n.Store(1 << 30)
	start := time.Now()
	code, stderr = runStep(t, dir, socket, "true")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "kept closing the connection before answering")
	require.GreaterOrEqual(t, time.Since(start), retryUnanswered)
	require.Less(t, time.Since(start), retryUnanswered+5*time.Second, "tried on past retryUnanswered")
}

// trackingListener remembers the connections it accepted.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// sentAgent counts AttestStep calls; it answers err, or, when err is nil,
// ends every connection under the call, as an agent that signed and
// queued the attestation and then lost the connection.
type sentAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	ln    *trackingListener
	err   error
	calls atomic.Int32
}

func (a *sentAgent) AttestStep(ctx context.Context, _ *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	a.calls.Add(1)
	if a.err != nil {
		return nil, a.err
	}
	a.ln.mu.Lock()
	for _, c := range a.ln.conns {
		c.Close()
	}
	a.ln.mu.Unlock()
	<-ctx.Done()
	return nil, ctx.Err()
}

// Must show: a request that reached the agent is never sent again,
// whatever then failed: the connection's end under the call (the agent
// may have signed and queued it: a duplicate attestation) or the agent's
// own Unavailable.
func TestAttestNotAskedAgainOnceSent(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"connection lost under the call", nil},
		{"the agent's Unavailable", status.Error(codes.Unavailable, "the agent holds no valid signing certificate yet")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, socket := socketDir(t)
			ln, err := net.Listen("unix", socket)
			require.NoError(t, err)
			tl := &trackingListener{Listener: ln}
			a := &sentAgent{ln: tl, err: tc.err}
			srv := grpc.NewServer()
			agentv1.RegisterWorkloadServiceServer(srv, a)
			go srv.Serve(tl) //nolint:errcheck // stopped below
			t.Cleanup(srv.Stop)

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, _, err := attestOnNewConnection(ctx, socket, &agentclient.AttestStepRequest{Step: "build", Products: []string{"p"}}, nil)
			if c != nil {
				c.Close()
			}
			require.Equal(t, agentclient.Unavailable, agentclient.CodeOf(err), "%v", err)
			require.False(t, agentclient.Unserved(err), "%v", err)
			require.EqualValues(t, 1, a.calls.Load(), "the request was sent again")
		})
	}
}

// Must show: what a step tells its user when the agent refused its
// connection, from the error the client made of the agent's bytes.
func TestExplainRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		say  []byte
		want string
	}{
		{"over the limits", refusal(http2.ErrCodeEnhanceYourCalm, "hallmark-agent: too many connections: uid 7 has 64 open"),
			"the agent at %s kept refusing the connection: hallmark-agent: too many connections: uid 7 has 64 open"},
		{"pid not visible", refusal(http2.ErrCodeInadequateSecurity, "hallmark-agent: cannot identify the caller: its pid is not visible"),
			"refused by the agent at %s: hallmark-agent: cannot identify the caller: its pid is not visible"},
		{"closed without a word", nil, "the agent at %s kept closing the connection before answering"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, socket := socketDir(t)
			ln, err := net.Listen("unix", socket)
			require.NoError(t, err)
			t.Cleanup(func() { ln.Close() })
			cl := &closingListener{Listener: ln, say: tc.say}
			cl.n.Store(1 << 30)
			go cl.Accept() //nolint:errcheck // closes every connection, until ln closes
			ctx := context.Background()
			var c *agentclient.Client
			c, err = agentclient.Dial(ctx, socket)
			if err == nil {
				defer c.Close()
				_, err = c.AttestStep(ctx, &agentclient.AttestStepRequest{Step: "build"})
			}
			if tc.say == nil {
				require.ErrorContains(t, Explain(socket, err), fmt.Sprintf(tc.want, socket))
			} else {
				require.EqualError(t, Explain(socket, err), fmt.Sprintf(tc.want, socket))
			}
		})
	}
}
