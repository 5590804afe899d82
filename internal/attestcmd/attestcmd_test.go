package attestcmd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// Must show: help goes to stdout with the synopsis of the command as
// invoked and every flag, as `hallmark attest --help` did under cobra; a
// usage error is one line on stderr (exit 2), not the error and the whole
// help twice over; a command that cannot start is reported under the
// command's own name.
func TestUsageAndHelp(t *testing.T) {
	dir, socket := silentSocket(t)

	for _, tc := range []struct {
		command string
		args    []string
		code    int
		stdout  []string // each in stdout
		stderr  string   // exactly
	}{
		{"hallmark-attest", []string{"--help"}, 0, []string{"Usage: hallmark-attest --step NAME [--material PATH]...", "-product", "-wait-log-timeout", "HALLMARK_AGENT_SOCKET"}, ""},
		{"hallmark-attest", []string{"-h"}, 0, []string{"Usage: hallmark-attest --step NAME"}, ""},
		{"hallmark attest", []string{"--help"}, 0, []string{"Usage: hallmark attest --step NAME", "-claim KEY=VALUE"}, ""},
		{"hallmark-attest", []string{"--step", "b", "--bogus"}, 2, nil, "hallmark-attest: flag provided but not defined: -bogus (see hallmark-attest --help)\n"},
		{"hallmark attest", []string{"--product", "p"}, 2, nil, "hallmark: --step is required\n"},
		{"hallmark attest", []string{"--step", "b", "--progress", "sometimes", "--product", "p"}, 2, nil,
			"hallmark: invalid value \"sometimes\" for flag -progress: \"sometimes\" is not auto, always or never (see hallmark attest --help)\n"},
		{"hallmark-attest", []string{"--step=b", "--product=p", "--socket=" + socket, "--", filepath.Join(dir, "no-such-command")}, 127, nil,
			"hallmark-attest: fork/exec " + filepath.Join(dir, "no-such-command") + ": no such file or directory\n" +
				"hallmark-attest: " + filepath.Join(dir, "no-such-command") + " exited with status 127; step b not attested\n"},
	} {
		t.Run(tc.command+" "+tc.args[len(tc.args)-1], func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			env := Env{Stdin: nil, Stdout: &stdout, Stderr: &stderr, LookupEnv: func(string) (string, bool) { return "", false }}
			require.Equal(t, tc.code, Run(context.Background(), tc.command, tc.args, env), "stderr: %s", stderr.String())
			require.Equal(t, tc.stderr, stderr.String())
			for _, s := range tc.stdout {
				require.Contains(t, stdout.String(), s)
			}
			if tc.stdout == nil {
				require.Empty(t, stdout.String())
			}
		})
	}
}

// agentStops are the two ways an agent ends its connections: it stops
// gracefully (GOAWAY, then the connection's end), or its process ends.
var agentStops = []struct {
	name string
	stop func(*grpc.Server)
}{
	{"agent stops gracefully (GOAWAY)", (*grpc.Server).GracefulStop},
	{"agent process ends", (*grpc.Server).Stop},
}

// silentSocket is a unix socket that accepts connections and answers
// nothing, in a new directory (dir), until the test ends. The directory is
// not t.TempDir(): a socket's path must fit in 108 bytes.
func silentSocket(t *testing.T) (dir, socket string) {
	t.Helper()
	dir, socket = socketDir(t)
	l, err := net.Listen("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return dir, socket
}

// bundleAgent answers AttestStep with attested (an empty bundle, queued
// for the log, if nil), and GetBundle with a logged bundle, or with err.
type bundleAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	attested *agentv1.AttestStepResponse
	err      error
	calls    atomic.Int32
}

func (b *bundleAgent) AttestStep(context.Context, *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	if b.attested != nil {
		return b.attested, nil
	}
	return &agentv1.AttestStepResponse{InvocationId: "inv"}, nil
}

func (b *bundleAgent) GetBundle(context.Context, *agentv1.GetBundleRequest) (*agentv1.GetBundleResponse, error) {
	b.calls.Add(1)
	if b.err != nil {
		return nil, b.err
	}
	return &agentv1.GetBundleResponse{Bundle: []byte("bundle"), Logged: true}, nil
}

// Must show: --wait-log's GetBundle survives the agent closing the
// connection between the attestation and the wait, or during it (it stops
// with GOAWAY, or its process is replaced): it asks again on a new
// connection. An answer of the agent's own is not asked again.
func TestWaitForLogAfterTheConnectionEnds(t *testing.T) {
	ctx := context.Background()
	for _, tc := range agentStops {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "hm")
			require.NoError(t, err)
			t.Cleanup(func() { os.RemoveAll(dir) })
			socket := filepath.Join(dir, "s.sock")
			serve := func(agent *bundleAgent) *grpc.Server {
				ln, err := net.Listen("unix", socket)
				require.NoError(t, err)
				srv := grpc.NewServer()
				agentv1.RegisterWorkloadServiceServer(srv, agent)
				go srv.Serve(ln) //nolint:errcheck // stopped by the test
				return srv
			}
			old, restarted := &bundleAgent{}, &bundleAgent{}
			srv := serve(old)
			attested := func() *agentclient.Client {
				c, err := agentclient.Dial(ctx, socket)
				require.NoError(t, err)
				t.Cleanup(func() { c.Close() })
				_, err = c.AttestStep(ctx, &agentclient.AttestStepRequest{Step: "build"})
				require.NoError(t, err)
				return c
			}
			plain, waiting := attested(), attested()
			tc.stop(srv)
			t.Cleanup(serve(restarted).Stop)

			_, err = plain.GetBundle(ctx, "inv", true)
			require.True(t, agentclient.ConnectionLost(err), "a plain call on the old connection: %v", err)

			got, err := waitForLog(ctx, waiting, socket, "inv")
			require.NoError(t, err)
			require.Equal(t, []byte("bundle"), got.Bundle)
			require.True(t, got.Logged)
			require.Zero(t, old.calls.Load())
			require.EqualValues(t, 1, restarted.calls.Load())
		})
	}

	t.Run("the agent's own refusal", func(t *testing.T) {
		refusing := &bundleAgent{err: status.Error(codes.Unavailable, "the log is unreachable")}
		socket := serveUnix(t, func(s *grpc.Server) { agentv1.RegisterWorkloadServiceServer(s, refusing) })
		c, err := agentclient.Dial(ctx, socket)
		require.NoError(t, err)
		defer c.Close()
		_, err = waitForLog(ctx, c, socket, "inv")
		require.Equal(t, &agentclient.Error{Code: agentclient.Unavailable, Message: "the log is unreachable"}, err)
		require.False(t, agentclient.ConnectionLost(err))
		require.EqualValues(t, 1, refusing.calls.Load())
	})
}
