// Package e2e runs Hallmark end to end on real parts: the SPIRE server and
// agent binaries from `make tools`, the hallmark-server and hallmark-agent
// binaries built from this repository, real sockets, and a real Vault-API
// server (OpenBao from `make tools`, started once per run by test/baotest;
// or the one HALLMARK_TEST_VAULT_ADDR names).
//
// TestMain starts one shared stack; tests that disturb a server start their
// own server and agent against the same SPIRE.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/test/baotest"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Timings of the shared stack: SPIRE rotates SVIDs every ~30 s and the
// agent renews its certificate every 15 s.
const (
	svidTTL          = time.Minute
	certificateTTL   = 30 * time.Second
	maxConnectionAge = 20 * time.Second
)

var stack *harness.Stack

func TestMain(m *testing.M) {
	if runRole() { // this binary re-executed as a caller in a test
		return
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := harness.ShortTempDir("hm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if os.Getuid() == 0 { // tests that need them say so when not root
		removeUsers, err := createUsers()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer removeUsers()
	}
	start := time.Now()
	stack, err = harness.StartStack(ctx, dir, harness.StackOptions{
		SVIDTTL: svidTTL, CertificateTTL: certificateTTL, MaxConnectionAge: maxConnectionAge,
		Policy: testPolicy, SocketGroup: "nogroup", AgentExtra: fmt.Sprintf("max_files = %d", maxFiles),
	})
	if err != nil {
		// Never skip: the end-to-end suite is the proof that Hallmark works.
		fmt.Fprintf(os.Stderr, "e2e: cannot start the stack: %v\n(logs in %s)\n", err, dir)
		return 1
	}
	if err := registerBuilders(ctx, stack); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n(logs in %s)\n", err, dir)
		stack.Close()
		return 1
	}
	fmt.Printf("e2e: stack up in %s (SPIRE %s, state in %s)\n", time.Since(start).Round(time.Millisecond), stack.SPIRE.ServerBin, dir)
	code := baotest.Main(m) // runs the tests, then stops the shared Vault
	if err := stack.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: stopping the stack:", err)
	}
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "e2e: logs kept in %s\n", dir)
	}
	return code
}

// registerBuilders gives this test binary, hallmark-attest and the
// hallmark CLI the builder identity that the agent's policy grants steps
// to, and waits until all are known by it: each entry reaches the SPIRE
// agent at its own sync, so the test binary's SVID says nothing about the
// CLI's. hallmark-attest's entry is made before the CLI's, so it is
// synced once the CLI's is.
func registerBuilders(ctx context.Context, stack *harness.Stack) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	id := spiffeid.RequireFromString(builderID)
	for _, bin := range []string{self, stack.Bins.Attest, stack.Bins.CLI} {
		if err := stack.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: id, Binary: bin, X509SVIDTTL: time.Hour}); err != nil {
			return err
		}
	}
	if _, err := stack.SPIRE.WaitForIdentities(ctx, id); err != nil {
		return err
	}
	return waitCLIBuilder(ctx, stack)
}

// waitCLIBuilder waits until the agent identifies the hallmark CLI, run
// the way tests run it, as the builder: `hallmark whoami` lists builderID
// among its SPIFFE IDs.
func waitCLIBuilder(ctx context.Context, stack *harness.Stack) error {
	var last string
	err := harness.WaitFor(ctx, "hallmark whoami to report "+builderID, time.Minute, func() error {
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		out, err := exec.CommandContext(wctx, stack.Bins.CLI, "whoami", "--socket", stack.Agent.Socket).CombinedOutput()
		last = strings.TrimSpace(string(out))
		if err != nil {
			return fmt.Errorf("whoami: %w", err)
		}
		for _, l := range strings.Split(last, "\n") {
			if strings.HasPrefix(l, "SPIFFE IDs:") && strings.Contains(l, builderID) {
				return nil
			}
		}
		return errors.New("whoami does not list " + builderID + " yet")
	})
	if err != nil {
		return fmt.Errorf("the agent does not identify the hallmark CLI (%s) as the builder: its SPIRE entry has not reached the SPIRE agent, or the agent's workload attestation of it fails: %w\nlast whoami output:\n%s", stack.Bins.CLI, err, last)
	}
	return nil
}
