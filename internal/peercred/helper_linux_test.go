package peercred

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Helper processes: the test binary re-executed with PEERCRED_HELPER naming
// a role and PEERCRED_SOCK the socket. A helper reports progress as lines on
// stdout and, unless its role says otherwise, lives until stdin is closed.
const (
	envRole = "PEERCRED_HELPER"
	envSock = "PEERCRED_SOCK"
)

// TestHelperProcess is not a test: it is the body of the helper processes.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(envRole)
	if role == "" {
		t.Skip("helper process body; run by other tests")
	}
	if err := runHelper(role, os.Getenv(envSock)); err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
		os.Exit(2)
	}
	os.Exit(0)
}

func runHelper(role, sock string) error {
	say := func(line string) { fmt.Println(line) }
	waitStdin := func() { io.Copy(io.Discard, os.Stdin) }
	dial := func() (*net.UnixConn, error) {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		return c, err
	}
	switch role {
	case "listen-refuse":
		// Listen at sock, telling every connection refused why (Refused
		// writes the error), until stdin closes.
		l, err := Listen(ListenConfig{Path: sock, GID: -1, Refused: func(err error) []byte { return []byte(err.Error()) }})
		if err != nil {
			return err
		}
		defer l.Close()
		go l.Accept() //nolint:errcheck // until l closes
		say("ready")
		waitStdin()
		return nil

	case "hold":
		// Connect, write, and live until stdin closes.
		c, err := dial()
		if err != nil {
			return err
		}
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		say("ready")
		waitStdin()
		return nil

	case "rename-flood":
		// Rename this thread as fast as it can (each rename is a comm
		// event for the process events connector) until stdin closes.
		runtime.LockOSThread()
		var stop atomic.Bool
		go func() { waitStdin(); stop.Store(true) }()
		names := [2][16]byte{[16]byte([]byte("flood-a\x00\x00\x00\x00\x00\x00\x00\x00\x00")), [16]byte([]byte("flood-b\x00\x00\x00\x00\x00\x00\x00\x00\x00"))}
		say("flooding")
		for i := 0; !stop.Load(); i++ {
			if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&names[i&1][0])), 0, 0, 0); err != nil {
				return err
			}
		}
		return nil

	case "connect-exit":
		_, err := dial()
		return err

	case "exec":
		// Connect, then exec /bin/sleep when told, keeping the socket open.
		c, err := dial()
		if err != nil {
			return err
		}
		if _, err := c.Write([]byte("pre-exec")); err != nil {
			return err
		}
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var ferr error
		rc.Control(func(fd uintptr) {
			_, ferr = unix.FcntlInt(fd, unix.F_SETFD, 0) // clear FD_CLOEXEC
		})
		if ferr != nil {
			return ferr
		}
		say("connected")
		// Exec only once the test has seen the original executable.
		if _, err := os.Stdin.Read(make([]byte, 1)); err != nil {
			return err
		}
		return syscall.Exec("/bin/sleep", []string{"sleep", "30"}, os.Environ())

	case "pass-fd":
		// A: connect, write, hand the connected fd to fd 3 (a socketpair).
		c, err := dial()
		if err != nil {
			return err
		}
		if _, err := c.Write([]byte("from-A")); err != nil {
			return err
		}
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		rc.Control(func(fd uintptr) {
			serr = unix.Sendmsg(3, []byte("x"), unix.UnixRights(int(fd)), nil, 0)
		})
		if serr != nil {
			return serr
		}
		say("sent")
		waitStdin()
		return nil

	case "recv-fd":
		// B: receive an fd on fd 3 and write to it.
		buf := make([]byte, 1)
		oob := make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := unix.Recvmsg(3, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			return err
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return fmt.Errorf("control messages: %v %v", msgs, err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return fmt.Errorf("rights: %v %v", fds, err)
		}
		if _, err := unix.Write(fds[0], []byte("from-B")); err != nil {
			return err
		}
		say("written")
		waitStdin()
		return nil

	case "write-fd3":
		// An inherited connection at fd 3: write to it.
		if _, err := unix.Write(3, []byte("from-child")); err != nil {
			return err
		}
		say("written")
		waitStdin()
		return nil

	case "exec-chain":
		// Connect (unless the connection is inherited), say so, wait for
		// stdin, then exec the rest of PEERCRED_CHAIN in turn, keeping the
		// connection; the last program says "done" and waits.
		fd := 3
		if os.Getenv("PEERCRED_CONNECTED") == "" {
			c, err := dial()
			if err != nil {
				return err
			}
			f, err := c.File() // a dup without FD_CLOEXEC at fd 3 below
			if err != nil {
				return err
			}
			if err := unix.Dup2(int(f.Fd()), 3); err != nil {
				return err
			}
			if _, err := unix.Write(3, []byte("hi")); err != nil {
				return err
			}
			say("connected")
			if _, err := os.Stdin.Read(make([]byte, 1)); err != nil {
				return err
			}
		}
		chain := strings.Fields(strings.ReplaceAll(os.Getenv("PEERCRED_CHAIN"), ",", " "))
		if len(chain) == 0 {
			say("done")
			waitStdin()
			return nil
		}
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PEERCRED_CHAIN=") && !strings.HasPrefix(kv, "PEERCRED_CONNECTED=") {
				env = append(env, kv)
			}
		}
		env = append(env, "PEERCRED_CONNECTED=1", "PEERCRED_CHAIN="+strings.Join(chain[1:], ","))
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return err
		}
		switch chain[0] {
		case "self":
			return syscall.Exec(os.Args[0], []string{os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1"}, env)
		case "sh":
			// Another program, which execs back to this one ("self", the
			// only element that may follow) if the chain goes on.
			return syscall.Exec("/bin/sh", []string{"sh", "-c",
				`if [ -n "$PEERCRED_CHAIN" ]; then rest=${PEERCRED_CHAIN#self}; PEERCRED_CHAIN=${rest#,} exec "$0" -test.run=^TestHelperProcess$ -test.count=1; fi; echo done; exec cat >/dev/null`,
				os.Args[0]}, env)
		}
		return fmt.Errorf("unknown chain element %q", chain[0])

	case "grpc-health":
		cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(Credentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		say(resp.GetStatus().String())
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// helper is a running helper process.
type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
}

// startHelper starts the test binary as a helper in role, with files at
// fd 3 onwards. It is killed and reaped when the test ends.
func startHelper(t *testing.T, role, sock string, files ...*os.File) *helper {
	t.Helper()
	return startHelperEnv(t, role, sock, nil, files...)
}

// startHelperEnv is startHelper with extra environment.
func startHelperEnv(t *testing.T, role, sock string, env []string, files ...*os.File) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), envRole+"="+role, envSock+"="+sock), env...)
	cmd.ExtraFiles = files
	return startPrepared(t, cmd)
}

