package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
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
// agent/refusal.go), at once and after at most two connections, where
// grpc-go alone says only that the first frame was not SETTINGS.
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
			agent, err := dialAgent(socket)
			require.NoError(t, err)
			defer agent.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err = agent.WhoAmI(ctx, &agentv1.WhoAmIRequest{})
			require.EqualError(t, agent.explain(err), "the agent at "+socket+" refused the connection: "+why)
			require.Less(t, time.Since(start), time.Second)
			require.LessOrEqual(t, conns.Load(), int32(2))
		})
	}
}

// Must show: readGreeting gives grpc-go back exactly the bytes it read,
// then the rest, with the greeting's deadline gone; a first frame cut
// short, or ctx's end, fails the dial without taking it for a refusal.
func TestReadGreeting(t *testing.T) {
	var greeting bytes.Buffer
	fr := http2.NewFramer(&greeting, nil)
	require.NoError(t, fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 16}))
	require.NoError(t, fr.WritePing(false, [8]byte{1, 2, 3}))
	settingsLen := 9 + 6
	var refusal bytes.Buffer
	require.NoError(t, http2.NewFramer(&refusal, nil).WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte("hallmark-agent: why")))

	t.Run("greeting given back", func(t *testing.T) {
		client, agent := net.Pipe()
		defer agent.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		go agent.Write(greeting.Bytes()[:settingsLen]) //nolint:errcheck // read below
		nc, why, err := readGreeting(ctx, client)
		require.NoError(t, err)
		require.Empty(t, why)
		defer nc.Close()
		time.Sleep(150 * time.Millisecond)             // past the greeting's deadline
		go agent.Write(greeting.Bytes()[settingsLen:]) //nolint:errcheck // read below
		got := make([]byte, greeting.Len())
		_, err = io.ReadFull(nc, got)
		require.NoError(t, err)
		require.Equal(t, greeting.Bytes(), got)
	})
	for _, cut := range []int{5, 9, refusal.Len() - 1} {
		t.Run(fmt.Sprintf("cut at %d", cut), func(t *testing.T) {
			client, agent := net.Pipe()
			go func() { agent.Write(refusal.Bytes()[:cut]); agent.Close() }() //nolint:errcheck // then closed
			nc, why, err := readGreeting(context.Background(), client)
			require.Error(t, err)
			require.Nil(t, nc)
			require.Empty(t, why)
		})
	}
	t.Run("refused", func(t *testing.T) {
		client, agent := net.Pipe()
		go func() { agent.Write(refusal.Bytes()); agent.Close() }() //nolint:errcheck // then closed
		_, why, err := readGreeting(context.Background(), client)
		require.Error(t, err)
		require.Equal(t, "hallmark-agent: why", why)
	})
	t.Run("canceled", func(t *testing.T) {
		client, agent := net.Pipe()
		defer agent.Close()
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		_, _, err := readGreeting(ctx, client)
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(start), 5*time.Second)
	})
}
