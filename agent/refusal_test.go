package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/peercred"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// Must show: what the local API writes to a connection it closes at accept
// is, as golang.org/x/net/http2 reads it, one GOAWAY that serves no stream
// (and no server preface), its code telling a refusal that may pass later
// (the limits) from one that will not, its debug data why, bounded.
func TestLocalRefusal(t *testing.T) {
	lim := LocalLimits{ConnectionsPerUID: 64, Connections: 1024}
	long := errors.New(strings.Repeat("x", 4096))
	for _, tc := range []struct {
		name       string
		err        error
		wantReason string
		wantCode   http2.ErrCode
		want       string
	}{
		{"a uid over its limit", fmt.Errorf("%w: uid 1000 has 64 open, the most one uid may", peercred.ErrTooManyConns), "limits", http2.ErrCodeEnhanceYourCalm,
			"hallmark-agent: too many connections: uid 1000 has 64 open, the most one uid may (max_connections_per_uid = 64, max_connections = 1024)"},
		{"a pid not visible", fmt.Errorf("%w (uid 1000, pid 0 here)", peercred.ErrPidNotVisible), "unidentified", http2.ErrCodeInadequateSecurity,
			"hallmark-agent: cannot identify the caller: its pid is not visible from the agent's pid namespace (run hallmark-agent in the host's pid namespace, or the step in the agent's)"},
		{"another failure", errors.New("peercred: identify pid 7: open /proc/7/stat: no such file or directory"), "unidentified", http2.ErrCodeEnhanceYourCalm,
			"hallmark-agent: cannot identify the caller: identify pid 7: open /proc/7/stat: no such file or directory"},
		{"a long reason", long, "unidentified", http2.ErrCodeEnhanceYourCalm,
			"hallmark-agent: " + ("cannot identify the caller: " + long.Error())[:maxRefusalText]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, said := localRefusal(lim, tc.err)
			require.Equal(t, tc.wantReason, reason)
			fr := http2.NewFramer(nil, bytes.NewReader(said))
			f, err := fr.ReadFrame()
			require.NoError(t, err)
			goAway, ok := f.(*http2.GoAwayFrame)
			require.True(t, ok, "first frame %v", f)
			require.Zero(t, goAway.LastStreamID, "no stream served")
			require.Equal(t, tc.wantCode, goAway.ErrCode)
			require.Equal(t, tc.want, string(goAway.DebugData()))
			_, err = fr.ReadFrame()
			require.ErrorIs(t, err, io.EOF, "nothing after")
		})
	}
}

// Must show: the refusals are logged, the first of a reason at once, then
// at most one line every refusalLogEvery for it, which counts the ones
// not logged since; reasons are counted apart.
func TestRefusalLog(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	now := time.Unix(1_700_000_000, 0)
	r := newRefusalLog(zap.New(core), func() time.Time { return now })
	limits := fmt.Errorf("%w: uid 1000 has 64 open", peercred.ErrTooManyConns)
	gone := errors.New("peercred: identify pid 7: gone")

	type line struct {
		reason    string
		notLogged int64
	}
	seen := func() []line {
		var got []line
		for _, e := range logs.TakeAll() {
			f := e.ContextMap()
			got = append(got, line{f[logReason].(string), f[logNotLogged].(int64)})
		}
		return got
	}
	r.record(refusedLimits, limits)
	r.record(refusedLimits, limits)
	r.record(refusedUnidentified, gone)
	require.Equal(t, []line{{"limits", 0}, {"unidentified", 0}}, seen())
	now = now.Add(refusalLogEvery - time.Nanosecond)
	r.record("limits", limits)
	require.Empty(t, seen())
	now = now.Add(time.Nanosecond)
	r.record("limits", limits)
	r.record("unidentified", gone)
	require.Equal(t, []line{{"limits", 2}, {"unidentified", 0}}, seen())
}

