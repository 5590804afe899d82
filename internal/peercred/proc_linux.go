package peercred

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// procRoot is where procfs is mounted.
const procRoot = "/proc"

// MaxCmdline is the largest /proc/PID/cmdline that Info.Cmdline reads.
const MaxCmdline = 128 << 10

// maxStat bounds a /proc/PID/stat read: 52 numeric fields and a comm of at
// most 64 bytes fit in well under 4 KiB.
const maxStat = 4 << 10

// Info is the peer of an accepted connection, taken at accept from the
// kernel (SO_PEERCRED) and from /proc while a pidfd pinned the process.
type Info struct {
	// PID, UID and GID are the connecting process's credentials at connect(2),
	// as seen from the agent's pid and user namespaces.
	PID      int32
	UID, GID uint32
	// Groups are its supplementary groups at connect(2) (SO_PEERGROUPS).
	Groups []uint32
	// Exe is the device and inode of /proc/PID/exe at accept.
	Exe FileID
	// ExePath is readlink(/proc/PID/exe) at accept. The kernel appends
	// " (deleted)" if the binary was unlinked; it is kept as read.
	ExePath string
	// StartTime is field 22 of /proc/PID/stat: clock ticks after boot at
	// which the process started. With PID it names the process uniquely.
	StartTime uint64
}

// FileID names a file by device and inode.
type FileID struct{ Dev, Ino uint64 }

func (f FileID) String() string { return fmt.Sprintf("%d:%d", f.Dev, f.Ino) }

// Cmdline reads the peer's command line from /proc/PID/cmdline now, not at
// accept: a process may rewrite its own argv, and after an exec it is the
// new program's. Call Conn.Verify to rule out an exec. It fails with
// ErrPeerGone if the process has exited or the pid now names another
// process, and with an error if the command line exceeds MaxCmdline.
func (i Info) Cmdline() ([]string, error) {
	var buf [cmdlineBuf]byte
	b, err := readCmdline(buf[:0], i.PID)
	if err != nil {
		return nil, err
	}
	// The pid cannot have named this process again after naming another, so
	// an unchanged start time read after the cmdline proves the cmdline was
	// this process's.
	if err := i.checkStartTime(); err != nil {
		return nil, err
	}
	return splitCmdline(b), nil
}

// cmdlineBuf is the stack buffer a command line is first read into; longer
// ones (up to MaxCmdline) grow on the heap.
const cmdlineBuf = 1 << 10

// readCmdline reads /proc/PID/cmdline into dst's spare capacity.
func readCmdline(dst []byte, pid int32) ([]byte, error) {
	b, err := readProcFile(dst, pid, "cmdline", MaxCmdline)
	if err != nil {
		return nil, cmdlineError(pid, err)
	}
	return b, nil
}

func cmdlineError(pid int32, err error) error {
	if errors.Is(err, ErrPeerGone) {
		return err
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: read cmdline of pid %d: %w", ErrPeerGone, pid, err)
	}
	return fmt.Errorf("peercred: read cmdline of pid %d: %w", pid, err)
}

// checkStartTime fails with ErrPeerGone unless /proc/PID/stat still shows
// the start time taken at accept.
func (i Info) checkStartTime() error {
	st, err := readStartTime(i.PID)
	return i.sameStartTime(st, err)
}

// sameStartTime turns the outcome of reading the start time into
// checkStartTime's answer.
func (i Info) sameStartTime(st uint64, err error) error {
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("%w: pid %d exited", ErrPeerGone, i.PID)
		}
		return err
	}
	if st != i.StartTime {
		return fmt.Errorf("%w: pid %d now names a process started at tick %d, not %d",
			ErrPeerGone, i.PID, st, i.StartTime)
	}
	return nil
}

// splitCmdline splits NUL-separated arguments. A trailing NUL ends the
// last argument; a process that rewrote its argv may leave none.
func splitCmdline(b []byte) []string {
	if len(b) == 0 {
		return []string{}
	}
	b = bytes.TrimSuffix(b, []byte{0})
	args := make([]string, 0, bytes.Count(b, []byte{0})+1)
	for {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return append(args, string(b))
		}
		args = append(args, string(b[:i]))
		b = b[i+1:]
	}
}

