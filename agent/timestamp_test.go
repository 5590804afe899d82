package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// fakeTSA answers Timestamp as a server does, with a real timestamp
// authority (attest/tsa), at its clock; it records the calls.
type fakeTSA struct {
	signer *tsa.Signer
	now    func() time.Time

	mu    sync.Mutex
	calls []int         // signatures per call
	hold  chan struct{} // when set, calls wait for it to close
	fail  error
}

func newFakeTSA(t testing.TB) *fakeTSA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	chain, err := tsa.NewChain(key, "fake tsa", time.Now().Add(-time.Hour))
	require.NoError(t, err)
	s, err := tsa.NewSigner(key, chain)
	require.NoError(t, err)
	return &fakeTSA{signer: s, now: time.Now}
}

func (f *fakeTSA) Timestamp(ctx context.Context, req *serverv1.TimestampRequest, _ ...grpc.CallOption) (*serverv1.TimestampResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, len(req.GetSignatures()))
	hold, fail := f.hold, f.fail
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	resp := &serverv1.TimestampResponse{}
	for _, sig := range req.GetSignatures() {
		ts, err := f.signer.Timestamp(sig, f.now())
		if err != nil {
			return nil, err
		}
		resp.Timestamps = append(resp.Timestamps, ts)
	}
	for _, c := range f.signer.Chain() {
		resp.TsaChain = append(resp.TsaChain, c.Raw)
	}
	return resp, nil
}

func (f *fakeTSA) callSizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.calls...)
}

// withTSA connects a's timestamper to a fake authority.
func withTSA(t testing.TB, a *Agent) *fakeTSA {
	f := newFakeTSA(t)
	a.timestamps.setClient(f)
	return f
}

// While every call is in flight, the attestations that arrive wait and
// go together in the next: maxTimestampCalls lone signatures first, then
// all the others at once; each gets the timestamp of its own signature.
func TestTimestampsCoalesce(t *testing.T) {
	f := newFakeTSA(t)
	f.hold = make(chan struct{})
	var ts timestamper
	ts.setClient(f)

	type answer struct {
		sig, resp []byte
		chain     [][]byte
		err       error
	}
	const total = 50
	answers := make(chan answer, total)
	ask := func(sig []byte) {
		resp, chain, err := ts.timestamp(context.Background(), sig)
		answers <- answer{sig, resp, chain, err}
	}
	for i := range maxTimestampCalls {
		go ask(fmt.Appendf(nil, "first-%d", i))
		require.Eventually(t, func() bool { return len(f.callSizes()) == i+1 }, 5*time.Second, time.Millisecond)
	}
	for i := range total - maxTimestampCalls {
		go ask(fmt.Appendf(nil, "sig-%d", i))
	}
	require.Eventually(t, func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.queue) == total-maxTimestampCalls
	}, 5*time.Second, time.Millisecond)
	f.mu.Lock()
	close(f.hold)
	f.mu.Unlock()
	for range total {
		a := <-answers
		require.NoError(t, a.err)
		_, err := ts.verify(a.resp, a.sig, a.chain)
		require.NoError(t, err, "the timestamp of %s is over it", a.sig)
	}
	sizes := f.callSizes()
	require.Equal(t, []int{1, 1, 1, 1}, sizes[:maxTimestampCalls], "lone attestations wait for no one")
	rest := 0
	for _, n := range sizes[maxTimestampCalls:] {
		rest += n
	}
	require.Equal(t, total-maxTimestampCalls, rest)
	require.LessOrEqual(t, len(sizes), 2*maxTimestampCalls, "the others coalesced into a few calls: %v", sizes)
	require.Eventually(t, func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return ts.inflight == 0
	}, 5*time.Second, time.Millisecond, "the callers end once the queue is empty")
}

// Fail closed: with no timestamp authority answering (not connected, the
// call failing, a timestamp outside the certificate's validity, one that
// does not verify), signStep refuses the attestation with Unavailable and
// says why; nothing is handed out.
func TestSignStepWithoutTimestampIsRefused(t *testing.T) {
	held := newHeldCert(t)
	step := attest.Step{Name: "build", Workspace: "/ws", BuilderID: agentID.String(), InvocationID: "inv",
		Products: []attest.Artifact{{Name: "out", SHA256: fmt.Sprintf("%064x", 1)}}}
	tests := []struct {
		name  string
		setup func(a *Agent)
		want  string
	}{
		{"not connected", func(*Agent) {}, "no timestamp authority answered: not connected to hallmark-server yet"},
		{"server down", func(a *Agent) {
			withTSA(t, a).fail = status.Error(codes.Unavailable, "connection refused")
		}, "no timestamp authority answered: rpc error: code = Unavailable desc = connection refused"},
		{"after the certificate", func(a *Agent) {
			withTSA(t, a).now = func() time.Time { return held.leaf().NotAfter.Add(time.Second) }
		}, "is outside the signing certificate's validity"},
		{"wrong chain", func(a *Agent) {
			f := withTSA(t, a)
			other := newFakeTSA(t)
			a.timestamps.setClient(chainOf{f, other})
		}, "the server's timestamp does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, nil)
			tt.setup(a)
			bundle, err := a.signStep(context.Background(), step, held)
			require.Nil(t, bundle)
			require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
			require.ErrorContains(t, err, tt.want)
			require.ErrorContains(t, err, "nothing was handed out or queued")
			require.Equal(t, 1.0, metricValue(t, a.metrics.timestamps.WithLabelValues(resultError)))
		})
	}
}

