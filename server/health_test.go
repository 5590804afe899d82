package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

// Must show: /healthz answers while the server runs; /readyz only once it
// holds its X509-SVID and key manager (the probes deploy/ points at).
func TestHealthEndpoints(t *testing.T) {
	s := &Server{cfg: Config{TrustDomain: exampleTD}, log: zap.NewNop(), metrics: newMetrics()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serveHealth(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}

	code, body := get("/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	code, body = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "not ready")

	s.ready.Store(true)
	code, body = get("/readyz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)

	// A store that stops answering makes the server not ready; it is
	// ready again once the store answers.
	st := &pingStore{Store: openStore(t, filepath.Join(t.TempDir(), "hallmark.db"))}
	s.tlog = &TransparencyLog{store: st}
	code, _ = get("/readyz")
	require.Equal(t, http.StatusOK, code)
	st.down.Store(true)
	code, body = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "the store does not answer")
	st.down.Store(false)
	code, _ = get("/readyz")
	require.Equal(t, http.StatusOK, code)
}

// pingStore is a Store whose Ping can be made to fail.
type pingStore struct {
	Store
	down atomic.Bool
}

func (p *pingStore) Ping(ctx context.Context) error {
	if p.down.Load() {
		return errors.New("connection refused")
	}
	return p.Store.Ping(ctx)
}
