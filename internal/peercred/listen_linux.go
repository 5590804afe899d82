package peercred

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMode is the socket's mode when ListenConfig.Mode is zero.
const DefaultMode os.FileMode = 0o660

// ListenConfig says where and how to create the socket.
type ListenConfig struct {
	// Path is the socket's path, e.g. /run/hallmark/agent.sock.
	Path string
	// Mode is the socket's permission bits; zero means DefaultMode. It is
	// set before the socket appears at Path, whatever the umask.
	Mode os.FileMode
	// GID is the socket's group; -1 leaves the creating process's group.
	// Zero is a real group (root), not "unset".
	GID int
	// Refused, if set, is called with the reason for every connection
	// that Accept refuses: its peer could not be identified or was over a
	// limit. It returns the bytes Accept writes to the connection just
	// before closing it (why, in the protocol the listener's server
	// speaks; hallmark-agent: an HTTP/2 GOAWAY), or nil to close it
	// without a word. The write is one send that never waits
	// (MSG_DONTWAIT); a peer that reads nothing keeps it in the kernel,
	// with the closed socket, until it closes its end. Accept calls it
	// from its own goroutine, before it answers the refused connection
	// and accepts the next one: it must not block, and where anyone may
	// connect, what it logs it should rate-limit (a peer can be refused as
	// fast as it connects; the agent's refusalLog).
	Refused func(err error) []byte
	// MaxConns bounds the connections open at once; zero means no bound.
	MaxConns int
	// MaxConnsPerUID bounds the connections open at once from one uid;
	// zero means no bound. A connection over either bound is closed at
	// Accept after one getsockopt, before anything else is spent on it.
	MaxConnsPerUID int
	// Execs, if set, watches every accepted peer for exec(2): Verify then
	// refuses a peer that exec'd after it connected.
	Execs *ExecWatch
}

// ErrTooManyConns means a connection was closed at Accept because its uid,
// or the listener, had as many open as its limit allows.
var ErrTooManyConns = errors.New("peercred: too many connections")

// Listener accepts connections on a unix socket and identifies each peer.
// It implements net.Listener; Accept returns a *Conn.
type Listener struct {
	ul      *net.UnixListener
	addr    *net.UnixAddr
	id      FileID // the socket file published at addr.Name
	refused func(error) []byte
	execs   *ExecWatch
	limits  connLimits

	closeOnce sync.Once
	closeErr  error
}

// maxSockPath is the longest path a unix socket address holds.
const maxSockPath = len(unix.RawSockaddrUnix{}.Path)

// dialTimeout bounds the probe for a live server at Path.
const dialTimeout = 2 * time.Second

// Listen creates the socket at cfg.Path and listens on it.
//
// It refuses a parent directory that others could use to replace the socket:
// one writable by everyone (sticky bit or not), one writable by a group other
// than the process's effective group, or one owned by a user other than the
// process's effective user and root. It refuses if another process already
// serves Path (a connect succeeds), removes a stale socket (a connect is
// refused), and never removes anything that is not a socket.
//
// The socket is bound under a temporary name in the same directory and
// given its group and mode before it listens; only then is it linked at
// Path. Nobody can connect to it while its permissions are the umask's.
func Listen(cfg ListenConfig) (*Listener, error) {
	if cfg.Path == "" {
		return nil, errors.New("peercred: listen: empty path")
	}
	if cfg.Mode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("peercred: listen: mode %v has bits other than permissions", cfg.Mode)
	}
	mode := cfg.Mode
	if mode == 0 {
		mode = DefaultMode
	}
	if cfg.GID < -1 {
		return nil, fmt.Errorf("peercred: listen: invalid gid %d", cfg.GID)
	}
	path := filepath.Clean(cfg.Path)
	if len(path) > maxSockPath {
		return nil, fmt.Errorf("peercred: listen: %s: longer than %d bytes", path, maxSockPath)
	}
	if err := checkDir(filepath.Dir(path)); err != nil {
		return nil, err
	}

	fd, tmp, err := bindTemp(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	ul, id, err := setUp(fd, tmp, mode, cfg.GID)
	if err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := publish(tmp, path); err != nil {
		ul.Close()
		os.Remove(tmp)
		return nil, err
	}
	os.Remove(tmp)
	return &Listener{
		ul:      ul,
		addr:    &net.UnixAddr{Name: path, Net: "unix"},
		id:      id,
		refused: cfg.Refused,
		execs:   cfg.Execs,
		limits:  connLimits{max: cfg.MaxConns, perUID: cfg.MaxConnsPerUID, open: map[uint32]int{}},
	}, nil
}

