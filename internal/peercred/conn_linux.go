package peercred

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	// ErrForeignSender means bytes on a connection came from a process other
	// than the one that connected (the socket was passed or inherited). The
	// bytes are dropped and the connection closed.
	ErrForeignSender = errors.New("peercred: bytes from a process other than the peer")
	// ErrPeerGone means the process that connected has exited; its pid may
	// now name another process.
	ErrPeerGone = errors.New("peercred: peer process is gone")
	// ErrPeerExeced means the process that connected has exec'd since: it
	// runs another program image, whatever file it was loaded from.
	ErrPeerExeced = errors.New("peercred: peer process exec'd since it connected")
	// ErrPidNotVisible means the kernel gave the peer's pid as 0: the peer
	// runs in a pid namespace that this process's cannot see into (for
	// example the host's, seen from a container).
	ErrPidNotVisible = errors.New("peercred: the peer's pid is not visible")
)

// errCtrlMsg means a read carried control data other than the kernel's
// credentials (for example file descriptors); the connection is closed.
var errCtrlMsg = errors.New("peercred: unexpected control message")

// credsSpace fits exactly one SCM_CREDENTIALS message. Anything more (such
// as SCM_RIGHTS) does not fit, so the kernel truncates it (MSG_CTRUNC)
// instead of installing descriptors in this process.
var credsSpace = unix.CmsgSpace(unix.SizeofUcred)

// Conn is a connection accepted by a Listener: a net.Conn whose reads only
// ever return bytes written by the process that connected.
//
// Every Read fails with ErrForeignSender, and closes the connection, once
// the kernel reports bytes from another pid. Pids can be reused, so a
// handler should also call Verify after reading a request and before acting
// on it: together they rule out the peer having exited and its pid having
// been handed to a process that received the socket.
type Conn struct {
	uc    *net.UnixConn
	info  Info
	laddr net.Addr

	readMu sync.Mutex // serializes Read, which owns oob
	oob    []byte

	mu     sync.RWMutex
	pidfd  int   // -1 once closed
	broken error // sticky, set when the connection was refused
	closed bool
	done   chan struct{} // closed by Close
	// statFD and cmdlineFD are the peer's /proc/PID/stat and cmdline,
	// opened on first use (while mu is held for reading) and kept until
	// Close (which holds mu): -1 until then and after. A /proc/PID
	// descriptor stays with the process it was opened for: once that
	// process is gone, reads through it fail even if its pid names
	// another process by then.
	statFD, cmdlineFD atomic.Int32

	// watch, when set, reports the peer's execs since watchedAt (a
	// CLOCK_MONOTONIC time) in execed: the first exec's time, or execLost.
	watch     *ExecWatch
	watchedAt int64
	execed    atomic.Int64
	// release gives back the connection's place under the listener's
	// limits; called once, by Close.
	release func()
	// caps is Capabilities' answer, kept: a process's permitted set only
	// ever shrinks without an exec.
	caps atomic.Pointer[uint64]
}

// Peer returns the process that connected, as identified at accept.
func (c *Conn) Peer() Info { return c.info }

// Done is closed when the connection is closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Read reads bytes written by the peer. Data from any other process is
// never returned: Read fails with an error wrapping ErrForeignSender and the
// connection is closed.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.brokenErr(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	c.readMu.Lock()
	defer c.readMu.Unlock()

	n, oobn, flags, _, err := c.uc.ReadMsgUnix(p, c.oob)
	// On errors recvmsg's -1 comes through; io.Reader forbids it.
	n, oobn = max(n, 0), max(oobn, 0)
	if n > 0 {
		if cerr := c.checkCreds(c.oob[:oobn], flags); cerr != nil {
			clear(p[:n])
			c.fail(cerr)
			return 0, cerr
		}
	} else if oobn > 0 {
		// At end of file the kernel still reports (empty) credentials.
		closeRights(c.oob[:oobn])
	}
	switch {
	case n == 0 && err == nil:
		err = io.EOF // a stream read of 0 bytes is end of file
	case errors.Is(err, io.EOF):
		err = io.EOF // unwrapped, as net.Conn.Read returns it
	}
	return n, err
}

