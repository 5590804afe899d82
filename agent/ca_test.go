package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

var (
	agentID  = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-1")
	otherID  = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-2")
	serverID = spiffeid.RequireFromString("spiffe://example.org/hallmark/server")
)

// newTestAgent returns an agent whose SVID names agentID, with the clock
// now (time.Now when nil) and logging to log (none when nil).
func newTestAgent(t testing.TB, now func() time.Time, log ...*zap.Logger) *Agent {
	t.Helper()
	cfg := Config{
		ServerAddress:   "hallmark.test:8443",
		ServerID:        serverID,
		WorkloadAPIAddr: "unix:///nonexistent/api.sock",
		Now:             now,
	}
	if len(log) > 0 {
		cfg.Log = log[0]
	}
	a, err := New(cfg)
	require.NoError(t, err)
	a.id = agentID
	return a
}

// testCA is a throwaway CA standing in for the server's key manager.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

var testSerial atomic.Int64

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key := newP256(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{key: key, cert: cert}
}

// issue returns the DER chain [leaf, ca] certifying pub for uris from
// notBefore for ttl.
func (ca *testCA) issue(t testing.TB, pub crypto.PublicKey, uris []spiffeid.ID, notBefore time.Time, ttl time.Duration) [][]byte {
	t.Helper()
	chain, err := ca.sign(pub, uris, notBefore, ttl)
	require.NoError(t, err)
	return chain
}

// sign is issue for goroutines other than the test's.
func (ca *testCA) sign(pub crypto.PublicKey, uris []spiffeid.ID, notBefore time.Time, ttl time.Duration) ([][]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	for _, id := range uris {
		tmpl.URIs = append(tmpl.URIs, id.URL())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return [][]byte{der, ca.cert.Raw}, nil
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return key
}

// answerFunc answers one IssueSigningCertificate call for csr.
type answerFunc func(ctx context.Context, csr *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error)

// fakeIssuer is a hand-written certIssuer whose answer a test can change.
type fakeIssuer struct {
	mu     sync.Mutex
	answer answerFunc
	calls  int
	csrs   []*x509.CertificateRequest
}

func (f *fakeIssuer) IssueSigningCertificate(ctx context.Context, in *serverv1.IssueSigningCertificateRequest, _ ...grpc.CallOption) (*serverv1.IssueSigningCertificateResponse, error) {
	csr, err := x509.ParseCertificateRequest(in.GetCsr())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.calls++
	f.csrs = append(f.csrs, csr)
	answer := f.answer
	f.mu.Unlock()
	return answer(ctx, csr)
}

func (f *fakeIssuer) setAnswer(a answerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = a
}

func (f *fakeIssuer) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// certifies answers like a good server: the CSR's key, named id, from the
// time now returns, for ttl.
func certifies(ca *testCA, id spiffeid.ID, now func() time.Time, ttl time.Duration) answerFunc {
	return func(_ context.Context, csr *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
		chain, err := ca.sign(csr.PublicKey, []spiffeid.ID{id}, now(), ttl)
		if err != nil {
			return nil, err
		}
		return &serverv1.IssueSigningCertificateResponse{CertificateChain: chain}, nil
	}
}

func fails(err error) answerFunc {
	return func(context.Context, *x509.CertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
		return nil, err
	}
}

// fixedClock is a clock that stands still.
func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// metricValue reads a counter or a gauge. (prometheus/testutil would need
// a module that go.mod does not list.)
func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	require.NoError(t, m.Write(&pb))
	if pb.Counter != nil {
		return pb.GetCounter().GetValue()
	}
	return pb.GetGauge().GetValue()
}
