package agent

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/serverfault"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// t0 is the injected "now" of tests that do not sleep on real time.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func TestRenew(t *testing.T) {
	ca := newTestCA(t)
	stranger := newTestCA(t)
	now := fixedClock(t0)

	chainOf := func(csr *x509.CertificateRequest, ids ...spiffeid.ID) [][]byte {
		chain, err := ca.sign(csr.PublicKey, ids, t0, 5*time.Minute)
		if err != nil {
			panic(err) // only on a broken test CA
		}
		return chain
	}
	answer := func(f func(csr *x509.CertificateRequest) [][]byte) answerFunc {
		return func(_ context.Context, csr *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
			return &serverv1.IssueSigningCertificateResponse{CertificateChain: f(csr)}, nil
		}
	}
	otherKey := newP256(t)

	tests := []struct {
		name          string
		answer        answerFunc
		wantErr       string // empty: the certificate is installed
		wantReachable bool
	}{
		{
			name:          "good answer",
			answer:        certifies(ca, agentID, now, 5*time.Minute),
			wantReachable: true,
		},
		{
			name:          "server unavailable",
			answer:        fails(status.Error(codes.Unavailable, "connection refused")),
			wantErr:       "issue signing certificate: rpc error: code = Unavailable desc = connection refused",
			wantReachable: false,
		},
		{
			name:          "server answers that its key manager is down",
			answer:        fails(serverfault.Errorf(codes.Unavailable, "key manager vault", "key manager vault: unreachable: no answer within 10s")),
			wantErr:       "issue signing certificate: rpc error: code = Unavailable desc = key manager vault: unreachable",
			wantReachable: true, // it answered; what failed is behind it
		},
		{
			name:          "server answers that its key manager refuses",
			answer:        fails(serverfault.Errorf(codes.FailedPrecondition, "key manager vault", "key manager vault: permission denied; fix: grant the role")),
			wantErr:       "issue signing certificate: rpc error: code = FailedPrecondition desc = key manager vault: permission denied; fix: grant the role",
			wantReachable: true,
		},
		{
			name:          "call timed out",
			answer:        fails(status.Error(codes.DeadlineExceeded, "too slow")),
			wantErr:       "issue signing certificate: ",
			wantReachable: false,
		},
		{
			name:          "server refuses",
			answer:        fails(status.Error(codes.PermissionDenied, "not an agent")),
			wantErr:       "issue signing certificate: ",
			wantReachable: true, // it answered
		},
		{
			name:          "certificate names another SPIFFE ID",
			answer:        answer(func(csr *x509.CertificateRequest) [][]byte { return chainOf(csr, otherID) }),
			wantErr:       "server answer: certificate names [" + otherID.String() + "], not the agent's " + agentID.String(),
			wantReachable: true,
		},
		{
			name:          "certificate names the agent and another ID",
			answer:        answer(func(csr *x509.CertificateRequest) [][]byte { return chainOf(csr, agentID, otherID) }),
			wantErr:       "not the agent's",
			wantReachable: true,
		},
		{
			name:          "certificate names nothing",
			answer:        answer(func(csr *x509.CertificateRequest) [][]byte { return chainOf(csr) }),
			wantErr:       "not the agent's",
			wantReachable: true,
		},
		{
			name: "certificate certifies another key",
			answer: answer(func(*x509.CertificateRequest) [][]byte {
				chain, err := ca.sign(otherKey.Public(), []spiffeid.ID{agentID}, t0, 5*time.Minute)
				if err != nil {
					panic(err)
				}
				return chain
			}),
			wantErr:       "server answer: certificate is not for the key the agent sent",
			wantReachable: true,
		},
		{
			name:          "no CA certificate",
			answer:        answer(func(csr *x509.CertificateRequest) [][]byte { return chainOf(csr, agentID)[:1] }),
			wantErr:       "server answer: certificate chain has no CA certificate",
			wantReachable: true,
		},
		{
			name:          "empty answer",
			answer:        answer(func(*x509.CertificateRequest) [][]byte { return nil }),
			wantErr:       "no CA certificate",
			wantReachable: true,
		},
		{
			name: "leaf not signed by the next certificate",
			answer: answer(func(csr *x509.CertificateRequest) [][]byte {
				return [][]byte{chainOf(csr, agentID)[0], stranger.cert.Raw}
			}),
			wantErr:       "server answer: certificate 0 is not signed by certificate 1",
			wantReachable: true,
		},
		{
			name:          "garbage certificate",
			answer:        answer(func(*x509.CertificateRequest) [][]byte { return [][]byte{[]byte("not DER"), ca.cert.Raw} }),
			wantErr:       "server answer: certificate 0: ",
			wantReachable: true,
		},
		{
			name:          "garbage CA certificate",
			answer:        answer(func(csr *x509.CertificateRequest) [][]byte { return [][]byte{chainOf(csr, agentID)[0], {0x30, 0x00}} }),
			wantErr:       "server answer: certificate 1: ",
			wantReachable: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, now)
			prev := &signingCert{key: otherKey, chain: []*x509.Certificate{{NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Minute)}}}
			a.keys.cur.Store(prev)
			issuer := &fakeIssuer{answer: tt.answer}

			err := a.renew(context.Background(), issuer)

			require.Equal(t, 1, issuer.callCount())
			csr := issuer.csrs[0]
			require.NoError(t, csr.CheckSignature())
			require.Empty(t, csr.URIs, "the CSR names nothing: the server takes the name from mTLS")
			require.Empty(t, csr.DNSNames)
			require.Empty(t, csr.Subject.String())
			st := a.Status()
			require.Equal(t, tt.wantReachable, st.Server.Reachable)
			require.Equal(t, boolFloat(tt.wantReachable), metricValue(t, a.metrics.serverReachable))
			require.Zero(t, st.RenewalFailures, "renew leaves counting failures to renewLoop")

			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Same(t, prev, a.keys.cur.Load(), "a failed renewal must keep the current certificate")
				require.Zero(t, st.Renewals)
				require.Equal(t, 1.0, metricValue(t, a.metrics.renewals.WithLabelValues("failure")))
				require.Zero(t, metricValue(t, a.metrics.renewals.WithLabelValues("success")))
				require.Zero(t, metricValue(t, a.metrics.certExpiry))
				if strings.HasPrefix(tt.wantErr, "issue signing certificate: ") {
					require.NotEmpty(t, st.Server.LastError)
				} else {
					// LastError is about the call, which succeeded; only
					// the log and renewal_failures tell of a bad answer.
					require.Empty(t, st.Server.LastError)
				}
				return
			}

			require.NoError(t, err)
			require.Empty(t, st.Server.LastError)
			got := a.keys.cur.Load()
			require.NotSame(t, prev, got)
			require.Len(t, got.chain, 2)
			leaf := got.leaf()
			require.Len(t, leaf.URIs, 1)
			require.Equal(t, agentID.String(), leaf.URIs[0].String())
			require.Equal(t, elliptic.P256(), got.key.Curve)
			require.True(t, got.key.PublicKey.Equal(leaf.PublicKey), "installed key matches its certificate")
			require.True(t, got.key.PublicKey.Equal(csr.PublicKey), "installed key is the one sent in the CSR")
			require.NoError(t, leaf.CheckSignatureFrom(got.chain[1]))
			require.Equal(t, 1, st.Renewals)
			require.Equal(t, 1.0, metricValue(t, a.metrics.renewals.WithLabelValues("success")))
			require.Eventually(t, func() bool { return a.Status().RenewalError == "" }, 5*time.Second, time.Millisecond, "cleared by the success")
			require.Zero(t, metricValue(t, a.metrics.renewals.WithLabelValues("failure")))
			require.Equal(t, float64(leaf.NotAfter.Unix()), metricValue(t, a.metrics.certExpiry))
			require.Equal(t, 1.0, metricValue(t, a.metrics.certInfo.WithLabelValues(leaf.SerialNumber.Text(16), leaf.Issuer.String())))
			require.NotNil(t, st.SigningCertificate)
			require.Equal(t, leaf.SerialNumber.Text(16), st.SigningCertificate.Serial)
			require.Equal(t, t0.Add(150*time.Second), st.SigningCertificate.RenewAt)
		})
	}
}

