package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/limits"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// testLog is a log behind SubmitEntries that counts what it is given:
// each envelope is logged once, however often it comes.
type testLog struct {
	serverv1.UnimplementedAgentServiceServer

	mu        sync.Mutex
	delivered map[string]int // envelope -> times submitted
	calls     []int          // entries per call that got an answer
	down      bool           // answer Unavailable
	// refuse says why an envelope is refused, "" to log it.
	refuse func(env []byte) string
	// maxCall, when set, refuses calls of more bytes as a whole, as a
	// server with lower limits than the agent's would.
	maxCall int
	// throttled calls are refused as a whole with ResourceExhausted, as a
	// rate limit or a proxy shedding load would.
	throttled int
}

func newTestLog() *testLog { return &testLog{delivered: map[string]int{}} }

func (l *testLog) SubmitEntries(_ context.Context, req *serverv1.SubmitEntriesRequest) (*serverv1.SubmitEntriesResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down {
		return nil, status.Error(codes.Unavailable, "the log is down")
	}
	if l.throttled > 0 {
		l.throttled--
		return nil, status.Error(codes.ResourceExhausted, "quota exceeded: too many requests")
	}
	if n := proto.Size(req); l.maxCall > 0 && n > l.maxCall {
		return nil, status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, l.maxCall)
	}
	l.calls = append(l.calls, len(req.GetEntries()))
	resp := &serverv1.SubmitEntriesResponse{}
	for _, e := range req.GetEntries() {
		if l.refuse != nil {
			if reason := l.refuse(e.GetEnvelope()); reason != "" {
				resp.Results = append(resp.Results, &serverv1.LogEntryResult{Error: reason})
				continue
			}
		}
		l.delivered[string(e.GetEnvelope())]++
		resp.Results = append(resp.Results, &serverv1.LogEntryResult{
			TlogEntry: fmt.Appendf(nil, `{"logIndex":"%d"}`, len(l.delivered)), SignedTimestamp: []byte("timestamp"),
		})
	}
	return resp, nil
}

// direct calls the log in process, as an entrySubmitter.
type direct struct{ l *testLog }

func (d direct) SubmitEntries(ctx context.Context, req *serverv1.SubmitEntriesRequest, _ ...grpc.CallOption) (*serverv1.SubmitEntriesResponse, error) {
	return d.l.SubmitEntries(ctx, req)
}

func (l *testLog) times(env []byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.delivered[string(env)]
}

func (l *testLog) setDown(down bool) {
	l.mu.Lock()
	l.down = down
	l.mu.Unlock()
}

// serveTestLog serves l over real gRPC on loopback with the server's
// receive limit (limits.MaxCallBytes), and returns a client of it as the
// agent dials servers.
func serveTestLog(t *testing.T, l *testLog) serverv1.AgentServiceClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(limits.MaxCallBytes))
	serverv1.RegisterAgentServiceServer(srv, l)
	go srv.Serve(ln) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	conn, err := dialServers([]string{ln.Addr().String()}, insecure.NewCredentials())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return serverv1.NewAgentServiceClient(conn)
}

// outboxAgent is a test agent with an outbox in a temporary directory
// (returned) and its log lines observed.
func outboxAgent(t *testing.T) (*Agent, *observer.ObservedLogs, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "outbox")
	a, logs := outboxAgentIn(t, dir)
	return a, logs, dir
}

// outboxAgentIn is outboxAgent with the outbox in dir.
func outboxAgentIn(t *testing.T, dir string) (*Agent, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	a := newTestAgent(t, nil, zap.New(core))
	ob, err := a.openOutbox(dir)
	require.NoError(t, err)
	t.Cleanup(func() { ob.Close() })
	return a, logs
}

// drain runs the submitter until the outbox is empty; it fails the test
// after rounds calls.
func drain(t *testing.T, a *Agent, client entrySubmitter, rounds int) {
	t.Helper()
	for i := 0; a.outbox.Len() > 0; i++ {
		require.Less(t, i, rounds, "the outbox does not drain: %d queued", a.outbox.Len())
		require.NoError(t, a.submitOnce(context.Background(), client))
	}
}

