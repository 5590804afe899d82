package server

import (
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/stats"
)

// maxRefusalsPerConn is how many calls the tap refuses on one connection
// before it closes the connection. gRPC (v1.85) does not end the context
// of a call the tap refuses: one that came with a grpc-timeout keeps a
// timer, and about 300 bytes, until that timeout passes (grpc-go #2976
// again) or the connection's context ends (connContexts). A caller that
// is refused call after call, which no client that honours its answers
// is, would otherwise grow the server's memory for as long as its
// connection lasts (max_connection_age), at some 13,000 refusals a
// second. A client refused this often reconnects, and is refused there.
const maxRefusalsPerConn = 100

// connGuard knows the agent API's open connections by their remote
// address (what gRPC gives a call as its peer), so that the tap can close
// one; its zero value is ready to use.
type connGuard struct {
	mu    sync.Mutex
	conns map[string]*guardedConn
}

// guardedConn is an accepted connection, counted by its guard while open.
type guardedConn struct {
	net.Conn
	g        *connGuard
	key      string
	refusals int // guarded by g.mu
	once     sync.Once
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
	gc := &guardedConn{Conn: c, g: l.g, key: c.RemoteAddr().String()}
	l.g.mu.Lock()
	defer l.g.mu.Unlock()
	if l.g.conns == nil {
		l.g.conns = map[string]*guardedConn{}
	}
	l.g.conns[gc.key] = gc
	return gc, nil
}

// refused counts a call refused on the connection from addr, and closes
// the connection once it has had more than maxRefusalsPerConn. It reports
// whether it closed it.
func (g *connGuard) refused(addr net.Addr) bool {
	if addr == nil {
		return false
	}
	g.mu.Lock()
	c := g.conns[addr.String()]
	if c == nil {
		g.mu.Unlock()
		return false
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
