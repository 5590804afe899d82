package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// Agent API methods, as the fake replicas count them.
const (
	mIssue  = "IssueSigningCertificate"
	mPolicy = "GetPolicy"
	mSubmit = "SubmitEntries"
	mWatch  = "WatchSigningAuthorities"
)

// fakeReplica is one hallmark-server replica on loopback: a real gRPC
// server (without TLS: the agent's SPIFFE credentials are a dial option
// like any other) with a hand-written AgentService. Replicas share their
// CA and their log, as replicas on one database do.
type fakeReplica struct {
	serverv1.UnimplementedAgentServiceServer
	name string
	ca   *testCA
	log  *fakeLog
	addr string

	mu       sync.Mutex
	srv      *grpc.Server
	calls    map[string]int  // answered or hung, by method
	hang     bool            // calls block until the server stops
	fail     error           // the answer to every call, when set
	hung     map[string]bool // methods with a call blocked now
	watching int             // open WatchSigningAuthorities streams
}

// fakeLog is the log the replicas share: it logs each envelope once.
type fakeLog struct {
	mu     sync.Mutex
	logged map[string]int // envelope -> log index
}

func (l *fakeLog) append(env []byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i, ok := l.logged[string(env)]; ok {
		return i
	}
	l.logged[string(env)] = len(l.logged)
	return l.logged[string(env)]
}

func (l *fakeLog) has(env []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.logged[string(env)]
	return ok
}

// startReplicas starts n replicas on loopback ports.
func startReplicas(t *testing.T, n int) []*fakeReplica {
	t.Helper()
	ca, log := newTestCA(t), &fakeLog{logged: map[string]int{}}
	rs := make([]*fakeReplica, n)
	for i := range rs {
		rs[i] = &fakeReplica{name: fmt.Sprintf("replica-%d", i), ca: ca, log: log, addr: "127.0.0.1:0",
			calls: map[string]int{}, hung: map[string]bool{}}
		rs[i].start(t)
	}
	return rs
}

// start serves on r.addr (again, after stop).
func (r *fakeReplica) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", r.addr)
	require.NoError(t, err)
	srv := grpc.NewServer()
	serverv1.RegisterAgentServiceServer(srv, r)
	r.mu.Lock()
	r.addr, r.srv, r.hang = ln.Addr().String(), srv, false
	r.mu.Unlock()
	go srv.Serve(ln) //nolint:errcheck // ends with stop
	t.Cleanup(srv.Stop)
}

// stop stops the replica at once: listener and connections closed,
// calls in flight cut.
func (r *fakeReplica) stop() {
	r.mu.Lock()
	srv := r.srv
	r.mu.Unlock()
	srv.Stop()
}

// call counts a call of method and, when the replica hangs, blocks it
// until ctx ends (the replica stops).
func (r *fakeReplica) call(ctx context.Context, method string) error {
	r.mu.Lock()
	r.calls[method]++
	hang, fail := r.hang, r.fail
	if fail != nil {
		r.mu.Unlock()
		return fail
	}
	if hang {
		r.hung[method] = true
	}
	r.mu.Unlock()
	if !hang {
		return nil
	}
	<-ctx.Done()
	r.mu.Lock()
	delete(r.hung, method)
	r.mu.Unlock()
	return status.FromContextError(ctx.Err()).Err()
}

func (r *fakeReplica) count(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[method]
}

func (r *fakeReplica) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for m, c := range r.calls {
		if m != mWatch {
			n += c
		}
	}
	return n
}

func (r *fakeReplica) setHang() {
	r.mu.Lock()
	r.hang = true
	r.mu.Unlock()
}

func (r *fakeReplica) setFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

func (r *fakeReplica) hanging(methods ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range methods {
		if !r.hung[m] {
			return false
		}
	}
	return true
}

func (r *fakeReplica) watchers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.watching
}

func (r *fakeReplica) IssueSigningCertificate(ctx context.Context, req *serverv1.IssueSigningCertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
	if err := r.call(ctx, mIssue); err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// Real time, 2 s certificates: renewed every second or so.
	chain, err := r.ca.sign(csr.PublicKey, []spiffeid.ID{agentID}, time.Now().Truncate(time.Second), 2*time.Second)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &serverv1.IssueSigningCertificateResponse{CertificateChain: chain}, nil
}