// envelopeOfSize is a DSSE envelope's JSON of n bytes, unique by tag.
func envelopeOfSize(tag string, n int) []byte {
	head := fmt.Sprintf(`{"payload":"%s`, tag)
	tail := `","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"c2ln"}]}`
	return append(append([]byte(head), bytes.Repeat([]byte("A"), n-len(head)-len(tail))...), tail...)
}

// Must show: four envelopes of 12 MB queued while the log is down are all
// logged after it, each exactly once, in calls the server's receive limit
// (real gRPC, limits.MaxCallBytes) takes: at most two of them per call.
func TestSubmitFourLargeEnvelopesAfterOutage(t *testing.T) {
	l := newTestLog()
	client := serveTestLog(t, l)
	a, _, _ := outboxAgent(t)
	l.setDown(true)
	var envs [][]byte
	for i := range 4 {
		env := envelopeOfSize(fmt.Sprint(i), 12_000_000)
		envs = append(envs, env)
		require.NoError(t, a.outbox.Put(outbox.Item{ID: fmt.Sprintf("inv-%d", i), Envelope: env, Certificate: []byte("cert")}))
	}
	err := a.submitOnce(context.Background(), client)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Equal(t, 4, a.outbox.Len(), "nothing settled while the log is down")

	l.setDown(false)
	rec := &recordingClient{entrySubmitter: client}
	drain(t, a, rec, 10)
	for i, env := range envs {
		require.Equal(t, 1, l.times(env), "envelope %d", i)
		it, _ := mustGet(t, a.outbox, fmt.Sprintf("inv-%d", i))
		require.Equal(t, outbox.Logged, it.State)
	}
	require.Equal(t, []int{2, 2}, l.calls, "two 12 MB envelopes per call of at most %d bytes", limits.MaxCallBytes)
	// Sized by bytes from the start: no call was refused by the server's
	// transport and split afterwards.
	require.Equal(t, []codes.Code{codes.OK, codes.OK}, rec.codes, "every call the agent made")
	require.Zero(t, metricValue(t, a.metrics.logSubmissions.WithLabelValues(resultDenied)))
}

// recordingClient records the status of every SubmitEntries call made
// through it, including calls the server's transport refused.
type recordingClient struct {
	entrySubmitter
	codes []codes.Code
}

func (r *recordingClient) SubmitEntries(ctx context.Context, in *serverv1.SubmitEntriesRequest, opts ...grpc.CallOption) (*serverv1.SubmitEntriesResponse, error) {
	resp, err := r.entrySubmitter.SubmitEntries(ctx, in, opts...)
	r.codes = append(r.codes, status.Code(err))
	return resp, err
}

