package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/limits"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// attempt is one attestation a worker asked for and what it was told.
type attempt struct {
	At       time.Time
	Agent    int
	Product  string
	SHA256   [sha256.Size]byte
	ID       string // the invocation, on success
	Err      string // what the step was told, on failure
	Duration time.Duration
}

// load is the workers attesting through the agents.
type load struct {
	mu       sync.Mutex
	attempts []attempt
	wg       sync.WaitGroup
}

// startLoad starts workers per agent, each attesting perSecond times a
// second a product of its own with unique content, until ctx ends.
func startLoad(ctx context.Context, st *soakStack, workers int, perSecond float64) (*load, error) {
	l := &load{}
	for ai, ag := range st.agents {
		// One connection per agent, kept across its restarts (gRPC
		// reconnects to the same socket path).
		conn, err := grpc.NewClient("unix://"+ag.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4*limits.MaxBundleBytes)))
		if err != nil {
			return nil, err
		}
		client := agentv1.NewWorkloadServiceClient(conn)
		for w := range workers {
			ws := filepath.Join(st.wsRoot, fmt.Sprintf("agent%d-worker%d", ai+1, w))
			if err := os.MkdirAll(ws, 0o755); err != nil {
				return nil, err
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				tick := time.NewTicker(time.Duration(float64(time.Second) / perSecond))
				defer tick.Stop()
				for n := 0; ; n++ {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					l.record(l.attestOnce(ctx, client, ai, ws, fmt.Sprintf("out-%06d", n)))
				}
			}()
		}
		go func() { <-ctx.Done(); l.wg.Wait(); conn.Close() }()
	}
	return l, nil
}

func (l *load) attestOnce(ctx context.Context, client agentv1.WorkloadServiceClient, agent int, ws, name string) attempt {
	a := attempt{At: time.Now(), Agent: agent, Product: filepath.Join(ws, name)}
	content := fmt.Appendf(nil, "%s %d", a.Product, a.At.UnixNano())
	a.SHA256 = sha256.Sum256(content)
	if err := os.WriteFile(a.Product, content, 0o644); err != nil {
		a.Err = "write product: " + err.Error()
		return a
	}
	defer os.Remove(a.Product)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := client.AttestStep(cctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{name}})
	a.Duration = time.Since(a.At)
	if err != nil {
		if ctx.Err() != nil {
			a.Err = "" // the run ended mid-call: not counted
			a.ID = "-"
			return a
		}
		st := status.Convert(err)
		a.Err = st.Code().String() + ": " + st.Message()
		return a
	}
	a.ID = resp.GetInvocationId()
	return a
}

func (l *load) record(a attempt) {
	if a.ID == "-" {
		return
	}
	l.mu.Lock()
	l.attempts = append(l.attempts, a)
	l.mu.Unlock()
}

// wait waits for the workers to stop and returns every attempt.
func (l *load) wait() []attempt {
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.attempts
}
