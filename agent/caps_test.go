package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hallmark-dev/hallmark/internal/proctest"
)

// capsChildEnv marks this test binary started as the capabilities test's
// child: it runs an agent with a local socket and prints how that went.
const capsChildEnv = "HALLMARK_AGENT_TEST_CAPS_CHILD"

// Must show: an agent that lacks a capability its local API needs refuses
// to start, naming every one it lacks, and leaves no socket behind,
// rather than fail its callers one by one later; with all of them it
// starts and serves, as root and as the systemd unit runs it (another
// user, the four as ambient capabilities). Each child is this test
// binary, started from a thread whose capability bounding set was cut,
// so that the kernel gives it none of the dropped capabilities: what a
// container or a unit file that leaves them out does.
func TestAgentRefusesToStartWithoutItsCapabilities(t *testing.T) {
	if os.Getenv(capsChildEnv) != "" {
		capsChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("starting a child without some of root's capabilities takes root: run as root (CI does)")
	}
	const refused = "outcome: refused: agent: local API: "
	for _, tc := range []struct {
		name string
		drop []int
		// asNobody runs the child as uid 65534 with the four as ambient
		// capabilities; permittedOnly as uid 65534 from a copy whose file
		// capabilities permit the four without making them effective;
		// inUserNS as root of a user namespace of its own.
		asNobody, permittedOnly, inUserNS bool
		want                              string
	}{
		{name: "as root", want: "outcome: served until its context ended"},
		{name: "as another user with the four as ambient capabilities", asNobody: true, want: "outcome: served until its context ended"},
		{name: "without CAP_SYS_PTRACE", drop: []int{unix.CAP_SYS_PTRACE}, want: refused + "hallmark-agent's effective capabilities lack CAP_SYS_PTRACE: "},
		{name: "without CAP_SETGID", drop: []int{unix.CAP_SETGID}, want: refused + "hallmark-agent's effective capabilities lack CAP_SETGID: "},
		{name: "without CAP_SETUID", drop: []int{unix.CAP_SETUID}, want: refused + "hallmark-agent's effective capabilities lack CAP_SETUID: "},
		{name: "without CAP_NET_ADMIN", drop: []int{unix.CAP_NET_ADMIN}, want: refused + "hallmark-agent's effective capabilities lack CAP_NET_ADMIN: "},
		{name: "as a container's root (no CAP_SYS_PTRACE, no CAP_NET_ADMIN)", drop: []int{unix.CAP_SYS_PTRACE, unix.CAP_NET_ADMIN},
			want: refused + "hallmark-agent's effective capabilities lack CAP_SYS_PTRACE, CAP_NET_ADMIN: "},
		// Permitted is not enough: the measuring threads start from the
		// effective set.
		{name: "as another user with the four permitted, none effective", permittedOnly: true,
			want: refused + "hallmark-agent's effective capabilities lack CAP_SETGID, CAP_SETUID, CAP_SYS_PTRACE, CAP_NET_ADMIN: "},
		// Every capability, but in a namespace of its own: the exec
		// watch's subscription is refused, and says why.
		{name: "in a user namespace of its own", inUserNS: true, want: refused + "peercred: exec watch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, effective, permitted := runCapsChild(t, tc.drop, tc.asNobody, tc.permittedOnly, tc.inUserNS)
			for _, c := range localAPICaps {
				dropped := slices.Contains(tc.drop, c.bit)
				if !dropped {
					require.NotZero(t, permitted&(1<<c.bit), "the child is permitted %s", c.name)
				}
				if tc.permittedOnly || dropped {
					require.Zero(t, effective&(1<<c.bit), "the child runs without %s", c.name)
				} else {
					require.NotZero(t, effective&(1<<c.bit), "the child holds %s", c.name)
				}
			}
			require.Contains(t, out, tc.want)
			if strings.HasPrefix(tc.want, refused) {
				require.Contains(t, out, "socket: absent", "a refused agent leaves no socket")
			} else {
				require.Contains(t, out, "socket: served", "the agent served its socket")
			}
			if tc.inUserNS {
				require.Contains(t, out, "CAP_NET_ADMIN and the host's network, user and pid namespaces")
			}
		})
	}
}

