package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/limits"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// Timestamp grants each of the caller's signatures an RFC 3161 timestamp
// from the log's timestamp authority (attest/tsa), at the server's time
// now, and names the authority's chain. It reads nothing but the key in
// memory, so it answers while the store is down: an agent obtains the
// timestamp when it signs, and the log later checks the entry at that
// time (docs/log.md, "Late entries"). A timestamp only says the bytes
// existed then; what they sign is checked when the entry is submitted.
func (a *agentService) Timestamp(_ context.Context, req *serverv1.TimestampRequest) (*serverv1.TimestampResponse, error) {
	if a.tlog == nil {
		return nil, status.Error(codes.Unavailable, "the server has no transparency log")
	}
	sigs := req.GetSignatures()
	if len(sigs) == 0 || len(sigs) > limits.MaxTimestampsPerCall {
		return nil, status.Errorf(codes.InvalidArgument, "%d signatures in one call, want 1 to %d", len(sigs), limits.MaxTimestampsPerCall)
	}
	for i, sig := range sigs {
		if len(sig) == 0 || len(sig) > limits.MaxSignatureBytes {
			return nil, status.Errorf(codes.InvalidArgument, "signature %d is %d bytes, want 1 to %d", i, len(sig), limits.MaxSignatureBytes)
		}
	}
	signer := a.tlog.tsa
	now := a.s.cfg.Now()
	resp := &serverv1.TimestampResponse{Timestamps: make([][]byte, len(sigs))}
	for i, sig := range sigs {
		ts, err := signer.Timestamp(sig, now)
		if err != nil {
			a.s.metrics.timestamps.WithLabelValues(resultError).Add(float64(len(sigs)))
			return nil, status.Errorf(codes.Internal, "timestamp: %v", err)
		}
		resp.Timestamps[i] = ts
	}
	for _, c := range signer.Chain() {
		resp.TsaChain = append(resp.TsaChain, c.Raw)
	}
	a.s.metrics.timestamps.WithLabelValues(resultGranted).Add(float64(len(sigs)))
	return resp, nil
}
