package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/internal/policy"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

const benchCallerID = "spiffe://example.org/bench/caller"

// staticAttestor is a workload attestor that knows every caller as the
// same workload.
type staticAttestor struct{ res workloadattestor.Result }

func (s staticAttestor) Attest(context.Context, workloadattestor.Caller) (workloadattestor.Result, error) {
	return s.res, nil
}

// benchLocalAPI serves the local API of an agent holding a signing
// certificate on a peercred socket, with a workspace holding one small
// file, and returns the socket and the workspace. The agent logs, as in
// production, JSON with callers to a file.
func benchLocalAPI(b *testing.B) (socket, ws string) {
	b.Helper()
	dir, err := os.MkdirTemp("", "hm-bench-") // short: a socket path has ~100 bytes
	require.NoError(b, err)
	b.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(b, os.Chmod(dir, 0o700))
	ws = filepath.Join(dir, "ws")
	require.NoError(b, os.Mkdir(ws, 0o755))
	require.NoError(b, os.WriteFile(filepath.Join(ws, "out"), []byte("product\n"), 0o644))

	pol, err := policy.New([]policy.Rule{{
		Name: "bench", SPIFFEIDs: []string{benchCallerID}, Steps: []string{"bench"}, WorkspaceRoots: []string{ws},
	}})
	require.NoError(b, err)
	logFile, err := os.Create(filepath.Join(dir, "agent.log"))
	require.NoError(b, err)
	b.Cleanup(func() { logFile.Close() })
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey, enc.EncodeTime = "time", zapcore.RFC3339NanoTimeEncoder
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(logFile), zapcore.DebugLevel), zap.AddCaller())

	a, err := New(Config{
		Log:             log,
		ServerAddress:   "hallmark.test:8443",
		ServerID:        serverID,
		WorkloadAPIAddr: "unix:///nonexistent/api.sock",
		Attestors: []NamedAttestor{{Name: "static", Attestor: staticAttestor{workloadattestor.Result{
			SPIFFEIDs: []string{benchCallerID},
			Selectors: []string{"unix:uid:1000", "unix:gid:1000"},
		}}}},
		Policy: pol,
	})
	require.NoError(b, err)
	a.id = agentID
	ca := newTestCA(b)
	key := newP256(b)
	ders := ca.issue(b, key.Public(), []spiffeid.ID{agentID}, time.Now().Add(-time.Minute), time.Hour)
	chain := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		chain[i], err = x509.ParseCertificate(der)
		require.NoError(b, err)
	}
	a.keys.cur.Store(&signingCert{key: key, chain: chain, received: time.Now()})
	// In process: the round trip to a server replica is not measured.
	withTSA(b, a)

	socket = filepath.Join(dir, "agent.sock")
	// As in production, callers are watched for exec (the watch needs
	// root: CAP_NET_ADMIN).
	execs, err := peercred.WatchExecs()
	require.NoError(b, err)
	b.Cleanup(func() { execs.Close() })
	ln, err := peercred.Listen(peercred.ListenConfig{Path: socket, GID: -1, Execs: execs})
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	go execs.Run(ctx) //nolint:errcheck // ends with ctx
	done := make(chan error, 1)
	go func() { done <- a.serveLocal(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		<-done
		ln.Close()
	})
	return socket, ws
}

// BenchmarkAttestStep drives AttestStep for a one-file step over the local
// socket, from 1, 16 and 64 callers with a connection each, the shape of
// hallmark-bench's attest figure. Profile it with
//
//	go test -run '^$' -bench AttestStep -cpuprofile cpu.out ./agent/
func BenchmarkAttestStep(b *testing.B) {
	socket, ws := benchLocalAPI(b)
	req := &agentv1.AttestStepRequest{Step: "bench", Workspace: ws, Products: []string{"out"}}
	for _, n := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("c%d", n), func(b *testing.B) {
			calls := make([]func() error, n)
			for i := range calls {
				conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
				require.NoError(b, err)
				defer conn.Close()
				c := agentv1.NewWorkloadServiceClient(conn)
				_, err = c.AttestStep(context.Background(), req) // connect, and fail fast
				require.NoError(b, err)
				calls[i] = func() error {
					_, err := c.AttestStep(context.Background(), req)
					return err
				}
			}
			drive(b, calls)
		})
	}
}

// drive runs b.N calls spread over callers, each calling its own function
// in a loop, and reports the CPU per call of client and server together,
// as hallmark-bench counts it: less sensitive than ns/op to other load on
// the machine.
func drive(b *testing.B, callers []func() error) {
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, len(callers))
	)
	for _, call := range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := call(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAttestStepFreshConnection is BenchmarkAttestStep with a new
// connection for every call, made by the client hallmark-attest uses
// (internal/agentclient): the agent's side of a fresh step, identification
// by a static attestor aside. Profile it with
//
//	go test -run '^$' -bench AttestStepFreshConnection -cpuprofile cpu.out ./agent/
func BenchmarkAttestStepFreshConnection(b *testing.B) {
	socket, ws := benchLocalAPI(b)
	req := &agentclient.AttestStepRequest{Step: "bench", Workspace: ws, Products: []string{"out"}}
	call := func() error {
		c, err := agentclient.Dial(context.Background(), socket)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.AttestStep(context.Background(), req)
		return err
	}
	require.NoError(b, call())
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("c%d", n), func(b *testing.B) {
			calls := make([]func() error, n)
			for i := range calls {
				calls[i] = call
			}
			drive(b, calls)
		})
	}
}
