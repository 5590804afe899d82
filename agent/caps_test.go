package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
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
// capabilities drop; as uid 65534 with the agent's four as ambient
// capabilities if asNobody, or from a copy whose file capabilities permit
// them without making them effective if permittedOnly; in a user
// namespace of its own if inUserNS. It returns what the child printed and
// its effective and permitted sets as /proc/PID/status gave them while it
// ran.
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
	// The bounding set is the thread's: the child is forked from a thread
	// that ends with its goroutine, never serving another.
	started := make(chan error, 1)
	cmd := exec.Command(exe, "-test.run=^TestAgentRefusesToStartWithoutItsCapabilities$", "-test.v")
	cmd.Env = append(env, capsChildEnv+"=1")
	cmd.SysProcAttr = attr
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	stdin, err := cmd.StdinPipe() // the child waits for it to close before it exits
	require.NoError(t, err)
	go func() {
		runtime.LockOSThread()
		started <- startWithoutCaps(cmd, drop)
	}()
	require.NoError(t, <-started)
	effective = proctest.StatusCaps(t, cmd.Process.Pid, "CapEff")
	permitted = proctest.StatusCaps(t, cmd.Process.Pid, "CapPrm")
	stdin.Close()
	require.NoError(t, cmd.Wait(), "child:\n%s", buf.Bytes())
	return buf.String(), effective, permitted
}

// startWithoutCaps starts cmd from the calling thread, which must be
// locked to its goroutine for good, after dropping drop from the
// thread's bounding set and emptying its ambient and inheritable sets (a
// runner may start its tests with some), so that cmd gets none of drop.
func startWithoutCaps(cmd *exec.Cmd, drop []int) error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		return err
	}
	caps[0].Inheritable, caps[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &caps[0]); err != nil {
		return err
	}
	for _, c := range drop {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return err
		}
	}
	return cmd.Start()
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
