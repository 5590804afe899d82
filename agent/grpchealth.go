package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// localHealth is grpc.health.v1 on the local socket: SERVING while the
// agent holds a valid signing certificate (it can attest), like /readyz.
type localHealth struct {
	healthpb.UnimplementedHealthServer
	a *Agent
}

func (h *localHealth) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	switch req.GetService() {
	case "", agentv1.WorkloadService_ServiceDesc.ServiceName:
	default:
		return nil, status.Errorf(codes.NotFound, "unknown service %q", req.GetService())
	}
	if _, ok := h.a.keys.current(h.a.cfg.Now()); !ok {
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}