func TestRenewUsesAFreshKeyEachTime(t *testing.T) {
	ca := newTestCA(t)
	a := newTestAgent(t, fixedClock(t0))
	issuer := &fakeIssuer{answer: certifies(ca, agentID, fixedClock(t0), 5*time.Minute)}

	seen := map[string]bool{}
	for range 3 {
		require.NoError(t, a.renew(context.Background(), issuer))
		got := a.keys.cur.Load()
		der, err := x509.MarshalPKIXPublicKey(got.key.Public())
		require.NoError(t, err)
		require.False(t, seen[string(der)], "key reused")
		seen[string(der)] = true
	}
	require.Equal(t, 3, a.Status().Renewals)
	require.Equal(t, 3.0, metricValue(t, a.metrics.renewals.WithLabelValues("success")))
}

// runLoop runs a.renewLoop until the test ends or stop is called, which
// waits for the loop to return.
func runLoop(t *testing.T, a *Agent, issuer certIssuer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.renewLoop(ctx, issuer) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(5 * time.Second):
				t.Fatal("renewLoop did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func (a *Agent) counts() (renewals, failures int, reachable bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.renewals, a.failures, a.reachable
}

func TestRenewLoopKeepsCertificateThroughFailures(t *testing.T) {
	ca := newTestCA(t)
	now := fixedClock(t0)
	tests := []struct {
		name          string
		held          bool // a valid certificate is held when the loop starts
		failing       answerFunc
		wantReachable bool // while failing
		wantLog       string
		wantLevel     zapcore.Level
	}{
		{
			name:          "server unavailable, certificate held",
			held:          true,
			failing:       fails(status.Error(codes.Unavailable, "connection refused")),
			wantReachable: false,
			wantLog:       "Signing certificate renewal failed; keeping the current certificate until it expires",
			wantLevel:     zapcore.WarnLevel,
		},
		{
			name:          "server unavailable, nothing held",
			held:          false,
			failing:       fails(status.Error(codes.Unavailable, "connection refused")),
			wantReachable: false,
			wantLog:       "No valid signing certificate: attestation is unavailable until renewal succeeds",
			wantLevel:     zapcore.ErrorLevel,
		},
		{
			name:          "server names another SPIFFE ID",
			held:          true,
			failing:       certifies(ca, otherID, now, time.Hour),
			wantReachable: true,
			wantLog:       "Signing certificate renewal failed; keeping the current certificate until it expires",
			wantLevel:     zapcore.WarnLevel,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			a := newTestAgent(t, now, zap.New(core))
			a.backoffBase, a.backoffMax = time.Millisecond, 4*time.Millisecond
			var held *signingCert
			if tt.held {
				// Past half life, not expired: renewal is due at once.
				held = &signingCert{key: newP256(t), chain: []*x509.Certificate{{NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Minute)}}}
				a.keys.cur.Store(held)
			}
			issuer := &fakeIssuer{answer: tt.failing}
			stop := runLoop(t, a, issuer)

			// Three calls mean at least two failures fully handled.
			require.Eventually(t, func() bool { return issuer.callCount() >= 3 }, 5*time.Second, time.Millisecond)
			renewals, failures, reachable := a.counts()
			require.Zero(t, renewals)
			require.GreaterOrEqual(t, failures, 2)
			require.Equal(t, tt.wantReachable, reachable)
			require.Same(t, held, a.keys.cur.Load(), "the held certificate stays in place")
			require.GreaterOrEqual(t, metricValue(t, a.metrics.renewals.WithLabelValues("failure")), 2.0)
			entries := logs.FilterMessage(tt.wantLog).All()
			require.GreaterOrEqual(t, len(entries), 2)
			require.Equal(t, tt.wantLevel, entries[0].Level)
			require.Contains(t, entries[0].ContextMap(), logRetryIn)
			if !tt.held {
				require.Zero(t, metricValue(t, a.metrics.certExpiry))
			}
			require.NotEmpty(t, a.Status().RenewalError, "the status says why renewals fail")

			// The server recovers.
			issuer.setAnswer(certifies(ca, agentID, now, time.Hour))
			require.Eventually(t, func() bool { r, _, _ := a.counts(); return r == 1 }, 5*time.Second, time.Millisecond)
			got := a.keys.cur.Load()
			require.NotSame(t, held, got)
			require.Equal(t, agentID.String(), got.leaf().URIs[0].String())
			_, ok := a.keys.current(t0)
			require.True(t, ok)
			_, _, reachable = a.counts()
			require.True(t, reachable)
			require.Equal(t, 1.0, metricValue(t, a.metrics.renewals.WithLabelValues("success")))

			// The new certificate is good for an hour of the frozen clock:
			// the loop now waits for its half life and calls no more.
			calls := issuer.callCount()
			stop()
			require.Equal(t, calls, issuer.callCount())
			require.Equal(t, 1, logs.FilterMessage("Signing certificate renewed").Len())
		})
	}
}

