package agent

import (
	"context"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

// httpGet returns the status code and body of GET url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// Must show: /healthz answers while the agent runs; /readyz only while it
// holds a valid signing certificate (the probes deploy/ points at).
func TestHealthEndpoints(t *testing.T) {
	a := newTestAgent(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.serveHealth(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	base := "http://" + ln.Addr().String()

	code, body := httpGet(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	code, body = httpGet(t, base+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "no valid signing certificate")

	ca := newTestCA(t)
	key := newP256(t)
	var chain []*x509.Certificate
	for _, der := range ca.issue(t, key.Public(), []spiffeid.ID{agentID}, time.Now().Add(-time.Minute), time.Hour) {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		chain = append(chain, c)
	}
	a.keys.cur.Store(&signingCert{key: key, chain: chain, received: time.Now()})
	code, body = httpGet(t, base+"/readyz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)
	code, _ = httpGet(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code)
}