func (r *fakeReplica) GetPolicy(ctx context.Context, _ *serverv1.GetPolicyRequest) (*serverv1.GetPolicyResponse, error) {
	if err := r.call(ctx, mPolicy); err != nil {
		return nil, err
	}
	return &serverv1.GetPolicyResponse{Configured: true, Revision: "r1", Rules: []*serverv1.PolicyRule{{
		Name: "ci", SpiffeIds: []string{"spiffe://example.org/ci/builder"}, Steps: []string{"build"}, WorkspaceRoots: []string{"/w"},
	}}}, nil
}

func (r *fakeReplica) SubmitEntries(ctx context.Context, req *serverv1.SubmitEntriesRequest) (*serverv1.SubmitEntriesResponse, error) {
	if err := r.call(ctx, mSubmit); err != nil {
		return nil, err
	}
	resp := &serverv1.SubmitEntriesResponse{}
	for _, e := range req.GetEntries() {
		i := r.log.append(e.GetEnvelope())
		resp.Results = append(resp.Results, &serverv1.LogEntryResult{
			TlogEntry:       fmt.Appendf(nil, `{"logIndex":"%d"}`, i),
			SignedTimestamp: []byte("timestamp"),
		})
	}
	return resp, nil
}

func (r *fakeReplica) WatchSigningAuthorities(_ *serverv1.WatchSigningAuthoritiesRequest, stream grpc.ServerStreamingServer[serverv1.SigningAuthorities]) error {
	r.mu.Lock()
	r.calls[mWatch]++
	r.watching++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.watching--
		r.mu.Unlock()
	}()
	if err := stream.Send(&serverv1.SigningAuthorities{Revision: 1}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

func addrsOf(rs []*fakeReplica) []string {
	addrs := make([]string, len(rs))
	for i, r := range rs {
		r.mu.Lock()
		addrs[i] = r.addr
		r.mu.Unlock()
	}
	return addrs
}

// dialTest dials addrs as the agent does, without TLS.
func dialTest(t *testing.T, addrs []string) (*grpc.ClientConn, serverv1.AgentServiceClient) {
	t.Helper()
	conn, err := dialServers(addrs, insecure.NewCredentials())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn, serverv1.NewAgentServiceClient(conn)
}

// waitAllReady waits until calls reach every replica in rs: round_robin
// picks only among connected replicas.
func waitAllReady(t *testing.T, client serverv1.AgentServiceClient, rs []*fakeReplica) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := client.GetPolicy(context.Background(), &serverv1.GetPolicyRequest{})
		require.NoError(t, err)
		for _, r := range rs {
			if r.count(mPolicy) == 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond)
}

// Must show: calls spread evenly over every replica.
func TestFailoverSpreadsCalls(t *testing.T) {
	rs := startReplicas(t, 3)
	_, client := dialTest(t, addrsOf(rs))
	waitAllReady(t, client, rs)

	before := make([]int, len(rs))
	for i, r := range rs {
		before[i] = r.total()
	}
	for range 30 {
		_, err := client.GetPolicy(context.Background(), &serverv1.GetPolicyRequest{})
		require.NoError(t, err)
	}
	for i, r := range rs {
		require.Equal(t, 10, r.total()-before[i], "%s took %d calls of 30", r.name, r.total()-before[i])
	}
}

// Must show: a replica that answers Unavailable (its store is down) has
// the call retried on another, and the caller sees nothing; when every
// replica does, the caller gets Unavailable after one attempt per replica
// and one more.
func TestFailoverRetriesUnavailableAnswers(t *testing.T) {
	rs := startReplicas(t, 3)
	_, client := dialTest(t, addrsOf(rs))
	waitAllReady(t, client, rs)

	down := status.Error(codes.Unavailable, "transparency log: store unavailable")
	rs[0].setFail(down)
	for range 30 {
		_, err := client.SubmitEntries(context.Background(), &serverv1.SubmitEntriesRequest{
			Entries: []*serverv1.LogSubmission{{Envelope: []byte(`{"payload":"x"}`)}},
		})
		require.NoError(t, err)
	}
	require.Positive(t, rs[0].count(mSubmit), "calls went to the replica that is down")
	require.Equal(t, 30, rs[1].count(mSubmit)+rs[2].count(mSubmit))

	for _, r := range rs {
		r.setFail(down)
	}
	before := rs[0].total() + rs[1].total() + rs[2].total()
	_, err := client.GetPolicy(context.Background(), &serverv1.GetPolicyRequest{})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "store unavailable")
	require.Equal(t, 4, rs[0].total()+rs[1].total()+rs[2].total()-before)

	// Other codes are the replica's answer, not retried.
	for _, r := range rs {
		r.setFail(status.Error(codes.PermissionDenied, "not an agent"))
	}
	before = rs[0].total() + rs[1].total() + rs[2].total()
	_, err = client.GetPolicy(context.Background(), &serverv1.GetPolicyRequest{})
	require.Equal(t, codes.PermissionDenied, status.Code(err))
	require.Equal(t, 1, rs[0].total()+rs[1].total()+rs[2].total()-before)
}

