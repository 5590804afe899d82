package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/internal/policy"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

const testCallerID = "spiffe://example.org/ci/builder"

// switchAttestor identifies every caller as whatever a test last set.
type switchAttestor struct {
	res atomic.Pointer[workloadattestor.Result]
	err atomic.Pointer[error]
}

func (s *switchAttestor) set(res workloadattestor.Result, err error) {
	s.res.Store(&res)
	s.err.Store(&err)
}

func (s *switchAttestor) Attest(context.Context, workloadattestor.Caller) (workloadattestor.Result, error) {
	if err := *s.err.Load(); err != nil {
		return workloadattestor.Result{}, err
	}
	return *s.res.Load(), nil
}

// localAPIFixture is an agent holding a signing certificate and serving
// its local API on a peercred socket, as in production, with policy
// granting testCallerID the step "build" in ws.
type localAPIFixture struct {
	a        *Agent
	socket   string
	ws       string
	attestor *switchAttestor
	logs     *observer.ObservedLogs // at info level
	debugLog *lockedBuffer          // everything, debug level included, as JSON lines
	// stop stops the local API, as the agent's stop does, and returns
	// once it has stopped (it may be called again).
	stop func()
}

// lockedBuffer is a log sink that goroutines share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

func newLocalAPIFixture(t *testing.T, extra ...NamedAttestor) *localAPIFixture {
	t.Helper()
	return newLocalAPIFixtureLimits(t, LocalLimits{}, extra...)
}

// newLocalAPIFixtureLimits is newLocalAPIFixture with the local API's
// limits set (a zero field takes its default).
func newLocalAPIFixtureLimits(t *testing.T, lim LocalLimits, extra ...NamedAttestor) *localAPIFixture {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm-api-") // short: a socket path has ~100 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o700))
	fx := &localAPIFixture{ws: filepath.Join(dir, "ws"), socket: filepath.Join(dir, "agent.sock"), attestor: &switchAttestor{}}
	fx.attestor.set(workloadattestor.Result{SPIFFEIDs: []string{testCallerID}}, nil)
	require.NoError(t, os.Mkdir(fx.ws, 0o755))

	pol, err := policy.New([]policy.Rule{{
		Name: "builders", SPIFFEIDs: []string{testCallerID}, Steps: []string{"build"}, WorkspaceRoots: []string{fx.ws},
	}})
	require.NoError(t, err)
	core, logs := observer.New(zapcore.InfoLevel)
	fx.logs, fx.debugLog = logs, &lockedBuffer{}
	debug := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(fx.debugLog), zapcore.DebugLevel)
	fx.a, err = New(Config{
		Log:             zap.New(zapcore.NewTee(core, debug)),
		ServerAddress:   "hallmark.test:8443",
		ServerID:        serverID,
		WorkloadAPIAddr: "unix:///nonexistent/api.sock",
		Attestors:       append([]NamedAttestor{{Name: "switch", Attestor: fx.attestor}}, extra...),
		Policy:          pol,
		LocalLimits:     lim,
	})
	require.NoError(t, err)
	fx.a.id = agentID
	ca := newTestCA(t)
	key := newP256(t)
	ders := ca.issue(t, key.Public(), []spiffeid.ID{agentID}, time.Now().Add(-time.Minute), time.Hour)
	chain := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		chain[i], err = x509.ParseCertificate(der)
		require.NoError(t, err)
	}
	fx.a.keys.cur.Store(&signingCert{key: key, chain: chain, received: time.Now()})
	withTSA(t, fx.a)

	ln, err := peercred.Listen(peercred.ListenConfig{Path: fx.socket, GID: -1})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fx.a.serveLocal(ctx, ln) }()
	var once sync.Once
	fx.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			ln.Close()
		})
	}
	t.Cleanup(fx.stop)
	return fx
}

// client is a fresh connection.
func (fx *localAPIFixture) client(t *testing.T) agentv1.WorkloadServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+fx.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewWorkloadServiceClient(conn)
}

func (fx *localAPIFixture) write(t *testing.T, name string, size int) {
	t.Helper()
	p := filepath.Join(fx.ws, name)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, make([]byte, size), 0o644))
}

