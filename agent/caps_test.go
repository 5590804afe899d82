package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// capsChildEnv marks this test binary started as the capabilities test's
// child: it runs an agent with a local socket and prints how that went.
const capsChildEnv = "HALLMARK_AGENT_TEST_CAPS_CHILD"

// Must show: an agent that lacks a capability its local API needs refuses
// to start, naming what it lacks, and leaves no socket behind, rather than
// fail its callers one by one later; with all of them (root here) it
// starts and serves. Each child is this test binary, started as root from
// a thread whose capability bounding set was cut, so the kernel gives it
// none of the dropped capabilities: what a container or a unit file that
// leaves them out does.
func TestAgentRefusesToStartWithoutItsCapabilities(t *testing.T) {
	if os.Getenv(capsChildEnv) != "" {
		capsChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("starting a child without some of root's capabilities takes root: run as root (CI does)")
	}
	for _, tc := range []struct {
		name string
		drop []int
		want string // how the child's agent ended
	}{
		{"with all of them", nil, "served until its context ended"},
		{"without CAP_SYS_PTRACE", []int{unix.CAP_SYS_PTRACE}, "refused: agent: local API: hallmark-agent lacks CAP_SYS_PTRACE: "},
		{"without CAP_SETUID and CAP_SETGID", []int{unix.CAP_SETUID, unix.CAP_SETGID}, "refused: agent: local API: hallmark-agent lacks CAP_SETGID, CAP_SETUID: "},
		{"without CAP_SETGID", []int{unix.CAP_SETGID}, "refused: agent: local API: hallmark-agent lacks CAP_SETGID: "},
		{"without CAP_NET_ADMIN", []int{unix.CAP_NET_ADMIN}, "refused: agent: local API: "}, // WatchExecs's own refusal
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, effective := runCapsChild(t, tc.drop)
			for _, c := range tc.drop {
				require.Zero(t, effective&(1<<c), "the child runs without capability %d", c)
			}
			for _, c := range localAPICaps {
				if !slices.Contains(tc.drop, c.bit) {
					require.NotZero(t, effective&(1<<c.bit), "the child keeps %s", c.name)
				}
			}
			require.Contains(t, out, "outcome: "+tc.want)
			if tc.drop != nil {
				require.Contains(t, out, "socket: absent", "a refused agent leaves no socket")
			} else {
				require.Contains(t, out, "socket: served", "the agent served its socket")
			}
			if slices.Equal(tc.drop, []int{unix.CAP_NET_ADMIN}) {
				require.Contains(t, out, "CAP_NET_ADMIN", "the exec watch's refusal names what it needs")
			}
		})
	}
}

// runCapsChild starts this test binary as the child, without the
// capabilities drop, and returns what it printed and its effective
// capabilities as /proc/PID/status gave them while it ran.
func runCapsChild(t *testing.T, drop []int) (out string, effective uint64) {
	t.Helper()
	type result struct {
		out []byte
		eff uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The bounding set is the thread's: the child is forked from this
		// one, which ends with this goroutine, never serving another.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		for _, c := range drop {
			if r.err = unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); r.err != nil {
				return
			}
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestAgentRefusesToStartWithoutItsCapabilities$", "-test.v")
		cmd.Env = append(os.Environ(), capsChildEnv+"=1")
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		stdin, err := cmd.StdinPipe() // the child waits for it to close before it exits
		if err != nil {
			r.err = err
			return
		}
		if r.err = cmd.Start(); r.err != nil {
			return
		}
		r.eff, r.err = effectiveCaps(cmd.Process.Pid)
		stdin.Close()
		if werr := cmd.Wait(); r.err == nil {
			r.err = werr
		}
		r.out = buf.Bytes()
	}()
	r := <-done
	require.NoError(t, r.err, "child:\n%s", r.out)
	return string(r.out), r.eff
}

// capsChild is the child: an agent with a local socket, given a second;
// it prints how Run ended and whether its socket was served, then waits
// for its parent to read its capabilities.
func capsChild(t *testing.T) {
	dir := t.TempDir()
	a := newTestAgent(t, nil)
	a.cfg.SocketPath = filepath.Join(dir, "agent.sock")
	a.cfg.SocketMode, a.cfg.SocketGID = DefaultSocketMode, -1
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var (
		err    error
		early  bool // Run returned before its context ended
		served bool
	)
wait:
	for {
		select {
		case err = <-done:
			early = ctx.Err() == nil
			break wait
		case <-time.After(20 * time.Millisecond):
		}
		if c, derr := net.Dial("unix", a.cfg.SocketPath); derr == nil {
			c.Close()
			served = true
		}
	}
	if early {
		fmt.Printf("outcome: refused: %v\n", err)
	} else {
		fmt.Printf("outcome: served until its context ended\n")
	}
	if _, serr := os.Stat(a.cfg.SocketPath); served {
		fmt.Println("socket: served")
	} else if os.IsNotExist(serr) {
		fmt.Println("socket: absent")
	}
	os.Stdin.Read(make([]byte, 1)) //nolint:errcheck // EOF: the parent has read our capabilities
}

// effectiveCaps is a process's CapEff from /proc/PID/status: the test's
// own reading, not the agent's capget.
func effectiveCaps(pid int) (uint64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("CapEff:")); ok {
			return strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line")
}
