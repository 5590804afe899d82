// Package spire is the "spire" workload attestor: it asks the local SPIRE
// agent's Delegated Identity API which SPIFFE IDs a caller's PID holds.
// SPIRE attests the PID with its own workload attestors (unix, docker, k8s)
// against its registration entries, so Hallmark's policy can name the same
// SPIFFE IDs as everything else in the trust domain.
//
// The SPIRE agent must list hallmark-agent's SPIFFE ID in
// authorized_delegates and serve admin_socket_path.
package spire

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hallmark-dev/hallmark/internal/config"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

// DefaultTimeout bounds one Delegated Identity API exchange.
const DefaultTimeout = 5 * time.Second

// Config is the workload_attestor "spire" block.
type Config struct {
	// AdminSocket is the SPIRE agent's admin API, unix:///path.
	AdminSocket string `hcl:"admin_socket"`
	// Timeout bounds each call; default 5s.
	Timeout string `hcl:"timeout,optional"`

	timeout time.Duration
}

// ParseConfig decodes the plugin block; unknown keys are errors.
func ParseConfig(body hcl.Body) (Config, error) {
	var c Config
	if err := config.DecodeBlock(body, &c); err != nil {
		return Config{}, fmt.Errorf("spire: %w", err)
	}
	if u, err := url.Parse(c.AdminSocket); err != nil || !strings.HasPrefix(c.AdminSocket, "unix://") || u.Scheme != "unix" || u.Host != "" || !path.IsAbs(u.Path) {
		return Config{}, fmt.Errorf("spire: admin_socket %q must be unix:///ABSOLUTE/PATH", c.AdminSocket)
	}
	var err error
	if c.timeout, err = config.Duration("timeout", c.Timeout, DefaultTimeout); err != nil {
		return Config{}, fmt.Errorf("spire: %w", err)
	}
	return c, nil
}

// Attestor is the spire workload attestor.
type Attestor struct {
	cfg    Config
	conn   *grpc.ClientConn
	client delegatedidentityv1.DelegatedIdentityClient
}

// New connects (lazily) to the SPIRE agent's admin socket.
func New(cfg Config) (*Attestor, error) {
	if cfg.timeout == 0 {
		var err error
		if cfg.timeout, err = config.Duration("timeout", cfg.Timeout, DefaultTimeout); err != nil {
			return nil, fmt.Errorf("spire: %w", err)
		}
	}
	conn, err := grpc.NewClient(cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	return &Attestor{cfg: cfg, conn: conn, client: delegatedidentityv1.NewDelegatedIdentityClient(conn)}, nil
}

// Close closes the connection to the SPIRE agent.
func (a *Attestor) Close() error { return a.conn.Close() }

// Attest returns the SPIFFE IDs SPIRE issues to the caller's PID (none
// when no registration entry matches it). The SVIDs' private keys that
// the API returns alongside are wiped at once and never used.
func (a *Attestor) Attest(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the subscription
	res, _, err := a.subscribe(ctx, c)
	return res, err
}

// AttestWatch is Attest that keeps SPIRE's subscription open until ctx
// ends: changed is closed as soon as SPIRE sends anything more (its
// registration entries for the caller changed, or the SVIDs rotated) or
// the subscription ends, that is as soon as the answer may no longer
// hold. Until then the answer stands as SPIRE's own.
func (a *Attestor) AttestWatch(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, <-chan struct{}, error) {
	ctx, cancel := context.WithCancel(ctx)
	res, stream, err := a.subscribe(ctx, c)
	if err != nil {
		cancel()
		return res, nil, err
	}
	changed := make(chan struct{})
	go func() {
		defer cancel()
		defer close(changed)
		if resp, err := stream.Recv(); err == nil {
			wipe(resp)
		}
	}()
	return res, changed, nil
}

// subscribe asks SPIRE for the caller's SVIDs and reads the first answer,
// within the timeout; the subscription lives as long as ctx.
func (a *Attestor) subscribe(parent context.Context, c workloadattestor.Caller) (workloadattestor.Result, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsClient, error) {
	// Our own timer, not a context deadline: a deadline also travels to
	// the server, which may end the stream first with an error that hides
	// the timeout.
	ctx, cancel := context.WithCancel(parent)
	var timedOut atomic.Bool
	timer := time.AfterFunc(a.cfg.timeout, func() { timedOut.Store(true); cancel() })
	defer timer.Stop()
	fail := func(err error) (workloadattestor.Result, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsClient, error) {
		cancel()
		if timedOut.Load() {
			return workloadattestor.Result{}, nil, fmt.Errorf("spire: no answer from the delegated identity API at %s within %s", a.cfg.AdminSocket, a.cfg.timeout)
		}
		return workloadattestor.Result{}, nil, fmt.Errorf("spire: delegated identity API at %s (is hallmark-agent in the SPIRE agent's authorized_delegates?): %w", a.cfg.AdminSocket, err)
	}
	stream, err := a.client.SubscribeToX509SVIDs(ctx, &delegatedidentityv1.SubscribeToX509SVIDsRequest{Pid: c.PID})
	if err != nil {
		return fail(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fail(err)
	}
	if !timer.Stop() {
		return fail(errors.New("timed out"))
	}
	wipe(resp)
	var res workloadattestor.Result
	for _, s := range resp.GetX509Svids() {
		pb := s.GetX509Svid().GetId()
		if pb == nil {
			continue
		}
		td, err := spiffeid.TrustDomainFromString(pb.GetTrustDomain())
		if err != nil {
			continue // not a SPIFFE ID; never match policy on it
		}
		id, err := spiffeid.FromPath(td, pb.GetPath())
		if err != nil {
			continue
		}
		res.SPIFFEIDs = append(res.SPIFFEIDs, id.String())
	}
	// The subscription goes on until parent ends.
	context.AfterFunc(parent, cancel)
	return res, stream, nil
}

// wipe clears the SVIDs' private keys that come with every answer.
func wipe(resp *delegatedidentityv1.SubscribeToX509SVIDsResponse) {
	for _, s := range resp.GetX509Svids() {
		clear(s.X509SvidKey)
		s.X509SvidKey = nil
	}
}
