package agent

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// fakeAgentService is a hand-written hallmark-server for the signing-CA
// watch: it issues from its current CA and streams the tainted set it is
// given, to every open stream.
type fakeAgentService struct {
	serverv1.UnimplementedAgentServiceServer

	mu         sync.Mutex
	ca         *testCA
	current    *serverv1.SigningAuthorities
	streams    map[chan *serverv1.SigningAuthorities]chan struct{} // update channel → close to break
	watchErr   error                                               // WatchSigningAuthorities answers only this
	watchCalls int
	issueCalls int
	issueDelay time.Duration // how long IssueSigningCertificate takes
}

func newFakeAgentService(ca *testCA) *fakeAgentService {
	return &fakeAgentService{
		ca:      ca,
		current: &serverv1.SigningAuthorities{},
		streams: map[chan *serverv1.SigningAuthorities]chan struct{}{},
	}
}

func (f *fakeAgentService) IssueSigningCertificate(_ context.Context, in *serverv1.IssueSigningCertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
	csr, err := x509.ParseCertificateRequest(in.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	f.mu.Lock()
	f.issueCalls++
	ca, delay := f.ca, f.issueDelay
	f.mu.Unlock()
	time.Sleep(delay)
	chain, err := ca.sign(csr.PublicKey, []spiffeid.ID{agentID}, t0, time.Hour)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &serverv1.IssueSigningCertificateResponse{CertificateChain: chain}, nil
}

func (f *fakeAgentService) WatchSigningAuthorities(_ *serverv1.WatchSigningAuthoritiesRequest, stream grpc.ServerStreamingServer[serverv1.SigningAuthorities]) error {
	f.mu.Lock()
	f.watchCalls++
	if f.watchErr != nil {
		f.mu.Unlock()
		return f.watchErr
	}
	updates, kill := make(chan *serverv1.SigningAuthorities, 16), make(chan struct{})
	f.streams[updates] = kill
	first := f.current
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.streams, updates)
		f.mu.Unlock()
	}()
	if err := stream.Send(first); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-kill:
			return status.Error(codes.Unavailable, "server going away")
		case m := <-updates:
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// taint makes tainted the set (at revision rev) and sends it to every
// open stream.
func (f *fakeAgentService) taint(rev uint64, tainted ...*testCA) {
	m := &serverv1.SigningAuthorities{Revision: rev}
	for _, ca := range tainted {
		fp := sha256.Sum256(ca.cert.Raw)
		m.TaintedIssuers = append(m.TaintedIssuers, fp[:])
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current = m
	for ch := range f.streams {
		ch <- m
	}
}

// breakStreams ends every open stream with Unavailable.
func (f *fakeAgentService) breakStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch, kill := range f.streams {
		close(kill)
		delete(f.streams, ch)
	}
}

func (f *fakeAgentService) setCA(ca *testCA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ca = ca
}

func (f *fakeAgentService) setWatchErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watchErr = err
}

func (f *fakeAgentService) calls() (watch, issue int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watchCalls, f.issueCalls
}

func (f *fakeAgentService) openStreams() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.streams)
}

// dialFake serves srv over an in-memory listener and returns a client
// connected to it.
func dialFake(t *testing.T, srv serverv1.AgentServiceServer) serverv1.AgentServiceClient {
	t.Helper()
	ln := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	serverv1.RegisterAgentServiceServer(gs, srv)
	go gs.Serve(ln) //nolint:errcheck // ends with Stop
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return serverv1.NewAgentServiceClient(conn)
}

// runWatched runs a's renew loop and signing-CA watch against client
// until the test ends, then checks that both return.
func runWatched(t *testing.T, a *Agent, client serverv1.AgentServiceClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- a.renewLoop(ctx, client) }()
	go func() { done <- a.watchAuthorities(ctx, client) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(5 * time.Second):
				t.Fatal("a loop did not return after its context ended")
			}
		}
	})
}

