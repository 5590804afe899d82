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
// command ran, and keeps what SPIRE answered in pid mode for the
// connection, so the attestation does not wait for SPIRE's workload
// attestation (tens of milliseconds; make bench, figure "fresh"). A
// longer command holds no connection past it (the agent counts open
// connections per uid, agent.LocalLimits), and in pid mode SPIRE then
// attests it again at its end, as it did before early identification.
const EarlyKeep = 5 * time.Second

// early is a connection to the agent that asked it, while the step's
// command runs, to identify this process.
type early struct {
	done    chan struct{}      // closed when the identification, and the wait after it, ended
	cancel  context.CancelFunc // ends the dial, the identification and the wait
	release context.CancelFunc // ends the wait only (take)

	mu     sync.Mutex
	client *agentclient.Client // nil until connected, and once failed, closed or taken
	closed bool                // no connection is to be kept from now on
	stop   *time.Timer
}

// identifyEarly connects to the agent at socket and asks it to identify
// this process, in the background, keeping the connection for keep.
func identifyEarly(ctx context.Context, socket string, keep time.Duration) *early {
	ctx, cancel := context.WithCancel(ctx)
	held, release := context.WithCancel(ctx)
	e := &early{done: make(chan struct{}), cancel: cancel, release: release}
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
			return
		}
		// Until taken, the agent sends nothing on the connection but a
		// GOAWAY (it stops, or closes idle connections) or its end; it
		// would wait 5 s for the answer to the PING that comes with a
		// GOAWAY before it stops, so the connection is closed at once.
		if c.AwaitAgent(held) == nil {
			e.close()
		}
	}()
	return e
}

// take waits for the identification and returns its connection if it is
// still open and idle, else nil; either way it is the caller's now. The
// command has ended: the connection is wanted now, so from here on no
// timer closes it, not even while the agent is still identifying.
func (e *early) take(ctx context.Context) *agentclient.Client {
	e.stop.Stop()
	e.release()
	select {
	case <-e.done:
	case <-ctx.Done():
		e.close()
		return nil
	}
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

// close closes the connection unless it was taken, and ends a dial or
// identification under way.
func (e *early) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	e.cancel()
	if e.client != nil {
		e.client.Close()
		e.client = nil
	}
}