// streamResult drains an AttestStepStream call: its progress messages,
// its result and the status it ended with.
func streamResult(t *testing.T, c agentv1.WorkloadServiceClient, req *agentv1.AttestStepRequest) ([]*agentv1.AttestProgress, *agentv1.AttestStepResponse, error) {
	t.Helper()
	stream, err := c.AttestStepStream(context.Background(), req)
	require.NoError(t, err)
	var (
		progress []*agentv1.AttestProgress
		result   *agentv1.AttestStepResponse
	)
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progress, result, nil
		}
		if err != nil {
			return progress, result, err
		}
		require.Nil(t, result, "nothing follows the result")
		switch ev := msg.GetEvent().(type) {
		case *agentv1.AttestStepStreamResponse_Progress:
			progress = append(progress, ev.Progress)
		case *agentv1.AttestStepStreamResponse_Result:
			result = ev.Result
		default:
			t.Fatalf("unexpected message %v", msg)
		}
	}
}

// denials counts the audit log's denials with their reasons, and the
// denial metrics.
func (fx *localAPIFixture) denials(t *testing.T) (events []string, metric float64) {
	t.Helper()
	for _, e := range fx.logs.FilterField(zap.String(logEvent, "attestation_denied")).All() {
		events = append(events, e.ContextMap()[logReason].(string))
	}
	for _, class := range []string{denyRequest, denyPolicy, denyEscape, denyAccess, denyLimits, denyCallerChanged} {
		metric += metricValue(t, fx.a.metrics.denials.WithLabelValues(class))
	}
	return events, metric
}

// Must show: AttestStepStream serves and refuses exactly whom and what
// AttestStep does, with the same status, audit event and metric, and a
// refused caller hears no progress.
func TestAttestStepStreamAuthorizedLikeAttestStep(t *testing.T) {
	fx := newLocalAPIFixture(t)
	fx.write(t, "dist/app", 1<<20)
	fx.write(t, "dist/lib.so", 1000)
	fx.write(t, "src/main.c", 10)
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(fx.ws, "passwd")))
	builder := workloadattestor.Result{SPIFFEIDs: []string{testCallerID}}

	cases := []struct {
		name        string
		caller      workloadattestor.Result
		attestorErr error
		req         *agentv1.AttestStepRequest
		wantErr     string // empty: allowed
	}{
		{"allowed", builder, nil,
			&agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}, Materials: []string{"src"}}, ""},
		{"step not granted", builder, nil,
			&agentv1.AttestStepRequest{Step: "deploy", Workspace: fx.ws, Products: []string{"dist"}}, "PermissionDenied"},
		{"workspace outside the roots", builder, nil,
			&agentv1.AttestStepRequest{Step: "build", Workspace: "/etc", Products: []string{"passwd"}}, "PermissionDenied"},
		{"unknown caller", workloadattestor.Result{SPIFFEIDs: []string{"spiffe://example.org/other"}}, nil,
			&agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}, "PermissionDenied"},
		{"caller with no identity", workloadattestor.Result{Selectors: []string{"unix:uid:1000"}}, nil,
			&agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}, "PermissionDenied"},
		{"symlink escaping the workspace", builder, nil,
			&agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"passwd"}}, "PermissionDenied"},
		{"no products", builder, nil,
			&agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws}, "InvalidArgument"},
		{"malformed step", builder, nil,
			&agentv1.AttestStepRequest{Step: "../build", Workspace: fx.ws, Products: []string{"dist"}}, "InvalidArgument"},
		{"attestor failing", builder, errors.New("SPIRE agent unreachable"),
			&agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}, "Unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx.attestor.set(tc.caller, tc.attestorErr)

			events0, metric0 := fx.denials(t)
			unary, unaryErr := fx.client(t).AttestStep(context.Background(), tc.req)
			events1, metric1 := fx.denials(t)
			progress, streamed, streamErr := streamResult(t, fx.client(t), tc.req)
			events2, metric2 := fx.denials(t)

			require.Equal(t, status.Code(unaryErr), status.Code(streamErr), "unary: %v; stream: %v", unaryErr, streamErr)
			require.Equal(t, status.Convert(unaryErr).Message(), status.Convert(streamErr).Message())
			require.Equal(t, events1[len(events0):], events2[len(events1):], "the same audit events")
			require.Equal(t, metric1-metric0, metric2-metric1, "the same denial metrics")
			if tc.wantErr != "" {
				require.Equal(t, tc.wantErr, status.Code(unaryErr).String(), "error: %v", unaryErr)
				require.Nil(t, unary)
				require.Nil(t, streamed, "no result")
				require.Empty(t, progress, "a refused caller hears nothing of the workspace")
				return
			}
			require.NoError(t, unaryErr)
			require.NoError(t, streamErr)
			require.NotEmpty(t, streamed.GetBundle())
			require.Len(t, streamed.GetSubjects(), 2)
			for i, s := range unary.GetSubjects() {
				require.Equal(t, s.GetName(), streamed.GetSubjects()[i].GetName())
				require.Equal(t, s.GetSha256(), streamed.GetSubjects()[i].GetSha256())
			}
			require.NotEmpty(t, progress)
			last := progress[len(progress)-1]
			require.Equal(t, int64(3), last.GetFilesTotal(), "products and materials")
			require.Equal(t, last.GetFilesTotal(), last.GetFilesDone())
			require.Equal(t, int64(1<<20+1000+10), last.GetBytesTotal())
			require.Equal(t, last.GetBytesTotal(), last.GetBytesDone())
		})
	}
}

