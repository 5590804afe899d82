package attestcmd

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// sentByTerminal reports whether sig, received by this process, came from
// its terminal's keyboard and so reached the command with pid too: sig is
// one that keys send (SIGINT for ^C, SIGQUIT for ^\), this process is in
// the foreground process group of its controlling terminal, and the
// command is still in that group. The terminal signals every process of
// the group, as it does for a command run without hallmark-attest;
// forwarding it as well delivered it twice, and a program that handles a
// first ^C by stopping gracefully and a second by quitting at once
// (terraform, controller-runtime's handler) quit at once
// (TestTerminalKeysReachTheCommandOnce).
//
// Go's os/signal does not say who sent a signal, so this is inferred: a
// SIGINT that another process sends to this one alone, by pid, while it
// runs in the foreground of a terminal does not reach the command. Where
// there is no terminal, as under a CI runner, every signal is forwarded;
// one sent to every process of the step (kill -TERM -PGID, systemd's
// KillMode=control-group) then reaches the command twice.
func sentByTerminal(sig os.Signal, pid int) bool {
	if sig != syscall.SIGINT && sig != syscall.SIGQUIT {
		return false
	}
	pgrp := unix.Getpgrp()
	if g, err := unix.Getpgid(pid); err != nil || g != pgrp {
		return false // gone, or in a group of its own that the keys did not reach
	}
	fd, err := unix.Open("/dev/tty", unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false // no controlling terminal
	}
	defer unix.Close(fd) //nolint:errcheck // read-only
	fg, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	return err == nil && fg == pgrp
}