// runCapsChild starts this test binary as the child, without the
// capabilities drop, as uid 65534 with the agent's four as ambient
// capabilities if asNobody, in a user namespace of its own if inUserNS,
// and returns what it printed and its effective capabilities as
// /proc/PID/status gave them while it ran.
func runCapsChild(t *testing.T, drop []int, asNobody, permittedOnly, inUserNS bool) (out string, effective, permitted uint64) {
	t.Helper()
	exe, env := os.Args[0], os.Environ()
	attr := &syscall.SysProcAttr{}
	if asNobody || permittedOnly {
		exe = proctest.WorldExecutableCopy(t)
		tmp, err := os.MkdirTemp("", "hm-caps-")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(tmp) })
		require.NoError(t, os.Chmod(tmp, 0o777))
		env = []string{"TMPDIR=" + tmp} // nothing of this process's environment for another user
		attr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	var four uint32
	for _, c := range localAPICaps {
		if asNobody {
			attr.AmbientCaps = append(attr.AmbientCaps, uintptr(c.bit))
		}
		four |= 1 << c.bit // all below 32
	}
	if permittedOnly {
		// security.capability, VFS_CAP_REVISION_2 without
		// VFS_CAP_FLAGS_EFFECTIVE: permitted {four}, inheritable none.
		xattr := binary.LittleEndian.AppendUint32(nil, 0x02000000)
		xattr = binary.LittleEndian.AppendUint32(xattr, four)
		xattr = append(xattr, make([]byte, 12)...)
		require.NoError(t, unix.Setxattr(exe, "security.capability", xattr, 0), "file capabilities on %s", exe)
	}
	if inUserNS {
		attr.Cloneflags = syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}}
	}
	type result struct {
		out      []byte
		eff, prm uint64
		err      error
	}
	done := make(chan result, 1)
	go func() {
		// The bounding set is the thread's: the child is forked from this
		// one, which ends with this goroutine, never serving another.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		// Nothing to inherit around the bounding set: no ambient
		// capabilities and an empty inheritable set (a runner may start
		// its tests with some).
		if r.err = unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); r.err != nil {
			return
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		if r.err = unix.Capget(&hdr, &caps[0]); r.err != nil {
			return
		}
		caps[0].Inheritable, caps[1].Inheritable = 0, 0
		if r.err = unix.Capset(&hdr, &caps[0]); r.err != nil {
			return
		}
		for _, c := range drop {
			if r.err = unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); r.err != nil {
				return
			}
		}
		cmd := exec.Command(exe, "-test.run=^TestAgentRefusesToStartWithoutItsCapabilities$", "-test.v")
		cmd.Env = append(env, capsChildEnv+"=1")
		cmd.SysProcAttr = attr
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
		r.eff, r.prm, r.err = childCaps(cmd.Process.Pid)
		stdin.Close()
		if werr := cmd.Wait(); r.err == nil {
			r.err = werr
		}
		r.out = buf.Bytes()
	}()
	r := <-done
	require.NoError(t, r.err, "child:\n%s", r.out)
	return string(r.out), r.eff, r.prm
}

// capsChild is the child: an agent with a local socket, run until its
// socket serves (or it refuses to start); it prints how Run ended and
// whether its socket was served, then waits for its parent to read its
// capabilities.
func capsChild(t *testing.T) {
	dir := t.TempDir()
	a := newTestAgent(t, nil)
	a.cfg.SocketPath = filepath.Join(dir, "agent.sock")
	a.cfg.SocketMode, a.cfg.SocketGID = DefaultSocketMode, -1
	// Ended as soon as the socket serves; 10 s for the exec watch's start
	// on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
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
		if c, derr := net.Dial("unix", a.cfg.SocketPath); derr == nil && !served {
			c.Close()
			served = true
			cancel()
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

// childCaps is a process's CapEff and CapPrm from /proc/PID/status: the
// test's own reading, not the agent's capget.
func childCaps(pid int) (effective, permitted uint64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	var found int
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		for _, f := range []struct {
			prefix string
			to     *uint64
		}{{"CapEff:", &effective}, {"CapPrm:", &permitted}} {
			if v, ok := bytes.CutPrefix(line, []byte(f.prefix)); ok {
				if *f.to, err = strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64); err != nil {
					return 0, 0, err
				}
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, errors.New("no CapEff or CapPrm line")
	}
	return effective, permitted, nil
}