// listenBacklog is passed to listen(2), which caps it at net.core.somaxconn.
const listenBacklog = 4096

// setUp gives the bound socket fd at tmp its group and mode, then turns it
// into a listener: only then can anyone connect. It takes ownership of fd.
func setUp(fd int, tmp string, mode os.FileMode, gid int) (*net.UnixListener, FileID, error) {
	f := os.NewFile(uintptr(fd), tmp)
	defer f.Close()
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return nil, FileID{}, fmt.Errorf("peercred: listen: set group of socket: %w", err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return nil, FileID{}, fmt.Errorf("peercred: listen: set mode of socket: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(tmp, &st); err != nil {
		return nil, FileID{}, fmt.Errorf("peercred: listen: %w", &os.PathError{Op: "lstat", Path: tmp, Err: err})
	}
	// Set on the listening socket, SO_PASSCRED is copied to every accepted
	// socket at accept, so no message ever arrives without credentials.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return nil, FileID{}, fmt.Errorf("peercred: listen: set SO_PASSCRED: %w", err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		return nil, FileID{}, fmt.Errorf("peercred: listen: %w", os.NewSyscallError("listen", err))
	}
	ln, err := net.FileListener(f) // a dup of fd; f's copy is closed on return
	if err != nil {
		return nil, FileID{}, fmt.Errorf("peercred: listen: %w", err)
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, FileID{}, fmt.Errorf("peercred: listen: unexpected listener %T", ln)
	}
	ul.SetUnlinkOnClose(false) // Close removes Path itself, if still ours
	return ul, fileID(&st), nil
}

// checkDir refuses a directory in which someone else could replace the
// socket.
func checkDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("peercred: listen: socket directory: %w", &os.PathError{Op: "stat", Path: dir, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("peercred: listen: %s is not a directory", dir)
	}
	perm := os.FileMode(st.Mode) & os.ModePerm
	switch {
	case perm&0o002 != 0:
		return fmt.Errorf("peercred: listen: refusing socket directory %s: writable by everyone (mode %v); use a directory only the agent can write, e.g. /run/hallmark", dir, perm)
	case perm&0o020 != 0 && int(st.Gid) != os.Getegid():
		return fmt.Errorf("peercred: listen: refusing socket directory %s: writable by group %d, not ours (%d)", dir, st.Gid, os.Getegid())
	case int(st.Uid) != os.Geteuid() && st.Uid != 0:
		return fmt.Errorf("peercred: listen: refusing socket directory %s: owned by uid %d, neither us (%d) nor root", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// bindTemp binds a new unix stream socket, not yet listening, to a fresh
// name in dir.
func bindTemp(dir string) (int, string, error) {
	for range 10 {
		var b [4]byte
		rand.Read(b[:])
		// Short, so that it fits wherever Path fits a typical name.
		tmp := filepath.Join(dir, ".pc-"+hex.EncodeToString(b[:]))
		if len(tmp) > maxSockPath {
			return -1, "", fmt.Errorf("peercred: listen: socket directory %s: path too long for a unix socket", dir)
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return -1, "", fmt.Errorf("peercred: listen: %w", os.NewSyscallError("socket", err))
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: tmp}); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EADDRINUSE) {
				continue
			}
			return -1, "", fmt.Errorf("peercred: listen: bind %s: %w", tmp, err)
		}
		return fd, tmp, nil
	}
	return -1, "", fmt.Errorf("peercred: listen: no free temporary name in %s", dir)
}