// readProcFile reads /proc/PID/name into dst's spare capacity (growing it
// as needed), failing if the file is longer than limit. Like all /proc
// access here it uses plain system calls rather than an *os.File: these
// reads are on every request, and the runtime poller has nothing to offer
// for procfs.
func readProcFile(dst []byte, pid int32, name string, limit int) ([]byte, error) {
	fd, err := openProc(pid, name)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return preadAll(dst, fd, pid, name, limit, false)
}

// openProc opens /proc/PID/name for reading.
func openProc(pid int32, name string) (int, error) {
	p := procPath(pid, name)
	for {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: p, Err: err}
		}
		return fd, nil
	}
}

// preadAll reads /proc/PID/name, open as fd, from its start into dst's
// spare capacity (growing it as needed), failing if it is longer than
// limit. It reads until end of file, except that with shortIsEnd a read
// that does not fill the buffer is taken to be the end. That holds for
// /proc/PID/stat, one seq_file record returned whole when it fits (a
// further read would generate it again), and for /proc/PID/cmdline,
// copied in one go as far as the process's memory can be read (a further
// read would start where it could not, and return nothing).
func preadAll(dst []byte, fd int, pid int32, name string, limit int, shortIsEnd bool) ([]byte, error) {
	b := dst[:0]
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(max(cap(b), 512), limit+1-len(b)))
		}
		room := cap(b) - len(b)
		n, err := unix.Pread(fd, b[len(b):cap(b)], int64(len(b)))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: procPath(pid, name), Err: err}
		}
		if n <= 0 {
			return b, nil
		}
		b = b[:len(b)+n]
		if len(b) > limit {
			return nil, fmt.Errorf("%s is longer than %d bytes", procPath(pid, name), limit)
		}
		if shortIsEnd && n < room {
			return b, nil
		}
	}
}

func procPath(pid int32, name string) string {
	return procRoot + "/" + strconv.FormatInt(int64(pid), 10) + "/" + name
}

// readStartTime returns field 22 of /proc/PID/stat.
func readStartTime(pid int32) (uint64, error) {
	fd, err := openProc(pid, "stat")
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return startTimeOf(fd, pid)
}

// startTimeOf returns field 22 of /proc/PID/stat, open as fd.
func startTimeOf(fd int, pid int32) (uint64, error) {
	var buf [512]byte // most stat lines are shorter; longer ones grow
	b, err := preadAll(buf[:0], fd, pid, "stat", maxStat, true)
	if err != nil {
		return 0, err
	}
	st, err := parseStartTime(b)
	if err != nil {
		return 0, fmt.Errorf("peercred: /proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// parseStartTime extracts field 22 (starttime) from the contents of
// /proc/PID/stat (proc_pid_stat(5)). Field 2, the command name, is in
// parentheses and may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStartTime(stat []byte) (uint64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 || bytes.IndexByte(stat[:end], '(') < 0 {
		return 0, errors.New("no parenthesized command name")
	}
	rest := stat[end+1:]
	// rest is " S ppid pgrp ...": field 3 (state) is the first.
	const field = 22
	n := 3
	for {
		rest = bytes.TrimLeft(rest, " ")
		if len(rest) == 0 {
			return 0, fmt.Errorf("only %d fields", n-1)
		}
		tok := rest
		if i := bytes.IndexByte(rest, ' '); i >= 0 {
			tok, rest = rest[:i], rest[i:]
		} else {
			rest = nil
		}
		if n == field {
			v, err := strconv.ParseUint(string(bytes.TrimRight(tok, "\n")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("starttime: %w", err)
			}
			return v, nil
		}
		n++
	}
}

// statExe returns the identity of /proc/PID/exe, the file it links to.
func statExe(pid int32) (FileID, error) {
	p := procPath(pid, "exe")
	var st unix.Stat_t
	for {
		err := unix.Stat(p, &st)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return FileID{}, &os.PathError{Op: "stat", Path: p, Err: err}
		}
		return fileID(&st), nil
	}
}

// readExe returns the identity and link text of /proc/PID/exe. Both come
// from one open of the link, so they describe the same file even if the
// process execs meanwhile.
func readExe(pid int32) (FileID, string, error) {
	p := procPath(pid, "exe")
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return FileID{}, "", &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileID{}, "", &os.PathError{Op: "fstat", Path: p, Err: err}
	}
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return FileID{}, "", err
	}
	return fileID(&st), path, nil
}
