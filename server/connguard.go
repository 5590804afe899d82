package server

import (
	"context"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/stats"
)

// maxRefusalsPerConn is how many calls the tap refuses on one connection
// in a window of refusalWindow before it closes the connection. gRPC
// (v1.85) does not end the context of a call the tap refuses: one that
// came with a grpc-timeout keeps a timer, and about 300 bytes, until that
// timeout passes (grpc-go #2976 again) or the connection's context ends
// (connContexts). A caller refused call after call, which no client that
// honours its answers is, would otherwise grow the server's memory for as
// long as its connection lasts (max_connection_age), at some 13,000
// refusals a second. A client refused this often reconnects, and is
// refused there; one refused fewer than 100 times a minute (an agent
// newer than the server, asking now and then for a method this one
// lacks) is not.
const (
	maxRefusalsPerConn = 100
	refusalWindow      = time.Minute
)

// tcpUserTimeout is the agent API's connections' TCP_USER_TIMEOUT, how
// long data may stay unacknowledged before the kernel drops the
// connection: gRPC sets it to its keepalive timeout on a *net.TCPConn,
// which a guarded connection is not, so the guard sets it instead.
const tcpUserTimeout = 20 * time.Second

// connGuard knows the agent API's open connections by their two
// addresses (what gRPC gives a call as its peer), so that the tap can
// close one; its zero value is ready to use.
type connGuard struct {
	now   func() time.Time // nil: time.Now
	mu    sync.Mutex
	conns map[string]*guardedConn
}

// guardedConn is an accepted connection, counted by its guard while open.
type guardedConn struct {
	net.Conn
	g    *connGuard
	key  string
	once sync.Once
	// refusals in the window from since; guarded by g.mu.
	refusals int
	since    time.Time
}

// connKey names a connection by its local and remote addresses: on a
// host with several addresses, one remote address may reach two.
func connKey(local, remote net.Addr) string {
	return local.String() + "|" + remote.String()
}

func (c *guardedConn) Close() error {
	c.once.Do(func() {
		c.g.mu.Lock()
		defer c.g.mu.Unlock()
		if c.g.conns[c.key] == c {
			delete(c.g.conns, c.key)
		}
	})
	return c.Conn.Close()
}

// listener returns ln, its connections known to g.
func (g *connGuard) listener(ln net.Listener) net.Listener { return guardedListener{ln, g} }

type guardedListener struct {
	net.Listener
	g *connGuard
}

func (l guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		// Best effort, as gRPC's: without it a dead peer's connection
		// lasts until TCP gives up (some 15 minutes), not a refusal.
		setTCPUserTimeout(tc, tcpUserTimeout) //nolint:errcheck // see above
	}
	gc := &guardedConn{Conn: c, g: l.g, key: connKey(c.LocalAddr(), c.RemoteAddr())}
	l.g.mu.Lock()
	defer l.g.mu.Unlock()
	if l.g.conns == nil {
		l.g.conns = map[string]*guardedConn{}
	}
	l.g.conns[gc.key] = gc
	return gc, nil
}

// refused counts a call refused on the connection between local and
// remote, and closes the connection once it has had more than
// maxRefusalsPerConn in refusalWindow. It reports whether it closed it.
func (g *connGuard) refused(local, remote net.Addr) bool {
	if local == nil || remote == nil {
		return false
	}
	now := time.Now
	if g.now != nil {
		now = g.now
	}
	g.mu.Lock()
	c := g.conns[connKey(local, remote)]
	if c == nil {
		g.mu.Unlock()
		return false
	}
	if t := now(); t.Sub(c.since) >= refusalWindow {
		c.refusals, c.since = 0, t
	}
	c.refusals++
	over := c.refusals > maxRefusalsPerConn
	g.mu.Unlock()
	if over {
		c.Close() //nolint:errcheck // gRPC's reader fails on it and closes the transport
	}
	return over
}

// connContexts is a stats.Handler that gives each connection a context
// of its own, ended when the connection ends: what gRPC leaves of a call
// refused by the tap hangs from it (maxRefusalsPerConn).
type connContexts struct{}

type connCancelKey struct{}

func (connContexts) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	return context.WithValue(ctx, connCancelKey{}, cancel)
}

func (connContexts) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		if cancel, ok := ctx.Value(connCancelKey{}).(context.CancelFunc); ok {
			cancel()
		}
	}
}

func (connContexts) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (connContexts) HandleRPC(context.Context, stats.RPCStats) {}

// setTCPUserTimeout sets c's TCP_USER_TIMEOUT, as gRPC would have.
func setTCPUserTimeout(c *net.TCPConn, d time.Duration) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return err
	}
	return serr
}
