//go:build unix

// Package proctest runs a program under test as a process of its own, as
// a CI runner or a shell would start it, for tests that send it signals.
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Timeout bounds each wait of this package.
const Timeout = 10 * time.Second

// DefaultSignals makes the processes a test starts begin with SIGHUP and
// SIGINT at their defaults even when go test was started ignoring them
// (nohup ignores SIGHUP; a shell ignores SIGINT in a background job): a
// Go process's child starts with the signals the process registered at
// their defaults. In the test process they stay without effect, as they
// were. Call it from TestMain.
func DefaultSignals() {
	var ignored []os.Signal
	for _, s := range []os.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signal.Ignored(s) {
			ignored = append(ignored, s)
		}
	}
	if len(ignored) > 0 {
		signal.Notify(make(chan os.Signal, 1), ignored...) // never read
	}
}

// OwnGroup starts cmd in a process group of its own, which is killed when
// the test ends, with whatever it left running.
func OwnGroup(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	t.Cleanup(func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck // it may be gone
		}
	})
}

// StartReady starts cmd and returns once the file "ready" exists in dir,
// as the command it runs writes it; stderr is shown if it never does.
func StartReady(t testing.TB, cmd *exec.Cmd, dir string, stderr interface{ String() string }) {
	t.Helper()
	require.NoError(t, cmd.Start())
	deadline := time.Now().Add(Timeout)
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			return
		}
		require.True(t, time.Now().Before(deadline), "the command did not start: %s", stderr)
		time.Sleep(5 * time.Millisecond)
	}
}

// ExitCode waits for cmd and returns its exit code; one still running
// after Timeout is killed with its group and fails the test.
func ExitCode(t testing.TB, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(Timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck // it may have exited since
		<-done
		t.Fatalf("still running after %s", Timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, err)
	return 0
}

// WorldExecutableCopy copies the running test binary where any user may
// run it, for a test that starts it as another user (go test's own copy
// sits in a directory only its user may enter); the copy goes when the
// test ends.
func WorldExecutableCopy(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm-exe-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	data, err := os.ReadFile(os.Args[0])
	require.NoError(t, err)
	exe := filepath.Join(dir, filepath.Base(os.Args[0]))
	require.NoError(t, os.WriteFile(exe, data, 0o755))
	return exe
}

// StatusCaps is the capability set field ("CapEff", "CapPrm", "CapInh",
// ...) of process pid as its /proc/PID/status gives it, bit N for
// capability N: a test's own reading, not capget(2)'s.
func StatusCaps(t testing.TB, pid int, field string) uint64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte(field+":")); ok {
			caps, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
			require.NoError(t, err, "%s of pid %d", field, pid)
			return caps
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
