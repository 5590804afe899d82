package attestcmd

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// startPidfd starts cmd, not yet started, as cmd.Start would, but not
// through it: on Linux, os/exec's first start in a process forks a
// throwaway child to learn whether pidfds work (Go 1.23 and later), and
// hallmark-attest starts one command per process, once per build step
// (make bench, figure "fresh"). The child comes with a pidfd from
// clone(CLONE_PIDFD), which forwarded signals go to: none can reach a
// process that took its pid once it exited. exec.Command's lookup (which
// refuses a program found in the current directory by a relative PATH
// entry) and environment are cmd's own.
//
// ok is false, and nothing runs, where cmd.Start is needed instead: stdio
// that is not files (os/exec copies it), or a command that did not start,
// for cmd.Start to start it or say why: a sandbox may refuse
// clone(CLONE_PIDFD) where os/exec, having probed, starts without it.
func startPidfd(cmd *exec.Cmd) (c child, ok bool) {
	in, inFile := cmd.Stdin.(*os.File)
	out, outFile := cmd.Stdout.(*os.File)
	errOut, errFile := cmd.Stderr.(*os.File)
	if cmd.Err != nil || !inFile || !outFile || !errFile || in == nil || out == nil || errOut == nil {
		return nil, false
	}
	pidfd := -1
	pid, err := syscall.ForkExec(cmd.Path, cmd.Args, &syscall.ProcAttr{
		Env:   cmd.Environ(),
		Files: []uintptr{in.Fd(), out.Fd(), errOut.Fd()},
		Sys:   &syscall.SysProcAttr{PidFD: &pidfd},
	})
	runtime.KeepAlive(in)
	runtime.KeepAlive(out)
	runtime.KeepAlive(errOut)
	if err != nil {
		return nil, false
	}
	return &pidfdChild{pid: pid, pidfd: pidfd}, true
}

// pidfdChild is a command started by startPidfd.
type pidfdChild struct {
	pid, pidfd int // pidfd is -1 where the kernel ignored CLONE_PIDFD (before 5.2)

	// mu keeps signal from killing by pid once wait is about to reap
	// the command: the pid may name another process after that.
	mu     sync.Mutex
	reaped bool
}

func (p *pidfdChild) signal(s os.Signal) {
	sig, ok := s.(syscall.Signal)
	if !ok {
		return
	}
	if p.pidfd >= 0 {
		err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
		if err == nil || errors.Is(err, syscall.ESRCH) {
			return
		}
	}
	// No pidfd, or a sandbox that refuses pidfd_send_signal: by pid, as
	// os/exec does without pidfds, while the pid is still the command's.
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		syscall.Kill(p.pid, sig) //nolint:errcheck // it may have exited
	}
}

func (p *pidfdChild) release() {
	if p.pidfd >= 0 {
		syscall.Close(p.pidfd) //nolint:errcheck // nothing to do about it
	}
}

func (p *pidfdChild) wait() (syscall.WaitStatus, error) {
	// An exited command keeps its pid until it is reaped: wait for the
	// exit, stop signal's kill, then reap.
	var info unix.Siginfo
	retryEINTR(func() error { return unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil) }) //nolint:errcheck // Wait4 reports it
	p.mu.Lock()
	p.reaped = true
	p.mu.Unlock()
	var ws syscall.WaitStatus
	err := retryEINTR(func() error {
		_, err := syscall.Wait4(p.pid, &ws, 0, nil)
		return err
	})
	return ws, err
}

// retryEINTR calls f until it does not fail with EINTR.
func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}
