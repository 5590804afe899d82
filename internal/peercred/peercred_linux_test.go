package peercred

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestKernel records the kernel and whether SO_PEERPIDFD works on it.
func TestKernel(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := peerPidfd(fds[0])
	if err == nil {
		unix.Close(pidfd)
	}
	t.Logf("kernel %s: SO_PEERPIDFD error=%v", kernelRelease(t), err)
}

// 1. The peer of this process's own connection is this process.
func TestPeerIdentifiesOwnConnection(t *testing.T) {
	l, path := listen(t)
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer cc.Close()
	// Written before Accept: must still carry this process's credentials.
	_, err = cc.Write([]byte("early"))
	require.NoError(t, err)

	c := accept(t, l)
	p := c.Peer()
	require.Equal(t, int32(os.Getpid()), p.PID)
	require.Equal(t, uint32(os.Getuid()), p.UID)
	require.Equal(t, uint32(os.Getgid()), p.GID)

	exe, err := os.Executable()
	require.NoError(t, err)
	require.Equal(t, exe, p.ExePath)
	var st unix.Stat_t
	require.NoError(t, unix.Stat(exe, &st))
	require.Equal(t, FileID{Dev: uint64(st.Dev), Ino: st.Ino}, p.Exe)

	self, err := readStartTime(int32(os.Getpid()))
	require.NoError(t, err)
	require.Equal(t, self, p.StartTime)
	require.NotZero(t, p.StartTime)

	args, err := p.Cmdline()
	require.NoError(t, err)
	require.Equal(t, os.Args, args)

	require.NoError(t, c.Verify())
	require.Equal(t, "early", readN(t, c, 5))

	// Echo back and read again: an ordinary net.Conn.
	_, err = c.Write([]byte("pong"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(cc, buf)
	require.NoError(t, err)
	require.Equal(t, "pong", string(buf))
	require.Equal(t, path, c.LocalAddr().String())
	require.Equal(t, path, l.Addr().String())
}

// 2. Verify holds while the client lives and fails with ErrPeerGone once it
// exits, both as a zombie and after it is reaped.
func TestVerifyPeerGone(t *testing.T) {
	l, path := listen(t)
	h := startHelper(t, "hold", path)
	h.expect(t, "ready")
	c := accept(t, l)
	require.Equal(t, h.pid(), c.Peer().PID)
	require.Equal(t, "hello", readN(t, c, 5))
	require.NoError(t, c.Verify())
	args, err := c.Peer().Cmdline()
	require.NoError(t, err)
	require.Contains(t, args, "-test.run=^TestHelperProcess$")

	// Killed but not yet reaped: a zombie is gone too.
	require.NoError(t, h.cmd.Process.Signal(unix.SIGKILL))
	waitFor(t, "ErrPeerGone from a zombie", func() bool { return errors.Is(c.Verify(), ErrPeerGone) })
	h.cmd.Wait()
	require.ErrorIs(t, c.Verify(), ErrPeerGone)
	_, err = c.Peer().Cmdline()
	require.ErrorIs(t, err, ErrPeerGone)

	// Reads after the peer died see end of file.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Read(make([]byte, 8))
	require.ErrorIs(t, err, io.EOF)
}

// 3. A peer that execs another binary, keeping the socket, is caught.
func TestVerifyPeerExeced(t *testing.T) {
	l, path := listen(t)
	h := startHelper(t, "exec", path)
	c := accept(t, l)
	h.expect(t, "connected")
	exe, err := os.Executable()
	require.NoError(t, err)
	require.Equal(t, exe, c.Peer().ExePath)
	require.Equal(t, h.pid(), c.Peer().PID)
	require.Equal(t, "pre-exec", readN(t, c, 8))
	require.NoError(t, c.Verify())

	_, err = h.stdin.Write([]byte("x")) // exec now
	require.NoError(t, err)

	var last error
	waitFor(t, "ErrPeerExeced", func() bool {
		last = c.Verify()
		require.NotErrorIs(t, last, ErrPeerGone)
		return errors.Is(last, ErrPeerExeced)
	})
	require.Contains(t, last.Error(), "/sleep")
	// The new argv appears a moment after the new executable.
	waitFor(t, "the new command line", func() bool {
		args, err := c.Peer().Cmdline()
		require.NoError(t, err)
		return len(args) == 2 && args[0] == "sleep" && args[1] == "30"
	})
}

// 4. A connection passed over SCM_RIGHTS: bytes from the receiver are
// refused, bytes from the process that connected are read.
func TestForeignSenderFDPassing(t *testing.T) {
	l, path := listen(t)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	fa, fb := os.NewFile(uintptr(pair[0]), "pair-a"), os.NewFile(uintptr(pair[1]), "pair-b")
	defer fa.Close()
	defer fb.Close()

	b := startHelper(t, "recv-fd", path, fb)
	a := startHelper(t, "pass-fd", path, fa)
	c := accept(t, l)
	require.Equal(t, a.pid(), c.Peer().PID)
	a.expect(t, "sent")
	b.expect(t, "written")

	// Both messages are queued; the kernel does not merge them into one
	// read because their credentials differ.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "from-A", string(buf[:n]))
	require.NoError(t, c.Verify())

	n, err = c.Read(buf)
	require.ErrorIs(t, err, ErrForeignSender)
	require.Zero(t, n)
	require.NotContains(t, string(buf), "from-B")
	require.Contains(t, err.Error(), "pid "+strconv.Itoa(int(b.pid())))

	// The connection is closed and stays refused.
	_, err = c.Read(buf)
	require.ErrorIs(t, err, ErrForeignSender)
	_, err = c.Write([]byte("x"))
	require.ErrorIs(t, err, ErrForeignSender)
	require.ErrorIs(t, c.Verify(), net.ErrClosed)
}

// 5. A connection inherited by a child process: the child's bytes are
// refused, the parent's read.
func TestForeignSenderInherited(t *testing.T) {
	l, path := listen(t)
	c, cc := dialAccepted(t, l, path)
	require.Equal(t, int32(os.Getpid()), c.Peer().PID)

	_, err := cc.Write([]byte("parent"))
	require.NoError(t, err)
	require.Equal(t, "parent", readN(t, c, 6))

	f, err := cc.(*net.UnixConn).File()
	require.NoError(t, err)
	child := startHelper(t, "write-fd3", path, f)
	f.Close()
	child.expect(t, "written")

	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	n, err := c.Read(make([]byte, 64))
	require.ErrorIs(t, err, ErrForeignSender)
	require.Zero(t, n)
	require.Contains(t, err.Error(), "pid "+strconv.Itoa(int(child.pid())))
	child.stop(t)
}

// Control data other than credentials (here a file descriptor) closes the
// connection without installing the descriptor in this process.
func TestRefusesPassedDescriptors(t *testing.T) {
	l, path := listen(t)
	cc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	defer cc.Close()
	c := accept(t, l)

	f, err := os.Open("/dev/null")
	require.NoError(t, err)
	defer f.Close()
	before := countFDs(t)
	_, _, err = cc.WriteMsgUnix([]byte("fd"), unix.UnixRights(int(f.Fd())), nil)
	require.NoError(t, err)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	n, err := c.Read(make([]byte, 8))
	require.ErrorIs(t, err, errCtrlMsg)
	require.Zero(t, n)
	// The Conn is closed: its socket and pidfd are gone, nothing was added.
	require.Equal(t, before-2, countFDs(t))
}

// Read behaves like a plain net.Conn read: zero-length reads, deadlines and
// end of file.
func TestReadSemantics(t *testing.T) {
	l, path := listen(t)
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	c := accept(t, l)

	n, err := c.Read(nil)
	require.NoError(t, err)
	require.Zero(t, n)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Millisecond)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	_, err = cc.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, cc.Close())
	require.Equal(t, "bye", readN(t, c, 3))
	n, err = c.Read(make([]byte, 8))
	require.Equal(t, io.EOF, err)
	require.Zero(t, n)

	require.NoError(t, c.Close())
	require.ErrorIs(t, c.Close(), net.ErrClosed)
	require.ErrorIs(t, c.Verify(), net.ErrClosed)
}

