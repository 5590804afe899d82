package peercred

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hallmark-dev/hallmark/internal/proctest"
)

// watch starts an ExecWatch and its Run for the test; it needs root
// (CAP_NET_ADMIN). Run must last until the test ends, without error.
func watch(t *testing.T) *ExecWatch {
	t.Helper()
	w, done := watchRunning(t)
	t.Cleanup(func() {
		select {
		case err := <-done:
			require.NoError(t, err, "Run ended before the test did")
		default:
		}
	})
	return w
}

// watchRunning starts an ExecWatch and its Run, whose error comes on done
// if it ends before the test does; at the end of the test Run is stopped
// and the watch closed.
func watchRunning(t *testing.T) (w *ExecWatch, done <-chan error) {
	t.Helper()
	w, err := WatchExecs()
	require.NoError(t, err, "the exec watch needs CAP_NET_ADMIN in the host's namespaces: run as root (CI does)")
	ctx, cancel := context.WithCancel(context.Background())
	errs, ended := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(ended)
		if err := w.Run(ctx); ctx.Err() == nil {
			errs <- err
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-ended
		w.Close()
	})
	return w, errs
}

// listenWatched is listen with an ExecWatch.
func listenWatched(t *testing.T, w *ExecWatch) (*Listener, string) {
	t.Helper()
	path := sockDir(t) + "/agent.sock"
	l, err := Listen(ListenConfig{Path: path, GID: -1, Execs: w})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l, path
}

// Must show: another uid renaming its threads as fast as it can (each
// rename is a comm event, which the watch asks for only to prove delivery
// at start) refuses no connection: the watch listens to exec events alone
// from then on (Linux 6.6's per-socket filter). With comm events still on,
// the flood overflowed the watch's socket within a second and refused
// every connection open at the time (an attacker review).
func TestCommFloodRefusesNoOne(t *testing.T) {
	w := watch(t)
	if !kernelAtLeast(t, 6, 6) {
		t.Skipf("Linux before 6.6 sends every process event (Unfiltered: %v): no filter to test", w.Unfiltered())
	}
	require.False(t, w.Unfiltered(), "Linux 6.6 filters events per socket")
	l, path := listenWatched(t, w)
	h := startHelper(t, "hold", path) // another tenant's step
	h.expect(t, "ready")
	c := accept(t, l)
	require.NoError(t, c.Verify(), "before the flood")

	exe := proctest.WorldExecutableCopy(t)
	for range 2 { // one per core
		cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envRole+"=rename-flood", envSock+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		f := startPrepared(t, cmd)
		f.expect(t, "flooding")
		t.Cleanup(func() { f.stop(t) })
	}
	checks := 0
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); checks++ {
		require.NoError(t, c.Verify(), "during the flood, check %d", checks)
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the connection verified %d times during 3 s of thread renames by two processes of uid 65534", checks)
}

// Must show: where the kernel ignores the filtered subscription (before
// Linux 6.6, simulated by sending it in a length every kernel ignores),
// the watch says it is unfiltered and still refuses a peer that execs and
// keeps one that does not: it subscribed to every event first, the form
// every kernel takes, so it holds its own listener's count and does not
// depend on another subscriber staying (before, it sent only the filtered
// form, and on such a kernel got events only while something else on the
// host listened).
func TestExecWatchWithoutFilter(t *testing.T) {
	ignoredFilter = true
	w := watch(t)
	ignoredFilter = false
	require.True(t, w.Unfiltered())
	l, path := listenWatched(t, w)
	h, c := connectedChain(t, l, path, "self")
	h.runChain(t)
	require.ErrorIs(t, c.Verify(), ErrPeerExeced)
}

