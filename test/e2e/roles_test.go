package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// Roles of the hardening tests: the test binary re-executed (see runRole)
// as an attacker or an ordinary step would act. Each prints one line the
// test reads.

const (
	methodWhoAmI = "/hallmark.agent.v1.WorkloadService/WhoAmI"
	methodAttest = "/hallmark.agent.v1.WorkloadService/AttestStep"
)

// roleAttest sends one AttestStep with gRPC's own client: the workspace
// and products from the environment ("{pid}" in the workspace becomes this
// process's pid). It prints ATTESTED or REFUSED with the status.
func roleAttest(socket, ws string) error {
	ws = strings.ReplaceAll(ws, "{pid}", fmt.Sprint(os.Getpid()))
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := agentv1.NewWorkloadServiceClient(conn).AttestStep(ctx, &agentv1.AttestStepRequest{
		Step: "build", Workspace: ws, Products: strings.Split(os.Getenv("HALLMARK_E2E_PRODUCTS"), ","),
	})
	if err != nil {
		fmt.Printf("REFUSED %s: %s\n", status.Code(err), status.Convert(err).Message())
		return nil
	}
	fmt.Printf("ATTESTED %d subjects\n", len(resp.GetSubjects()))
	return nil
}

// roleExecChain is a caller whose program image changes while it talks to
// the agent: the first image connects and asks WhoAmI (so the agent
// identifies it), then execs each binary of HALLMARK_E2E_CHAIN in turn,
// the connection kept open at fd 3; every image after the first writes the
// product, and the last sends AttestStep on the same HTTP/2 connection.
// With an empty chain the first image attests itself: an ordinary step.
func roleExecChain(socket, ws string) error {
	chain := strings.FieldsFunc(os.Getenv("HALLMARK_E2E_CHAIN"), func(r rune) bool { return r == ',' })
	var fd int
	if os.Getenv("HALLMARK_E2E_STAGE") == "" {
		c, err := dialRaw(socket)
		if err != nil {
			return err
		}
		f, err := c.File()
		if err != nil {
			return err
		}
		if err := unix.Dup2(int(f.Fd()), 3); err != nil { // without FD_CLOEXEC
			return err
		}
		fd = 3
		h := newH2(os.NewFile(uintptr(fd), "agent"))
		if err := h.greet(); err != nil {
			return err
		}
		var who agentv1.WhoAmIResponse
		if err := h.call(1, methodWhoAmI, &agentv1.WhoAmIRequest{}, &who); err != nil {
			return fmt.Errorf("whoami: %w", err)
		}
	} else {
		fd = 3
		exe, _ := os.Executable()
		if err := os.WriteFile(ws+"/out", []byte("written by "+exe), 0o644); err != nil {
			return err
		}
	}
	if len(chain) > 0 {
		env := []string{"HALLMARK_E2E_STAGE=1", "HALLMARK_E2E_CHAIN=" + strings.Join(chain[1:], ",")}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "HALLMARK_E2E_STAGE=") && !strings.HasPrefix(kv, "HALLMARK_E2E_CHAIN=") {
				env = append(env, kv)
			}
		}
		return syscall.Exec(chain[0], []string{chain[0], "-test.run=^$"}, env)
	}
	h := newH2(os.NewFile(uintptr(fd), "agent"))
	var resp agentv1.AttestStepResponse
	err := h.call(3, methodAttest, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}}, &resp)
	if err != nil {
		fmt.Printf("REFUSED %v\n", err)
		return nil
	}
	fmt.Printf("ATTESTED %d subjects\n", len(resp.GetSubjects()))
	return nil
}

// roleAbuse is a uid with socket access and no grant doing its worst,
// until its stdin closes: HALLMARK_E2E_WHOAMI concurrent WhoAmI calls on
// fresh connections, then HALLMARK_E2E_STREAMS half-open streams (headers,
// never a message) over as many connections as the agent takes, held, then
// HALLMARK_E2E_IDLE idle connections on top. It reports on stderr what got
// through and prints ABUSING once everything is held.
func roleAbuse(socket string) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
		rl.Cur = rl.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &rl) //nolint:errcheck // as many as allowed
	}
	n := func(name string) int {
		var v int
		fmt.Sscan(os.Getenv(name), &v) //nolint:errcheck // zero when unset
		return v
	}
	var (
		mu       sync.Mutex
		held     []net.Conn
		wg       sync.WaitGroup
		headers  atomic.Int64 // streams opened on connections the agent greeted
		answered atomic.Int64 // WhoAmI calls answered
	)
	keep := func(c net.Conn) {
		mu.Lock()
		held = append(held, c)
		mu.Unlock()
	}
	// Concurrent identifications.
	for range n("HALLMARK_E2E_WHOAMI") {
		wg.Go(func() {
			conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := agentv1.NewWorkloadServiceClient(conn).WhoAmI(ctx, &agentv1.WhoAmIRequest{}); err == nil {
				answered.Add(1)
			}
			conn.Close()
		})
	}
	wg.Wait()
	// Half-open streams, as many per connection as the total allows
	// spread over the agent's limit of connections, held open.
	streams := n("HALLMARK_E2E_STREAMS")
	perConn := max(1, streams/64)
	for opened := 0; opened < streams; {
		c, err := dialRaw(socket)
		if err != nil { // the agent's queue is full, or this process's descriptors
			opened++ // an attempt all the same
			time.Sleep(time.Millisecond)
			continue
		}
		h := newH2(c)
		c.SetDeadline(time.Now().Add(2 * time.Second)) //nolint:errcheck // abuse
		if h.greet() != nil {
			c.Close()
			opened++ // refused at accept: counts as an attempt
			continue
		}
		keep(c)
		for i := 0; i < perConn && opened < streams; i++ {
			if h.headers(uint32(2*i+1), methodAttest, false) != nil {
				if i == 0 {
					opened++ // greeted only to be refused (a GOAWAY follows): an attempt
				}
				break
			}
			headers.Add(1)
			opened++
		}
		c.SetDeadline(time.Time{}) //nolint:errcheck // abuse
	}
	// Idle connections on top.
	for range n("HALLMARK_E2E_IDLE") {
		if c, err := dialRaw(socket); err == nil {
			keep(c)
		}
	}
	// What the agent let through: connections it still holds open.
	mu.Lock()
	open := 0
	for _, c := range held {
		// Open while reading what the agent sent (a greeting, a refusal)
		// times out rather than ending.
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond)) //nolint:errcheck // a probe
		if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
			open++
		}
	}
	mu.Unlock()
	fmt.Fprintf(os.Stderr, "abuser: %d connections still open of %d made, %d stream headers sent on greeted connections, %d WhoAmI answered\n",
		open, len(held), headers.Load(), answered.Load())
	fmt.Println("ABUSING")
	os.Stdin.Read(make([]byte, 1)) //nolint:errcheck // until told to stop
	mu.Lock()
	for _, c := range held {
		c.Close()
	}
	mu.Unlock()
	return nil
}
