package server

import "sync"

// maxCallsPerConn bounds the unary calls under way on one connection. An
// agent makes a few at a time on its connection to a server (a batch of
// timestamps, a submission, a renewal, a policy fetch); a call beyond the
// bound is refused at once (ResourceExhausted) rather than queued, so
// that a flood of expensive calls holds at most this many of the server's
// goroutines per connection, and no request waits in memory for a turn.
// Before, one connection could keep any number under way: each Timestamp
// call of 500 one-byte signatures costs 88 ms of CPU, and 64 of them at
// once made every other agent's timestamp take 455 ms (an attacker
// review). The bound is per connection, not per SPIFFE ID: on Kubernetes
// every agent may hold the same ID (deploy/spire/register-k8s.sh), and a
// bound per ID would be one for the whole cluster.
const maxCallsPerConn = 16

// maxStreamsPerConn bounds the calls of any kind open on one connection
// (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS): the unary calls above, an
// agent's watch of signing authorities and a health check or watch, with
// room to spare. gRPC reads a call's request before any interceptor runs,
// up to maxRecvMsgSize, so without this bound one connection could open
// any number of calls and hold a request's worth of memory in each; with
// it, a stream beyond the bound is reset (REFUSED_STREAM) as its headers
// arrive. A gRPC client that honours the setting, as every agent does,
// waits for a stream instead.
const maxStreamsPerConn = maxCallsPerConn + 4

// maxHeaderListBytes bounds a call's headers (gRPC's default is 16 MiB):
// an agent's are a few hundred bytes. A call over it is reset.
const maxHeaderListBytes = 16 << 10

// maxOutsiderCalls bounds the calls of one SPIFFE ID that is not an
// agent whose requests are being read, over all its connections. Such a
// caller may call only health checks, whose requests are a few bytes, but
// gRPC reads any request up to maxRecvMsgSize before a handler sees it,
// and any workload SPIRE gives an SVID (a build step included) may open
// connections: with no bound per ID, one could make the server hold 32
// MiB per stream on as many connections as it opens. A call beyond the
// bound is refused with ResourceExhausted as its headers arrive. A call
// holds its place until its request is read (or it ends): a health watch
// kept open holds none.
const maxOutsiderCalls = 4

// callLimit counts calls under way per key (a connection's remote
// address, or a caller's SPIFFE ID); its zero value is ready to use.
type callLimit struct {
	mu   sync.Mutex
	open map[string]int
}

// take counts a call for key, unless limit are under way already; the
// returned func gives its place back, once.
func (l *callLimit) take(key string, limit int) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key] >= limit {
		return nil, false
	}
	if l.open == nil {
		l.open = map[string]int{}
	}
	l.open[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.open[key]--; l.open[key] == 0 {
				delete(l.open, key)
			}
		})
	}, true
}