// connectedChain starts an exec-chain helper that will exec chain (see
// runHelper) and accepts its connection, verified before any exec.
func connectedChain(t *testing.T, l *Listener, path, chain string) (*helper, *Conn) {
	t.Helper()
	h := startHelperEnv(t, "exec-chain", path, []string{"PEERCRED_CHAIN=" + chain})
	c := accept(t, l)
	h.expect(t, "connected")
	require.Equal(t, "hi", readN(t, c, 2))
	require.NoError(t, c.Verify(), "before any exec")
	return h, c
}

// runChain has an exec-chain helper exec its chain, and waits until it has.
func (h *helper) runChain(t *testing.T) {
	t.Helper()
	_, err := h.stdin.Write([]byte("x"))
	require.NoError(t, err)
	h.expect(t, "done")
}

// Must show: the exec canary keeps proving that exec events arrive, and
// once they stop (played here by the watch's socket telling the kernel
// to send it nothing, as a kernel that stopped sending would look), it
// fails the watch within its wait: connections are refused, and
// RunCanary and Run both return the error, rather than a blind watch
// refusing no exec.
func TestExecCanaryFailsClosed(t *testing.T) {
	if !kernelAtLeast(t, 6, 6) {
		t.Skip("blinding one socket takes Linux 6.6's per-socket filter")
	}
	w, runDone := watchRunning(t)
	l, path := listenWatched(t, w)
	h := startHelper(t, "hold", path)
	h.expect(t, "ready")
	c := accept(t, l)
	argv := []string{os.Args[0], "-test.run=^$"} // exits at once

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- w.RunCanary(ctx, argv, 50*time.Millisecond, 2*time.Second, nil) }()
	select {
	case err := <-done:
		t.Fatalf("the canary failed while events arrive: %v", err)
	case <-time.After(time.Second): // about 20 canaries
	}
	require.NoError(t, c.Verify())

	require.NoError(t, w.control(procCNMcastIgnr, procEventExec))
	start := time.Now()
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrExecWatch)
		require.ErrorContains(t, err, "no exec event for the exec canary")
		t.Logf("failed %s after the events stopped: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the canary did not notice that exec events stopped")
	}
	require.ErrorIs(t, c.Verify(), ErrExecWatch, "refused once the watch is blind")
	// Run ends too, with the canary's error, at once: not at the next
	// event, which a blind watch may never get.
	select {
	case err := <-runDone:
		require.ErrorIs(t, err, ErrExecWatch)
		require.ErrorContains(t, err, "no exec event for the exec canary")
	case <-time.After(time.Second):
		t.Fatal("Run went on after the canary found the watch blind")
	}
}

// kernelAtLeast reports whether the running kernel is major.minor or later.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var uts unix.Utsname
	require.NoError(t, unix.Uname(&uts))
	var maj, mnr int
	_, err := fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &maj, &mnr)
	require.NoError(t, err)
	return maj > major || maj == major && mnr >= minor
}

// Must show: a peer that execs after connecting is refused, whatever it
// execs and however often, back to the same binary included; one that
// does not stays verified.
func TestExecWatchRefusesEveryExec(t *testing.T) {
	w := watch(t)
	l, path := listenWatched(t, w)
	for _, tc := range []struct {
		name  string
		chain string
	}{
		{"no exec", ""},
		{"A to B", "sh"},
		{"A to B to A", "sh,self"},
		{"A to A", "self"},
		{"A to A to A", "self,self"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, c := connectedChain(t, l, path, tc.chain)
			h.runChain(t)
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", h.pid()))
			require.NoError(t, err)
			err = c.Verify()
			if tc.chain == "" {
				require.NoError(t, err)
				require.NoError(t, c.Execed())
				return
			}
			self, _ := os.Executable()
			if strings.HasSuffix(tc.chain, "self") {
				require.Equal(t, self, exe, "the peer runs the binary that connected again")
			}
			require.ErrorIs(t, err, ErrPeerExeced)
			require.ErrorIs(t, c.Execed(), ErrPeerExeced, "seen without a system call once checked")
			require.ErrorIs(t, c.Verify(), ErrPeerExeced, "for good")
		})
	}
}