// heldFrom reports whether a holds a certificate issued by ca.
func heldFrom(a *Agent, ca *testCA) bool {
	fp, ok := issuerSHA256(a.keys.cur.Load())
	return ok && fp == sha256.Sum256(ca.cert.Raw)
}

// watchAgent is a test agent on a frozen clock, so that the renew loop
// renews only at start and on a taint, with short backoffs, logging to
// the returned observer.
func watchAgent(t *testing.T) (*Agent, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	a := newTestAgent(t, fixedClock(t0), zap.New(core))
	a.backoffBase, a.backoffMax = 10*time.Millisecond, 40*time.Millisecond
	return a, logs
}

// signingNeverFails checks, until the returned stop is called, that a
// valid signing certificate is held at every moment (the local API signs
// with whatever keys.current returns); checked says how many checks it
// has made so far.
func signingNeverFails(t *testing.T, a *Agent) (stop func(), checked func() int64) {
	t.Helper()
	var (
		quit     = make(chan struct{})
		done     = make(chan struct{})
		checks   atomic.Int64
		failures atomic.Int64
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if _, ok := a.keys.current(a.cfg.Now()); !ok {
				failures.Add(1)
			}
			checks.Add(1)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	stop = func() {
		close(quit)
		<-done
		require.Zero(t, failures.Load(), "a moment without a valid signing certificate")
	}
	return stop, checks.Load
}

func TestTaintOfTheHeldIssuerRenewsAtOnce(t *testing.T) {
	caA, caB := newTestCA(t), newTestCA(t)
	srv := newFakeAgentService(caA)
	a, logs := watchAgent(t)
	runWatched(t, a, dialFake(t, srv))

	require.Eventually(t, func() bool { return heldFrom(a, caA) }, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return metricValue(t, a.metrics.authoritiesWatch) == 1 }, 5*time.Second, time.Millisecond)
	old := a.keys.cur.Load()
	// The renewal takes a while, so that the checks see the moments in
	// between: with an instant one, a busy machine ran none meanwhile.
	srv.mu.Lock()
	srv.issueDelay = 50 * time.Millisecond
	srv.mu.Unlock()
	stopChecks, checked := signingNeverFails(t, a)

	// The server activates B and taints A.
	srv.setCA(caB)
	before := checked()
	tainted := time.Now()
	srv.taint(1, caA)
	require.Eventually(t, func() bool { return heldFrom(a, caB) }, time.Second, time.Millisecond, "no certificate from the new CA within a second of the taint")
	during := checked() - before
	t.Logf("renewed %s after the taint; the certificate was checked %d times meanwhile", time.Since(tainted), during)
	require.Positive(t, during, "no check while the agent renewed")
	stopChecks()

	require.NotSame(t, old, a.keys.cur.Load())
	require.Equal(t, 1.0, metricValue(t, a.metrics.taintedRenewals))
	require.Equal(t, 1.0, metricValue(t, a.metrics.authoritiesWatch))
	fpB := sha256.Sum256(caB.cert.Raw)
	require.Equal(t, hex.EncodeToString(fpB[:]), a.Status().SigningCertificate.IssuerSHA256)
	_, issued := srv.calls()
	require.Equal(t, 2, issued, "one renewal at start, one for the taint")
	fpA := sha256.Sum256(caA.cert.Raw)
	entries := logs.FilterMessage("The server tainted the CA of the signing certificate: renewing now").All()
	require.Len(t, entries, 1)
	require.Equal(t, zapcore.InfoLevel, entries[0].Level)
	require.Equal(t, hex.EncodeToString(fpA[:]), entries[0].ContextMap()[logIssuerSHA256])
	require.Zero(t, logs.FilterLevelExact(zapcore.WarnLevel).Len()+logs.FilterLevelExact(zapcore.ErrorLevel).Len(), "warnings: %v", logs.All())

	// Nothing more happens: the new certificate is not tainted.
	time.Sleep(100 * time.Millisecond)
	_, issued = srv.calls()
	require.Equal(t, 2, issued)
}