// checkCreds requires the control data of one read to be exactly the
// kernel's credentials for the peer's pid.
func (c *Conn) checkCreds(oob []byte, flags int) error {
	// The usual case, without allocating: exactly one SCM_CREDENTIALS
	// message, from the peer. Anything else takes the long way, which
	// also says what was wrong.
	if flags&unix.MSG_CTRUNC == 0 && len(oob) == credsSpace {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_CREDENTIALS &&
			uint64(h.Len) == uint64(unix.CmsgLen(unix.SizeofUcred)) {
			cred := (*unix.Ucred)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			if cred.Pid == c.info.PID {
				return nil
			}
		}
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("%w: %w", errCtrlMsg, err)
	}
	var cred *unix.Ucred
	var bad error
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_CREDENTIALS && cred == nil:
			cred, err = unix.ParseUnixCredentials(&m)
			if err != nil {
				bad = fmt.Errorf("%w: %w", errCtrlMsg, err)
			}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS:
			// Does not fit in oob; close anything the kernel installed.
			closeFDs(&m)
			bad = fmt.Errorf("%w: file descriptors", errCtrlMsg)
		default:
			bad = fmt.Errorf("%w: level %d type %d", errCtrlMsg, m.Header.Level, m.Header.Type)
		}
	}
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		return fmt.Errorf("%w: truncated (file descriptors?)", errCtrlMsg)
	case bad != nil:
		return bad
	case cred == nil:
		// SO_PASSCRED is inherited from the listening socket, so the kernel
		// attaches credentials to every message; none means we cannot tell.
		return fmt.Errorf("%w: no credentials on read", ErrForeignSender)
	case cred.Pid != c.info.PID:
		return fmt.Errorf("%w: pid %d (uid %d) wrote to the connection of pid %d",
			ErrForeignSender, cred.Pid, cred.Uid, c.info.PID)
	}
	return nil
}

// closeRights closes any file descriptors received in oob.
func closeRights(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		if msgs[i].Header.Level == unix.SOL_SOCKET && msgs[i].Header.Type == unix.SCM_RIGHTS {
			closeFDs(&msgs[i])
		}
	}
}

func closeFDs(m *unix.SocketControlMessage) {
	if fds, err := unix.ParseUnixRights(m); err == nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
}

// Write writes to the peer.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.brokenErr(); err != nil {
		return 0, err
	}
	return c.uc.Write(p)
}

// Verify confirms that the peer is still the process that connected,
// running the program image it ran then: it has not exited (its pidfd is
// not readable) and, on a Listener with an ExecWatch, it has not exec'd
// since it connected, not even into the same binary. Without a watch it
// checks what /proc can tell: the same start time and the same file at
// /proc/PID/exe. It returns an error wrapping ErrPeerGone, ErrPeerExeced or
// ErrExecWatch with detail, or another error if /proc could not be read.
func (c *Conn) Verify() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return fmt.Errorf("peercred: verify: %w", net.ErrClosed)
	}
	i := c.info
	if c.watch != nil {
		// The watch hears of an exec only as the process resumes from
		// it, and a tracer can hold it stopped at PTRACE_EVENT_EXEC for
		// as long as it likes, /proc/PID/exe already naming the new
		// program (found by an attacker review: a request sent before
		// the exec was attributed to the program exec'd). So the
		// executable is compared too, and read first: whatever a held
		// exec put there is not what connected, and an exec back needs
		// the held one to resume, which queues its event before the
		// drain below (read after the drain, an exec away and back in
		// between went unseen: a second review).
		exe, exeErr := statExe(i.PID)
		werr := c.watch.check(c)
		// Alive after the check means every exec of this pid since the
		// watch began was the peer's own (a pid is reused only once its
		// process is reaped); gone is the more precise reason otherwise.
		if err := checkAlive(c.pidfd, i.PID); err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
		return c.sameExe(exe, exeErr)
	}
	if err := checkAlive(c.pidfd, i.PID); err != nil {
		return err
	}
	if err := c.checkStartTime(); err != nil {
		return err
	}
	exe, exeErr := statExe(i.PID)
	// Alive after the /proc reads means the pid named this process during
	// them (a pid is only reused once its process is reaped).
	if err := checkAlive(c.pidfd, i.PID); err != nil {
		return err
	}
	return c.sameExe(exe, exeErr)
}

// sameExe is nil when exe, the peer's /proc/PID/exe as just read (or
// exeErr), is the file it connected with.
func (c *Conn) sameExe(exe FileID, exeErr error) error {
	i := c.info
	if exeErr != nil {
		return fmt.Errorf("peercred: verify pid %d: %w", i.PID, exeErr)
	}
	if exe != i.Exe {
		path, _ := os.Readlink(procPath(i.PID, "exe")) // for the message only
		return fmt.Errorf("%w: pid %d ran %s (%s), now %s (%s)",
			ErrPeerExeced, i.PID, i.ExePath, i.Exe, path, exe)
	}
	return nil
}