// Events the kernel dropped refuse every connection watched meanwhile; a
// closed watch refuses everything.
func TestExecWatchFailsClosed(t *testing.T) {
	w := watch(t)
	l, path := listenWatched(t, w)
	h := startHelper(t, "hold", path)
	h.expect(t, "ready")
	c := accept(t, l)
	require.NoError(t, c.Verify())
	w.mu.Lock()
	w.lost()
	w.mu.Unlock()
	require.ErrorIs(t, c.Verify(), ErrExecWatch)

	h2 := startHelper(t, "hold", path)
	h2.expect(t, "ready")
	c2 := accept(t, l)
	require.NoError(t, c2.Verify(), "watched after the loss")

	w2, err := WatchExecs()
	require.NoError(t, err)
	l2, path2 := listenWatched(t, w2)
	h3 := startHelper(t, "hold", path2)
	h3.expect(t, "ready")
	c3 := accept(t, l2)
	require.NoError(t, w2.Close())
	require.ErrorIs(t, c3.Verify(), ErrExecWatch)
}

// Must show: before the server's HTTP/2 greeting, a client may send its
// own greeting and nothing else: a request sent early (which an image
// that exec'd away since might have sent) is refused; gRPC's own client
// is served.
func TestWatchedHandshakeRefusesEarlyRequests(t *testing.T) {
	w := watch(t)
	path := sockDir(t) + "/agent.sock"
	l, err := Listen(ListenConfig{Path: path, GID: -1, Execs: w})
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.Creds(Credentials()))
	healthpb.RegisterHealthServer(srv, health.NewServer())

	// A client that sends a request at once is cut off before it is read.
	// It connects and writes before the server accepts, so its bytes are
	// queued before the connection is watched: the case the check is for
	// (bytes written after the accept are covered by the exec watch).
	raw, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer raw.Close()
	headers := []byte{0, 0, 1, 0x1, 0x4, 0, 0, 0, 1, 0x82} // HEADERS, stream 1, ":method: GET"
	_, err = raw.Write(append([]byte(http2Preface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"), headers...))
	require.NoError(t, err)

	go srv.Serve(l) //nolint:errcheck // stopped by the cleanup
	t.Cleanup(srv.Stop)

	require.NoError(t, raw.SetReadDeadline(time.Now().Add(10*time.Second)))
	n, err := raw.Read(make([]byte, 64))
	require.Zero(t, n, "the server greeted a client that sent a request before its greeting")
	require.Error(t, err)

	// gRPC's client waits for the server's greeting.
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(Credentials()))
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
}

func TestHTTP2Greeting(t *testing.T) {
	settings := "\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x10\x00\x00"
	windowUpdate := "\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x0f\x00\x01"
	ping := "\x00\x00\x08\x06\x00\x00\x00\x00\x00" + strings.Repeat("p", 8)
	headers := "\x00\x00\x01\x01\x04\x00\x00\x00\x01\x82"
	data := "\x00\x00\x01\x00\x00\x00\x00\x00\x01x"
	for _, tc := range []struct {
		name string
		b    string
		ok   bool
	}{
		{"nothing", "", true},
		{"part of the preface", http2Preface[:10], true},
		{"preface", http2Preface, true},
		{"preface and settings", http2Preface + settings, true},
		{"gRPC's greeting", http2Preface + settings + windowUpdate, true},
		{"with a ping", http2Preface + settings + ping, true},
		{"settings cut short after its type", http2Preface + settings[:5], true},
		{"frame header cut before its type", http2Preface + settings[:3], false},
		{"not HTTP/2", "GET / HTTP/1.1\r\n", false},
		{"headers", http2Preface + settings + headers, false},
		{"data", http2Preface + data, false},
		{"settings on a stream", http2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x03", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := http2Greeting([]byte(tc.b))
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, errEarlyRequest)
			}
		})
	}
}