// Must show: an entry the log refuses for good is settled as refused, with
// its reason in the status, the metrics and the log, and the entries
// queued behind it are logged.
func TestSubmitRefusedEntryDoesNotBlockTheQueue(t *testing.T) {
	l := newTestLog()
	bad := envelopeOfSize("bad", 100)
	l.refuse = func(env []byte) string {
		if bytes.Equal(env, bad) {
			return "certificate does not chain to a signing CA of this server"
		}
		return ""
	}
	a, logs, dir := outboxAgent(t)
	a.cfg.LogBatchSize = 3 // the refused one heads the first call; the rest follow
	require.NoError(t, a.outbox.Put(outbox.Item{ID: "inv-bad", Envelope: bad, Certificate: []byte("cert")}))
	var good [][]byte
	for i := range 10 {
		env := envelopeOfSize(fmt.Sprint(i), 100)
		good = append(good, env)
		require.NoError(t, a.outbox.Put(outbox.Item{ID: fmt.Sprintf("inv-%d", i), Envelope: env, Certificate: []byte("cert")}))
	}
	drain(t, a, direct{l}, 10)
	for _, env := range good {
		require.Equal(t, 1, l.times(env))
	}
	it, _ := mustGet(t, a.outbox, "inv-bad")
	require.Equal(t, outbox.Refused, it.State)

	st := a.Status().Outbox
	require.NotNil(t, st)
	require.Equal(t, 0, st.Queued)
	require.Equal(t, 1, st.Refused)
	require.Len(t, st.RecentRefusals, 1)
	require.Equal(t, "inv-bad", st.RecentRefusals[0].InvocationID)
	require.Equal(t, "certificate does not chain to a signing CA of this server", st.RecentRefusals[0].Reason)
	require.Equal(t, 1.0, metricValue(t, a.metrics.outboxRefused))
	require.Equal(t, 1.0, metricValue(t, a.metrics.logSubmissions.WithLabelValues(resultDenied)))
	require.Equal(t, 10.0, metricValue(t, a.metrics.logSubmissions.WithLabelValues("logged")))
	entries := logs.FilterMessage("The log refused an attestation; it will not be retried (see `hallmark status`)").All()
	require.Len(t, entries, 1)
	require.Equal(t, "inv-bad", entries[0].ContextMap()[logInvocationID])

	// And after a restart.
	require.NoError(t, a.outbox.Close())
	b, _ := outboxAgentIn(t, dir)
	st = b.Status().Outbox
	require.Equal(t, 1, st.Refused)
	require.Equal(t, "inv-bad", st.RecentRefusals[0].InvocationID)
	require.Equal(t, 1.0, metricValue(t, b.metrics.outboxRefused))
}