// Execed reports, without any system call, whether the connection's
// ExecWatch has already seen its peer exec; Verify is the full check.
func (c *Conn) Execed() error {
	if c.watch == nil {
		return nil
	}
	return c.execErr()
}

func (c *Conn) execErr() error {
	switch t := c.execed.Load(); {
	case t == execLost:
		return fmt.Errorf("%w: the kernel dropped process events while pid %d was connected", ErrExecWatch, c.info.PID)
	case t != 0:
		return fmt.Errorf("%w: pid %d exec'd %s after connecting", ErrPeerExeced, c.info.PID,
			time.Duration(t-c.watchedAt).Round(time.Microsecond))
	}
	return nil
}

// maxEarly bounds the bytes a peer may have sent before its connection
// was watched: a protocol's greeting, not a request.
const maxEarly = 4 << 10

// early returns the bytes the peer has sent and nobody has read yet
// (FIONREAD, then a MSG_PEEK read), failing if there are more than
// maxEarly or if they came from more than one sender.
func (c *Conn) early() ([]byte, error) {
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		b    []byte
		serr error
	)
	if err := rc.Control(func(fd uintptr) {
		n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil {
			serr = fmt.Errorf("peercred: FIONREAD: %w", err)
			return
		}
		if n > maxEarly {
			serr = fmt.Errorf("peercred: %d bytes arrived before the connection was watched, more than a greeting", n)
			return
		}
		if n == 0 {
			return
		}
		b = make([]byte, n)
		// A peek stops where the sender changes: fewer bytes than queued
		// means more than one sender.
		got, _, err := unix.Recvfrom(int(fd), b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err != nil:
			serr = fmt.Errorf("peercred: peek: %w", err)
		case got != n:
			serr = fmt.Errorf("%w: the first %d bytes came from more than one process", ErrForeignSender, n)
		}
	}); err != nil {
		return nil, err
	}
	return b, serr
}

// OpenRoot opens the peer's root directory (its /proc/PID/root: the root
// of its mount namespace, or of its chroot) as an O_PATH descriptor, for
// resolving paths as the peer would. The path is the agent's own, built
// from the kernel's pid; the pidfd proves afterwards that the pid still
// named the peer. The caller closes the descriptor.
func (c *Conn) OpenRoot() (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return -1, fmt.Errorf("peercred: open root: %w", net.ErrClosed)
	}
	p := procPath(c.info.PID, "root")
	fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return -1, fmt.Errorf("%w: pid %d exited", ErrPeerGone, c.info.PID)
		}
		return -1, fmt.Errorf("peercred: open %s: %w", p, err)
	}
	if err := checkAlive(c.pidfd, c.info.PID); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Capabilities returns the peer's permitted capability set (bit N for
// capability N, as capget(2) and CapPrm of /proc/PID/status give it) as
// first read for this connection: a process's permitted set only shrinks
// until it execs, so that is the most it may ever do. A peer in another
// user namespace than this process holds its capabilities there, not
// here: it gets none.
func (c *Conn) Capabilities() (uint64, error) {
	if p := c.caps.Load(); p != nil {
		return *p, nil
	}
	caps, err := c.readCapabilities()
	if err == nil {
		c.caps.Store(&caps)
	}
	return caps, err
}

func (c *Conn) readCapabilities() (uint64, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0, fmt.Errorf("peercred: capabilities: %w", net.ErrClosed)
	}
	pid := c.info.PID
	if pid <= 0 { // capget(2) of pid 0 reads the calling thread: the agent's own
		return 0, fmt.Errorf("peercred: capabilities of pid %d: not a peer's pid", pid)
	}
	// One system call, where reading /proc/PID/status has the kernel
	// format every line of it (a third of the time on a PVM guest:
	// BenchmarkCapabilities).
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: pid}
	var data [2]unix.CapUserData // the 64 bits, low word first
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return 0, fmt.Errorf("%w: capabilities of pid %d: %w", ErrPeerGone, pid, err)
		}
		return 0, fmt.Errorf("peercred: capabilities of pid %d: %w", pid, err)
	}
	caps := uint64(data[1].Permitted)<<32 | uint64(data[0].Permitted)
	var theirs unix.Stat_t
	if err := unix.Stat(procPath(pid, "ns/user"), &theirs); err != nil {
		return 0, cmdlineError(pid, err)
	}
	ours, err := ownUserNS()
	if err != nil {
		return 0, err
	}
	// The pid named the peer throughout (capget and stat went by pid).
	if err := checkAlive(c.pidfd, pid); err != nil {
		return 0, err
	}
	if theirs.Dev != ours.Dev || theirs.Ino != ours.Ino {
		return 0, nil
	}
	return caps, nil
}