// Must show: a single server_address goes through gRPC's dns resolver (an
// IP address or a name) and works.
func TestFailoverSingleAddress(t *testing.T) {
	rs := startReplicas(t, 1)
	_, port, err := net.SplitHostPort(rs[0].addr)
	require.NoError(t, err)
	for _, addr := range []string{rs[0].addr, net.JoinHostPort("localhost", port)} {
		t.Run(addr, func(t *testing.T) {
			conn, client := dialTest(t, []string{addr})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := client.GetPolicy(ctx, &serverv1.GetPolicyRequest{}, grpc.WaitForReady(true))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return conn.GetState() == connectivity.Ready }, 5*time.Second, time.Millisecond)
		})
	}
}

// Must show: while one replica stops with calls of every kind in flight
// on it, renewals, policy fetches and log submissions go on through the
// others without one failure the agent's loops see (no backoff taken),
// every queued envelope is logged, the signing-CA watch moves to another
// replica, and the stopped replica takes calls again once it is back.
func TestFailoverReplicaStops(t *testing.T) {
	rs := startReplicas(t, 3)
	conn, client := dialTest(t, addrsOf(rs))
	waitAllReady(t, client, rs)
	require.Eventually(t, func() bool { return conn.GetState() == connectivity.Ready }, 5*time.Second, time.Millisecond)

	core, logs := observer.New(zapcore.DebugLevel)
	a := newTestAgent(t, nil, zap.New(core))
	a.backoffBase, a.backoffMax = 10*time.Millisecond, 100*time.Millisecond
	a.cfg.PolicyRefresh = 10 * time.Millisecond
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox"), outbox.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { ob.Close() })
	a.outbox = ob

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context) error{
		func(ctx context.Context) error { return a.renewLoop(ctx, client) },
		func(ctx context.Context) error { return a.policyLoop(ctx, client) },
		func(ctx context.Context) error { return a.submitLoop(ctx, client) },
		func(ctx context.Context) error { return a.watchAuthorities(ctx, client) },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, loop(ctx))
		}()
	}
	// A build queues an envelope every few milliseconds.
	var queued atomic.Int64
	stopQueueing, queueingDone := make(chan struct{}), make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(queueingDone)
		for {
			select {
			case <-stopQueueing:
				return
			case <-time.After(3 * time.Millisecond):
			}
			n := queued.Add(1)
			if err := ob.Put(outbox.Item{ID: fmt.Sprintf("inv-%d", n), Envelope: fmt.Appendf(nil, `{"payload":"%d"}`, n)}); err != nil {
				t.Error(err)
				return
			}
			a.nudgeSubmitter()
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	// Wait for the first renewal, then hold every kind of call on the
	// victim until it stops.
	require.Eventually(t, func() bool { r, _, _ := a.counts(); return r >= 1 }, 10*time.Second, 5*time.Millisecond)
	victim, others := rs[0], rs[1:]
	victim.setHang()
	require.Eventually(t, func() bool { return victim.hanging(mIssue, mPolicy, mSubmit) }, 20*time.Second, 5*time.Millisecond,
		"a renewal, a policy fetch and a submission in flight on the victim")
	renewalsBefore, _, _ := a.counts()
	othersBefore := make([]int, len(others))
	for i, r := range others {
		othersBefore[i] = r.count(mIssue) + r.count(mPolicy) + r.count(mSubmit)
	}
	victim.stop()

	// The cut calls went through the others, and everything goes on.
	require.Eventually(t, func() bool {
		r, _, _ := a.counts()
		return r >= renewalsBefore+2
	}, 10*time.Second, 5*time.Millisecond, "renewals go on")
	for i, r := range others {
		require.Greater(t, r.count(mIssue)+r.count(mPolicy)+r.count(mSubmit), othersBefore[i])
	}
	require.Eventually(t, func() bool { return others[0].watchers()+others[1].watchers() == 1 }, 10*time.Second, 5*time.Millisecond,
		"the signing-CA watch runs on a replica that is up")

	// The victim returns on its address; gRPC reconnects on its own.
	victimBefore := victim.total()
	victim.start(t)
	require.Eventually(t, func() bool { return victim.total() > victimBefore }, 15*time.Second, 10*time.Millisecond,
		"the returning replica takes calls again")

	// Every envelope queued is logged, none lost.
	close(stopQueueing)
	<-queueingDone
	require.Eventually(t, func() bool { return ob.Len() == 0 }, 10*time.Second, 5*time.Millisecond)
	n := int(queued.Load())
	require.Greater(t, n, 10)
	for i := 1; i <= n; i++ {
		it, ok := mustGet(t, ob, fmt.Sprintf("inv-%d", i))
		require.True(t, ok, "inv-%d", i)
		require.Equal(t, outbox.Logged, it.State, "inv-%d", i)
		require.True(t, rs[0].log.has(it.Envelope), "inv-%d in the log", i)
	}

	// No call failed where the loops could see it.
	_, failures, reachable := a.counts()
	require.Zero(t, failures, "renewal failures")
	require.True(t, reachable)
	for _, msg := range []string{
		"Log submission failed; envelopes stay queued on disk",
		"Policy fetch failed; keeping the current policy",
		"Signing certificate renewal failed; keeping the current certificate until it expires",
		"No valid signing certificate: attestation is unavailable until renewal succeeds",
	} {
		require.Zero(t, logs.FilterMessage(msg).Len(), "logged %q: %v", msg, logs.FilterMessage(msg).All())
	}
	require.Equal(t, "server", a.Status().Policy.Source)
}