// chainOf answers with f's timestamps but other's chain.
type chainOf struct{ f, other *fakeTSA }

func (c chainOf) Timestamp(ctx context.Context, req *serverv1.TimestampRequest, opts ...grpc.CallOption) (*serverv1.TimestampResponse, error) {
	resp, err := c.f.Timestamp(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	resp.TsaChain = nil
	for _, cert := range c.other.signer.Chain() {
		resp.TsaChain = append(resp.TsaChain, cert.Raw)
	}
	return resp, nil
}

// A signed bundle carries the timestamp of its signature, which the
// submitter finds and sends with the entry.
func TestSignStepTimestampsAndSubmitSendsIt(t *testing.T) {
	a := newTestAgent(t, nil)
	f := withTSA(t, a)
	held := newHeldCert(t)
	step := attest.Step{Name: "build", Workspace: "/ws", BuilderID: agentID.String(), InvocationID: "inv",
		Products: []attest.Artifact{{Name: "out", SHA256: fmt.Sprintf("%064x", 1)}}}
	bundle, err := a.signStep(context.Background(), step, held)
	require.NoError(t, err)
	b, err := attest.ParseBundle(bundle)
	require.NoError(t, err)
	tss := b.GetVerificationMaterial().GetTimestampVerificationData().GetRfc3161Timestamps()
	require.Len(t, tss, 1)
	auth, err := tsa.NewAuthorityFromChain(f.signer.Chain())
	require.NoError(t, err)
	_, err = auth.Verify(tss[0].GetSignedTimestamp(), b.GetDsseEnvelope().GetSignatures()[0].GetSig())
	require.NoError(t, err)

	got, err := timestampOf(bundle)
	require.NoError(t, err)
	require.Equal(t, tss[0].GetSignedTimestamp(), got)
	sub, _, reason := submission(outbox.Item{ID: "inv", Bundle: bundle, Certificate: held.leaf().Raw})
	require.Empty(t, reason)
	require.Equal(t, got, sub.GetTimestamp())

	// A bundle from before (no timestamp) is submitted without one.
	old, err := attest.Sign(step, held.key, held.leaf())
	require.NoError(t, err)
	got, err = timestampOf(old)
	require.NoError(t, err)
	require.Nil(t, got)
	_, err = timestampOf([]byte("{"))
	require.Error(t, err)
}

// A certificate from a tainted CA signs for half the log's grace after the
// agent hears of the taint (renewal normally replaces it well within it),
// and is refused after that: the log would refuse what it signs.
func TestSignStepWithATaintedCA(t *testing.T) {
	held := newHeldCert(t)
	heardAt := time.Now()
	step := attest.Step{Name: "build", Workspace: "/ws", BuilderID: agentID.String(), InvocationID: "inv",
		Products: []attest.Artifact{{Name: "out", SHA256: fmt.Sprintf("%064x", 1)}}}
	tests := []struct {
		name    string
		tainted bool
		after   time.Duration // since the agent heard of the taint
		refused bool
	}{
		{"untainted", false, time.Hour, false},
		{"tainted, just heard", true, 0, false},
		{"tainted, at the cutoff", true, taintedSigningCutoff, false},
		{"tainted, past the cutoff", true, taintedSigningCutoff + time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, func() time.Time { return heardAt.Add(tt.after) })
			withTSA(t, a)
			set := &taintSet{revision: 1, issuers: map[[sha256.Size]byte]time.Time{}}
			if fp, ok := issuerSHA256(held); ok && tt.tainted {
				set.issuers[fp] = heardAt
			}
			a.tainted.Store(set)
			bundle, err := a.signStep(context.Background(), step, held)
			if !tt.refused {
				require.NoError(t, err)
				require.NotEmpty(t, bundle)
				return
			}
			require.Nil(t, bundle)
			require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
			require.ErrorContains(t, err, "was tainted 5s ago and no certificate from another CA is held yet")
			select {
			case <-a.renewNudge:
			default:
				t.Fatal("no renewal nudged")
			}
		})
	}
}
