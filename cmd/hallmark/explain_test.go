package main

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An agent that cannot be reached is told apart from an agent that
// answered Unavailable, even when its answer quotes a failed connection
// to the server.
func TestExplainUnavailable(t *testing.T) {
	for _, tt := range []struct {
		msg, want string
	}{
		{`connection error: desc = "transport: Error while dialing: dial unix /run/hallmark/agent.sock: connect: no such file or directory"`, "no agent at /run/hallmark/agent.sock"},
		{`attestation refused: no timestamp authority answered: rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:8443: connect: connection refused"`, "agent unavailable: attestation refused: no timestamp authority answered"},
	} {
		err := explain("/run/hallmark/agent.sock", status.Error(codes.Unavailable, tt.msg))
		require.ErrorContains(t, err, tt.want)
	}
}
