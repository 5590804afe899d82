package attestcmd

import (
	"context"
	"sync"
	"time"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
)

// EarlyKeep is how long after the step's command starts the connection
// made for early identification stays open. A command that ends sooner
// finds it ready: the agent has identified this process while the
// command ran, and keeps what SPIRE answered for the connection, so the
// attestation does not wait for SPIRE's workload attestation (tens of
// milliseconds in its default pid mode; make bench, figure "fresh").
// A longer command pays that wait at its end, where it weighs less than
// EarlyKeep's own length, and holds no connection meanwhile: the agent
// counts open connections per uid (agent.LocalLimits).
const EarlyKeep = 5 * time.Second

// early is a connection to the agent that asked it, while the step's
// command runs, to identify this process.
type early struct {
	done chan struct{} // closed when the identification ended

	mu     sync.Mutex
	client *agentclient.Client // nil until connected, and once failed, closed or taken
	closed bool                // no connection is to be kept from now on
	stop   *time.Timer
}

// identifyEarly connects to the agent at socket and asks it to identify
// this process, in the background, keeping the connection for keep.
func identifyEarly(ctx context.Context, socket string, keep time.Duration) *early {
	e := &early{done: make(chan struct{})}
	e.stop = time.AfterFunc(keep, e.close)
	go func() {
		defer close(e.done)
		c, err := agentclient.Dial(ctx, socket)
		if err != nil {
			return // the attestation dials again, and reports why
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.client = c
		e.mu.Unlock()
		if err := c.Identify(ctx); err != nil {
			e.close() // a refusal here is the attestation's to report
		}
	}()
	return e
}

// take waits for the identification and returns its connection if it is
// still open and idle, else nil; either way it is the caller's now.
func (e *early) take(ctx context.Context) *agentclient.Client {
	select {
	case <-e.done:
	case <-ctx.Done():
		e.close()
		return nil
	}
	e.stop.Stop()
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.client
	e.client, e.closed = nil, true
	if c != nil && !c.Idle() {
		c.Close()
		return nil
	}
	return c
}

// close closes the connection unless it was taken.
func (e *early) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	if e.client != nil {
		e.client.Close()
		e.client = nil
	}
}