// A failed read returns 0 bytes, never recvmsg's -1: a peer that closes
// with our data unread makes the next read fail with ECONNRESET, and bufio
// (gRPC's HTTP/2 framer) panics on a negative count.
func TestReadErrorReturnsZero(t *testing.T) {
	l, path := listen(t)
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	c := accept(t, l)
	_, err = c.Write([]byte("unread"))
	require.NoError(t, err)
	require.NoError(t, cc.Close())

	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	n, err := c.Read(make([]byte, 8))
	require.ErrorIs(t, err, syscall.ECONNRESET)
	require.Zero(t, n)
}

// Without SO_PEERPIDFD (kernels before 6.5) the pidfd comes from pidfd_open
// and everything else works the same.
func TestFallbackWithoutPeerPidfd(t *testing.T) {
	orig := peerPidfd
	peerPidfd = func(int) (int, error) { return -1, unix.ENOPROTOOPT }
	t.Cleanup(func() { peerPidfd = orig })

	l, path := listen(t)
	h := startHelper(t, "hold", path)
	h.expect(t, "ready")
	c := accept(t, l)
	require.Equal(t, h.pid(), c.Peer().PID)
	require.NoError(t, c.Verify())
	h.stop(t)
	require.ErrorIs(t, c.Verify(), ErrPeerGone)
}