func TestRenewLoopRenewsAtHalfLife(t *testing.T) {
	// Real time with 2s certificates (x509 validity has whole seconds): the
	// loop renews once at start, then again at half life.
	ca := newTestCA(t)
	a := newTestAgent(t, nil)
	var (
		mu    sync.Mutex
		calls []time.Time
		certs []*x509.Certificate
	)
	issuer := &fakeIssuer{answer: func(_ context.Context, csr *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
		now := time.Now()
		chain, err := ca.sign(csr.PublicKey, []spiffeid.ID{agentID}, now.Truncate(time.Second), 2*time.Second)
		if err != nil {
			return nil, err
		}
		leaf, err := x509.ParseCertificate(chain[0])
		if err != nil {
			return nil, err
		}
		mu.Lock()
		calls = append(calls, now)
		certs = append(certs, leaf)
		mu.Unlock()
		return &serverv1.IssueSigningCertificateResponse{CertificateChain: chain}, nil
	}}
	stop := runLoop(t, a, issuer)
	require.Eventually(t, func() bool { return issuer.callCount() >= 2 }, 5*time.Second, 10*time.Millisecond)
	stop()

	mu.Lock()
	defer mu.Unlock()
	first := certs[0]
	half := first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) / 2)
	require.False(t, calls[1].Before(half), "renewed at %s, before half life %s", calls[1], half)
	require.True(t, calls[1].Before(first.NotAfter), "renewed at %s, after expiry %s", calls[1], first.NotAfter)
	require.NotEqual(t, certs[0].PublicKey, certs[1].PublicKey)
	renewals, failures, _ := a.counts()
	require.GreaterOrEqual(t, renewals, 2)
	require.Zero(t, failures)
}