// Must show: exactly one of server_address and server_addresses, every
// address a host:port.
func TestParseConfigServers(t *testing.T) {
	const id = "  server_spiffe_id = \"spiffe://example.org/hallmark/server\"\n"
	tests := []struct {
		name    string
		keys    string
		want    []string // the servers dialed
		wantErr string
	}{
		{name: "one address", keys: `server_address = "hallmark.internal:8443"`, want: []string{"hallmark.internal:8443"}},
		{name: "one IPv6 address", keys: `server_address = "[2001:db8::1]:8443"`, want: []string{"[2001:db8::1]:8443"}},
		{name: "a list", keys: `server_addresses = ["10.0.0.1:8443", "10.0.0.2:8443", "hallmark-3.internal:8443"]`,
			want: []string{"10.0.0.1:8443", "10.0.0.2:8443", "hallmark-3.internal:8443"}},
		{name: "a list of one", keys: `server_addresses = ["10.0.0.1:8443"]`, want: []string{"10.0.0.1:8443"}},
		{name: "neither", keys: "",
			wantErr: "agent.server_address (one host:port) or agent.server_addresses (a list) is required"},
		{name: "both", keys: "server_address = \"h:1\"\n  server_addresses = [\"h:2\"]",
			wantErr: "agent.server_address and agent.server_addresses are both set: use one"},
		{name: "empty list", keys: `server_addresses = []`, wantErr: "agent.server_addresses is empty: list at least one host:port"},
		{name: "empty list beside an address", keys: "server_address = \"h:1\"\n  server_addresses = []",
			wantErr: "agent.server_addresses is empty"},
		{name: "entry without a port", keys: `server_addresses = ["10.0.0.1:8443", "10.0.0.2"]`,
			wantErr: "agent.server_addresses[1]: address 10.0.0.2: missing port in address"},
		{name: "entry without a host", keys: `server_addresses = [":8443"]`, wantErr: `agent.server_addresses[0]: ":8443" has no host`},
		{name: "entry without a port number", keys: `server_addresses = ["h:"]`, wantErr: `agent.server_addresses[0]: "h:" has no port`},
		{name: "entry with a scheme", keys: `server_addresses = ["dns:///h:1"]`, wantErr: "agent.server_addresses[0]: address dns:///h:1: too many colons"},
		{name: "entry with a path", keys: `server_addresses = ["h/x:1"]`, wantErr: `agent.server_addresses[0]: "h/x:1" is not host:port`},
		{name: "empty entry", keys: `server_addresses = ["h:1", ""]`, wantErr: "agent.server_addresses[1]: "},
		{name: "entry twice", keys: `server_addresses = ["h:1", "h:1"]`, wantErr: `agent.server_addresses[1]: "h:1" is listed twice`},
		{name: "not a list", keys: `server_addresses = "h:1"`, wantErr: `Unsuitable value type`},
		{name: "address without a port", keys: `server_address = "hallmark.internal"`,
			wantErr: "agent.server_address: address hallmark.internal: missing port in address"},
		{name: "address without a host", keys: `server_address = ":8443"`, wantErr: `agent.server_address: ":8443" has no host`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("agent.hcl", []byte("agent {\n  "+tt.keys+"\n"+id+"}\n"))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, c.servers())
			a, err := New(c)
			require.NoError(t, err)
			require.Equal(t, tt.want, a.Status().Server.Addresses)
		})
	}
}