// startPrepared starts a helper command; it is killed and reaped when the
// test ends.
func startPrepared(t *testing.T, cmd *exec.Cmd) *helper {
	t.Helper()
	h := &helper{cmd: cmd, lines: make(chan string, 16), stderr: new(bytes.Buffer)}
	cmd.Stderr = h.stderr
	var err error
	h.stdin, err = cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	go func() {
		defer close(h.lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			h.lines <- s.Text()
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("helper %v stderr: %s", cmd.Env[len(cmd.Env)-1], h.stderr)
		}
	})
	return h
}

func (h *helper) pid() int32 { return int32(h.cmd.Process.Pid) }

// expect waits for the helper to print line.
func (h *helper) expect(t *testing.T, line string) {
	t.Helper()
	select {
	case got, ok := <-h.lines:
		require.True(t, ok, "helper exited before printing %q: %s", line, h.stderr)
		require.Equal(t, line, got)
	case <-time.After(20 * time.Second):
		t.Fatalf("helper did not print %q", line)
	}
}

// stop closes the helper's stdin and waits for it to exit.
func (h *helper) stop(t *testing.T) {
	t.Helper()
	h.stdin.Close()
	require.NoError(t, h.cmd.Wait(), "helper stderr: %s", h.stderr)
}

// sockDir returns a fresh, short directory for sockets: unix socket paths
// are limited to 108 bytes.
func sockDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pc")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// listen starts a Listener in a fresh directory and closes it at the end.
func listen(t testing.TB) (*Listener, string) {
	t.Helper()
	path := sockDir(t) + "/agent.sock"
	l, err := Listen(ListenConfig{Path: path, GID: -1})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l, path
}

// dialAccepted connects this process to l, listening at path, and returns
// the listener's side of the connection and this process's, which is
// closed when the test ends.
func dialAccepted(t testing.TB, l *Listener, path string) (*Conn, net.Conn) {
	t.Helper()
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	return accept(t, l), cc
}

// accept accepts one connection, failing the test after a timeout.
func accept(t testing.TB, l *Listener) *Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		c, ok := r.c.(*Conn)
		require.True(t, ok, "Accept returned %T", r.c)
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("Accept timed out")
		return nil
	}
}

// readAll reads from c until it has want bytes.
func readN(t *testing.T, c *Conn, n int) string {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
	buf := make([]byte, n)
	_, err := io.ReadFull(c, buf)
	require.NoError(t, err)
	return string(buf)
}

// countFDs returns the number of open file descriptors of this process.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// waitFor polls cond until it returns true or the timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	require.NoError(t, unix.Uname(&u))
	return strings.TrimRight(string(u.Release[:]), "\x00")
}