// An entry the log can never take, whatever the server says, is refused
// without being sent, and the rest go on: one too large for the log (an
// outbox written before the limits, or by another version), one whose
// queued bundle holds no envelope.
func TestSubmitRefusesWhatTheLogNeverTakes(t *testing.T) {
	l := newTestLog()
	a, _, _ := outboxAgent(t)
	items := []outbox.Item{
		{ID: "inv-huge", Envelope: envelopeOfSize("huge", limits.MaxEnvelopeBytes+1), Certificate: []byte("cert")},
		{ID: "inv-ok-1", Envelope: envelopeOfSize("1", 100), Certificate: []byte("cert")},
		{ID: "inv-unreadable", Bundle: []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`), Certificate: []byte("cert")},
		{ID: "inv-big-cert", Envelope: envelopeOfSize("2", 100), Certificate: make([]byte, limits.MaxCertificateBytes+1)},
		{ID: "inv-ok-2", Envelope: envelopeOfSize("3", 100), Certificate: []byte("cert")},
	}
	for _, it := range items {
		require.NoError(t, a.outbox.Put(it))
	}
	drain(t, a, direct{l}, 3)
	require.Equal(t, []int{2}, l.calls, "only the two the log takes are sent")
	for id, want := range map[string]string{
		"inv-huge":       fmt.Sprintf("its envelope is %d bytes, more than the log takes (limits.MaxEnvelopeBytes, %d)", limits.MaxEnvelopeBytes+1, limits.MaxEnvelopeBytes),
		"inv-unreadable": "the queued attestation is unreadable: bundle has no DSSE envelope",
		"inv-big-cert":   "more than the log takes (limits.MaxCertificateBytes",
	} {
		it, _ := mustGet(t, a.outbox, id)
		require.Equal(t, outbox.Refused, it.State, id)
		require.Contains(t, it.Reason, want, id)
	}
	for _, id := range []string{"inv-ok-1", "inv-ok-2"} {
		it, _ := mustGet(t, a.outbox, id)
		require.Equal(t, outbox.Logged, it.State, id)
	}
	require.Equal(t, 3, a.Status().Outbox.Refused)
}

// A call the server refuses as a whole (a server whose limits are lower
// than the agent's) is sent again in halves; an entry that is refused so
// when alone is settled as refused with the server's reason, and every
// other entry is logged once.
func TestSubmitSplitsCallsRefusedAsAWhole(t *testing.T) {
	l := newTestLog()
	l.maxCall = 3000
	a, _, _ := outboxAgent(t)
	var envs [][]byte
	for i := range 20 {
		n := 500
		if i == 7 {
			n = 4000 // alone over the server's limit
		}
		env := envelopeOfSize(fmt.Sprint(i), n)
		envs = append(envs, env)
		require.NoError(t, a.outbox.Put(outbox.Item{ID: fmt.Sprintf("inv-%d", i), Envelope: env, Certificate: []byte("cert")}))
	}
	drain(t, a, direct{l}, 100)
	for i, env := range envs {
		it, _ := mustGet(t, a.outbox, fmt.Sprintf("inv-%d", i))
		if i == 7 {
			require.Equal(t, outbox.Refused, it.State)
			require.Contains(t, it.Reason, "the server refused the call carrying it: grpc: received message larger than max")
			require.Zero(t, l.times(env))
			continue
		}
		require.Equal(t, outbox.Logged, it.State, "inv-%d", i)
		require.Equal(t, 1, l.times(env), "inv-%d", i)
	}
}

// A call refused as a whole for a quota or a rate limit (ResourceExhausted,
// not for its size) settles nothing: it is sent again, unchanged, and its
// entries are logged once the log takes calls again.
func TestSubmitThrottledCallRefusesNothing(t *testing.T) {
	for _, entries := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d entries", entries), func(t *testing.T) {
			l := newTestLog()
			l.throttled = 3
			a, _, _ := outboxAgent(t)
			var envs [][]byte
			for i := range entries {
				env := envelopeOfSize(fmt.Sprint(i), 500)
				envs = append(envs, env)
				require.NoError(t, a.outbox.Put(outbox.Item{ID: fmt.Sprintf("inv-%d", i), Envelope: env, Certificate: []byte("cert")}))
			}
			for range 3 {
				err := a.submitOnce(context.Background(), direct{l})
				require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
				require.Equal(t, entries, a.outbox.Len(), "nothing settled while throttled")
			}
			drain(t, a, direct{l}, 5)
			for i, env := range envs {
				it, _ := mustGet(t, a.outbox, fmt.Sprintf("inv-%d", i))
				require.Equal(t, outbox.Logged, it.State, "inv-%d", i)
				require.Equal(t, 1, l.times(env), "inv-%d", i)
			}
			require.Zero(t, metricValue(t, a.metrics.logSubmissions.WithLabelValues(resultDenied)))
		})
	}
}

// An attestation whose bundle would be larger than the log takes is
// refused, naming the limit (attest.SignWith refuses before signing:
// TestSignWithMaxBundleSize).
func TestSignStepRefusesWhatTheLogWouldNot(t *testing.T) {
	a := newTestAgent(t, nil)
	withTSA(t, a)
	held := newHeldCert(t)
	// About 36 MB of bundle: 100,000 products with long names.
	step := attest.Step{Name: "build", Workspace: "/ws", BuilderID: agentID.String(), InvocationID: "inv"}
	long := strings.Repeat("n", 200)
	for i := range 100_000 {
		step.Products = append(step.Products, attest.Artifact{Name: fmt.Sprintf("dist/%s/%06d", long, i), SHA256: fmt.Sprintf("%064x", i)})
	}
	_, err := a.signStep(context.Background(), step, held)
	var refusal *signRefusal
	require.ErrorAs(t, err, &refusal)
	require.Equal(t, codes.InvalidArgument, refusal.code)
	require.Equal(t, denyLimits, refusal.class)
	require.Contains(t, refusal.reason, fmt.Sprintf("more than the log takes: limits.MaxSignedBundleBytes is %d", limits.MaxSignedBundleBytes))
	require.Contains(t, refusal.reason, "nothing was signed")

	step.Products = step.Products[:10]
	bundle, err := a.signStep(context.Background(), step, held)
	require.NoError(t, err)
	require.NotEmpty(t, bundle)
}

// mustGet is the outbox's Get, its bytes read back without error.
func mustGet(t testing.TB, o *outbox.Outbox, id string) (outbox.Item, bool) {
	t.Helper()
	it, ok, err := o.Get(id)
	require.NoError(t, err)
	return it, ok
}

// Fail closed, through the local API: with the timestamp authority
// unreachable an attestation is refused with Unavailable, and nothing is
// queued for the log. Once it answers, the same request is attested and
// queued.
func TestAttestRefusedWithoutTimestampQueuesNothing(t *testing.T) {
	fx := newLocalAPIFixture(t)
	ob, err := fx.a.openOutbox(filepath.Join(t.TempDir(), "outbox"))
	require.NoError(t, err)
	t.Cleanup(func() { ob.Close() })
	tsa := withTSA(t, fx.a)
	tsa.fail = status.Error(codes.Unavailable, "connection refused")
	fx.write(t, "dist/app", 10)
	c := fx.client(t)
	req := &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}

	_, err = c.AttestStep(context.Background(), req)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "no timestamp authority answered")
	require.Zero(t, fx.a.outbox.Len(), "queued without a timestamp")

	tsa.mu.Lock()
	tsa.fail = nil // the fake reads it under mu
	tsa.mu.Unlock()
	_, err = c.AttestStep(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, 1, fx.a.outbox.Len())
}

// Attestations queued for an unreachable log are bounded by bytes
// (outbox_max_pending_bytes): past it, an attestation is refused before
// anything is signed, and taken again once the log has taken some.
func TestAttestRefusedWhileTheOutboxIsFull(t *testing.T) {
	fx := newLocalAPIFixture(t)
	ob, err := fx.a.openOutbox(filepath.Join(t.TempDir(), "outbox"))
	require.NoError(t, err)
	t.Cleanup(func() { ob.Close() })
	fx.a.cfg.OutboxMaxPendingBytes = 1 // any one queued attestation fills it
	fx.write(t, "dist/app", 10)
	c := fx.client(t)
	req := &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}

	first, err := c.AttestStep(context.Background(), req)
	require.NoError(t, err, "under the bound")
	require.Positive(t, fx.a.outbox.PendingBytes())

	_, err = c.AttestStep(context.Background(), req)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "wait for the log (agent.outbox_max_pending_bytes")
	require.ErrorContains(t, err, "nothing was signed")
	require.Equal(t, 1, fx.a.outbox.Len(), "nothing queued")

	require.NoError(t, fx.a.outbox.MarkLogged(first.GetInvocationId(), []byte(`{"logIndex":"1"}`)))
	_, err = c.AttestStep(context.Background(), req)
	require.NoError(t, err, "the log took the queued one")
}

// A settlement is counted in hallmark_agent_log_submissions_total when it
// is saved: one whose saving fails is submitted again and counted then,
// not twice.
func TestSubmissionsAreCountedOnceSettled(t *testing.T) {
	a, _, _ := outboxAgent(t)
	require.NoError(t, a.outbox.Put(outbox.Item{ID: "inv-1", Envelope: envelopeOfSize("1", 100), Certificate: []byte("cert")}))
	require.NoError(t, a.outbox.Put(outbox.Item{ID: "inv-2", Envelope: envelopeOfSize("2", 100), Certificate: []byte("cert")}))
	settled := []outbox.Settlement{{ID: "inv-1", Logged: []byte(`{}`)}, {ID: "inv-2", Reason: "refused"}}
	require.NoError(t, a.outbox.Close())

	require.Error(t, a.settle(settled), "a closed outbox saves nothing")
	require.Zero(t, metricValue(t, a.metrics.logSubmissions.WithLabelValues("logged")))
	require.Zero(t, metricValue(t, a.metrics.logSubmissions.WithLabelValues(resultDenied)))

	b, _, _ := outboxAgent(t)
	require.NoError(t, b.outbox.Put(outbox.Item{ID: "inv-1", Envelope: envelopeOfSize("1", 100), Certificate: []byte("cert")}))
	require.NoError(t, b.outbox.Put(outbox.Item{ID: "inv-2", Envelope: envelopeOfSize("2", 100), Certificate: []byte("cert")}))
	require.NoError(t, b.settle(settled))
	require.Equal(t, 1.0, metricValue(t, b.metrics.logSubmissions.WithLabelValues("logged")))
	require.Equal(t, 1.0, metricValue(t, b.metrics.logSubmissions.WithLabelValues(resultDenied)))
}