// Must show, with grpc-go's client as any third party's: a connection the
// agent refuses fails the call at once, after one connection, with the
// agent's refusal named; it is not taken for a connection that was ready
// and then went away, which grpc-go dials again at once, over and over
// (an empty SETTINGS before the GOAWAY made 144 connections in 3 s).
func TestGRPCClientsFailAtOnceWhenRefused(t *testing.T) {
	dir, err := os.MkdirTemp("", "hm-refuse-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	_, refusal := localRefusal(LocalLimits{ConnectionsPerUID: 64, Connections: 1024},
		fmt.Errorf("%w: uid 1000 has 64 open, the most one uid may", peercred.ErrTooManyConns))
	for _, wait := range []time.Duration{0, 20 * time.Millisecond} { // before and after the client's preface arrives
		t.Run(wait.String(), func(t *testing.T) {
			var refused atomic.Int32
			ln, err := peercred.Listen(peercred.ListenConfig{
				Path: socket, GID: -1, MaxConnsPerUID: 1,
				Refused: func(error) []byte { refused.Add(1); time.Sleep(wait); return refusal },
			})
			require.NoError(t, err)
			defer ln.Close()
			// This uid's one connection, held: every other is refused.
			held, err := net.Dial("unix", socket)
			require.NoError(t, err)
			defer held.Close()
			accepted, err := ln.Accept()
			require.NoError(t, err)
			defer accepted.Close()
			go ln.Accept() //nolint:errcheck // refuses until ln closes

			cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(t, err)
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err = agentv1.NewWorkloadServiceClient(cc).WhoAmI(ctx, &agentv1.WhoAmIRequest{})
			require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
			require.Less(t, time.Since(start), time.Second, "failed at once: %v", err)
			require.LessOrEqual(t, refused.Load(), int32(2), "connections made: %v", err)
			t.Logf("%d connections refused; %v", refused.Load(), err)
		})
	}
}

// Must show: the agent's local socket, as listenLocal sets it up (without
// the exec watch, which needs privileges), tells a connection over its
// uid's limit why, counts it in the metric and logs it; a connection
// within the limit is served.
func TestLocalListenerRefuses(t *testing.T) {
	dir, err := os.MkdirTemp("", "hm-listen-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	core, logs := observer.New(zapcore.InfoLevel)
	a, err := New(Config{
		Log: zap.New(core), ServerAddress: "hallmark.test:8443", ServerID: serverID,
		WorkloadAPIAddr: "unix:///nonexistent/api.sock", SocketPath: filepath.Join(dir, "agent.sock"), SocketGID: -1,
	})
	require.NoError(t, err)
	lim := LocalLimits{ConnectionsPerUID: 1}.withDefaults()
	ln, err := peercred.Listen(a.localListenConfig(lim, nil))
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	// Accepted in order: the first is admitted, the second is over the
	// uid's limit.
	served, err := net.Dial("unix", a.cfg.SocketPath)
	require.NoError(t, err)
	defer served.Close()
	over, err := net.Dial("unix", a.cfg.SocketPath)
	require.NoError(t, err)
	defer over.Close()
	require.NoError(t, over.SetReadDeadline(time.Now().Add(5*time.Second)))
	f, err := http2.NewFramer(nil, over).ReadFrame()
	require.NoError(t, err)
	goAway, ok := f.(*http2.GoAwayFrame)
	require.True(t, ok, "%v", f)
	require.Equal(t, http2.ErrCodeEnhanceYourCalm, goAway.ErrCode)
	require.Contains(t, string(goAway.DebugData()), fmt.Sprintf("uid %d has 1 open, the most one uid may (max_connections_per_uid = 1,", os.Getuid()))
	require.Equal(t, 1.0, metricValue(t, a.metrics.refusedConns.WithLabelValues("limits")))
	require.Equal(t, 1, logs.FilterField(zap.String(logReason, "limits")).Len())

	// The connection within the limit was served: it is open.
	require.NoError(t, served.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	_, err = served.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}