// FuzzHTTP2Greeting: the parser of what a client sent first never panics,
// and what it accepts holds no frame but SETTINGS, PING and WINDOW_UPDATE.
func FuzzHTTP2Greeting(f *testing.F) {
	f.Add([]byte(http2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	f.Add([]byte(http2Preface + "\x00\x00\x01\x01\x04\x00\x00\x00\x01\x82"))
	f.Add([]byte(http2Preface[:5]))
	f.Fuzz(func(t *testing.T, b []byte) {
		if http2Greeting(b) != nil || len(b) <= len(http2Preface) {
			return
		}
		rest := b[len(http2Preface):]
		for len(rest) >= 4 {
			require.Contains(t, []byte{0x4, 0x6, 0x8}, rest[3])
			n := 9 + (int(rest[0])<<16 | int(rest[1])<<8 | int(rest[2]))
			if n > len(rest) {
				return
			}
			rest = rest[n:]
		}
	})
}

// Must show: connections over a uid's limit, or the listener's, are
// closed at Accept; a place given back is taken again.
func TestListenerLimits(t *testing.T) {
	path := sockDir(t) + "/agent.sock"
	skips := make(chan error, 16)
	l, err := Listen(ListenConfig{
		Path: path, GID: -1, MaxConnsPerUID: 2,
		Refused: func(err error) []byte { skips <- err; return []byte("refused: " + err.Error()) },
	})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	a, b := accept(t, l), accept(t, l)
	over := dial()
	fourth := dial()
	_ = fourth
	// The third is closed at Accept; the fourth waits for a place.
	got := make(chan *Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			got <- c.(*Conn)
		}
	}()
	// It is told why (Refused), then closed.
	require.NoError(t, over.SetReadDeadline(time.Now().Add(10*time.Second)))
	said, err := io.ReadAll(over)
	require.NoError(t, err, "closed by the listener")
	require.Equal(t, "refused: peercred: too many connections: uid "+strconv.Itoa(os.Getuid())+" has 2 open, the most one uid may", string(said))
	for range 2 { // the third and the fourth: both over the limit while two are open
		select {
		case err := <-skips:
			require.ErrorIs(t, err, ErrTooManyConns)
			require.Contains(t, err.Error(), "uid "+strconv.Itoa(os.Getuid()))
		case <-time.After(10 * time.Second):
			t.Fatal("a connection over the limit was not refused")
		}
	}
	a.Close()
	b.Close()
	dial()
	select {
	case c := <-got:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("a place given back was not taken again")
	}

	// The listener's own bound.
	path2 := sockDir(t) + "/agent.sock"
	l2, err := Listen(ListenConfig{Path: path2, GID: -1, MaxConns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { l2.Close() })
	c1, err := net.Dial("unix", path2)
	require.NoError(t, err)
	defer c1.Close()
	accept(t, l2)
	c2, err := net.Dial("unix", path2)
	require.NoError(t, err)
	defer c2.Close()
	go l2.Accept() //nolint:errcheck // refuses c2, then waits
	require.NoError(t, c2.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = c2.Read(make([]byte, 1))
	require.Error(t, err)
}

// The peer's root, capabilities and supplementary groups, as the agent
// measures with them.
func TestPeerRootCapabilitiesGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("starting helpers with other groups and user namespaces needs root (CI runs as root)")
	}
	l, path := listen(t)

	// This process: its own root, its permitted set, its groups.
	c, _ := dialAccepted(t, l, path)
	fd, err := c.OpenRoot()
	require.NoError(t, err)
	var st, root unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	unix.Close(fd)
	require.NoError(t, unix.Stat("/", &root))
	require.Equal(t, root.Ino, st.Ino)
	caps, err := c.Capabilities()
	require.NoError(t, err)
	require.Equal(t, proctest.StatusCaps(t, os.Getpid(), "CapPrm"), caps)

	// A helper with supplementary groups.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRole+"=hold", envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{4242, 4243}}}
	h := startPrepared(t, cmd)
	h.expect(t, "ready")
	hc := accept(t, l)
	require.ElementsMatch(t, []uint32{4242, 4243}, hc.Peer().Groups)

	// A helper of another uid holds the capabilities it was given, in both
	// words of the set (ambient: its exec keeps them permitted), and no
	// more: as its /proc/PID/status says.
	exe := proctest.WorldExecutableCopy(t)
	require.NoError(t, os.Chmod(filepath.Dir(path), 0o755))
	require.NoError(t, os.Chmod(path, 0o666))
	cmd = exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRole+"=hold", envSock+"="+path)
	given := []uintptr{unix.CAP_NET_BIND_SERVICE, unix.CAP_SYS_PTRACE, unix.CAP_AUDIT_READ} // 10, 19, 37
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, AmbientCaps: given}
	h = startPrepared(t, cmd)
	h.expect(t, "ready")
	ac := accept(t, l)
	require.EqualValues(t, 65534, ac.Peer().UID)
	caps, err = ac.Capabilities()
	require.NoError(t, err)
	require.Equal(t, uint64(1<<10|1<<19|1<<37), caps)
	require.Equal(t, proctest.StatusCaps(t, h.cmd.Process.Pid, "CapPrm"), caps)
	require.NoError(t, h.cmd.Process.Kill())
	h.cmd.Wait() //nolint:errcheck // killed

	// The same helper that then made its effective set empty and its
	// inheritable set larger than what it permits: its permitted set, and
	// neither of the others.
	cmd = exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRole+"="+capsetRole, envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, AmbientCaps: given}
	h = startPrepared(t, cmd)
	h.expect(t, "ready")
	sc := accept(t, l)
	caps, err = sc.Capabilities()
	require.NoError(t, err)
	require.Equal(t, uint64(capsetWant), caps)
	require.Equal(t, proctest.StatusCaps(t, h.cmd.Process.Pid, "CapPrm"), caps)
	require.Equal(t, uint64(capsetInheritable), proctest.StatusCaps(t, h.cmd.Process.Pid, "CapInh"))
	require.Zero(t, proctest.StatusCaps(t, h.cmd.Process.Pid, "CapEff"))

	// Gone, a zombie and then reaped: no capabilities, ErrPeerGone.
	require.NoError(t, h.cmd.Process.Kill())
	var si unix.Siginfo // until every thread has exited, and no longer
	require.NoError(t, unix.Waitid(unix.P_PID, h.cmd.Process.Pid, &si, unix.WEXITED|unix.WNOWAIT, nil))
	caps, err = sc.readCapabilities()
	require.ErrorIs(t, err, ErrPeerGone, "a zombie")
	require.Zero(t, caps)
	h.cmd.Wait() //nolint:errcheck // killed
	caps, err = sc.readCapabilities()
	require.ErrorIs(t, err, ErrPeerGone, "reaped")
	require.Zero(t, caps)
	// A connection without a peer's pid never asks capget(2) for pid 0,
	// which is the agent's own set (newConn refuses such a peer; /proc/0
	// would fail the namespace check after it).
	caps, err = (&Conn{}).readCapabilities()
	require.ErrorContains(t, err, "not a peer's pid")
	require.Zero(t, caps)

	// A helper in a user namespace of its own holds no capabilities here.
	cmd = exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRole+"=hold", envSock+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	}
	h = startPrepared(t, cmd)
	h.expect(t, "ready")
	uc := accept(t, l)
	caps, err = uc.Capabilities()
	require.NoError(t, err)
	require.Zero(t, caps, "capabilities in another user namespace count for nothing here")

	// Gone: refused.
	require.NoError(t, h.cmd.Process.Kill())
	h.cmd.Wait() //nolint:errcheck // killed
	_, err = uc.OpenRoot()
	require.True(t, errors.Is(err, ErrPeerGone), "%v", err)
}
