package peercred

import (
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerPidfd returns a pidfd for the peer of the connected socket fd
// (SO_PEERPIDFD, Linux 6.5+; ENOPROTOOPT before). Tests replace it to
// exercise the fallback.
var peerPidfd = func(fd int) (int, error) {
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
}

// peerCred returns the kernel's credentials of uc's peer at connect
// (SO_PEERCRED): a cheap first look, before anything else is spent on it.
func peerCred(uc *net.UnixConn) (*unix.Ucred, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peercred: identify peer: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peercred: identify peer: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peercred: identify peer: SO_PEERCRED: %w", credErr)
	}
	return cred, nil
}

// peerGroups returns the peer's supplementary groups at connect
// (SO_PEERGROUPS), as this process's user namespace sees them.
func peerGroups(fd int) ([]uint32, error) {
	n := 32
	for {
		buf := make([]uint32, n)
		size := uint32(4 * n)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && int(size/4) > n:
			n = int(size / 4)
			continue
		case errno != 0:
			return nil, errno
		}
		return buf[:size/4], nil
	}
}

// newConn identifies the peer of uc, whose credentials cred are. On
// success the returned Conn owns uc and a pidfd; on error the caller still
// owns uc.
func newConn(uc *net.UnixConn, laddr net.Addr, cred *unix.Ucred) (*Conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peercred: identify peer: %w", err)
	}
	var (
		groups                    []uint32
		pidfd                     = -1
		credErr, pidfdErr, optErr error
	)
	if err := rc.Control(func(fd uintptr) {
		if groups, credErr = peerGroups(int(fd)); credErr != nil {
			return
		}
		if pidfd, pidfdErr = peerPidfd(int(fd)); pidfdErr != nil {
			pidfd = -1
		}
		// Inherited from the listening socket already; set it in any case
		// so that every read carries the sender's credentials.
		optErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return nil, fmt.Errorf("peercred: identify peer: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peercred: identify peer: SO_PEERGROUPS: %w", credErr)
	}
	if pidfdErr == nil && pidfd < 0 {
		pidfdErr = fmt.Errorf("SO_PEERPIDFD returned %d", pidfd)
	}
	ok := false
	defer func() {
		if !ok && pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	if optErr != nil {
		return nil, fmt.Errorf("peercred: identify peer: set SO_PASSCRED: %w", optErr)
	}
	pid := cred.Pid
	if pid <= 0 {
		// The peer is in a pid namespace we cannot see into.
		return nil, fmt.Errorf("%w (uid %d, pid %d here): it runs in a pid namespace this process cannot see into", ErrPidNotVisible, cred.Uid, pid)
	}

	// Without SO_PEERPIDFD, open a pidfd by number and make sure the number
	// named the same process before and after: the start time cannot go
	// back to an earlier value. (The pid could still have been reused
	// between connect and accept; only SO_PEERPIDFD rules that out.)
	var before uint64
	fallback := false
	if pidfdErr != nil {
		if !errors.Is(pidfdErr, unix.ENOPROTOOPT) {
			return nil, fmt.Errorf("peercred: identify pid %d: SO_PEERPIDFD: %w", pid, pidfdErr)
		}
		fallback = true
		if before, err = readStartTime(pid); err != nil {
			return nil, fmt.Errorf("peercred: identify pid %d: %w", pid, err)
		}
		if pidfd, err = unix.PidfdOpen(int(pid), 0); err != nil {
			pidfd = -1
			return nil, fmt.Errorf("peercred: identify pid %d: pidfd_open: %w", pid, err)
		}
	}

	start, err := readStartTime(pid)
	if err != nil {
		return nil, fmt.Errorf("peercred: identify pid %d: %w", pid, err)
	}
	if fallback && start != before {
		return nil, fmt.Errorf("peercred: identify pid %d: pid reused during accept", pid)
	}
	exe, exePath, err := readExe(pid)
	if err != nil {
		return nil, fmt.Errorf("peercred: identify pid %d: %w", pid, err)
	}
	// Alive after the /proc reads means they were about this process.
	if err := checkAlive(pidfd, pid); err != nil {
		return nil, fmt.Errorf("peercred: identify: %w", err)
	}

	ok = true
	c := &Conn{
		uc:    uc,
		laddr: laddr,
		done:  make(chan struct{}),
		oob:   make([]byte, credsSpace),
		pidfd: pidfd,
		info: Info{
			PID:       pid,
			UID:       cred.Uid,
			GID:       cred.Gid,
			Groups:    groups,
			Exe:       exe,
			ExePath:   exePath,
			StartTime: start,
		},
	}
	c.statFD.Store(-1)
	c.cmdlineFD.Store(-1)
	return c, nil
}