// Must show: New checks the servers of a Config built in code too.
func TestNewValidatesServers(t *testing.T) {
	base := Config{ServerID: serverID, WorkloadAPIAddr: DefaultWorkloadAPISocket}
	both := base
	both.ServerAddress, both.ServerAddresses = "h:1", []string{"h:2"}
	_, err := New(both)
	require.ErrorContains(t, err, "agent: agent.server_address and agent.server_addresses are both set")
	bad := base
	bad.ServerAddresses = []string{"h:1", "h"}
	_, err = New(bad)
	require.ErrorContains(t, err, "agent: agent.server_addresses[1]: ")
	good := base
	good.ServerAddresses = []string{"h:1", "h:2"}
	a, err := New(good)
	require.NoError(t, err)
	st := a.Status().Server
	require.Equal(t, "h:1, h:2", st.Address)
	require.Equal(t, []string{"h:1", "h:2"}, st.Addresses)
}

// fakeSubmitter is an entrySubmitter that fails its first calls.
type fakeSubmitter struct {
	mu    sync.Mutex
	fail  []error // answers of the first calls, in order
	times []time.Time
}

func (f *fakeSubmitter) SubmitEntries(_ context.Context, req *serverv1.SubmitEntriesRequest, _ ...grpc.CallOption) (*serverv1.SubmitEntriesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.times = append(f.times, time.Now())
	if n := len(f.times); n <= len(f.fail) {
		return nil, f.fail[n-1]
	}
	resp := &serverv1.SubmitEntriesResponse{}
	for range req.GetEntries() {
		resp.Results = append(resp.Results, &serverv1.LogEntryResult{TlogEntry: []byte(`{"logIndex":"7"}`), SignedTimestamp: []byte("ts")})
	}
	return resp, nil
}

func (f *fakeSubmitter) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.times)
}

