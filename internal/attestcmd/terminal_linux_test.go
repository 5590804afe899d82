package attestcmd

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// countSignalsArg makes the test binary a step's command that counts
// signals (countSignals).
const countSignalsArg = "count-signals"

// countSignals is a command that writes "ready" in dir, then appends the
// name of every SIGINT, SIGQUIT, SIGTERM and SIGHUP it receives, each
// delivery apart as a Go program sees them, to dir/got, until dir/stop
// exists; it exits 7.
func countSignals(dir string) {
	c := make(chan os.Signal, 16)
	signal.Notify(c, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	got, err := os.Create(filepath.Join(dir, "got"))
	if err != nil {
		os.Exit(3)
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644); err != nil {
		os.Exit(3)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	for {
		select {
		case s := <-c:
			fmt.Fprintln(got, s)
		case <-tick.C:
			if _, err := os.Stat(filepath.Join(dir, "stop")); err == nil {
				os.Exit(7)
			}
		}
	}
}

// openPty opens a new pseudo-terminal: its controlling side, and the
// terminal a session takes as its own.
func openPty(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { ptm.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0)) // unlockpt
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	require.NoError(t, err)
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}

// Must show, as a developer running a step at a terminal and pressing ^C
// (or ^\) once: the command receives the signal once. The terminal sends
// it to its foreground process group, hallmark-attest and the command
// both; hallmark-attest forwarded its copy too, and a Go program saw two
// (a terraform apply takes a second ^C as "quit now, data loss may
// occur"). A signal sent to hallmark-attest alone (SIGTERM, as `kill`
// sends it) is still forwarded, once. Without a terminal every signal is
// forwarded (TestCommandGetsTheSignals).
func TestTerminalKeysReachTheCommandOnce(t *testing.T) {
	ctrlC := func(t *testing.T, ptm *os.File, _ *exec.Cmd) {
		_, err := ptm.Write([]byte{0x03}) // VINTR
		require.NoError(t, err)
	}
	for _, tc := range []struct {
		name   string
		setsid bool // the command leaves the group for a session of its own
		send   func(t *testing.T, ptm *os.File, cmd *exec.Cmd)
		want   string
	}{
		{"^C", false, ctrlC, "interrupt"},
		{`^\`, false, func(t *testing.T, ptm *os.File, _ *exec.Cmd) {
			_, err := ptm.Write([]byte{0x1c}) // VQUIT
			require.NoError(t, err)
		}, "quit"},
		{"SIGTERM to hallmark-attest", false, func(t *testing.T, _ *os.File, cmd *exec.Cmd) {
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		}, "terminated"},
		// The terminal reaches hallmark-attest only: forwarded.
		{"^C, the command in a session of its own", true, ctrlC, "interrupt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ptm, pts := openPty(t)
			command := []string{os.Args[0], countSignalsArg, ""}
			if tc.setsid {
				command = append([]string{"setsid"}, command...) // execs it, not a group leader
			}
			cmd, dir, stderr := asCommand(t, command...)
			cmd.Args[len(cmd.Args)-1] = cmd.Dir // the command counts in hallmark-attest's directory
			// A session of its own, with the pty as its controlling
			// terminal, of which it is the foreground group: as a shell
			// starts a job at a terminal.
			cmd.Stdin, cmd.Stdout = pts, pts
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
			startReady(t, cmd, dir, stderr)
			fg, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPGRP)
			require.NoError(t, err)
			require.Equal(t, cmd.Process.Pid, fg, "hallmark-attest is not the terminal's foreground group")

			// Three times, each once the last was seen and had time for a
			// second delivery: two copies sent close together may reach
			// the command as one, but not three times running.
			got := filepath.Join(dir, "got")
			deliveries := func() []string {
				b, err := os.ReadFile(got)
				require.NoError(t, err)
				return strings.Fields(string(b))
			}
			for i := 1; i <= 3; i++ {
				tc.send(t, ptm, cmd)
				require.Eventually(t, func() bool { return len(deliveries()) >= i }, 10*time.Second, 5*time.Millisecond,
					"the command never saw signal %d: %s", i, stderr)
				time.Sleep(100 * time.Millisecond)
			}
			require.NoError(t, os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644))
			require.Equal(t, 7, exitCode(t, cmd), "stderr: %s", stderr)
			require.Equal(t, []string{tc.want, tc.want, tc.want}, deliveries())
		})
	}
}
