package server

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/stats"
)

// A connection is closed by its guard after more than maxRefusalsPerConn
// refused calls, not before; another connection's count is its own, and
// a closed connection is forgotten.
func TestConnGuardClosesAfterRefusals(t *testing.T) {
	var g connGuard
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := g.listener(raw)
	defer ln.Close()
	dial := func() (client net.Conn, served net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return c, s
	}
	c1, s1 := dial()
	c2, s2 := dial()
	for range maxRefusalsPerConn {
		require.False(t, g.refused(s1.RemoteAddr()))
	}
	require.False(t, g.refused(s2.RemoteAddr()), "another connection counts its own")
	require.NoError(t, c1.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = c1.Read(make([]byte, 1))
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), "open after %d refusals: %v", maxRefusalsPerConn, err)

	require.True(t, g.refused(s1.RemoteAddr()), "one more: closed")
	require.NoError(t, c1.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = c1.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	g.mu.Lock()
	require.NotContains(t, g.conns, s1.RemoteAddr().String(), "forgotten once closed")
	require.Contains(t, g.conns, s2.RemoteAddr().String())
	g.mu.Unlock()
	_, err = c2.Write([]byte("x"))
	require.NoError(t, err, "the other connection is open")
	require.False(t, g.refused(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 9), Port: 1}), "an address it does not know")
}

// connContexts ends a connection's context when gRPC reports its end.
func TestConnContextsEndWithTheConnection(t *testing.T) {
	h := connContexts{}
	ctx := h.TagConn(context.Background(), &stats.ConnTagInfo{})
	child, cancel := context.WithTimeout(ctx, time.Hour) // what a refused call leaves
	defer cancel()
	h.HandleConn(ctx, &stats.ConnBegin{})
	require.NoError(t, child.Err())
	h.HandleConn(ctx, &stats.ConnEnd{})
	require.ErrorIs(t, child.Err(), context.Canceled)
}