// ownNS is this process's user namespace, which it never leaves (a
// multithreaded process cannot), once ownUserNS found it.
var ownNS atomic.Pointer[unix.Stat_t]

// ownUserNS returns this process's user namespace. A failure is not
// kept: the next call tries again.
func ownUserNS() (unix.Stat_t, error) {
	if st := ownNS.Load(); st != nil {
		return *st, nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &st); err != nil {
		return st, fmt.Errorf("peercred: own user namespace: %w", err)
	}
	ownNS.Store(&st)
	return st, nil
}

// Cmdline reads the peer's command line from /proc/PID/cmdline now, as
// Info.Cmdline does, but proves that the pid still named the peer during
// the read with the connection's pidfd rather than by reading its start
// time again. It fails with ErrPeerGone if the peer has exited. Call Verify
// afterwards to rule out an exec.
func (c *Conn) Cmdline() ([]string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("peercred: cmdline: %w", net.ErrClosed)
	}
	fd, err := c.procFD(&c.cmdlineFD, "cmdline")
	if err != nil {
		return nil, cmdlineError(c.info.PID, err)
	}
	var buf [cmdlineBuf]byte
	b, err := preadAll(buf[:0], fd, c.info.PID, "cmdline", MaxCmdline, true)
	if err != nil {
		return nil, cmdlineError(c.info.PID, err)
	}
	// Alive after the read means the pid named this process during it.
	if err := checkAlive(c.pidfd, c.info.PID); err != nil {
		return nil, err
	}
	return splitCmdline(b), nil
}

// checkStartTime is Info.checkStartTime through the kept descriptor of
// /proc/PID/stat. The caller holds c.mu for reading.
func (c *Conn) checkStartTime() error {
	fd, err := c.procFD(&c.statFD, "stat")
	if err != nil {
		return c.info.sameStartTime(0, err)
	}
	st, err := startTimeOf(fd, c.info.PID)
	return c.info.sameStartTime(st, err)
}

// procFD returns the descriptor kept in slot for /proc/PID/name, opening
// it first if need be. The caller holds c.mu for reading.
func (c *Conn) procFD(slot *atomic.Int32, name string) (int, error) {
	if fd := slot.Load(); fd >= 0 {
		return int(fd), nil
	}
	fd, err := openProc(c.info.PID, name)
	if err != nil {
		return -1, err
	}
	// Alive after the open means the pid named the peer when it was opened,
	// so the descriptor is the peer's for good.
	if err := checkAlive(c.pidfd, c.info.PID); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if !slot.CompareAndSwap(-1, int32(fd)) {
		unix.Close(fd) // another call opened it first
		return int(slot.Load()), nil
	}
	return fd, nil
}

// Close closes the connection and the peer's pidfd.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("peercred: close: %w", net.ErrClosed)
	}
	c.closed = true
	fd := c.pidfd
	c.pidfd = -1
	close(c.done)
	c.mu.Unlock()

	if c.watch != nil {
		c.watch.unregister(c)
	}
	if c.release != nil {
		c.release()
	}
	err := c.uc.Close()
	if fd >= 0 {
		unix.Close(fd)
	}
	for _, slot := range []*atomic.Int32{&c.statFD, &c.cmdlineFD} {
		if fd := slot.Swap(-1); fd >= 0 {
			unix.Close(int(fd))
		}
	}
	return err
}

// fail records why the connection was refused and closes it.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	c.mu.Unlock()
	c.Close()
}

func (c *Conn) brokenErr() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.broken
}

// LocalAddr returns the listener's path.
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr returns the peer's address (usually unnamed).
func (c *Conn) RemoteAddr() net.Addr { return c.uc.RemoteAddr() }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// checkAlive fails with ErrPeerGone once the process behind pidfd has
// exited: a pidfd polls readable when its process exits, zombie or reaped.
func checkAlive(pidfd int, pid int32) error {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("peercred: poll pidfd of pid %d: %w", pid, err)
		}
		if n > 0 && fds[0].Revents&unix.POLLNVAL != 0 {
			return fmt.Errorf("peercred: poll pidfd of pid %d: %w", pid, os.ErrClosed)
		}
		if n > 0 {
			return fmt.Errorf("%w: pid %d exited", ErrPeerGone, pid)
		}
		return nil
	}
}