// Must show: while a large product is hashed, progress arrives more than
// once, its counts never go backwards, and the last equals the totals.
func TestAttestStepStreamProgress(t *testing.T) {
	old := progressInterval
	progressInterval = time.Millisecond
	t.Cleanup(func() { progressInterval = old })
	fx := newLocalAPIFixture(t)
	const files, size = 8, 8 << 20
	for i := range files {
		fx.write(t, filepath.Join("dist", string(rune('a'+i))), size)
	}
	progress, result, err := streamResult(t, fx.client(t), &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}})
	require.NoError(t, err)
	require.Len(t, result.GetSubjects(), files)
	require.Greater(t, len(progress), 1, "progress while hashing, then the last counts")
	var prev *agentv1.AttestProgress
	for _, p := range progress {
		require.Equal(t, int64(files), p.GetFilesTotal())
		require.Equal(t, int64(files*size), p.GetBytesTotal())
		require.LessOrEqual(t, p.GetBytesDone(), p.GetBytesTotal())
		if prev != nil {
			require.GreaterOrEqual(t, p.GetBytesDone(), prev.GetBytesDone())
			require.GreaterOrEqual(t, p.GetFilesDone(), prev.GetFilesDone())
			require.NotEqual(t, prev.String(), p.String(), "only changes are sent")
		}
		prev = p
	}
	require.Equal(t, int64(files), prev.GetFilesDone())
	require.Equal(t, int64(files*size), prev.GetBytesDone())
}

// Must show (an attacker review's finding): under a rule granting every
// step ("*"), the step names a caller makes up do not each become a
// metric series for good: they are counted as "*"; a step the rule names
// keeps its own.
func TestAttestedStepsMetricIsBounded(t *testing.T) {
	fx := newLocalAPIFixture(t)
	pol, err := policy.New([]policy.Rule{{
		Name: "anything", SPIFFEIDs: []string{testCallerID}, Steps: []string{"build", "*"}, WorkspaceRoots: []string{fx.ws},
	}})
	require.NoError(t, err)
	fx.a.pol.Store(pol)
	fx.write(t, "dist/app", 10)
	c := fx.client(t)
	for _, step := range []string{"build", "made-up-1", "made-up-2", "made-up-3"} {
		_, err := c.AttestStep(t.Context(), &agentv1.AttestStepRequest{Step: step, Workspace: fx.ws, Products: []string{"dist"}})
		require.NoError(t, err, step)
	}
	require.Equal(t, 1.0, metricValue(t, fx.a.metrics.attestedSteps.WithLabelValues("build")))
	require.Equal(t, 3.0, metricValue(t, fx.a.metrics.attestedSteps.WithLabelValues("*")))
	require.Equal(t, 2, testutilCount(t, fx.a.metrics.attestedSteps), "two series: build and *")
}

// testutilCount is the number of series of a metric vector.
func testutilCount(t *testing.T, c prometheus.Collector) int {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	return len(ch)
}