func TestTaintOfAnotherIssuerDoesNothing(t *testing.T) {
	caA, caB := newTestCA(t), newTestCA(t)
	srv := newFakeAgentService(caA)
	a, logs := watchAgent(t)
	runWatched(t, a, dialFake(t, srv))
	require.Eventually(t, func() bool { return heldFrom(a, caA) && srv.openStreams() == 1 }, 5*time.Second, time.Millisecond)
	held := a.keys.cur.Load()

	for rev, set := range [][]*testCA{{caB}, {}, {caB, newTestCA(t)}} {
		srv.taint(uint64(rev+1), set...)
		require.Eventually(t, func() bool { s := a.tainted.Load(); return s != nil && s.revision == uint64(rev+1) }, 5*time.Second, time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)

	require.Same(t, held, a.keys.cur.Load())
	_, issued := srv.calls()
	require.Equal(t, 1, issued)
	require.Zero(t, metricValue(t, a.metrics.taintedRenewals))
	require.Zero(t, logs.FilterMessage("The server tainted the CA of the signing certificate: renewing now").Len())
}

func TestAuthoritiesWatchReconnects(t *testing.T) {
	caA, caB := newTestCA(t), newTestCA(t)
	srv := newFakeAgentService(caA)
	a, logs := watchAgent(t)
	runWatched(t, a, dialFake(t, srv))
	require.Eventually(t, func() bool { return heldFrom(a, caA) && srv.openStreams() == 1 }, 5*time.Second, time.Millisecond)
	stopChecks, _ := signingNeverFails(t, a)

	// The stream breaks, and while the agent is away the server moves to
	// B and taints A: the agent learns of it from the set a new stream
	// starts with.
	srv.mu.Lock()
	srv.ca = caB
	srv.current = &serverv1.SigningAuthorities{Revision: 7, TaintedIssuers: [][]byte{fingerprint(caA)}}
	for ch, kill := range srv.streams {
		close(kill)
		delete(srv.streams, ch)
	}
	srv.mu.Unlock()

	require.Eventually(t, func() bool { return heldFrom(a, caB) }, 2*time.Second, time.Millisecond)
	stopChecks()
	watches, issued := srv.calls()
	require.Equal(t, 2, watches)
	require.Equal(t, 2, issued)
	require.Equal(t, 1.0, metricValue(t, a.metrics.taintedRenewals))
	require.Eventually(t, func() bool { return metricValue(t, a.metrics.authoritiesWatch) == 1 }, 5*time.Second, time.Millisecond)
	ended := logs.FilterMessage("Signing-CA watch ended; reconnecting").All()
	require.Len(t, ended, 1)
	require.Equal(t, zapcore.InfoLevel, ended[0].Level, "a stream cut after it worked is routine")
	require.Contains(t, ended[0].ContextMap(), logRetryIn)

	// Broken again, and the server then refuses: retried with backoff,
	// at warn, the gauge at 0.
	srv.setWatchErr(status.Error(codes.Internal, "store down"))
	srv.breakStreams()
	require.Eventually(t, func() bool { return logs.FilterMessage("Signing-CA watch failed; retrying").Len() >= 2 }, 5*time.Second, time.Millisecond)
	require.Zero(t, metricValue(t, a.metrics.authoritiesWatch))
	require.Equal(t, zapcore.WarnLevel, logs.FilterMessage("Signing-CA watch failed; retrying").All()[0].Level)

	// The server recovers.
	srv.setWatchErr(nil)
	require.Eventually(t, func() bool { return metricValue(t, a.metrics.authoritiesWatch) == 1 }, 5*time.Second, time.Millisecond)
	_, issued = srv.calls()
	require.Equal(t, 2, issued, "the held certificate is from B: no renewal")
}

func TestAuthoritiesWatchOnAServerWithoutIt(t *testing.T) {
	tests := []struct {
		name      string
		retry     time.Duration
		wait      time.Duration
		minWatch  int
		maxWatch  int
		wantRetry time.Duration
	}{
		{name: "default retry", retry: 0, wait: 300 * time.Millisecond, minWatch: 1, maxWatch: 1, wantRetry: DefaultAuthoritiesRetryUnimplemented},
		{name: "short retry", retry: 50 * time.Millisecond, wait: 400 * time.Millisecond, minWatch: 3, maxWatch: 9, wantRetry: 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t)
			srv := newFakeAgentService(ca)
			srv.setWatchErr(status.Error(codes.Unimplemented, "method WatchSigningAuthorities not implemented"))
			a, logs := watchAgent(t)
			if tt.retry > 0 {
				a.authoritiesRetryUnimplemented = tt.retry
			}
			runWatched(t, a, dialFake(t, srv))
			require.Eventually(t, func() bool { w, _ := srv.calls(); return w >= 1 }, 5*time.Second, time.Millisecond)
			time.Sleep(tt.wait)

			watches, issued := srv.calls()
			require.GreaterOrEqual(t, watches, tt.minWatch)
			require.LessOrEqual(t, watches, tt.maxWatch, "asked again too often")
			require.Equal(t, 1, issued, "renewal works on")
			require.True(t, heldFrom(a, ca))
			told := logs.FilterMessage("The server does not stream tainted signing CAs (it predates them): the agent renews on its usual schedule only").All()
			require.Len(t, told, 1, "said once")
			require.Equal(t, zapcore.InfoLevel, told[0].Level)
			require.Equal(t, tt.wantRetry, told[0].ContextMap()[logRetryIn])
			require.Zero(t, logs.FilterLevelExact(zapcore.WarnLevel).Len(), "warnings: %v", logs.All())
			require.Zero(t, metricValue(t, a.metrics.authoritiesWatch))
		})
	}
}