// Must show: the submitter retries an Unavailable failure at once while a
// replica is connected, up to once per replica, and backs off otherwise.
func TestFailoverSubmitterRetriesPromptly(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "max retries exhausted")
	tests := []struct {
		name      string
		addrs     []string
		ready     bool
		fail      []error
		wantQuick bool // every envelope logged without one full backoff
	}{
		{name: "replica connected", addrs: []string{"a:1", "b:1", "c:1"}, ready: true, fail: []error{unavailable, unavailable}, wantQuick: true},
		{name: "more failures than replicas", addrs: []string{"a:1", "b:1"}, ready: true, fail: []error{unavailable, unavailable, unavailable}},
		{name: "none connected", addrs: []string{"a:1", "b:1"}, ready: false, fail: []error{unavailable}},
		{name: "not Unavailable", addrs: []string{"a:1", "b:1"}, ready: true, fail: []error{status.Error(codes.Internal, "bug")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, nil)
			a.cfg.ServerAddress, a.cfg.ServerAddresses = "", tt.addrs
			a.backoffBase, a.backoffMax = time.Minute, time.Minute
			a.serverReady = func() bool { return tt.ready }
			ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox"), outbox.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { ob.Close() })
			a.outbox = ob
			require.NoError(t, ob.Put(outbox.Item{ID: "inv-1", Envelope: []byte(`{"payload":"1"}`)}))

			sub := &fakeSubmitter{fail: tt.fail}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.submitLoop(ctx, sub) }()
			t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

			if tt.wantQuick {
				require.Eventually(t, func() bool { return ob.Len() == 0 }, 5*time.Second, time.Millisecond)
				require.Equal(t, len(tt.fail)+1, sub.calls())
				sub.mu.Lock()
				defer sub.mu.Unlock()
				for i := 1; i < len(sub.times); i++ {
					require.Less(t, sub.times[i].Sub(sub.times[i-1]), time.Second)
				}
				return
			}
			// A full backoff (30 s at least) follows one failure too many.
			want := len(tt.fail)
			if tt.ready && status.Code(tt.fail[0]) == codes.Unavailable {
				want = len(tt.addrs) + 1
			}
			require.Eventually(t, func() bool { return sub.calls() == want }, 5*time.Second, time.Millisecond)
			time.Sleep(300 * time.Millisecond)
			require.Equal(t, want, sub.calls(), "no call during the backoff")
			require.Equal(t, 1, ob.Len())
		})
	}
}

// svidFor returns an X509-SVID for id from ca.
func svidFor(t *testing.T, ca *testCA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := newP256(t)
	chain := ca.issue(t, key.Public(), []spiffeid.ID{id}, time.Now().Add(-time.Minute), time.Hour)
	leaf, err := x509.ParseCertificate(chain[0])
	require.NoError(t, err)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
}

// Must show: the agent's SPIFFE mTLS works through both resolvers (the
// target's name plays no part) and still refuses a replica with another
// SPIFFE ID: a list spreads only over replicas that prove the server ID.
func TestFailoverSPIFFEMTLS(t *testing.T) {
	ca := newTestCA(t)
	bundle := x509bundle.FromX509Authorities(serverID.TrustDomain(), []*x509.Certificate{ca.cert})
	impostorID := spiffeid.RequireFromString("spiffe://example.org/hallmark/impostor")
	start := func(id spiffeid.ID) *fakeReplica {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		r := &fakeReplica{name: id.String(), ca: ca, log: &fakeLog{logged: map[string]int{}}, addr: ln.Addr().String(),
			calls: map[string]int{}, hung: map[string]bool{}}
		r.srv = grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(svidFor(t, ca, id), bundle, tlsconfig.AuthorizeMemberOf(serverID.TrustDomain()))))
		serverv1.RegisterAgentServiceServer(r.srv, r)
		go r.srv.Serve(ln) //nolint:errcheck // ends with Stop
		t.Cleanup(r.srv.Stop)
		return r
	}
	good1, good2, impostor := start(serverID), start(serverID), start(impostorID)
	creds := grpccredentials.MTLSClientCredentials(svidFor(t, ca, agentID), bundle, tlsconfig.AuthorizeID(serverID))

	t.Run("one address", func(t *testing.T) {
		conn, err := dialServers([]string{good1.addr}, creds)
		require.NoError(t, err)
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = serverv1.NewAgentServiceClient(conn).GetPolicy(ctx, &serverv1.GetPolicyRequest{}, grpc.WaitForReady(true))
		require.NoError(t, err)
	})
	t.Run("a list with an impostor", func(t *testing.T) {
		conn, err := dialServers([]string{good1.addr, impostor.addr, good2.addr}, creds)
		require.NoError(t, err)
		defer conn.Close()
		client := serverv1.NewAgentServiceClient(conn)
		before1, before2 := good1.total(), good2.total()
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := client.GetPolicy(ctx, &serverv1.GetPolicyRequest{}, grpc.WaitForReady(true))
			require.NoError(t, err)
			return good1.total() > before1 && good2.total() > before2
		}, 10*time.Second, 5*time.Millisecond)
		for range 20 {
			_, err := client.GetPolicy(context.Background(), &serverv1.GetPolicyRequest{})
			require.NoError(t, err)
		}
		require.Zero(t, impostor.total(), "no call reaches a server with another SPIFFE ID")
	})
}
