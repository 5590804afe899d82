package server

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/stats"
)

// A connection is closed by its guard after more than maxRefusalsPerConn
// refused calls within refusalWindow, not before, and not for as many
// spread over longer; another connection's count is its own, and a
// closed connection is forgotten. Accepted TCP connections get gRPC's
// TCP_USER_TIMEOUT, which gRPC sets only on a *net.TCPConn.
func TestConnGuardClosesAfterRefusals(t *testing.T) {
	now := time.Unix(1700000000, 0)
	g := connGuard{now: func() time.Time { return now }}
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
	open := func(c net.Conn) bool {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}

	raw1, ok := s1.(*guardedConn).Conn.(*net.TCPConn)
	require.True(t, ok)
	sc, err := raw1.SyscallConn()
	require.NoError(t, err)
	var ms int
	require.NoError(t, sc.Control(func(fd uintptr) { ms, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }))
	require.NoError(t, err)
	require.Equal(t, int(tcpUserTimeout.Milliseconds()), ms)

	// Refusals spread over more than a window: never closed.
	for range 3 {
		for range maxRefusalsPerConn {
			require.False(t, g.refused(s1.LocalAddr(), s1.RemoteAddr()))
		}
		now = now.Add(refusalWindow)
	}
	require.True(t, open(c1))

	for range maxRefusalsPerConn {
		require.False(t, g.refused(s1.LocalAddr(), s1.RemoteAddr()))
	}
	require.False(t, g.refused(s2.LocalAddr(), s2.RemoteAddr()), "another connection counts its own")
	require.True(t, open(c1), "open after %d refusals in a window", maxRefusalsPerConn)
	require.True(t, g.refused(s1.LocalAddr(), s1.RemoteAddr()), "one more: closed")
	require.NoError(t, c1.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = c1.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	g.mu.Lock()
	require.NotContains(t, g.conns, connKey(s1.LocalAddr(), s1.RemoteAddr()), "forgotten once closed")
	require.Contains(t, g.conns, connKey(s2.LocalAddr(), s2.RemoteAddr()))
	g.mu.Unlock()
	require.True(t, open(c2), "the other connection is open")
	other := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 9), Port: 1}
	require.False(t, g.refused(s2.LocalAddr(), other), "an address it does not know")
	require.False(t, g.refused(other, s2.RemoteAddr()), "the same remote address at another local one")
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