// A peer that exited before Accept cannot be identified: its connection is
// closed, reported, and Accept returns the next one.
func TestAcceptSkipsUnidentifiable(t *testing.T) {
	path := sockDir(t) + "/agent.sock"
	skipped := make(chan error, 4)
	l, err := Listen(ListenConfig{Path: path, GID: -1, Refused: func(err error) []byte { skipped <- err; return nil }})
	require.NoError(t, err)
	defer l.Close()

	h := startHelper(t, "connect-exit", path)
	require.NoError(t, h.cmd.Wait(), "helper stderr: %s", h.stderr)
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer cc.Close()

	c := accept(t, l)
	require.Equal(t, int32(os.Getpid()), c.Peer().PID)
	select {
	case err := <-skipped:
		require.Error(t, err)
		t.Logf("skipped: %v", err)
	default:
		t.Fatal("Refused was not called for the exited peer")
	}
}

// Must show, as a caller in another pid namespace meets it: the kernel
// gives a listener that cannot see into the caller's pid namespace pid 0;
// the connection is refused, and the caller is told why (Refused) before
// it is closed. The listener runs in a pid namespace of its own, where the
// test's process has no pid.
func TestRefusalTellsACallerItCannotSee(t *testing.T) {
	path := sockDir(t) + "/agent.sock"
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRole+"=listen-refuse", envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if os.Geteuid() != 0 {
		// A user namespace lets others make a pid namespace.
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: os.Getuid(), HostID: os.Getuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: os.Getgid(), HostID: os.Getgid(), Size: 1}}
	}
	h := startPrepared(t, cmd)
	h.expect(t, "ready")

	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	said, err := io.ReadAll(c)
	require.NoError(t, err, "closed by the listener")
	require.Contains(t, string(said), ErrPidNotVisible.Error())
	require.Contains(t, string(said), "uid "+strconv.Itoa(os.Getuid()))
}

// 8. Many connections, refused ones, the fallback path and listeners leave
// no descriptors behind.
func TestNoFDLeaks(t *testing.T) {
	l, path := listen(t)
	roundTrip := func() {
		cc, err := net.Dial("unix", path)
		require.NoError(t, err)
		c := accept(t, l)
		_, err = cc.Write([]byte("x"))
		require.NoError(t, err)
		require.Equal(t, "x", readN(t, c, 1))
		require.NoError(t, c.Verify())
		_, err = c.Peer().Cmdline()
		require.NoError(t, err)
		require.NoError(t, c.Close())
		require.NoError(t, cc.Close())
	}
	roundTrip() // warm up the runtime's poller
	before := countFDs(t)

	for range 200 {
		roundTrip()
	}

	orig := peerPidfd
	peerPidfd = func(int) (int, error) { return -1, unix.ENOPROTOOPT }
	for range 50 {
		roundTrip()
	}
	// The next 50 connections fail identification after SO_PEERCRED.
	failed, skips := 0, 0
	peerPidfd = func(fd int) (int, error) {
		if failed < 50 {
			failed++
			return -1, unix.EINVAL
		}
		return orig(fd)
	}
	l.refused = func(error) []byte { skips++; return nil }
	for range 50 {
		cc, err := net.Dial("unix", path)
		require.NoError(t, err)
		require.NoError(t, cc.Close())
	}
	roundTrip() // Accept skips the 50, then returns this one
	require.Equal(t, 50, skips)
	peerPidfd = orig

	for range 20 {
		p := sockDir(t) + "/x.sock"
		l2, err := Listen(ListenConfig{Path: p, GID: -1})
		require.NoError(t, err)
		require.NoError(t, l2.Close())
		_, err = os.Lstat(p)
		require.ErrorIs(t, err, os.ErrNotExist)
	}

	require.Equal(t, before, countFDs(t))
}

func TestSplitCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{}},
		{"a\x00", []string{"a"}},
		{"a\x00b c\x00", []string{"a", "b c"}},
		{"rewritten argv", []string{"rewritten argv"}},
		{"a\x00\x00", []string{"a", ""}},
	} {
		require.Equal(t, tc.want, splitCmdline([]byte(tc.in)), "%q", tc.in)
	}
}

func TestParseStartTime(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     uint64
		err      bool
	}{
		{"plain", "1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 42 1000 100\n", 42, false},
		{"comm with spaces and parens", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0", 99, false},
		{"too short", "1 (x) S 0 1", 0, true},
		{"no comm", "1 x S 0", 0, true},
		{"not a number", "1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 zz 0", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStartTime([]byte(tc.in))
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// FuzzParseStartTime: any command name, however hostile, leaves field 22
// where it is; arbitrary input never panics.
func FuzzParseStartTime(f *testing.F) {
	f.Add("init", uint64(42))
	f.Add("a) (b) S 1 2", uint64(0))
	f.Add("", uint64(1<<63))
	f.Fuzz(func(t *testing.T, comm string, v uint64) {
		parseStartTime([]byte(comm))
		line := "123 (" + comm + ") S 1 123 123 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 " +
			strconv.FormatUint(v, 10) + " 1024 5 18446744073709551615\n"
		got, err := parseStartTime([]byte(line))
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		if got != v {
			t.Fatalf("parse %q: got %d, want %d", line, got, v)
		}
	})
}
