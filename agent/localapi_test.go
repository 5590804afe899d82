package agent

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// watchAttestor is a watching attestor (like spire's) that counts its
// calls and whose current answer a test can declare changed.
type watchAttestor struct {
	calls atomic.Int64
	mu    sync.Mutex
	ch    chan struct{}
}

func (w *watchAttestor) Attest(context.Context, workloadattestor.Caller) (workloadattestor.Result, error) {
	panic("a watching attestor is asked through AttestWatch")
}

func (w *watchAttestor) AttestWatch(ctx context.Context, _ workloadattestor.Caller) (workloadattestor.Result, <-chan struct{}, error) {
	w.calls.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ch = make(chan struct{})
	ch := w.ch
	go func() { <-ctx.Done(); w.change(ch) }()
	return workloadattestor.Result{SPIFFEIDs: []string{testCallerID}}, ch, nil
}

func (w *watchAttestor) change(ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// Must show: a watching attestor's answer is kept for a connection only
// while the attestor vouches for it; a change, or another connection,
// asks anew. The other attestors answer on every call.
func TestIdentityKeptOnlyWhileVouchedFor(t *testing.T) {
	wa := &watchAttestor{}
	fx := newLocalAPIFixture(t, NamedAttestor{Name: "watch", Attestor: wa})
	var switchCalls atomic.Int64
	fx.attestor.set(workloadattestor.Result{Selectors: []string{"unix:uid:1000"}}, nil)
	counting := &countingAttestor{inner: fx.attestor, calls: &switchCalls}
	fx.a.cfg.Attestors[0].Attestor = counting

	c := fx.client(t)
	for range 3 {
		_, err := c.WhoAmI(context.Background(), &agentv1.WhoAmIRequest{})
		require.NoError(t, err)
	}
	require.Equal(t, int64(1), wa.calls.Load(), "kept for the connection")
	require.Equal(t, int64(3), switchCalls.Load(), "the other attestor answers every call")

	wa.mu.Lock()
	ch := wa.ch
	wa.mu.Unlock()
	wa.change(ch)
	_, err := c.WhoAmI(context.Background(), &agentv1.WhoAmIRequest{})
	require.NoError(t, err)
	require.Equal(t, int64(2), wa.calls.Load(), "asked anew once the answer changed")

	_, err = fx.client(t).WhoAmI(context.Background(), &agentv1.WhoAmIRequest{})
	require.NoError(t, err)
	require.Equal(t, int64(3), wa.calls.Load(), "another connection is another caller")
}

type countingAttestor struct {
	inner WorkloadAttestor
	calls *atomic.Int64
}

func (c *countingAttestor) Attest(ctx context.Context, wc workloadattestor.Caller) (workloadattestor.Result, error) {
	c.calls.Add(1)
	return c.inner.Attest(ctx, wc)
}

// Must show: a caller policy refuses learns why, and nothing about files:
// the refusal is the same whether the workspace exists, is a file, or is
// missing, and nothing is measured.
func TestRefusalsSayNothingAboutFiles(t *testing.T) {
	fx := newLocalAPIFixture(t)
	fx.write(t, "dist/app", 10)
	fx.attestor.set(workloadattestor.Result{SPIFFEIDs: []string{"spiffe://example.org/other"}}, nil)
	var msgs []string
	for _, ws := range []string{fx.ws, filepath.Join(fx.ws, "dist", "app"), filepath.Join(fx.ws, "missing"), "/etc"} {
		_, err := fx.client(t).AttestStep(context.Background(), &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"dist"}})
		require.Equal(t, codes.PermissionDenied, status.Code(err))
		msgs = append(msgs, status.Convert(err).Message())
	}
	for _, m := range msgs {
		require.Equal(t, "no policy rule matches spiffe://example.org/other", m)
	}
	require.Zero(t, metricValue(t, fx.a.metrics.measuredFiles))
}