func TestRenewLoopStopsDuringCall(t *testing.T) {
	a := newTestAgent(t, fixedClock(t0))
	a.backoffBase, a.backoffMax = time.Millisecond, time.Millisecond
	issuer := &fakeIssuer{answer: func(ctx context.Context, _ *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}}
	stop := runLoop(t, a, issuer)
	require.Eventually(t, func() bool { return issuer.callCount() == 1 }, 5*time.Second, time.Millisecond)
	stop()
	_, failures, _ := a.counts()
	require.Zero(t, failures, "a call cut short by shutdown is not a failure")
	require.Equal(t, 1, issuer.callCount())
}

func TestRenewLoopDoesNotSpinOnStaleCertificate(t *testing.T) {
	ca := newTestCA(t)
	a := newTestAgent(t, fixedClock(t0))
	// Valid, but issued as if by a server 30 minutes behind: past half life.
	issuer := &fakeIssuer{answer: certifies(ca, agentID, fixedClock(t0.Add(-30*time.Minute)), 40*time.Minute)}
	stop := runLoop(t, a, issuer)
	time.Sleep(200 * time.Millisecond)
	stop()
	require.LessOrEqual(t, issuer.callCount(), 3)
}

func TestCheckChainNeedsTheAgentID(t *testing.T) {
	// Before the first SVID arrives the agent has no ID: nothing matches.
	ca := newTestCA(t)
	a := newTestAgent(t, fixedClock(t0))
	a.id = spiffeid.ID{}
	key := newP256(t)
	_, err := a.checkChain(ca.issue(t, key.Public(), []spiffeid.ID{agentID}, t0, time.Hour), key)
	require.ErrorContains(t, err, "not the agent's")
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// FuzzCheckChain feeds checkChain server answers: it must never panic, and
// whatever it accepts certifies the agent's key for the agent's ID alone.
func FuzzCheckChain(f *testing.F) {
	ca := newTestCA(f)
	key := newP256(f)
	good := ca.issue(f, key.Public(), []spiffeid.ID{agentID}, t0, time.Hour)
	f.Add(good[0], good[1])
	foreign := ca.issue(f, key.Public(), []spiffeid.ID{otherID}, t0, time.Hour)
	f.Add(foreign[0], foreign[1])
	f.Add(good[0], []byte{})
	f.Add([]byte("garbage"), good[1])
	a := newTestAgent(f, fixedClock(t0))
	f.Fuzz(func(t *testing.T, leafDER, caDER []byte) {
		chain, err := a.checkChain([][]byte{leafDER, caDER}, key)
		if err != nil {
			require.Nil(t, chain)
			return
		}
		require.Len(t, chain, 2)
		leaf := chain[0]
		require.True(t, key.PublicKey.Equal(leaf.PublicKey))
		require.Len(t, leaf.URIs, 1)
		require.Equal(t, agentID.String(), leaf.URIs[0].String())
		require.NoError(t, leaf.CheckSignatureFrom(chain[1]))
	})
}

// A step the agent refuses for want of a certificate, or whose log wait
// runs out, is told what the agent's last call met: the server's own
// answer when it gave one (its Vault is down), not "is it reachable?".
func TestStepsAreToldWhatTheServerAnswered(t *testing.T) {
	sealed := serverfault.Errorf(codes.Unavailable, "key manager vault", "key manager vault: sealed; fix: unseal Vault")
	refused := status.Error(codes.Unavailable, "connection error: dial unix: connection refused")
	tests := []struct {
		name      string
		call      error // the last call's error; nil: none made
		noCert    []string
		notNoCert string
		wait      []string
		notWait   string
	}{
		{
			name:   "no call finished yet",
			noCert: []string{"no renewal has finished yet", "is hallmark-server reachable?"},
			wait:   []string{"slow"},
		},
		{
			name:      "the server answered: its Vault is sealed",
			call:      sealed,
			noCert:    []string{"hallmark-server answered its last renewal, but could not certify", "key manager vault: sealed; fix: unseal Vault"},
			notNoCert: "reachable?",
			wait:      []string{"hallmark-server answered the agent's last call with", "key manager vault: sealed"},
			notWait:   "reachable?",
		},
		{
			name:   "no server answered",
			call:   refused,
			noCert: []string{"is hallmark-server reachable?", "connection refused"},
			wait:   []string{"is hallmark-server reachable?", "connection refused"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, time.Now)
			if tt.call != nil {
				a.recordCall(tt.call)
				a.mu.Lock()
				a.renewErr = fmt.Errorf("issue signing certificate: %w", tt.call).Error()
				a.mu.Unlock()
			}
			noCert, wait := a.noCertCause(), a.serverCause()
			for _, want := range tt.noCert {
				require.Contains(t, noCert, want)
			}
			for _, want := range tt.wait {
				require.Contains(t, wait, want)
			}
			if tt.notNoCert != "" {
				require.NotContains(t, noCert, tt.notNoCert)
			}
			if tt.notWait != "" {
				require.NotContains(t, wait, tt.notWait)
			}
		})
	}
}