func TestRenewalFromAStillTaintedIssuerBacksOff(t *testing.T) {
	caA, caB := newTestCA(t), newTestCA(t)
	srv := newFakeAgentService(caA)
	a, logs := watchAgent(t)
	runWatched(t, a, dialFake(t, srv))
	require.Eventually(t, func() bool { return heldFrom(a, caA) && srv.openStreams() == 1 }, 5*time.Second, time.Millisecond)
	stopChecks, _ := signingNeverFails(t, a)

	// Tainted before the server has a new CA: it still issues from A.
	srv.taint(1, caA)
	const msg = "Signing certificate renewal failed; keeping the current certificate until it expires"
	require.Eventually(t, func() bool { return logs.FilterMessage(msg).Len() >= 2 }, 5*time.Second, time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	_, issued := srv.calls()
	// Backoff of at most 40ms, at least half of it: ~300/20 calls at most.
	require.LessOrEqual(t, issued, 1+2+300/20+2, "renewing in a hot loop")
	entry := logs.FilterMessage(msg).All()[0]
	require.Equal(t, zapcore.WarnLevel, entry.Level)
	require.Contains(t, entry.ContextMap()[logError], "tainted CA "+hex.EncodeToString(fingerprint(caA)))
	require.Contains(t, entry.ContextMap(), logRetryIn)
	require.True(t, heldFrom(a, caA))

	// The server activates B.
	srv.setCA(caB)
	require.Eventually(t, func() bool { return heldFrom(a, caB) }, 2*time.Second, time.Millisecond)
	stopChecks()
	_, failures, _ := a.counts()
	require.Positive(t, failures)
	require.GreaterOrEqual(t, metricValue(t, a.metrics.taintedRenewals), 2.0)
}

func TestRenewRefusesATaintedIssuerOverAnUntaintedOne(t *testing.T) {
	caA, caB := newTestCA(t), newTestCA(t)
	a := newTestAgent(t, fixedClock(t0))
	a.tainted.Store(&taintSet{revision: 1, issuers: map[[sha256.Size]byte]time.Time{sha256.Sum256(caA.cert.Raw): {}}})

	// Held: from B, untainted. A lagging server answers from A.
	require.NoError(t, a.renew(context.Background(), &fakeIssuer{answer: certifies(caB, agentID, fixedClock(t0), time.Hour)}))
	held := a.keys.cur.Load()
	err := a.renew(context.Background(), &fakeIssuer{answer: certifies(caA, agentID, fixedClock(t0), time.Hour)})
	require.ErrorContains(t, err, "issued by tainted CA "+hex.EncodeToString(fingerprint(caA)))
	require.Same(t, held, a.keys.cur.Load())
	require.Equal(t, 1.0, metricValue(t, a.metrics.renewals.WithLabelValues("failure")))

	// Held: from A, tainted. Another from A is no worse: installed.
	a.tainted.Store(&taintSet{revision: 2, issuers: map[[sha256.Size]byte]time.Time{sha256.Sum256(caA.cert.Raw): {}, sha256.Sum256(caB.cert.Raw): {}}})
	require.NoError(t, a.renew(context.Background(), &fakeIssuer{answer: certifies(caA, agentID, fixedClock(t0), time.Hour)}))
	require.True(t, heldFrom(a, caA))
}

func TestApplyAuthoritiesSkipsMalformedFingerprints(t *testing.T) {
	ca := newTestCA(t)
	core, logs := observer.New(zapcore.DebugLevel)
	a := newTestAgent(t, fixedClock(t0), zap.New(core))
	require.NoError(t, a.renew(context.Background(), &fakeIssuer{answer: certifies(ca, agentID, fixedClock(t0), time.Hour)}))

	a.applyAuthorities(&serverv1.SigningAuthorities{Revision: 3, TaintedIssuers: [][]byte{[]byte("short"), nil, fingerprint(ca)}})

	set := a.tainted.Load()
	require.Equal(t, uint64(3), set.revision)
	require.Len(t, set.issuers, 1)
	require.Equal(t, 2, logs.FilterMessage("Ignoring a tainted signing CA fingerprint that is not SHA-256").Len())
	select {
	case <-a.renewNudge:
	default:
		t.Fatal("the renew loop was not nudged")
	}
}

func fingerprint(ca *testCA) []byte {
	fp := sha256.Sum256(ca.cert.Raw)
	return fp[:]
}

func TestTaintDuringARenewalIsNoFailure(t *testing.T) {
	// The renewal in flight when the taint arrives returns a certificate
	// from the CA just tainted: the loop renews again at once, without a
	// warning or a backoff.
	caA, caB := newTestCA(t), newTestCA(t)
	a, logs := watchAgent(t)
	a.backoffBase, a.backoffMax = time.Hour, time.Hour // a backoff would stall the test
	inCall, release := make(chan struct{}), make(chan struct{})
	fromA := certifies(caA, agentID, fixedClock(t0), time.Hour)
	issuer := &fakeIssuer{answer: func(ctx context.Context, csr *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
		close(inCall)
		<-release
		return fromA(ctx, csr)
	}}
	runLoop(t, a, issuer)
	<-inCall
	a.applyAuthorities(&serverv1.SigningAuthorities{Revision: 1, TaintedIssuers: [][]byte{fingerprint(caA)}})
	issuer.setAnswer(certifies(caB, agentID, fixedClock(t0), time.Hour))
	close(release)

	require.Eventually(t, func() bool { return heldFrom(a, caB) }, 5*time.Second, time.Millisecond)
	require.Equal(t, 2, issuer.callCount())
	_, failures, _ := a.counts()
	require.Zero(t, failures)
	require.Equal(t, 1.0, metricValue(t, a.metrics.taintedRenewals))
	require.Zero(t, logs.FilterLevelExact(zapcore.WarnLevel).Len(), "warnings: %v", logs.All())
}
