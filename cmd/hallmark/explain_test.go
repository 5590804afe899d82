package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
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

// Must show: `hallmark whoami` and `hallmark doctor` (grpc-go) say why the
// agent refused their connection at accept (a GOAWAY as its first frame,
// agent/refusal.go), at once and after one connection, where grpc-go
// alone says only that the first frame was not SETTINGS.
func TestDialAgentRefused(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeEnhanceYourCalm, http2.ErrCodeInadequateSecurity} {
		t.Run(code.String(), func(t *testing.T) {
			socket := filepath.Join(shortDir(t), "agent.sock")
			ln, err := net.Listen("unix", socket)
			require.NoError(t, err)
			t.Cleanup(func() { ln.Close() })
			const why = "hallmark-agent: too many connections: uid 7 has 64 open"
			var refusal bytes.Buffer
			require.NoError(t, http2.NewFramer(&refusal, nil).WriteGoAway(0, code, []byte(why)))
			var conns atomic.Int32
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					conns.Add(1)
					c.Write(refusal.Bytes()) //nolint:errcheck // then closed
					c.Close()
				}
			}()
			client, closeConn, err := dialAgent(socket)
			require.NoError(t, err)
			defer closeConn()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err = client.WhoAmI(ctx, &agentv1.WhoAmIRequest{})
			require.EqualError(t, explain(socket, err), "the agent at "+socket+" refused the connection: "+why)
			require.Less(t, time.Since(start), time.Second)
			require.LessOrEqual(t, conns.Load(), int32(2))
		})
	}
}
