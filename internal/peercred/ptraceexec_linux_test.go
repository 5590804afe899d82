package peercred

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Must show (the attacker review's bypass): a peer that sends its bytes,
// then execs another program under its own tracer, which holds it stopped
// at PTRACE_EVENT_EXEC, is refused. Held there, /proc/PID/exe already
// names the new program, so attestors and SPIRE would see it, while the
// exec watch hears nothing until the process resumes. Here the test is
// the tracer; the peer execs /bin/sleep.
func TestExecHeldByATracerIsRefused(t *testing.T) {
	w, _ := watchRunning(t)
	l, path := listenWatched(t, w)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRole+"=exec", envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	held, traceErr := make(chan struct{}), make(chan error, 1)
	started := make(chan *helper, 1)
	// ptrace(2) answers only the thread that attached: start, trace and
	// release the helper from one locked thread.
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		h := startPrepared(t, cmd)
		started <- h
		traceErr <- traceUntilExec(h.cmd.Process.Pid, held)
	}()
	h := <-started
	c := accept(t, l)
	h.expect(t, "connected")
	require.Equal(t, "pre-exec", readN(t, c, 8))
	require.NoError(t, c.Verify(), "before the exec")

	_, err := h.stdin.Write([]byte("x")) // exec now
	require.NoError(t, err)
	select {
	case <-held:
	case err := <-traceErr:
		t.Fatalf("the tracer ended before the exec stop: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no exec stop")
	}
	exe, err := os.Readlink(procPath(h.pid(), "exe"))
	require.NoError(t, err)
	require.Contains(t, exe, "sleep", "held at the stop, /proc/PID/exe names the new program")
	require.NoError(t, c.Execed(), "the watch has heard nothing: the exec has not finished")

	err = c.Verify()
	require.ErrorIs(t, err, ErrPeerExeced)
	require.ErrorContains(t, err, "sleep")
}

// traceUntilExec runs the tracer's side for pid, started with Ptrace set:
// it traces every thread the process makes, passes on their signals, and
// closes held once the process stops at PTRACE_EVENT_EXEC, leaving it
// stopped there. It must run on the thread that started pid.
func traceUntilExec(pid int, held chan<- struct{}) error {
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil { // the stop at the helper's own start
		return err
	}
	if err := unix.PtraceSetOptions(pid, unix.PTRACE_O_TRACEEXEC|unix.PTRACE_O_TRACECLONE); err != nil {
		return err
	}
	if err := unix.PtraceCont(pid, 0); err != nil {
		return err
	}
	for {
		tid, err := unix.Wait4(-1, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if !ws.Stopped() {
			if tid == pid {
				return errors.New("the helper ended")
			}
			continue
		}
		sig := 0
		switch {
		case ws.StopSignal() == unix.SIGTRAP && ws.TrapCause() == unix.PTRACE_EVENT_EXEC:
			close(held)
			return nil
		case ws.StopSignal() == unix.SIGTRAP: // a clone event
		case ws.StopSignal() == unix.SIGSTOP: // a new thread's first stop
		default:
			sig = int(ws.StopSignal()) // the Go runtime's own (SIGURG ...)
		}
		if err := unix.PtraceCont(tid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
}
