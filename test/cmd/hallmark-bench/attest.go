package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hallmark-dev/hallmark/attest"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

const (
	attestDuration = 5 * time.Second
	benchCallerID  = "spiffe://example.org/bench/caller"
)

var attestConcurrency = []int{1, 16, 64}

// benchAttest measures hallmark-agent attesting a one-file step over its
// unix socket (on the real stack: SPIRE, server, agent, spire and unix
// workload attestors) at 1, 16 and 64 concurrent callers, against the
// floor of a raw DSSE sign behind a raw gRPC round trip on a unix socket
// at the same concurrency.
func benchAttest(ctx context.Context, dir string) ([]Result, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	st, err := harness.StartStack(ctx, dir, harness.StackOptions{
		Policy: func(d string) string {
			return fmt.Sprintf(`rule "bench" {
    spiffe_ids      = [%q]
    steps           = ["bench"]
    workspace_roots = [%q]
  }`, benchCallerID, filepath.Join(d, "ws"))
		},
	})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	id := spiffeid.RequireFromString(benchCallerID)
	if err := st.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: id, Binary: self}); err != nil {
		return nil, err
	}
	if _, err := st.SPIRE.WaitForIdentities(ctx, id); err != nil {
		return nil, err
	}
	ws := filepath.Join(dir, "ws")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(ws, "out"), []byte("product\n"), 0o644); err != nil {
		return nil, err
	}
	req := &agentv1.AttestStepRequest{Step: "bench", Workspace: ws, Products: []string{"out"}}

	floorSocket := filepath.Join(dir, "floor.sock")
	stopFloor, err := serveFloor(floorSocket)
	if err != nil {
		return nil, err
	}
	defer stopFloor()

	var results []Result
	for _, n := range attestConcurrency {
		agentRun, err := load(ctx, st.Agent.Socket, n, req, st.Agent.Pid())
		if err != nil {
			return nil, fmt.Errorf("agent at %d callers: %w", n, err)
		}
		floorRun, err := load(ctx, floorSocket, n, req, 0)
		if err != nil {
			return nil, fmt.Errorf("floor at %d callers: %w", n, err)
		}
		suffix := fmt.Sprintf("_c%d", n)
		results = append(results,
			Result{Name: "attest_rate" + suffix, Value: agentRun.rate(), Unit: "ops/s", Floor: floorRun.rate(), Rate: true},
			Result{Name: "attest_p50" + suffix, Value: agentRun.quantile(0.50), Unit: "ms", Floor: floorRun.quantile(0.50)},
			Result{Name: "attest_p99" + suffix, Value: agentRun.quantile(0.99), Unit: "ms", Floor: floorRun.quantile(0.99)},
			Result{Name: "attest_cpu_per_op" + suffix, Value: agentRun.cpuPerOp(), Unit: "us", Floor: floorRun.cpuPerOp()},
		)
	}
	return results, nil
}

// run is one load run's outcome.
type run struct {
	ops       int
	elapsed   time.Duration
	latencies []time.Duration
	cpu       time.Duration // client plus server CPU
}

func (r run) rate() float64     { return float64(r.ops) / r.elapsed.Seconds() }
func (r run) cpuPerOp() float64 { return float64(r.cpu.Microseconds()) / float64(r.ops) }
func (r run) quantile(q float64) float64 {
	slices.Sort(r.latencies)
	return float64(r.latencies[int(q*float64(len(r.latencies)-1))].Microseconds()) / 1000
}

// load runs n callers, each on its own connection, for attestDuration
// after a warm-up; serverPID's CPU is counted too when not 0 (an in-process
// server is counted in our own).
func load(ctx context.Context, socket string, n int, req *agentv1.AttestStepRequest, serverPID int) (run, error) {
	clients := make([]agentv1.WorkloadServiceClient, n)
	for i := range clients {
		conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return run{}, err
		}
		defer conn.Close()
		clients[i] = agentv1.NewWorkloadServiceClient(conn)
		if _, err := clients[i].AttestStep(ctx, req); err != nil { // warm-up, and fail fast
			return run{}, err
		}
	}
	cpu0 := selfCPU() + procCPU(serverPID)
	start := time.Now()
	deadline := start.Add(attestDuration)
	var (
		mu   sync.Mutex
		lat  []time.Duration
		werr error
		wg   sync.WaitGroup
	)
	for _, c := range clients {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t := time.Now()
				if _, err := c.AttestStep(ctx, req); err != nil {
					mu.Lock()
					werr = err
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := selfCPU() + procCPU(serverPID) - cpu0
	if werr != nil {
		return run{}, werr
	}
	return run{ops: len(lat), elapsed: elapsed, latencies: lat, cpu: cpu}, nil
}

// serveFloor serves the floor: AttestStep answered with an ECDSA P-256
// DSSE signature over a statement-sized payload, nothing else.
func serveFloor(socket string) (func(), error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	agentv1.RegisterWorkloadServiceServer(srv, &floorService{key: key, payload: make([]byte, 2048)})
	go srv.Serve(ln) //nolint:errcheck // ends with Stop
	return srv.Stop, nil
}

type floorService struct {
	agentv1.UnimplementedWorkloadServiceServer
	key     *ecdsa.PrivateKey
	payload []byte
}

func (f *floorService) AttestStep(context.Context, *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	digest := sha256.Sum256(attest.PAE(attest.PayloadType, f.payload))
	sig, err := ecdsa.SignASN1(rand.Reader, f.key, digest[:])
	if err != nil {
		return nil, err
	}
	return &agentv1.AttestStepResponse{Bundle: sig}, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru) //nolint:errcheck // cannot fail for SELF
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is a process's user plus system CPU from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may contain spaces).
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clkTck
}