// publish hard-links the bound socket tmp at path. link(2) never replaces
// an existing file, so a file already at path is examined: a stale socket is
// removed and the link retried, anything else is an error.
func publish(tmp, path string) error {
	for range 3 {
		err := os.Link(tmp, path)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("peercred: listen: %w", err)
		}
		if err := removeStale(path); err != nil {
			return err
		}
	}
	return fmt.Errorf("peercred: listen: %s keeps reappearing", path)
}

// removeStale removes the socket at path if nobody serves it.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("peercred: listen: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("peercred: listen: %s exists and is not a socket (%v); not removing it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, dialTimeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("peercred: listen: another agent is already serving %s", path)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		// Stale: left by a process that exited without removing it.
	case errors.Is(err, os.ErrNotExist):
		return nil
	default:
		return fmt.Errorf("peercred: listen: %s exists and cannot be probed; not removing it: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("peercred: listen: remove stale socket: %w", err)
	}
	return nil
}

// Accept waits for the next connection whose peer is under the limits and
// can be identified, and returns it as a *Conn, watched for exec(2) when
// the listener has an ExecWatch. Other connections are refused
// (ListenConfig.Refused) and never returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		uc, err := l.ul.AcceptUnix()
		if err != nil {
			return nil, err
		}
		c, err := l.admit(uc)
		if err != nil {
			l.refuse(uc, err)
			continue
		}
		return c, nil
	}
}

// refuse closes uc, which admit refused with err, after reporting it
// (ListenConfig.Refused) and writing what that returns, if it can without
// waiting.
func (l *Listener) refuse(uc *net.UnixConn, err error) {
	defer uc.Close()
	if l.refused == nil {
		return
	}
	b := l.refused(err)
	if len(b) == 0 {
		return
	}
	if rc, err := uc.SyscallConn(); err == nil {
		rc.Write(func(fd uintptr) bool { //nolint:errcheck // best effort: the connection is closed next
			// MSG_NOSIGNAL: a peer gone already is EPIPE, not SIGPIPE.
			unix.Send(int(fd), b, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL) //nolint:errcheck // as above
			return true
		})
	}
}

// admit applies the limits to uc's peer, then identifies it.
func (l *Listener) admit(uc *net.UnixConn) (*Conn, error) {
	cred, err := peerCred(uc)
	if err != nil {
		return nil, err
	}
	release, err := l.limits.take(cred.Uid)
	if err != nil {
		return nil, err
	}
	c, err := newConn(uc, l.addr, cred)
	if err != nil {
		release()
		return nil, err
	}
	c.release = release
	if l.execs != nil {
		c.watch = l.execs
		c.watchedAt = l.execs.register(c)
	}
	return c, nil
}

// connLimits counts open connections, in all and per uid.
type connLimits struct {
	max, perUID int
	mu          sync.Mutex
	total       int
	open        map[uint32]int
}

// take counts a connection from uid, or fails with ErrTooManyConns; the
// returned func gives its place back, once.
func (l *connLimits) take(uid uint32) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.max > 0 && l.total >= l.max:
		return nil, fmt.Errorf("%w: %d open, the most the listener takes", ErrTooManyConns, l.total)
	case l.perUID > 0 && l.open[uid] >= l.perUID:
		return nil, fmt.Errorf("%w: uid %d has %d open, the most one uid may", ErrTooManyConns, uid, l.open[uid])
	}
	l.total++
	l.open[uid]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.open[uid]--; l.open[uid] == 0 {
				delete(l.open, uid)
			}
		})
	}, nil
}

// Addr returns the socket's path.
func (l *Listener) Addr() net.Addr { return l.addr }

// Close stops listening and removes the socket file, unless it has been
// replaced by another file meanwhile.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.ul.Close()
		removeIfSame(l.addr.Name, l.id)
	})
	return l.closeErr
}

func removeIfSame(path string, id FileID) {
	var st unix.Stat_t
	if unix.Lstat(path, &st) == nil && fileID(&st) == id {
		os.Remove(path)
	}
}

func fileID(st *unix.Stat_t) FileID {
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino} // Dev is uint32 on some arches
}
