package agent

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/limits"
)

// An agent talks to every replica of hallmark-server through one gRPC
// ClientConn balanced with round_robin: each call goes to the next
// replica with a ready connection, so the load spreads and a replica that
// is down is skipped until gRPC's reconnection (jittered backoff) finds it
// back. A call that fails with Unavailable on one replica is retried by
// gRPC on the next (retryPolicy below) before the agent's own loops see
// the error; the log submitter then still retries promptly while a
// replica is connected (failoverBackoff) before it backs off. The server
// deduplicates log submissions and certifies a CSR as often as it is
// asked, so every AgentService call can be sent twice.

// serverReady reports whether conn has a replica connected.
func serverReady(conn *grpc.ClientConn) func() bool {
	return func() bool { return conn.GetState() == connectivity.Ready }
}

// serversScheme is the resolver scheme of a configured list of servers.
const serversScheme = "hallmark-servers"

// retryBufferSize bounds the bytes of a call that gRPC keeps to send it
// again on another replica (its default of 256 KiB is less than a batch
// of envelopes can weigh).
const retryBufferSize = limits.MaxCallBytes

// servers are the configured server addresses.
func (c *Config) servers() []string {
	if len(c.ServerAddresses) > 0 {
		return c.ServerAddresses
	}
	if c.ServerAddress != "" {
		return []string{c.ServerAddress}
	}
	return nil
}

// validateServers checks that exactly one of ServerAddress and
// ServerAddresses is set, each address a host:port.
func (c *Config) validateServers() error {
	switch {
	case c.ServerAddress != "" && len(c.ServerAddresses) > 0:
		return errors.New("agent.server_address and agent.server_addresses are both set: use one")
	case c.ServerAddress != "":
		if err := checkHostPort(c.ServerAddress); err != nil {
			return fmt.Errorf("agent.server_address: %w", err)
		}
		return nil
	case len(c.ServerAddresses) == 0:
		return errors.New("agent.server_address (one host:port) or agent.server_addresses (a list) is required")
	}
	seen := make(map[string]bool, len(c.ServerAddresses))
	for i, addr := range c.ServerAddresses {
		if err := checkHostPort(addr); err != nil {
			return fmt.Errorf("agent.server_addresses[%d]: %w", i, err)
		}
		if seen[addr] {
			return fmt.Errorf("agent.server_addresses[%d]: %q is listed twice", i, addr)
		}
		seen[addr] = true
	}
	return nil
}

// checkHostPort accepts host:port with a host name or IP address (IPv6
// in brackets) and a port.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	switch {
	case host == "":
		return fmt.Errorf("%q has no host", addr)
	case port == "":
		return fmt.Errorf("%q has no port", addr)
	case strings.ContainsAny(host, "/@ \t\r\n") || strings.ContainsAny(port, "/@ \t\r\n"):
		return fmt.Errorf("%q is not host:port (no scheme or path)", addr)
	}
	return nil
}

// serviceConfig balances calls with round_robin and retries a call that a
// replica could not take (Unavailable) on another, after a jittered pause
// of at most 100 ms, 200 ms, ... 1 s: gRPC draws each from [0, bound].
// maxAttempts is filled in: one more than the number of replicas.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "hallmark.server.v1.AgentService"}],
    "retryPolicy": {
      "maxAttempts": %d,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// dialServers returns one ClientConn over every address in addrs: a list
// through a static resolver, a single host:port through gRPC's dns
// resolver, which spreads over every address the name resolves to and
// resolves it again when a connection fails. creds secure each
// connection; the agent's authorize the server's SPIFFE ID.
func dialServers(addrs []string, creds credentials.TransportCredentials, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no server address")
	}
	// gRPC caps attempts at 5 however many replicas there are.
	attempts := min(len(addrs)+1, 5)
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(fmt.Sprintf(serviceConfig, attempts)),
		// Answers to a full SubmitEntries call stay far below the
		// call's own limit; take up to that.
		grpc.WithDefaultCallOptions(grpc.MaxRetryRPCBufferSize(retryBufferSize), grpc.MaxCallRecvMsgSize(limits.MaxCallBytes)),
		grpc.WithConnectParams(grpc.ConnectParams{
			// Reconnect within seconds of a server's return, not
			// gRPC's default of up to two minutes.
			Backoff:           grpcbackoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// A replica that vanishes without closing its connections (a
		// partition, a powered-off host) is noticed within 40 s, and the
		// watch stream with it; the server permits these pings.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	}, opts...)
	if len(addrs) == 1 {
		return grpc.NewClient("dns:///"+addrs[0], opts...)
	}
	r := manual.NewBuilderWithScheme(serversScheme)
	state := resolver.State{Endpoints: make([]resolver.Endpoint, len(addrs))}
	for i, addr := range addrs {
		state.Endpoints[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}}
	}
	r.InitialState(state)
	return grpc.NewClient(serversScheme+":///hallmark-server", append(opts, grpc.WithResolvers(r))...)
}

// promptRetry bounds the pause before a call that failed with Unavailable
// is sent again while another replica is connected: gRPC routes it there.
const promptRetry = 100 * time.Millisecond

// failoverBackoff is the backoff of a loop calling the servers. After a
// failure with Unavailable while the connection still has a replica
// ready (gRPC's retries having run out on the failing ones), it retries
// after a jittered pause of at most promptRetry, up to once per replica
// in a row; otherwise, and after those, it backs off as b does.
type failoverBackoff struct {
	b        *backoff
	ready    func() bool // a replica is connected; nil: never known
	replicas int
	prompt   int // prompt retries since the last success
}

func (a *Agent) newFailoverBackoff() *failoverBackoff {
	return &failoverBackoff{b: newBackoff(a.backoffBase, a.backoffMax), ready: a.serverReady, replicas: len(a.cfg.servers())}
}

func (f *failoverBackoff) delay(err error) time.Duration {
	if status.Code(err) == codes.Unavailable && f.ready != nil && f.prompt < f.replicas && f.ready() {
		f.prompt++
		return promptRetry/2 + time.Duration(f.b.rand()*float64(promptRetry/2))
	}
	return f.b.delay()
}

func (f *failoverBackoff) reset() {
	f.prompt = 0
	f.b.reset()
}
