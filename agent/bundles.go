package agent

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// GetBundle returns an attestation's bundle from the outbox, complete with
// its log entry once logged; with wait it blocks until then. Bundles are
// public once logged, so any identified local caller holding the (random)
// invocation ID may fetch one.
func (api *localAPI) GetBundle(ctx context.Context, req *agentv1.GetBundleRequest) (*agentv1.GetBundleResponse, error) {
	c, r := kernelCaller(ctx)
	if r == nil {
		r = api.identify(ctx, c)
	}
	if r != nil {
		return nil, status.Error(r.code, r.reason)
	}
	ob := api.a.outbox
	if ob == nil {
		return nil, status.Error(codes.FailedPrecondition, "this agent keeps no outbox (no data_dir)")
	}
	it, ok, err := ob.Get(req.GetInvocationId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no attestation %q on this agent (logged bundles are kept 24h)", req.GetInvocationId())
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read the attestation from the outbox: %v", err)
	}
	if req.GetWait() && it.State == outbox.Pending {
		// Until the caller's deadline, or until the agent stops: it
		// submits nothing more then, and a wait must not hold its stop.
		waitCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-api.stopping:
				cancel()
			case <-waitCtx.Done():
			}
		}()
		var err error
		if it, err = ob.Wait(waitCtx, it.ID); err != nil {
			select {
			case <-api.stopping:
				return nil, status.Errorf(codes.Unavailable, "hallmark-agent is stopping: invocation %s is queued on its disk and is logged once the agent runs again", req.GetInvocationId())
			default:
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return nil, status.Error(codes.DeadlineExceeded, "not logged yet: "+api.a.serverCause())
			}
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if it.State == outbox.Refused {
		return nil, status.Errorf(codes.FailedPrecondition, "the log refused this attestation: %s", it.Reason)
	}
	bundle, logged, err := bundleOf(it)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "bundle: %v", err)
	}
	return &agentv1.GetBundleResponse{Bundle: bundle, Logged: logged}, nil
}
